#include "coordinator/site_service.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "common/logging.h"
#include "common/net/grpc_status.h"
#include "common/status_macros.h"

namespace fedtune::coordinator {
namespace {

constexpr char kCoordinatorVersion[] = "fedtune-coordinator 0.1.0";

// Closes a file descriptor on every path.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

absl::Status WriteAll(int fd, const std::string& data, const std::string& path) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return io::ErrnoToStatus(errno, "writing spool file", path);
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

SiteServiceImpl::SiteServiceImpl(Authorizer* authorizer, StateStore* store, BlobStore* blobs, RoundManager* rounds,
                                 SiteServiceOptions options)
    : authorizer_(authorizer), store_(store), blobs_(blobs), rounds_(rounds), options_(std::move(options)) {}

int64_t SiteServiceImpl::NowMs() const { return absl::ToUnixMillis(options_.clock ? options_.clock() : absl::Now()); }

grpc::Status SiteServiceImpl::Hello(grpc::ServerContext* context, const v1::HelloRequest* request,
                                    v1::HelloResponse* response) {
  absl::StatusOr<pki::PeerIdentity> peer = authorizer_->Authorize(*context, "SiteService/Hello", Access::kSiteHello);
  if (!peer.ok()) return net::ToGrpcStatus(peer.status());
  absl::StatusOr<SiteRecord> site =
      store_->RecordHello(peer->common_name, peer->serial, request->dataset(), request->capabilities(),
                          options_.auto_approve ? "approved" : "pending", NowMs());
  if (!site.ok()) return net::ToGrpcStatus(site.status());
  if (site->status == "pending" && options_.auto_approve) {
    site = store_->SetSiteStatus(peer->common_name, "approved", false, NowMs());
    if (!site.ok()) return net::ToGrpcStatus(site.status());
  }
  LOG(INFO) << "hello from site " << peer->common_name << " (" << site->status << ", " << context->peer() << ")";
  response->set_site_id(peer->common_name);
  response->set_status(site->status);
  response->set_heartbeat_seconds(options_.heartbeat_seconds);
  response->set_chunk_bytes(options_.chunk_bytes);
  response->set_coordinator_version(kCoordinatorVersion);
  return grpc::Status::OK;
}

grpc::Status SiteServiceImpl::GetTask(grpc::ServerContext* context, const v1::GetTaskRequest* request,
                                      v1::Task* response) {
  absl::StatusOr<pki::PeerIdentity> peer =
      authorizer_->Authorize(*context, "SiteService/GetTask", Access::kApprovedSite);
  if (!peer.ok()) return net::ToGrpcStatus(peer.status());
  const int wait = std::clamp(request->wait_seconds(), 0, options_.task_wait_seconds);
  absl::StatusOr<v1::Task> task =
      rounds_->WaitForTask(peer->common_name, absl::Seconds(wait), [context] { return context->IsCancelled(); });
  if (!task.ok()) return net::ToGrpcStatus(task.status());
  *response = *std::move(task);
  return grpc::Status::OK;
}

grpc::Status SiteServiceImpl::Heartbeat(grpc::ServerContext* context, const v1::HeartbeatRequest* request,
                                        v1::HeartbeatResponse* response) {
  absl::StatusOr<pki::PeerIdentity> peer = authorizer_->Authorize(
      *context, "SiteService/Heartbeat", Access::kApprovedSite, request->run_id(), request->round());
  if (!peer.ok()) return net::ToGrpcStatus(peer.status());
  absl::StatusOr<v1::HeartbeatResponse> answer = rounds_->Heartbeat(peer->common_name, *request);
  if (!answer.ok()) return net::ToGrpcStatus(answer.status());
  *response = *std::move(answer);
  return grpc::Status::OK;
}

grpc::Status SiteServiceImpl::DownloadModel(grpc::ServerContext* context, const v1::DownloadRequest* request,
                                            grpc::ServerWriter<v1::Chunk>* writer) {
  absl::StatusOr<pki::PeerIdentity> peer =
      authorizer_->Authorize(*context, "SiteService/DownloadModel", Access::kApprovedSite);
  if (!peer.ok()) return net::ToGrpcStatus(peer.status());
  absl::StatusOr<std::optional<ModelVersion>> version = io::IsSha256Hex(request->digest())
                                                            ? store_->GetModelVersion(request->digest())
                                                            : absl::StatusOr<std::optional<ModelVersion>>(std::nullopt);
  if (!version.ok()) return net::ToGrpcStatus(version.status());
  if (!*version) {
    return net::ToGrpcStatus(absl::NotFoundError(absl::StrCat("no model version ", request->digest())));
  }
  const std::string path = blobs_->PathOf(request->digest());
  std::ifstream in(path, std::ios::binary);
  absl::StatusOr<int64_t> total = blobs_->Size(request->digest());
  if (!in || !total.ok()) {
    return net::ToGrpcStatus(absl::DataLossError(absl::StrCat("model blob ", path, " is missing")));
  }
  if (request->offset() < 0 || request->offset() > *total) {
    return net::ToGrpcStatus(absl::OutOfRangeError(
        absl::StrCat("offset ", request->offset(), " is outside the model's ", *total, " bytes")));
  }
  in.seekg(request->offset());
  int64_t offset = request->offset();
  int64_t sent = 0;
  std::string buffer(static_cast<size_t>(options_.chunk_bytes), '\0');
  grpc::Status result = grpc::Status::OK;
  while (offset < *total) {
    if (context->IsCancelled()) {
      result = grpc::Status(grpc::StatusCode::CANCELLED, "download cancelled");
      break;
    }
    const int64_t n = std::min<int64_t>(options_.chunk_bytes, *total - offset);
    if (!in.read(buffer.data(), n)) {
      result = net::ToGrpcStatus(absl::DataLossError(absl::StrCat("reading model blob ", path)));
      break;
    }
    v1::Chunk chunk;
    chunk.set_offset(offset);
    chunk.set_data(buffer.data(), static_cast<size_t>(n));
    chunk.set_total_bytes(*total);
    chunk.set_sha256(request->digest());
    if (!writer->Write(chunk)) {
      result = grpc::Status(grpc::StatusCode::UNAVAILABLE, "download stream broken");
      break;
    }
    offset += n;
    sent += n;
  }
  absl::Status counted = store_->AddTransfer(rounds_->ActiveRunId(), peer->common_name, sent, 0);
  if (!counted.ok()) LOG(WARNING) << "counting downloaded bytes: " << counted;
  return result;
}

grpc::Status SiteServiceImpl::GetUploadOffset(grpc::ServerContext* context, const v1::UploadOffsetRequest* request,
                                              v1::UploadOffsetResponse* response) {
  absl::StatusOr<pki::PeerIdentity> peer = authorizer_->Authorize(
      *context, "SiteService/GetUploadOffset", Access::kApprovedSite, request->run_id(), request->round());
  if (!peer.ok()) return net::ToGrpcStatus(peer.status());
  absl::StatusOr<UploadTarget> target =
      rounds_->PrepareUpload(peer->common_name, request->run_id(), request->round(), request->sha256());
  if (!target.ok()) {
    authorizer_->Audit(*context, "SiteService/GetUploadOffset", *peer, target.status(), request->run_id(),
                       request->round());
    return net::ToGrpcStatus(target.status());
  }
  response->set_accepted(target->accepted);
  if (!target->accepted) {
    struct stat st;
    response->set_offset(::stat(target->spool_path.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_size) : 0);
  }
  return grpc::Status::OK;
}

absl::Status SiteServiceImpl::ReceiveInto(const std::string& path, const v1::UploadHeader& header,
                                          grpc::ServerReader<v1::UploadChunk>* reader, int64_t* received,
                                          int64_t* bytes_up) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT, 0600));
  if (fd.get() < 0) return io::ErrnoToStatus(errno, "opening spool file", path);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return io::ErrnoToStatus(errno, "stat", path);
  const int64_t held = st.st_size;
  if (header.offset() > held) {
    return absl::FailedPreconditionError(absl::StrCat("upload resumes at offset ", header.offset(), " but only ", held,
                                                      " bytes are held: ask GetUploadOffset"));
  }
  // Resending from an earlier offset replaces what follows it.
  if (::ftruncate(fd.get(), header.offset()) != 0) return io::ErrnoToStatus(errno, "truncating", path);
  if (::lseek(fd.get(), header.offset(), SEEK_SET) < 0) return io::ErrnoToStatus(errno, "seeking", path);
  *received = header.offset();
  v1::UploadChunk chunk;
  absl::Status status;
  while (reader->Read(&chunk)) {
    if (chunk.payload_case() != v1::UploadChunk::kData) {
      status = absl::InvalidArgumentError("upload: only the first message may carry a header");
      break;
    }
    if (*received + static_cast<int64_t>(chunk.data().size()) > header.total_bytes()) {
      status = absl::InvalidArgumentError(
          absl::StrCat("upload: more than the announced total_bytes ", header.total_bytes(), " were sent"));
      break;
    }
    status = WriteAll(fd.get(), chunk.data(), path);
    if (!status.ok()) break;
    *received += static_cast<int64_t>(chunk.data().size());
    *bytes_up += static_cast<int64_t>(chunk.data().size());
  }
  // What arrived is kept durably, also when the stream broke, so that GetUploadOffset can resume from it.
  if (::fsync(fd.get()) != 0 && status.ok()) status = io::ErrnoToStatus(errno, "fsync", path);
  return status;
}

absl::StatusOr<v1::UploadResponse> SiteServiceImpl::Upload(grpc::ServerContext* context,
                                                           grpc::ServerReader<v1::UploadChunk>* reader,
                                                           const pki::PeerIdentity& peer, v1::UploadHeader* header) {
  v1::UploadChunk first;
  if (!reader->Read(&first)) return absl::InvalidArgumentError("upload: empty stream (no header)");
  if (first.payload_case() != v1::UploadChunk::kHeader) {
    return absl::InvalidArgumentError("upload: the first message must carry the UploadHeader");
  }
  *header = first.header();
  if (header->total_bytes() <= 0 || header->total_bytes() > options_.max_upload_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("upload: total_bytes ", header->total_bytes(), " is outside [1, ",
                                                   options_.max_upload_bytes, "]"));
  }
  if (header->offset() < 0 || header->offset() > header->total_bytes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("upload: offset ", header->offset(), " is outside [0, ", header->total_bytes(), "]"));
  }
  ASSIGN_OR_RETURN(UploadTarget target,
                   rounds_->PrepareUpload(peer.common_name, header->run_id(), header->round(), header->sha256()));
  if (target.accepted) {
    v1::UploadResponse response;
    response.set_status("accepted");
    response.set_received_bytes(header->total_bytes());
    response.set_message("accepted before (same payload)");
    return response;
  }
  {
    absl::MutexLock lock(&mu_);
    if (!receiving_.insert(target.spool_path).second) {
      return absl::AbortedError(absl::StrCat("another upload of this payload for run ", header->run_id(), " round ",
                                             header->round(), " is in progress"));
    }
  }
  // The spool file stays claimed until it is accepted or refused, so a second stream cannot truncate it meanwhile.
  auto release = [&] {
    absl::MutexLock lock(&mu_);
    receiving_.erase(target.spool_path);
  };
  int64_t received = 0;
  int64_t bytes_up = 0;
  absl::Status status = ReceiveInto(target.spool_path, *header, reader, &received, &bytes_up);
  absl::Status counted = store_->AddTransfer(header->run_id(), peer.common_name, 0, bytes_up);
  if (!counted.ok()) LOG(WARNING) << "counting uploaded bytes: " << counted;
  if (status.ok() && context->IsCancelled()) status = absl::CancelledError("upload cancelled");
  if (status.ok() && received < header->total_bytes()) {
    status = absl::FailedPreconditionError(absl::StrCat("upload incomplete: ", received, " of ", header->total_bytes(),
                                                        " bytes received; resume from offset ", received));
  }
  if (!status.ok()) {
    release();
    return status;
  }
  absl::StatusOr<v1::UploadResponse> result = rounds_->AcceptUpload(peer.common_name, *header, target);
  release();
  return result;
}

grpc::Status SiteServiceImpl::UploadUpdate(grpc::ServerContext* context, grpc::ServerReader<v1::UploadChunk>* reader,
                                           v1::UploadResponse* response) {
  absl::StatusOr<pki::PeerIdentity> peer =
      authorizer_->Authorize(*context, "SiteService/UploadUpdate", Access::kApprovedSite);
  if (!peer.ok()) return net::ToGrpcStatus(peer.status());
  v1::UploadHeader header;
  absl::StatusOr<v1::UploadResponse> result = Upload(context, reader, *peer, &header);
  // The outcome of every upload is audited with its run and round (the authorization above could not know them).
  authorizer_->Audit(*context, "SiteService/UploadUpdate", *peer, result.status(), header.run_id(), header.round());
  if (!result.ok()) return net::ToGrpcStatus(result.status());
  *response = *std::move(result);
  return grpc::Status::OK;
}

grpc::Status SiteServiceImpl::ReportMetrics(grpc::ServerContext* context, const v1::MetricsReport* request,
                                            v1::ReportMetricsResponse* response) {
  absl::StatusOr<pki::PeerIdentity> peer = authorizer_->Authorize(
      *context, "SiteService/ReportMetrics", Access::kApprovedSite, request->run_id(), request->round());
  if (!peer.ok()) return net::ToGrpcStatus(peer.status());
  absl::Status status = rounds_->ReportMetrics(peer->common_name, *request);
  if (!status.ok()) {
    authorizer_->Audit(*context, "SiteService/ReportMetrics", *peer, status, request->run_id(), request->round());
  }
  return net::ToGrpcStatus(status);
}

}  // namespace fedtune::coordinator
