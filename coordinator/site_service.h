// fedtune.v1.SiteService: the calls site agents make (Hello, GetTask long-poll, Heartbeat, DownloadModel,
// GetUploadOffset, UploadUpdate, ReportMetrics, DeclineTask, ReportFailure, and secure aggregation's SecAgg* calls).
// Each handler authorizes the caller (authorizer.h), takes a place among the site's concurrent calls (SiteCallLimiter:
// RESOURCE_EXHAUSTED naming the site and the limit, audited), unpacks the request, calls RoundManager / StateStore and
// converts the status once.
//
// gRPC API: the callback API (CallbackService), so that no call holds a thread while it waits:
//  - unary calls (Hello, Heartbeat, GetUploadOffset, ReportMetrics) run to completion on gRPC's callback thread
//    (a few database statements each);
//  - a GetTask long-poll is handed to TaskWaiters (task_waiters.h): one thread answers every waiting call;
//  - DownloadModel is a ModelWriteReactor (model_write_reactor.h): one chunk in flight, the next read when the
//    previous write completed;
//  - UploadUpdate is a read reactor feeding an UploadSession (upload_receiver.h) chunk by chunk as gRPC delivers
//    them; the decode of a complete payload (decode, validate, aggregate: a model's worth of work) runs on a
//    WorkerPool of max_concurrent_decodes threads (worker_pool.h), never on gRPC's threads.
// The per-site limits (SiteCallLimiter) bound what one site may hold; the server's ResourceQuota bounds gRPC's
// buffers (coordinator_server.h).
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
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/authorizer.h"
#include "coordinator/blob_store.h"
#include "coordinator/round_manager.h"
#include "coordinator/site_call_limiter.h"
#include "coordinator/state_store.h"
#include "coordinator/task_waiters.h"
#include "coordinator/worker_pool.h"
#include "fedtune/v1/federation.grpc.pb.h"

namespace fedtune::coordinator {

class CoordinatorMetrics;

struct SiteServiceOptions {
  int chunk_bytes = 1 << 20;          // Download chunk size and the chunk size announced in Hello.
  int task_wait_seconds = 20;         // Cap of GetTask's long-poll.
  int heartbeat_seconds = 10;         // Announced in Hello.
  bool auto_approve = false;          // Approve an unknown site on its first Hello.
  SiteCallLimits call_limits;         // Concurrent calls / streams per site (defaults: 8 / 2).
  int max_concurrent_decodes = 1;     // Uploads decoded at once (WorkerPool threads), at least 1.
  std::function<absl::Time()> clock;  // Default absl::Now.
  // Where bytes, resumed uploads and failure reports are counted (coordinator_metrics.h; must outlive the service).
  // Default nullptr: not counted.
  CoordinatorMetrics* metrics = nullptr;
};

class SiteServiceImpl final : public v1::SiteService::CallbackService {
 public:
  // The pointers must outlive the service. Installs the long-poll answering as `rounds`' task listener (removed by
  // the destructor).
  SiteServiceImpl(Authorizer* authorizer, StateStore* store, BlobStore* blobs, RoundManager* rounds,
                  SiteServiceOptions options);
  ~SiteServiceImpl() override;

  grpc::ServerUnaryReactor* Hello(grpc::CallbackServerContext* context, const v1::HelloRequest* request,
                                  v1::HelloResponse* response) override;
  grpc::ServerUnaryReactor* GetTask(grpc::CallbackServerContext* context, const v1::GetTaskRequest* request,
                                    v1::Task* response) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* context, const v1::HeartbeatRequest* request,
                                      v1::HeartbeatResponse* response) override;
  grpc::ServerWriteReactor<v1::Chunk>* DownloadModel(grpc::CallbackServerContext* context,
                                                     const v1::DownloadRequest* request) override;
  grpc::ServerUnaryReactor* GetUploadOffset(grpc::CallbackServerContext* context,
                                            const v1::UploadOffsetRequest* request,
                                            v1::UploadOffsetResponse* response) override;
  grpc::ServerReadReactor<v1::UploadChunk>* UploadUpdate(grpc::CallbackServerContext* context,
                                                         v1::UploadResponse* response) override;
  grpc::ServerUnaryReactor* ReportMetrics(grpc::CallbackServerContext* context, const v1::MetricsReport* request,
                                          v1::ReportMetricsResponse* response) override;
  // RoundManager::DeclineTask for the authenticated site.
  grpc::ServerUnaryReactor* DeclineTask(grpc::CallbackServerContext* context, const v1::DeclineRequest* request,
                                        v1::DeclineResponse* response) override;
  // A failure report of the authenticated site (the peer certificate's CN, never a request field), stored with the
  // site (StateStore::InsertSiteFailure: the latest kMaxFailuresPerSite are kept) and logged as one WARNING line
  // (the site's text escaped). Refused, audited, with:
  //  - INVALID_ARGUMENT naming the field: run_id over 128 bytes, round or attempt negative, task_kind or stage not a
  //    known value (stage UNSPECIFIED included: "other" is the stage of anything else), error_class over 64 bytes,
  //    status_code not a failure's code (1 to 16), message over 2048 bytes, more than 20 log lines or one over 512
  //    bytes;
  //  - a run_id that is not empty must name a run the site takes part in (one of its selected sites, whatever the
  //    run's state: a report may arrive after the run ended): NOT_FOUND for an unknown run, PERMISSION_DENIED for a
  //    run that did not select the site. A site can thus only write to its own history and to the views of its own
  //    runs. A report with no run_id (a failure not tied to a task) is stored with the site only.
  // Sending a report again stores it again (no harm: the views show the latest; "idempotent in effect").
  grpc::ServerUnaryReactor* ReportFailure(grpc::CallbackServerContext* context, const v1::FailureReport* request,
                                          v1::ReportFailureResponse* response) override;
  // Secure aggregation (RoundManager::SecAgg*). AdvertiseKeys passes the certificate the site authenticated with
  // (the AuthContext's "x509_pem_cert"). The Get* calls long-poll like GetTask: wait_seconds capped at
  // task_wait_seconds, answered as soon as the phase ended (ready = true), with ready = false at the end of the wait,
  // on cancellation and at shutdown; they hold no thread while they wait (TaskWaiters).
  grpc::ServerUnaryReactor* SecAggAdvertiseKeys(grpc::CallbackServerContext* context, const v1::SecAggKeys* request,
                                                v1::SecAggAck* response) override;
  grpc::ServerUnaryReactor* SecAggGetRoster(grpc::CallbackServerContext* context, const v1::SecAggPhaseRequest* request,
                                            v1::SecAggRoster* response) override;
  grpc::ServerUnaryReactor* SecAggShareKeys(grpc::CallbackServerContext* context, const v1::SecAggShareUpload* request,
                                            v1::SecAggAck* response) override;
  grpc::ServerUnaryReactor* SecAggGetInbox(grpc::CallbackServerContext* context, const v1::SecAggPhaseRequest* request,
                                           v1::SecAggInbox* response) override;
  grpc::ServerUnaryReactor* SecAggGetUnmaskRequest(grpc::CallbackServerContext* context,
                                                   const v1::SecAggPhaseRequest* request,
                                                   v1::SecAggUnmaskRequest* response) override;
  grpc::ServerUnaryReactor* SecAggRevealShares(grpc::CallbackServerContext* context, const v1::SecAggReveal* request,
                                               v1::SecAggAck* response) override;

  // Answers every waiting GetTask (with the task now) and stops taking long-polls: later ones are answered at once.
  // Call before the server shuts down (grpc::Server::Shutdown waits for every call to be answered).
  void EndLongPolls();
  // Runs the queued decodes and stops the decode workers; later decodes run on the caller's thread. Call after the
  // server shut down. Idempotent.
  void StopDecoders();

  // The per-site call limits in force (tests, diagnostics).
  SiteCallLimiter& call_limiter() { return limiter_; }
  // GetTask calls waiting now (tests, diagnostics).
  int waiting_long_polls() { return waiters_.waiting(); }

 private:
  class UploadReactor;

  int64_t NowMs() const;
  // Authorizes the caller of `rpc` and takes its place among its site's calls (`stream`: a streaming call); the
  // refusal (audited) otherwise.
  absl::StatusOr<pki::PeerIdentity> Admit(const grpc::ServerContextBase& context, const char* rpc, Access access,
                                          bool stream, SiteCallLimiter::Slot* slot, const std::string& run_id = "",
                                          int round = 0);
  // The status for the site: net::ToPeerGrpcStatus, logging the full status when a path was removed.
  static grpc::Status Reply(const absl::Status& status, const char* rpc, const std::string& site_id);

  // The unary calls' work, answered by the reactors above.
  grpc::Status DoHello(grpc::CallbackServerContext* context, const v1::HelloRequest* request,
                       v1::HelloResponse* response);
  grpc::Status DoHeartbeat(grpc::CallbackServerContext* context, const v1::HeartbeatRequest* request,
                           v1::HeartbeatResponse* response);
  grpc::Status DoGetUploadOffset(grpc::CallbackServerContext* context, const v1::UploadOffsetRequest* request,
                                 v1::UploadOffsetResponse* response);
  grpc::Status DoReportMetrics(grpc::CallbackServerContext* context, const v1::MetricsReport* request);
  // ReportFailure's work for the admitted site: the checks above, the store, the log line.
  absl::Status RecordFailure(const std::string& site_id, const v1::FailureReport& report);
  // A unary call of an approved site about (run_id, round): admits it, runs `work` for the site, audits a refusal.
  grpc::Status DoSiteCall(grpc::CallbackServerContext* context, const char* rpc, const std::string& run_id, int round,
                          const std::function<absl::Status(const pki::PeerIdentity& peer)>& work);
  // A secure aggregation phase long-poll: `get` (a RoundManager::SecAggGet* call for the site) answers it once its
  // result is ready, or not ready at the end of the wait.
  template <typename Response>
  grpc::ServerUnaryReactor* PhaseLongPoll(
      grpc::CallbackServerContext* context, const char* rpc, const v1::SecAggPhaseRequest* request, Response* response,
      std::function<absl::StatusOr<Response>(const std::string& site_id, const v1::SecAggPhaseRequest& request)> get);

  Authorizer* const authorizer_;
  StateStore* const store_;
  BlobStore* const blobs_;
  RoundManager* const rounds_;
  const SiteServiceOptions options_;
  SiteCallLimiter limiter_;
  TaskWaiters waiters_;
  WorkerPool decoders_;
};

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_SITE_SERVICE_H_
