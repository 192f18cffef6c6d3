// fedtune.v1.SiteService: the calls site agents make (Hello, GetTask long-poll, Heartbeat, DownloadModel,
// GetUploadOffset, UploadUpdate, ReportMetrics). Each handler authorizes the caller (authorizer.h), takes a place
// among the site's concurrent calls (SiteCallLimiter: RESOURCE_EXHAUSTED naming the site and the limit, audited),
// unpacks the request, calls RoundManager / StateStore and converts the status once.
//
// gRPC API: the synchronous service (grpc::Service) on the server's thread pool, chosen over the callback API to
// keep the streaming handlers (resumable upload into a spool file, chunked download) straight-line code. A call
// holds one thread (a GetTask long-poll for at most task_wait_seconds): the per-site limits and the server's thread
// quota (CoordinatorConfig.max_server_threads) keep their number bounded.
//
// Upload protocol: see upload_receiver.h. One stream per spool file at a time (ABORTED for a second one).
// Downloads: a site gets only the models of runs it takes part in (RoundManager::CheckModelAccess).
//
// Messages to sites name runs, rounds, sites and fields, never a path on the coordinator (net::ToPeerGrpcStatus;
// the full status is logged).
//
// Thread safety: thread-safe.
#ifndef FEDTUNE_COORDINATOR_SITE_SERVICE_H_
#define FEDTUNE_COORDINATOR_SITE_SERVICE_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/authorizer.h"
#include "coordinator/blob_store.h"
#include "coordinator/round_manager.h"
#include "coordinator/site_call_limiter.h"
#include "coordinator/state_store.h"
#include "fedtune/v1/federation.grpc.pb.h"

namespace fedtune::coordinator {

struct SiteServiceOptions {
  int chunk_bytes = 1 << 20;          // Download chunk size and the chunk size announced in Hello.
  int task_wait_seconds = 20;         // Cap of GetTask's long-poll.
  int heartbeat_seconds = 10;         // Announced in Hello.
  bool auto_approve = false;          // Approve an unknown site on its first Hello.
  SiteCallLimits call_limits;         // Concurrent calls / streams per site (defaults: 8 / 2).
  std::function<absl::Time()> clock;  // Default absl::Now.
};

class SiteServiceImpl final : public v1::SiteService::Service {
 public:
  // The pointers must outlive the service.
  SiteServiceImpl(Authorizer* authorizer, StateStore* store, BlobStore* blobs, RoundManager* rounds,
                  SiteServiceOptions options);

  grpc::Status Hello(grpc::ServerContext* context, const v1::HelloRequest* request,
                     v1::HelloResponse* response) override;
  grpc::Status GetTask(grpc::ServerContext* context, const v1::GetTaskRequest* request, v1::Task* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* context, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override;
  grpc::Status DownloadModel(grpc::ServerContext* context, const v1::DownloadRequest* request,
                             grpc::ServerWriter<v1::Chunk>* writer) override;
  grpc::Status GetUploadOffset(grpc::ServerContext* context, const v1::UploadOffsetRequest* request,
                               v1::UploadOffsetResponse* response) override;
  grpc::Status UploadUpdate(grpc::ServerContext* context, grpc::ServerReader<v1::UploadChunk>* reader,
                            v1::UploadResponse* response) override;
  grpc::Status ReportMetrics(grpc::ServerContext* context, const v1::MetricsReport* request,
                             v1::ReportMetricsResponse* response) override;

  // The per-site call limits in force (tests, diagnostics).
  SiteCallLimiter& call_limiter() { return limiter_; }

 private:
  int64_t NowMs() const;
  // Authorizes the caller of `rpc` and takes its place among its site's calls (`stream`: a streaming call); the
  // refusal (audited) otherwise.
  absl::StatusOr<pki::PeerIdentity> Admit(const grpc::ServerContext& context, const char* rpc, Access access,
                                          bool stream, SiteCallLimiter::Slot* slot, const std::string& run_id = "",
                                          int round = 0);
  // The status for the site: net::ToPeerGrpcStatus, logging the full status when a path was removed.
  static grpc::Status Reply(const absl::Status& status, const char* rpc, const std::string& site_id);

  Authorizer* const authorizer_;
  StateStore* const store_;
  BlobStore* const blobs_;
  RoundManager* const rounds_;
  const SiteServiceOptions options_;
  SiteCallLimiter limiter_;
};

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_SITE_SERVICE_H_
