#include "site_agent/agent/coordinator_client.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <filesystem>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/federation/states.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "common/logging.h"
#include "common/net/chunk_receiver.h"
#include "common/net/chunk_sender.h"
#include "common/net/grpc_status.h"
#include "common/seed.h"
#include "common/status_macros.h"
#include "site_agent/agent/site_metrics.h"

namespace fedtune::agent {
namespace {

std::chrono::system_clock::time_point DeadlineIn(absl::Duration timeout) {
  return absl::ToChronoTime(absl::Now() + timeout);
}

void RemoveFile(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove(path, ec);
  if (ec) LOG(WARNING) << "cannot remove " << path << ": " << ec.message();
}

// Tells the RetryObserver about one call's retries: Retrying before each backoff wait, OnRetryEnd when the call ends.
class RetryNotices {
 public:
  RetryNotices(RetryObserver* observer, absl::string_view call) : observer_(observer), call_(call) {}
  ~RetryNotices() {
    if (told_) observer_->OnRetryEnd(call_);
  }
  RetryNotices(const RetryNotices&) = delete;
  RetryNotices& operator=(const RetryNotices&) = delete;

  void Retrying(const absl::Status& error, absl::Duration delay) {
    if (observer_ == nullptr) return;
    observer_->OnRetry(call_, error, delay);
    told_ = true;
  }

 private:
  RetryObserver* const observer_;
  const absl::string_view call_;
  bool told_ = false;
};

}  // namespace

bool IsRetryable(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnavailable || status.code() == absl::StatusCode::kDeadlineExceeded ||
         status.code() == absl::StatusCode::kResourceExhausted;
}

Backoff::Backoff(const RetryPolicy& policy, std::function<void(absl::Duration)> sleep, uint64_t seed)
    : policy_(policy), sleep_(std::move(sleep)), rng_state_(seed) {
  if (!sleep_) sleep_ = [](absl::Duration d) { absl::SleepFor(d); };
}

absl::Duration Backoff::NextDelay() const {
  absl::Duration delay = policy_.min_backoff;
  for (int i = 0; i < failures_ && delay < policy_.max_backoff; ++i) delay *= 2;
  return std::min(delay, policy_.max_backoff);
}

absl::Status Backoff::Wait(const absl::Status& error) {
  const absl::Time now = absl::Now();
  if (failures_ == 0) first_failure_ = now;
  const absl::Duration base = NextDelay();
  ++failures_;
  if (failures_ >= std::max(1, policy_.max_attempts) || now - first_failure_ >= policy_.max_elapsed) {
    return absl::Status(error.code(), absl::StrCat(error.message(), " (gave up after ", failures_, " attempts in ",
                                                   absl::FormatDuration(now - first_failure_), ")"));
  }
  const double unit = static_cast<double>(SplitMix64Next(&rng_state_) >> 11) / static_cast<double>(1ULL << 53);
  const double factor = 1.0 + policy_.jitter * (2.0 * unit - 1.0);
  sleep_(base * factor);
  return absl::OkStatus();
}

void Backoff::Reset() {
  failures_ = 0;
  first_failure_ = absl::InfinitePast();
}

absl::StatusOr<std::unique_ptr<CoordinatorClient>> CoordinatorClient::Create(const ClientOptions& options) {
  net::ChannelOptions channel_options;
  channel_options.server_name = options.server_name;
  channel_options.proxy = options.proxy;
  channel_options.keepalive_ms = static_cast<int>(absl::ToInt64Milliseconds(options.keepalive));
  channel_options.keepalive_timeout_ms = static_cast<int>(absl::ToInt64Milliseconds(options.keepalive_timeout));
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel,
                   net::MakeClientChannel(options.address, options.tls, channel_options));
  return ForChannel(std::move(channel), options);
}

std::unique_ptr<CoordinatorClient> CoordinatorClient::ForChannel(std::shared_ptr<grpc::Channel> channel,
                                                                 const ClientOptions& options) {
  return std::unique_ptr<CoordinatorClient>(new CoordinatorClient(std::move(channel), options));
}

CoordinatorClient::CoordinatorClient(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options)
    : options_(options),
      channel_(std::move(channel)),
      stub_(v1::SiteService::NewStub(channel_)),
      chunk_bytes_(net::ClampChunkBytes(options.chunk_bytes)),
      backoff_seeds_(options.seed != 0 ? options.seed : static_cast<uint64_t>(absl::ToUnixNanos(absl::Now()))) {}

void CoordinatorClient::set_chunk_bytes(int bytes) { chunk_bytes_.store(net::ClampChunkBytes(bytes)); }

Backoff CoordinatorClient::NewBackoff(absl::string_view rpc) {
  return Backoff(options_.retry, RetrySleep(options_.metrics, std::string(rpc), options_.sleep),
                 backoff_seeds_.fetch_add(kSplitMix64Gamma));
}

absl::Duration CoordinatorClient::StreamTimeout(int64_t bytes) const {
  const double rate = std::max(1.0, options_.min_transfer_bytes_per_second);
  return options_.rpc_timeout + absl::Seconds(static_cast<double>(std::max<int64_t>(0, bytes)) / rate);
}

absl::Status CoordinatorClient::Error(const grpc::Status& status, absl::string_view rpc) const {
  absl::Status error = net::FromGrpcStatus(status, absl::StrCat("coordinator ", options_.address, ": ", rpc));
  // gRPC says only "certificate verify failed"; the usual cause at a hospital is a TLS-inspecting proxy or firewall.
  if (absl::StrContains(error.message(), "certificate verify failed")) {
    error = absl::Status(error.code(),
                         absl::StrCat(error.message(), " (the certificate presented for ", options_.address,
                                      " is not signed by ca_cert ", options_.tls.ca,
                                      ": a TLS-inspecting proxy or firewall on the way? See docs/hospital-it-guide.md, "
                                      "\"TLS-inspecting middleboxes break mutual TLS\")"));
  }
  return error;
}

absl::StatusOr<v1::HelloResponse> CoordinatorClient::Hello(const v1::HelloRequest& request) {
  Backoff backoff = NewBackoff("Hello");
  RetryNotices notices(retry_observer_.load(), "Hello");
  while (true) {
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(options_.rpc_timeout));
    v1::HelloResponse response;
    const absl::Status status = Error(stub_->Hello(&context, request, &response), "Hello");
    if (status.ok()) return response;
    if (!IsRetryable(status)) return status;
    LOG(WARNING) << status << "; retrying in about " << backoff.NextDelay();
    notices.Retrying(status, backoff.NextDelay());
    RETURN_IF_ERROR(backoff.Wait(status));
  }
}

absl::StatusOr<v1::Task> CoordinatorClient::GetTask(int wait_seconds) {
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(absl::Seconds(std::max(0, wait_seconds)) + options_.rpc_timeout));
  v1::GetTaskRequest request;
  request.set_wait_seconds(wait_seconds);
  v1::Task task;
  RETURN_IF_ERROR(Error(stub_->GetTask(&context, request, &task), "GetTask"));
  return task;
}

absl::StatusOr<v1::HeartbeatResponse> CoordinatorClient::Heartbeat(const v1::HeartbeatRequest& request,
                                                                   absl::Duration timeout) {
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(timeout > absl::ZeroDuration() ? timeout : options_.rpc_timeout));
  v1::HeartbeatResponse response;
  RETURN_IF_ERROR(Error(stub_->Heartbeat(&context, request, &response), "Heartbeat"));
  return response;
}

absl::Status CoordinatorClient::ReportMetrics(const v1::MetricsReport& report) {
  Backoff backoff = NewBackoff("ReportMetrics");
  RetryNotices notices(retry_observer_.load(), "ReportMetrics");
  while (true) {
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(options_.rpc_timeout));
    v1::ReportMetricsResponse response;
    const absl::Status status = Error(stub_->ReportMetrics(&context, report, &response), "ReportMetrics");
    if (status.ok() || !IsRetryable(status)) return status;
    LOG(WARNING) << status << "; retrying in about " << backoff.NextDelay();
    notices.Retrying(status, backoff.NextDelay());
    RETURN_IF_ERROR(backoff.Wait(status));
  }
}

absl::Status CoordinatorClient::ReportFailure(const v1::FailureReport& report, absl::Duration give_up) {
  const absl::Time end = absl::Now() + give_up;
  Backoff backoff = NewBackoff("ReportFailure");
  while (true) {
    const absl::Duration left = end - absl::Now();
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(std::max(absl::Milliseconds(1), std::min(options_.rpc_timeout, left))));
    v1::ReportFailureResponse response;
    const absl::Status status = Error(stub_->ReportFailure(&context, report, &response), "ReportFailure");
    if (status.ok() || !IsRetryable(status)) return status;
    if (absl::Now() + backoff.NextDelay() >= end) {
      return absl::Status(status.code(), absl::StrCat(status.message(), " (gave up after ", backoff.failures() + 1,
                                                      " attempts: a failure report waits at most ",
                                                      absl::FormatDuration(give_up), ")"));
    }
    RETURN_IF_ERROR(backoff.Wait(status));
  }
}

absl::Status CoordinatorClient::RetriedCall(absl::string_view rpc, absl::Duration timeout,
                                            bool already_exists_after_retry_ok,
                                            const std::function<grpc::Status(grpc::ClientContext*)>& call) {
  Backoff backoff = NewBackoff(rpc);
  RetryNotices notices(retry_observer_.load(), rpc);
  while (true) {
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(timeout));
    const absl::Status status = Error(call(&context), rpc);
    if (status.ok()) return status;
    if (already_exists_after_retry_ok && backoff.failures() > 0 && status.code() == absl::StatusCode::kAlreadyExists) {
      LOG(INFO) << status << " (after a retry: the earlier attempt was taken)";
      return absl::OkStatus();
    }
    if (!IsRetryable(status)) return status;
    LOG(WARNING) << status << "; retrying in about " << backoff.NextDelay();
    notices.Retrying(status, backoff.NextDelay());
    RETURN_IF_ERROR(backoff.Wait(status));
  }
}

namespace {

// A long-poll's request with wait_seconds clamped, and its deadline.
v1::SecAggPhaseRequest ClampedPoll(const v1::SecAggPhaseRequest& request) {
  v1::SecAggPhaseRequest clamped = request;
  clamped.set_wait_seconds(std::clamp(request.wait_seconds(), 0, 600));
  return clamped;
}

}  // namespace

absl::Status CoordinatorClient::SecAggAdvertiseKeys(const v1::SecAggKeys& keys) {
  return RetriedCall("SecAggAdvertiseKeys", options_.rpc_timeout, false, [&](grpc::ClientContext* context) {
    v1::SecAggAck ack;
    return stub_->SecAggAdvertiseKeys(context, keys, &ack);
  });
}

absl::StatusOr<v1::SecAggRoster> CoordinatorClient::SecAggGetRoster(const v1::SecAggPhaseRequest& request) {
  const v1::SecAggPhaseRequest poll = ClampedPoll(request);
  v1::SecAggRoster roster;
  RETURN_IF_ERROR(RetriedCall("SecAggGetRoster", absl::Seconds(poll.wait_seconds()) + options_.rpc_timeout, false,
                              [&](grpc::ClientContext* context) {
                                roster.Clear();
                                return stub_->SecAggGetRoster(context, poll, &roster);
                              }));
  return roster;
}

absl::Status CoordinatorClient::SecAggShareKeys(const v1::SecAggShareUpload& upload) {
  return RetriedCall("SecAggShareKeys", options_.rpc_timeout, true, [&](grpc::ClientContext* context) {
    v1::SecAggAck ack;
    return stub_->SecAggShareKeys(context, upload, &ack);
  });
}

absl::StatusOr<v1::SecAggInbox> CoordinatorClient::SecAggGetInbox(const v1::SecAggPhaseRequest& request) {
  const v1::SecAggPhaseRequest poll = ClampedPoll(request);
  v1::SecAggInbox inbox;
  RETURN_IF_ERROR(RetriedCall("SecAggGetInbox", absl::Seconds(poll.wait_seconds()) + options_.rpc_timeout, false,
                              [&](grpc::ClientContext* context) {
                                inbox.Clear();
                                return stub_->SecAggGetInbox(context, poll, &inbox);
                              }));
  return inbox;
}

absl::StatusOr<v1::SecAggUnmaskRequest> CoordinatorClient::SecAggGetUnmaskRequest(
    const v1::SecAggPhaseRequest& request) {
  const v1::SecAggPhaseRequest poll = ClampedPoll(request);
  v1::SecAggUnmaskRequest unmask;
  RETURN_IF_ERROR(RetriedCall("SecAggGetUnmaskRequest", absl::Seconds(poll.wait_seconds()) + options_.rpc_timeout,
                              false, [&](grpc::ClientContext* context) {
                                unmask.Clear();
                                return stub_->SecAggGetUnmaskRequest(context, poll, &unmask);
                              }));
  return unmask;
}

absl::Status CoordinatorClient::SecAggRevealShares(const v1::SecAggReveal& reveal) {
  return RetriedCall("SecAggRevealShares", options_.rpc_timeout, true, [&](grpc::ClientContext* context) {
    v1::SecAggAck ack;
    return stub_->SecAggRevealShares(context, reveal, &ack);
  });
}

absl::Status CoordinatorClient::DeclineTask(const std::string& run_id, int32_t round, int32_t attempt,
                                            const std::string& reason, const v1::PrivacyAccount& privacy) {
  v1::DeclineRequest request;
  request.set_run_id(run_id);
  request.set_round(round);
  request.set_attempt(attempt);
  std::string text = reason;
  if (text.size() > kMaxDeclineReasonBytes) {
    // Cut at a UTF-8 boundary: never in the middle of a character (the reason may hold "∞").
    size_t cut = kMaxDeclineReasonBytes;
    while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
    text.resize(cut);
  }
  request.set_reason(text);
  *request.mutable_privacy() = privacy;
  return RetriedCall("DeclineTask", options_.rpc_timeout, false, [&](grpc::ClientContext* context) {
    v1::DeclineResponse response;
    return stub_->DeclineTask(context, request, &response);
  });
}

absl::StatusOr<v1::UploadOffsetResponse> CoordinatorClient::GetUploadOffset(const std::string& run_id, int32_t round,
                                                                            const std::string& sha256,
                                                                            v1::UploadKind kind) {
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(options_.rpc_timeout));
  v1::UploadOffsetRequest request;
  request.set_run_id(run_id);
  request.set_round(round);
  request.set_sha256(sha256);
  if (kind != v1::UPLOAD_KIND_UPDATE) request.set_kind(kind);  // A previous coordinator reads no kind.
  v1::UploadOffsetResponse response;
  RETURN_IF_ERROR(Error(stub_->GetUploadOffset(&context, request, &response), "GetUploadOffset"));
  return response;
}

absl::Status CoordinatorClient::DownloadOnce(const std::string& digest, int64_t expected_bytes,
                                             net::ChunkReceiver* part, const CancelFn& cancelled) {
  const int64_t offset = part->offset();
  grpc::ClientContext context;
  // Unknown size: allow for a large model (256 MiB) at the minimum rate.
  const int64_t total = part->announced_total();
  const int64_t size = total >= 0 ? total : expected_bytes > 0 ? expected_bytes : (int64_t{256} << 20);
  context.set_deadline(DeadlineIn(StreamTimeout(size - offset)));
  v1::DownloadRequest request;
  request.set_digest(digest);
  request.set_offset(offset);
  std::unique_ptr<grpc::ClientReader<v1::Chunk>> reader = stub_->DownloadModel(&context, request);
  v1::Chunk chunk;
  absl::Status local;  // A problem on our side or with the chunks, which ends the stream.
  while (local.ok() && reader->Read(&chunk)) {
    if (cancelled && cancelled()) {
      local = absl::CancelledError(absl::StrCat("download of model ", digest, " from coordinator ", options_.address,
                                                " cancelled at byte ", part->offset()));
    } else {
      local = part->AppendAnnounced(chunk.offset(), chunk.data(), chunk.total_bytes(), chunk.sha256(), digest);
      if (local.ok()) bytes_down_ += static_cast<int64_t>(chunk.data().size());
      if (local.ok() && options_.metrics) options_.metrics->AddDownloadedBytes(chunk.data().size());
    }
  }
  if (!local.ok()) context.TryCancel();
  const absl::Status synced = part->Sync();
  const grpc::Status finished = reader->Finish();
  RETURN_IF_ERROR(local);
  RETURN_IF_ERROR(synced);
  RETURN_IF_ERROR(Error(finished, "DownloadModel"));
  if (part->announced_total() >= 0 && part->offset() < part->announced_total()) {
    return absl::UnavailableError(absl::StrCat("download of model ", digest, " from coordinator ", options_.address,
                                               ": the stream ended at byte ", part->offset(), " of ",
                                               part->announced_total()));
  }
  return absl::OkStatus();
}

absl::Status CoordinatorClient::DownloadInto(const std::string& digest, int64_t expected_bytes,
                                             net::ChunkReceiver* part, const CancelFn& cancelled) {
  Backoff backoff = NewBackoff("DownloadModel");
  RetryNotices notices(retry_observer_.load(), "DownloadModel");
  while (true) {
    if (cancelled && cancelled()) return absl::CancelledError(absl::StrCat("download of model ", digest, " cancelled"));
    RETURN_IF_ERROR(part->ResumeAtEnd());  // Also after a failed write: the file says what it holds.
    const int64_t before = part->offset();
    const int64_t total = part->announced_total() >= 0 ? part->announced_total()
                          : expected_bytes > 0         ? expected_bytes
                                                       : -1;
    if (total >= 0 && before > total) {
      LOG(WARNING) << "the .part file of model " << digest << " holds " << before << " bytes, more than the model's "
                   << total << ": starting again";
      RETURN_IF_ERROR(part->ResumeAt(0));
      part->ClearAnnouncements();
      continue;
    }
    if (total >= 0 && before == total) return absl::OkStatus();
    if (before > 0) LOG(INFO) << "resuming the download of model " << digest << " at byte " << before;
    const absl::Status status = DownloadOnce(digest, expected_bytes, part, cancelled);
    if (status.ok() || !IsRetryable(status)) return status;
    RETURN_IF_ERROR(part->ResumeAtEnd());
    if (part->offset() > before) backoff.Reset();
    LOG(WARNING) << status << "; " << part->offset() << " bytes of model " << digest << " kept, retrying in about "
                 << backoff.NextDelay();
    notices.Retrying(status, backoff.NextDelay());
    RETURN_IF_ERROR(backoff.Wait(status));
  }
}

absl::StatusOr<std::string> CoordinatorClient::DownloadModel(const std::string& digest, int64_t expected_bytes,
                                                             const std::string& dir, const CancelFn& cancelled) {
  if (!io::IsSha256Hex(digest)) {
    return absl::InvalidArgumentError(absl::StrCat("model digest '", digest, "' is not 64 lowercase hex digits"));
  }
  RETURN_IF_ERROR(io::MakeDirectories(dir));
  const std::string final_path = (std::filesystem::path(dir) / absl::StrCat(digest, ".ckpt")).string();
  const std::string part_path = (std::filesystem::path(dir) / absl::StrCat(digest, ".part")).string();
  if (std::filesystem::exists(final_path)) {
    ASSIGN_OR_RETURN(std::string sha, io::Sha256File(final_path));
    if (sha == digest) return final_path;
    LOG(WARNING) << final_path << " has sha256 " << sha << ", not its name: downloading it again";
    RemoveFile(final_path);
  }
  net::ChunkReceiverOptions options;
  options.what = absl::StrCat("download of model ", digest, " from coordinator ", options_.address);
  ASSIGN_OR_RETURN(std::unique_ptr<net::ChunkReceiver> part, net::ChunkReceiver::Open(part_path, options));
  absl::Status status = DownloadInto(digest, expected_bytes, part.get(), cancelled);
  if (status.code() == absl::StatusCode::kDataLoss) RemoveFile(part_path);
  RETURN_IF_ERROR(status);
  // Hashed while the bytes arrived (a .part file left by an earlier agent was read once, to resume).
  ASSIGN_OR_RETURN(std::string sha, part->Digest());
  part.reset();
  if (sha != digest) {
    RemoveFile(part_path);
    return absl::DataLossError(absl::StrCat("model ", digest, " from coordinator ", options_.address,
                                            " arrived with sha256 ", sha, " (corrupted in transit or tampered); ",
                                            part_path, " was removed"));
  }
  std::error_code ec;
  std::filesystem::rename(part_path, final_path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", part_path, " to ", final_path, ": ", ec.message()));
  return final_path;
}

absl::StatusOr<v1::UploadResponse> CoordinatorClient::UploadOnce(const UploadRequest& request,
                                                                 net::ChunkSender* payload, int64_t offset,
                                                                 const CancelFn& cancelled) {
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(StreamTimeout(payload->size() - offset)));
  v1::UploadResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::UploadChunk>> writer = stub_->UploadUpdate(&context, &response);
  v1::UploadChunk header_chunk;
  v1::UploadHeader* header = header_chunk.mutable_header();
  header->set_run_id(request.run_id);
  header->set_round(request.round);
  header->set_total_bytes(payload->size());
  header->set_sha256(request.sha256);
  header->set_offset(offset);
  header->set_num_samples(request.num_samples);
  fl::SetEncoding(request.encoding, header);
  header->set_train_loss(request.train_loss);
  header->set_validation_loss(request.validation_loss);
  if (request.kind != v1::UPLOAD_KIND_UPDATE) header->set_kind(request.kind);
  absl::Status local;
  bool writing = writer->Write(header_chunk);
  if (writing) {
    net::ChunkSenderOptions options;
    options.chunk_bytes = chunk_bytes_.load();
    options.cancelled = cancelled;
    net::SendResult sent = payload->Send(offset, options, [&](int64_t, absl::string_view bytes) {
      v1::UploadChunk data;
      data.set_data(bytes.data(), bytes.size());
      if (!writer->Write(data)) return false;
      bytes_up_ += static_cast<int64_t>(bytes.size());
      if (options_.metrics != nullptr) options_.metrics->AddUploadedBytes(static_cast<int64_t>(bytes.size()));
      return true;
    });
    writing = !sent.broken;
    if (sent.status.code() == absl::StatusCode::kCancelled) {
      local = absl::CancelledError(absl::StrCat("upload of ", request.path, " for run ", request.run_id, " round ",
                                                request.round, " ", sent.status.message()));
    } else if (!sent.status.ok()) {
      local = absl::InternalError(absl::StrCat("reading the update: ", sent.status.message()));
    }
  }
  if (!local.ok()) {
    context.TryCancel();
  } else if (writing) {
    writer->WritesDone();
  }
  const grpc::Status finished = writer->Finish();
  RETURN_IF_ERROR(local);
  RETURN_IF_ERROR(Error(finished, "UploadUpdate"));
  return response;
}

absl::StatusOr<v1::UploadResponse> CoordinatorClient::UploadUpdate(const UploadRequest& request,
                                                                   const CancelFn& cancelled) {
  ASSIGN_OR_RETURN(std::unique_ptr<net::ChunkSender> payload, net::ChunkSender::Open(request.path));
  const int64_t size = payload->size();
  if (size == 0) return absl::InvalidArgumentError(absl::StrCat("update file '", request.path, "' is empty"));
  const std::string what = request.kind == v1::UPLOAD_KIND_ADAPTED_MODEL
                               ? absl::StrCat("adapted model for run ", request.run_id)
                               : absl::StrCat("update for run ", request.run_id, " round ", request.round);
  Backoff backoff = NewBackoff("UploadUpdate");
  RetryNotices notices(retry_observer_.load(), "UploadUpdate");
  int64_t held_before = -1;
  while (true) {
    if (cancelled && cancelled()) return absl::CancelledError(absl::StrCat("upload of the ", what, " cancelled"));
    absl::StatusOr<v1::UploadResponse> result;
    absl::StatusOr<v1::UploadOffsetResponse> held =
        GetUploadOffset(request.run_id, request.round, request.sha256, request.kind);
    if (held.ok()) {
      if (held->accepted()) {
        v1::UploadResponse response;
        federation::SetStatus(federation::UploadStatus::kAccepted, &response);
        response.set_received_bytes(size);
        response.set_message(absl::StrCat("the coordinator had accepted this ", what, " before"));
        return response;
      }
      if (held->offset() < 0 || held->offset() > size) {
        return absl::DataLossError(absl::StrCat("coordinator ", options_.address, " holds ", held->offset(),
                                                " bytes of the ", what, ", but the payload has ", size));
      }
      if (held_before >= 0 && held->offset() > held_before) backoff.Reset();
      held_before = held->offset();
      if (held->offset() > 0) LOG(INFO) << "resuming the upload of the " << what << " at byte " << held->offset();
      result = UploadOnce(request, payload.get(), held->offset(), cancelled);
      if (result.ok()) {
        ASSIGN_OR_RETURN(const federation::UploadStatus status, federation::GetStatus(*result));
        if (status != federation::UploadStatus::kAccepted) {
          return absl::FailedPreconditionError(absl::StrCat("coordinator ", options_.address, " answered \"",
                                                            federation::Text(status), "\" to the ", what, ": ",
                                                            result->message()));
        }
        return result;
      }
    } else {
      result = held.status();
    }
    // ABORTED too: the coordinator may still be closing the previous, broken stream of this payload.
    if (!IsRetryable(result.status()) && result.status().code() != absl::StatusCode::kAborted) {
      return result.status();
    }
    LOG(WARNING) << result.status() << "; retrying in about " << backoff.NextDelay();
    notices.Retrying(result.status(), backoff.NextDelay());
    RETURN_IF_ERROR(backoff.Wait(result.status()));
  }
}

}  // namespace fedtune::agent
