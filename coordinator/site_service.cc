#include "coordinator/site_service.h"

#include <sys/stat.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/io/sha256.h"
#include "common/logging.h"
#include "common/net/grpc_status.h"
#include "common/status_macros.h"
#include "coordinator/model_stream.h"
#include "coordinator/upload_receiver.h"

namespace fedtune::coordinator {

using federation::SiteStatus;
namespace {

constexpr char kCoordinatorVersion[] = "fedtune-coordinator 0.1.0";

}  // namespace

SiteServiceImpl::SiteServiceImpl(Authorizer* authorizer, StateStore* store, BlobStore* blobs, RoundManager* rounds,
                                 SiteServiceOptions options)
    : authorizer_(authorizer),
      store_(store),
      blobs_(blobs),
      rounds_(rounds),
      options_(std::move(options)),
      limiter_(options_.call_limits) {}

int64_t SiteServiceImpl::NowMs() const { return absl::ToUnixMillis(options_.clock ? options_.clock() : absl::Now()); }

absl::StatusOr<pki::PeerIdentity> SiteServiceImpl::Admit(const grpc::ServerContext& context, const char* rpc,
                                                         Access access, bool stream, SiteCallLimiter::Slot* slot,
                                                         const std::string& run_id, int round) {
  ASSIGN_OR_RETURN(pki::PeerIdentity peer, authorizer_->Authorize(context, rpc, access, run_id, round));
  absl::StatusOr<SiteCallLimiter::Slot> taken = limiter_.Acquire(peer.common_name, stream);
  if (!taken.ok()) {
    authorizer_->Audit(context, rpc, peer, taken.status(), run_id, round);
    LOG(WARNING) << rpc << ": " << taken.status();
    return taken.status();
  }
  *slot = *std::move(taken);
  return peer;
}

grpc::Status SiteServiceImpl::Reply(const absl::Status& status, const char* rpc, const std::string& site_id) {
  grpc::Status reply = net::ToPeerGrpcStatus(status);
  if (reply.error_message() != status.message()) {
    LOG(WARNING) << rpc << " of site " << (site_id.empty() ? "?" : site_id) << " refused: " << status;
  }
  return reply;
}

grpc::Status SiteServiceImpl::Hello(grpc::ServerContext* context, const v1::HelloRequest* request,
                                    v1::HelloResponse* response) {
  constexpr char kRpc[] = "SiteService/Hello";
  SiteCallLimiter::Slot slot;
  absl::StatusOr<pki::PeerIdentity> peer = Admit(*context, kRpc, Access::kSiteHello, false, &slot);
  if (!peer.ok()) return Reply(peer.status(), kRpc, "");
  absl::StatusOr<SiteRecord> site =
      store_->RecordHello(peer->common_name, peer->serial, request->dataset(), request->capabilities(),
                          options_.auto_approve ? SiteStatus::kApproved : SiteStatus::kPending, NowMs());
  if (!site.ok()) return Reply(site.status(), kRpc, peer->common_name);
  if (site->status == SiteStatus::kPending && options_.auto_approve) {
    site = store_->SetSiteStatus(peer->common_name, SiteStatus::kApproved, false, NowMs());
    if (!site.ok()) return Reply(site.status(), kRpc, peer->common_name);
  }
  LOG(INFO) << "hello from site " << peer->common_name << " (" << federation::Text(site->status) << ", "
            << context->peer() << ")";
  response->set_site_id(peer->common_name);
  federation::SetStatus(site->status, response);
  response->set_heartbeat_seconds(options_.heartbeat_seconds);
  response->set_chunk_bytes(options_.chunk_bytes);
  response->set_coordinator_version(kCoordinatorVersion);
  return grpc::Status::OK;
}

grpc::Status SiteServiceImpl::GetTask(grpc::ServerContext* context, const v1::GetTaskRequest* request,
                                      v1::Task* response) {
  constexpr char kRpc[] = "SiteService/GetTask";
  SiteCallLimiter::Slot slot;
  absl::StatusOr<pki::PeerIdentity> peer = Admit(*context, kRpc, Access::kApprovedSite, false, &slot);
  if (!peer.ok()) return Reply(peer.status(), kRpc, "");
  const int wait = std::clamp(request->wait_seconds(), 0, options_.task_wait_seconds);
  absl::StatusOr<v1::Task> task =
      rounds_->WaitForTask(peer->common_name, absl::Seconds(wait), [context] { return context->IsCancelled(); });
  if (!task.ok()) return Reply(task.status(), kRpc, peer->common_name);
  *response = *std::move(task);
  return grpc::Status::OK;
}

grpc::Status SiteServiceImpl::Heartbeat(grpc::ServerContext* context, const v1::HeartbeatRequest* request,
                                        v1::HeartbeatResponse* response) {
  constexpr char kRpc[] = "SiteService/Heartbeat";
  SiteCallLimiter::Slot slot;
  absl::StatusOr<pki::PeerIdentity> peer =
      Admit(*context, kRpc, Access::kApprovedSite, false, &slot, request->run_id(), request->round());
  if (!peer.ok()) return Reply(peer.status(), kRpc, "");
  absl::StatusOr<v1::HeartbeatResponse> answer = rounds_->Heartbeat(peer->common_name, *request);
  if (!answer.ok()) {
    authorizer_->Audit(*context, kRpc, *peer, answer.status(), request->run_id(), request->round());
    return Reply(answer.status(), kRpc, peer->common_name);
  }
  *response = *std::move(answer);
  return grpc::Status::OK;
}

grpc::Status SiteServiceImpl::DownloadModel(grpc::ServerContext* context, const v1::DownloadRequest* request,
                                            grpc::ServerWriter<v1::Chunk>* writer) {
  constexpr char kRpc[] = "SiteService/DownloadModel";
  SiteCallLimiter::Slot slot;
  absl::StatusOr<pki::PeerIdentity> peer = Admit(*context, kRpc, Access::kApprovedSite, true, &slot);
  if (!peer.ok()) return Reply(peer.status(), kRpc, "");
  const std::string& digest = request->digest();
  auto refuse = [&](const absl::Status& status) {
    authorizer_->Audit(*context, kRpc, *peer, status, rounds_->ActiveRunId());
    return Reply(status, kRpc, peer->common_name);
  };
  if (!io::IsSha256Hex(digest)) {
    return refuse(absl::InvalidArgumentError(
        absl::StrCat("digest '", digest.substr(0, 80), "' is not a SHA-256 (64 lowercase hex digits)")));
  }
  absl::StatusOr<std::optional<ModelVersion>> version = store_->GetModelVersion(digest);
  if (!version.ok()) return Reply(version.status(), kRpc, peer->common_name);
  if (!*version) return refuse(absl::NotFoundError(absl::StrCat("no model version ", digest)));
  absl::Status allowed = rounds_->CheckModelAccess(peer->common_name, digest);
  if (!allowed.ok()) return refuse(allowed);
  absl::StatusOr<ModelStream> stream = ModelStream::Open(*blobs_, digest, request->offset());
  if (!stream.ok()) return refuse(stream.status());
  int64_t sent = 0;
  const absl::Status result = stream->Send(
      options_.chunk_bytes, [context] { return context->IsCancelled(); },
      [writer](const v1::Chunk& chunk) { return writer->Write(chunk); }, "download", &sent);
  absl::Status counted = store_->AddTransfer(rounds_->ActiveRunId(), peer->common_name, sent, 0);
  if (!counted.ok()) LOG(WARNING) << "counting downloaded bytes: " << counted;
  return Reply(result, kRpc, peer->common_name);
}

grpc::Status SiteServiceImpl::GetUploadOffset(grpc::ServerContext* context, const v1::UploadOffsetRequest* request,
                                              v1::UploadOffsetResponse* response) {
  constexpr char kRpc[] = "SiteService/GetUploadOffset";
  SiteCallLimiter::Slot slot;
  absl::StatusOr<pki::PeerIdentity> peer =
      Admit(*context, kRpc, Access::kApprovedSite, false, &slot, request->run_id(), request->round());
  if (!peer.ok()) return Reply(peer.status(), kRpc, "");
  absl::StatusOr<UploadTarget> target =
      rounds_->PrepareUpload(peer->common_name, request->run_id(), request->round(), request->sha256());
  if (!target.ok()) {
    authorizer_->Audit(*context, kRpc, *peer, target.status(), request->run_id(), request->round());
    return Reply(target.status(), kRpc, peer->common_name);
  }
  response->set_accepted(target->accepted);
  if (!target->accepted) {
    struct stat st;
    response->set_offset(::stat(target->spool_path.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_size) : 0);
  }
  return grpc::Status::OK;
}

grpc::Status SiteServiceImpl::UploadUpdate(grpc::ServerContext* context, grpc::ServerReader<v1::UploadChunk>* reader,
                                           v1::UploadResponse* response) {
  constexpr char kRpc[] = "SiteService/UploadUpdate";
  SiteCallLimiter::Slot slot;
  absl::StatusOr<pki::PeerIdentity> peer = Admit(*context, kRpc, Access::kApprovedSite, true, &slot);
  if (!peer.ok()) return Reply(peer.status(), kRpc, "");
  UploadStream stream;
  stream.read = [reader](v1::UploadChunk* chunk) { return reader->Read(chunk); };
  stream.cancelled = [context] { return context->IsCancelled(); };
  UploadOutcome outcome = ReceiveUpload(rounds_, peer->common_name, stream);
  if (outcome.bytes_up > 0) {
    absl::Status counted = store_->AddTransfer(outcome.header.run_id(), peer->common_name, 0, outcome.bytes_up);
    if (!counted.ok()) LOG(WARNING) << "counting uploaded bytes: " << counted;
  }
  // The outcome of every upload is audited with its run and round (the authorization above could not know them).
  authorizer_->Audit(*context, kRpc, *peer, outcome.result.status(), outcome.header.run_id(), outcome.header.round());
  if (!outcome.result.ok()) return Reply(outcome.result.status(), kRpc, peer->common_name);
  *response = *std::move(outcome.result);
  return grpc::Status::OK;
}

grpc::Status SiteServiceImpl::ReportMetrics(grpc::ServerContext* context, const v1::MetricsReport* request,
                                            v1::ReportMetricsResponse* response) {
  constexpr char kRpc[] = "SiteService/ReportMetrics";
  SiteCallLimiter::Slot slot;
  absl::StatusOr<pki::PeerIdentity> peer =
      Admit(*context, kRpc, Access::kApprovedSite, false, &slot, request->run_id(), request->round());
  if (!peer.ok()) return Reply(peer.status(), kRpc, "");
  absl::Status status = rounds_->ReportMetrics(peer->common_name, *request);
  if (!status.ok()) {
    authorizer_->Audit(*context, kRpc, *peer, status, request->run_id(), request->round());
  }
  return Reply(status, kRpc, peer->common_name);
}

}  // namespace fedtune::coordinator
