#include "coordinator/cli/admin_client.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <utility>

#include "absl/algorithm/container.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "common/logging.h"
#include "common/net/chunk_receiver.h"
#include "common/net/grpc_status.h"
#include "common/net/tls.h"
#include "common/status_macros.h"
#include "coordinator/cli/terminal_text.h"

namespace fedtune::admin {
namespace {

// Bound of a coordinator error message as the CLI reports it (TerminalSafe).
constexpr size_t kMaxErrorMessageBytes = 2048;

struct SettingSpec {
  const char* flag;
  const char* env;
  const char* what;
};

constexpr SettingSpec kCoordinator = {"coordinator", "FEDTUNE_COORDINATOR", "the coordinator's host:port"};
constexpr SettingSpec kCert = {"cert", "FEDTUNE_CERT", "the operator certificate (PEM)"};
constexpr SettingSpec kKey = {"key", "FEDTUNE_KEY", "the operator's private key (PEM)"};
constexpr SettingSpec kCa = {"ca", "FEDTUNE_CA", "the consortium CA certificate (ca.pem)"};
constexpr SettingSpec kServerName = {"server-name", "FEDTUNE_SERVER_NAME", "the coordinator's TLS name"};
constexpr SettingSpec kTimeout = {"timeout", "FEDTUNE_TIMEOUT", "the deadline of each call in seconds"};

std::optional<std::string> Lookup(const cli::ParsedFlags& flags, const EnvLookup& env, const SettingSpec& spec) {
  std::optional<std::string> value = flags.Get(spec.flag);
  if (value.has_value() && !value->empty()) return value;
  if (env) {
    value = env(spec.env);
    if (value.has_value() && !value->empty()) return value;
  }
  return std::nullopt;
}

absl::StatusOr<std::string> Require(const cli::ParsedFlags& flags, const EnvLookup& env, const SettingSpec& spec) {
  std::optional<std::string> value = Lookup(flags, env, spec);
  if (!value.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat("missing connection setting: ", spec.what, "; give --", spec.flag,
                                                   " or set the environment variable ", spec.env));
  }
  return *value;
}

// Codes after which a stream is worth reopening: the connection or the server broke, not the request.
bool IsTransient(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kCancelled:
      return true;
    default:
      return false;
  }
}

absl::Status RemoveFile(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) return io::ErrnoToStatus(errno, "cannot remove", path);
  return absl::OkStatus();
}

absl::Status SyncFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return io::ErrnoToStatus(errno, "cannot open", path);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return io::ErrnoToStatus(err, "cannot sync", path);
  return absl::OkStatus();
}

std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

EnvLookup ProcessEnvironment() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) return std::nullopt;
    return std::string(value);
  };
}

std::vector<cli::FlagSpec> ConnectionFlags() {
  std::vector<cli::FlagSpec> flags;
  auto add = [&](const SettingSpec& spec, const char* metavar, const char* help) {
    cli::FlagSpec flag;
    flag.name = spec.flag;
    flag.help = absl::StrCat(help, " (env ", spec.env, ")");
    flag.metavar = metavar;
    flags.push_back(std::move(flag));
  };
  add(kCoordinator, "HOST:PORT", "coordinator address");
  add(kCert, "PEM", "operator certificate");
  add(kKey, "PEM", "operator private key");
  add(kCa, "PEM", "consortium CA certificate (ca.pem)");
  add(kServerName, "NAME", "TLS name of the coordinator's certificate; default: the host of --coordinator");
  add(kTimeout, "SECONDS", "deadline of each call; default 30");
  return flags;
}

absl::StatusOr<ConnectionSettings> ResolveConnection(const cli::ParsedFlags& flags, const EnvLookup& env) {
  ConnectionSettings settings;
  ASSIGN_OR_RETURN(settings.coordinator, Require(flags, env, kCoordinator));
  ASSIGN_OR_RETURN(settings.cert, Require(flags, env, kCert));
  ASSIGN_OR_RETURN(settings.key, Require(flags, env, kKey));
  ASSIGN_OR_RETURN(settings.ca, Require(flags, env, kCa));
  settings.server_name = Lookup(flags, env, kServerName).value_or("");
  if (std::optional<std::string> timeout = Lookup(flags, env, kTimeout)) {
    double seconds = 0;
    if (!absl::SimpleAtod(*timeout, &seconds) || !(seconds > 0) || seconds > 86400 * 7) {
      return absl::InvalidArgumentError(
          absl::StrCat("--timeout (or ", kTimeout.env, ") is '", *timeout, "': must be a positive number of seconds"));
    }
    settings.timeout_seconds = seconds;
  }
  return settings;
}

absl::StatusOr<std::unique_ptr<AdminClient>> AdminClient::Connect(const ConnectionSettings& settings) {
  net::TlsFiles files{settings.cert, settings.key, settings.ca};
  net::ChannelOptions options;
  options.server_name = settings.server_name;
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel,
                   net::MakeClientChannel(settings.coordinator, files, options));
  return std::make_unique<AdminClient>(std::move(channel), settings.coordinator,
                                       absl::Seconds(settings.timeout_seconds));
}

AdminClient::AdminClient(std::shared_ptr<grpc::Channel> channel, std::string address, absl::Duration timeout)
    : address_(std::move(address)), timeout_(timeout), stub_(v1::AdminService::NewStub(std::move(channel))) {}

AdminClient::PendingCall::PendingCall(AdminClient* client, grpc::ClientContext* context, absl::Duration timeout)
    : client_(client), context_(context) {
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  absl::MutexLock lock(&client->pending_mu_);
  client->pending_.insert(context);
  // Before the call starts: gRPC cancels it as soon as it starts.
  if (client->cancelled_) context->TryCancel();
}

AdminClient::PendingCall::~PendingCall() {
  absl::MutexLock lock(&client_->pending_mu_);
  client_->pending_.erase(context_);
}

void AdminClient::CancelPendingCalls() {
  absl::MutexLock lock(&pending_mu_);
  cancelled_ = true;
  // Under the lock: a context is unregistered (under it too) before it is destroyed.
  for (grpc::ClientContext* context : pending_) context->TryCancel();
}

absl::Status AdminClient::Failed(const grpc::Status& status, const char* rpc) const {
  // The coordinator's message may quote text a site sent; the CLI prints it on the operator's terminal.
  const grpc::Status safe(status.error_code(), TerminalSafe(status.error_message(), kMaxErrorMessageBytes),
                          status.error_details());
  return net::FromGrpcStatus(safe, absl::StrCat("coordinator ", address_, ": ", rpc));
}

absl::StatusOr<v1::ListSitesResponse> AdminClient::ListSites() {
  grpc::ClientContext context;
  const PendingCall pending(this, &context, timeout_);
  v1::ListSitesResponse response;
  grpc::Status status = stub_->ListSites(&context, v1::ListSitesRequest(), &response);
  if (!status.ok()) return Failed(status, "ListSites");
  return response;
}

absl::StatusOr<v1::SiteInfo> AdminClient::ApproveSite(const std::string& site_id, bool replace_key,
                                                      const std::string& expected_key_sha256) {
  grpc::ClientContext context;
  const PendingCall pending(this, &context, timeout_);
  v1::SiteRequest request;
  request.set_site_id(site_id);
  request.set_replace_key(replace_key);
  request.set_expected_key_sha256(expected_key_sha256);
  v1::SiteResponse response;
  grpc::Status status = stub_->ApproveSite(&context, request, &response);
  if (!status.ok()) return Failed(status, "ApproveSite");
  return response.site();
}

absl::StatusOr<v1::SiteInfo> AdminClient::RevokeSite(const std::string& site_id, const std::string& reason) {
  grpc::ClientContext context;
  const PendingCall pending(this, &context, timeout_);
  v1::SiteRequest request;
  request.set_site_id(site_id);
  request.set_reason(reason);
  v1::SiteResponse response;
  grpc::Status status = stub_->RevokeSite(&context, request, &response);
  if (!status.ok()) return Failed(status, "RevokeSite");
  return response.site();
}

absl::StatusOr<v1::SiteResponse> AdminClient::GetSite(const std::string& site_id) {
  grpc::ClientContext context;
  const PendingCall pending(this, &context, timeout_);
  v1::SiteRequest request;
  request.set_site_id(site_id);
  v1::SiteResponse response;
  grpc::Status status = stub_->GetSite(&context, request, &response);
  if (!status.ok()) return Failed(status, "GetSite");
  return response;
}

absl::StatusOr<std::string> AdminClient::StartRun(const v1::RunConfig& config) {
  grpc::ClientContext context;
  const PendingCall pending(this, &context, timeout_);
  v1::StartRunRequest request;
  *request.mutable_config() = config;
  v1::StartRunResponse response;
  grpc::Status status = stub_->StartRun(&context, request, &response);
  if (!status.ok()) return Failed(status, "StartRun");
  if (response.run_id().empty()) {
    return absl::InternalError(absl::StrCat("coordinator ", address_, ": StartRun answered without a run id"));
  }
  return response.run_id();
}

absl::StatusOr<v1::RunStatus> AdminClient::GetRunStatus(const std::string& run_id) {
  grpc::ClientContext context;
  const PendingCall pending(this, &context, timeout_);
  v1::RunStatusRequest request;
  request.set_run_id(run_id);
  v1::RunStatus response;
  grpc::Status status = stub_->GetRunStatus(&context, request, &response);
  if (!status.ok()) return Failed(status, "GetRunStatus");
  return response;
}

absl::StatusOr<v1::RunStatus> AdminClient::AbortRun(const std::string& run_id, const std::string& reason) {
  grpc::ClientContext context;
  const PendingCall pending(this, &context, timeout_);
  v1::AbortRunRequest request;
  request.set_run_id(run_id);
  request.set_reason(reason);
  v1::RunStatus response;
  grpc::Status status = stub_->AbortRun(&context, request, &response);
  if (!status.ok()) return Failed(status, "AbortRun");
  return response;
}

absl::StatusOr<v1::RunReport> AdminClient::GetRunReport(const std::string& run_id) {
  grpc::ClientContext context;
  const PendingCall pending(this, &context, timeout_);
  v1::RunReportRequest request;
  request.set_run_id(run_id);
  v1::RunReport response;
  grpc::Status status = stub_->GetRunReport(&context, request, &response);
  if (!status.ok()) return Failed(status, "GetRunReport");
  return response;
}

absl::StatusOr<v1::ListRunsResponse> AdminClient::ListRuns(int limit) {
  grpc::ClientContext context;
  const PendingCall pending(this, &context, timeout_);
  v1::ListRunsRequest request;
  request.set_limit(limit);
  v1::ListRunsResponse response;
  grpc::Status status = stub_->ListRuns(&context, request, &response);
  if (!status.ok()) return Failed(status, "ListRuns");
  return response;
}

absl::Status AdminClient::ExportOnce(const std::string& digest, net::ChunkReceiver* part, const ExportOptions& options,
                                     int64_t* received) {
  *received = 0;
  grpc::ClientContext context;
  const PendingCall pending(this, &context, options.stream_timeout);
  v1::ExportModelRequest request;
  request.set_digest(digest);
  request.set_offset(part->offset());
  std::unique_ptr<grpc::ClientReader<v1::Chunk>> reader = stub_->ExportModel(&context, request);
  v1::Chunk chunk;
  absl::Status stream_error;
  while (reader->Read(&chunk)) {
    stream_error = part->AppendAnnounced(chunk.offset(), chunk.data(), chunk.total_bytes(), chunk.sha256(), digest);
    if (!stream_error.ok()) break;
    *received += static_cast<int64_t>(chunk.data().size());
    if (options.progress) options.progress(part->offset(), part->announced_total());
  }
  if (!stream_error.ok()) {
    context.TryCancel();
    reader->Finish().IgnoreError();
    return stream_error;
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return Failed(status, "ExportModel");
  return absl::OkStatus();
}

absl::Status AdminClient::ExportInto(const std::string& digest, const std::string& part_path, net::ChunkReceiver* part,
                                     const ExportOptions& options, ExportResult* result, bool* may_restart) {
  const std::string what = absl::StrCat("coordinator ", address_, ": ExportModel ", digest);
  // Begins again from byte 0: the part left by an earlier run may belong to another model.
  auto restart = [&]() {
    *may_restart = false;
    part->ClearAnnouncements();
    return part->ResumeAt(0);
  };
  int fruitless = 0;
  while (true) {
    RETURN_IF_ERROR(part->ResumeAtEnd());
    const int64_t offset = part->offset();
    const int64_t total = part->announced_total();
    if (total >= 0 && offset == total) return absl::OkStatus();  // Everything is here.
    if (total >= 0 && offset > total) {
      return absl::DataLossError(absl::StrCat(part_path, " holds ", offset, " bytes, more than the model's ", total));
    }
    ++result->attempts;
    int64_t received = 0;
    absl::Status status = ExportOnce(digest, part, options, &received);
    if (status.ok() && part->announced_total() >= 0 && part->offset() == part->announced_total()) {
      return absl::OkStatus();
    }
    if (status.ok() && part->announced_total() < 0) {
      // The server had nothing after our offset and never told us the digest: start over.
      if (offset > 0 && *may_restart) {
        RETURN_IF_ERROR(restart());
        continue;
      }
      return absl::DataLossError(absl::StrCat(what, " sent no data"));
    }
    if (status.code() == absl::StatusCode::kOutOfRange && offset > 0 && *may_restart) {
      RETURN_IF_ERROR(restart());
      continue;
    }
    if (!status.ok() && !IsTransient(status.code())) return status;
    const absl::Status error =
        status.ok() ? absl::UnavailableError(absl::StrCat(what, ": stream ended early at byte ", offset + received,
                                                          " of ", part->announced_total()))
                    : status;
    fruitless = received > 0 ? 0 : fruitless + 1;
    if (fruitless >= options.max_attempts_without_progress) {
      return absl::Status(error.code(),
                          absl::StrCat(error.message(), " (gave up after ", fruitless, " attempts without progress; ",
                                       part_path, " is kept: run again to resume)"));
    }
    LOG(WARNING) << "model export interrupted at byte " << offset + received << ": " << error << "; resuming";
    const absl::Duration wait = std::min(options.retry_backoff * std::max(fruitless, 1), absl::Seconds(10));
    if (wait > absl::ZeroDuration()) absl::SleepFor(wait);
  }
}

absl::StatusOr<ExportResult> AdminClient::ExportModel(const std::string& requested, const std::string& out_path,
                                                      const ExportOptions& options) {
  const std::string digest = absl::AsciiStrToLower(requested);
  if (digest.size() < 8 || digest.size() > 64 ||
      !absl::c_all_of(digest, [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); })) {
    return absl::InvalidArgumentError(
        absl::StrCat("model version '", requested, "' is not a digest (8 to 64 hex digits)"));
  }
  const std::string part_path = out_path + ".part";
  net::ChunkReceiverOptions receiving;
  receiving.what = absl::StrCat("coordinator ", address_, ": ExportModel ", digest);
  ASSIGN_OR_RETURN(std::unique_ptr<net::ChunkReceiver> part, net::ChunkReceiver::Open(part_path, receiving));
  ExportResult result;
  result.path = out_path;
  result.resumed_from = part->offset();
  bool may_restart = result.resumed_from > 0;  // A part from an earlier run may belong to another model.
  absl::Status received = ExportInto(digest, part_path, part.get(), options, &result, &may_restart);
  if (received.code() == absl::StatusCode::kDataLoss) RemoveFile(part_path).IgnoreError();  // Start afresh.
  RETURN_IF_ERROR(received);
  // Hashed while the bytes arrived (a part left by an earlier run was read once, to resume).
  ASSIGN_OR_RETURN(std::string actual, part->Digest());
  const std::string announced = part->announced_sha256();
  const int64_t total = part->announced_total();
  if (actual != announced || !absl::StartsWith(actual, digest)) {
    part.reset();
    RETURN_IF_ERROR(RemoveFile(part_path));
    if (may_restart) {
      // The part left by an earlier run did not belong to this model: fetch it whole once more.
      LOG(WARNING) << part_path << " from an earlier export did not match; downloading again";
      ASSIGN_OR_RETURN(ExportResult again, ExportModel(digest, out_path, options));
      again.attempts += result.attempts;
      again.resumed_from = result.resumed_from;
      return again;
    }
    return absl::DataLossError(absl::StrCat("model ", digest, " from coordinator ", address_,
                                            ": SHA-256 of the received file is ", actual, ", expected ",
                                            announced.empty() ? digest : announced, "; the partial file was removed"));
  }
  RETURN_IF_ERROR(part->Sync());
  part.reset();
  if (::rename(part_path.c_str(), out_path.c_str()) != 0) {
    return io::ErrnoToStatus(errno, "cannot rename into place", out_path);
  }
  RETURN_IF_ERROR(SyncFile(DirectoryOf(out_path)));
  result.sha256 = actual;
  result.bytes = total;
  return result;
}

}  // namespace fedtune::admin
