// fedtune.v1.SiteService: the calls site agents make (Hello, GetTask long-poll, Heartbeat, DownloadModel,
// GetUploadOffset, UploadUpdate, ReportMetrics). Each handler authorizes the caller (authorizer.h), unpacks the
// request, calls RoundManager / StateStore and converts the status once.
//
// gRPC API: the synchronous service (grpc::Service) on the server's thread pool, chosen over the callback API to
// keep the streaming handlers (resumable upload into a spool file, chunked download) straight-line code. A GetTask
// long-poll holds one thread for at most task_wait_seconds.
//
// Upload protocol (see federation.proto): the first message is the UploadHeader; data from header.offset is
// appended to the spool file (RoundManager::PrepareUpload's path), whose bytes are fsynced when the stream ends,
// broken or not, so that GetUploadOffset returns them. When total_bytes are in, RoundManager::AcceptUpload checks,
// decodes, validates and aggregates. One stream per spool file at a time (ABORTED for a second one).
//
// Thread safety: thread-safe.
#ifndef FEDTUNE_COORDINATOR_SITE_SERVICE_H_
#define FEDTUNE_COORDINATOR_SITE_SERVICE_H_

#include <cstdint>
#include <functional>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/authorizer.h"
#include "coordinator/blob_store.h"
#include "coordinator/round_manager.h"
#include "coordinator/state_store.h"
#include "fedtune/v1/federation.grpc.pb.h"

namespace fedtune::coordinator {

struct SiteServiceOptions {
  int chunk_bytes = 1 << 20;   // Download chunk size and the chunk size announced in Hello.
  int task_wait_seconds = 20;  // Cap of GetTask's long-poll.
  int heartbeat_seconds = 10;  // Announced in Hello.
  int64_t max_upload_bytes = int64_t{2} << 30;
  bool auto_approve = false;          // Approve an unknown site on its first Hello.
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

 private:
  int64_t NowMs() const;
  absl::StatusOr<v1::UploadResponse> Upload(grpc::ServerContext* context, grpc::ServerReader<v1::UploadChunk>* reader,
                                            const pki::PeerIdentity& peer, v1::UploadHeader* header);
  absl::Status ReceiveInto(const std::string& path, const v1::UploadHeader& header,
                           grpc::ServerReader<v1::UploadChunk>* reader, int64_t* received, int64_t* bytes_up);

  Authorizer* const authorizer_;
  StateStore* const store_;
  BlobStore* const blobs_;
  RoundManager* const rounds_;
  const SiteServiceOptions options_;

  absl::Mutex mu_;
  std::set<std::string> receiving_ ABSL_GUARDED_BY(mu_);  // Spool files with a stream in progress.
};

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_SITE_SERVICE_H_
