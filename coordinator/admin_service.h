// fedtune.v1.AdminService: the operator CLI's calls (operator certificates only): site registry, runs, status,
// model export and the run report. gRPC's callback API: unary calls run to completion on gRPC's callback
// thread; ExportModel is a ModelWriteReactor (one chunk in flight, no thread held). Replies carry no server
// paths (net::ToPeerGrpcStatus; the coordinator's log has them).
//
// Thread safety: thread-safe.
#ifndef FEDTUNE_COORDINATOR_ADMIN_SERVICE_H_
#define FEDTUNE_COORDINATOR_ADMIN_SERVICE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "absl/time/time.h"
#include "coordinator/authorizer.h"
#include "coordinator/blob_store.h"
#include "coordinator/model_stream.h"
#include "coordinator/round_manager.h"
#include "coordinator/state_store.h"
#include "fedtune/v1/federation.grpc.pb.h"

namespace fedtune::coordinator {

struct AdminServiceOptions {
  int chunk_bytes = 1 << 20;          // ExportModel chunk size.
  std::function<absl::Time()> clock;  // Default absl::Now.
};

// Fills a SiteInfo from the registry.
v1::SiteInfo ToSiteInfo(const SiteRecord& site);
// The same with the site's latest failure report (SiteInfo.last_failure) from `latest_failures`
// (StateStore::LatestSiteFailures(std::nullopt)); left unset when the site is not in the map.
v1::SiteInfo ToSiteInfo(const SiteRecord& site, const std::map<std::string, v1::SiteFailure>& latest_failures);

class AdminServiceImpl final : public v1::AdminService::CallbackService {
 public:
  // The pointers must outlive the service.
  AdminServiceImpl(Authorizer* authorizer, StateStore* store, BlobStore* blobs, RoundManager* rounds,
                   AdminServiceOptions options);

  // All sites, by id, each with its latest failure report.
  grpc::ServerUnaryReactor* ListSites(grpc::CallbackServerContext* context, const v1::ListSitesRequest* request,
                                      v1::ListSitesResponse* response) override;
  // Approves a site (creating the entry when the site has not said Hello yet, so it can be pre-approved). With
  // request.replace_key, also accepts the key the site offered as its pinned key (StateStore::ReplaceSiteKey:
  // NOT_FOUND for an unknown site, FAILED_PRECONDITION when it offered none or not request.expected_key_sha256;
  // INVALID_ARGUMENT for a malformed expected_key_sha256).
  grpc::ServerUnaryReactor* ApproveSite(grpc::CallbackServerContext* context, const v1::SiteRequest* request,
                                        v1::SiteResponse* response) override;
  // Revokes a site: refused from its next call. NOT_FOUND for an unknown site.
  grpc::ServerUnaryReactor* RevokeSite(grpc::CallbackServerContext* context, const v1::SiteRequest* request,
                                       v1::SiteResponse* response) override;
  // One site (ListSites' SiteInfo) with its stored failure reports, most recent first (SiteResponse.failures).
  // INVALID_ARGUMENT for an empty site_id, NOT_FOUND for an unknown site.
  grpc::ServerUnaryReactor* GetSite(grpc::CallbackServerContext* context, const v1::SiteRequest* request,
                                    v1::SiteResponse* response) override;
  grpc::ServerUnaryReactor* StartRun(grpc::CallbackServerContext* context, const v1::StartRunRequest* request,
                                     v1::StartRunResponse* response) override;
  grpc::ServerUnaryReactor* GetRunStatus(grpc::CallbackServerContext* context, const v1::RunStatusRequest* request,
                                         v1::RunStatus* response) override;
  grpc::ServerUnaryReactor* AbortRun(grpc::CallbackServerContext* context, const v1::AbortRunRequest* request,
                                     v1::RunStatus* response) override;
  // Streams a model version's file from request.offset; digest or a unique prefix of >= 8 hex digits
  // (INVALID_ARGUMENT for a shorter or ambiguous prefix, NOT_FOUND for none).
  grpc::ServerWriteReactor<v1::Chunk>* ExportModel(grpc::CallbackServerContext* context,
                                                   const v1::ExportModelRequest* request) override;
  grpc::ServerUnaryReactor* GetRunReport(grpc::CallbackServerContext* context, const v1::RunReportRequest* request,
                                         v1::RunReport* response) override;
  // The most recent runs, newest first, without rounds and sites (BuildRunList: request.limit 0 means 100, at most
  // 1000; INVALID_ARGUMENT when negative).
  grpc::ServerUnaryReactor* ListRuns(grpc::CallbackServerContext* context, const v1::ListRunsRequest* request,
                                     v1::ListRunsResponse* response) override;

 private:
  int64_t NowMs() const;

  // The unary calls' work, answered by the reactors above.
  grpc::Status DoListSites(grpc::CallbackServerContext* context, const v1::ListSitesRequest* request,
                           v1::ListSitesResponse* response);
  grpc::Status DoApproveSite(grpc::CallbackServerContext* context, const v1::SiteRequest* request,
                             v1::SiteResponse* response);
  grpc::Status DoRevokeSite(grpc::CallbackServerContext* context, const v1::SiteRequest* request,
                            v1::SiteResponse* response);
  grpc::Status DoGetSite(grpc::CallbackServerContext* context, const v1::SiteRequest* request,
                         v1::SiteResponse* response);
  grpc::Status DoStartRun(grpc::CallbackServerContext* context, const v1::StartRunRequest* request,
                          v1::StartRunResponse* response);
  grpc::Status DoGetRunStatus(grpc::CallbackServerContext* context, const v1::RunStatusRequest* request,
                              v1::RunStatus* response);
  grpc::Status DoAbortRun(grpc::CallbackServerContext* context, const v1::AbortRunRequest* request,
                          v1::RunStatus* response);
  grpc::Status DoGetRunReport(grpc::CallbackServerContext* context, const v1::RunReportRequest* request,
                              v1::RunReport* response);
  grpc::Status DoListRuns(grpc::CallbackServerContext* context, const v1::ListRunsRequest* request,
                          v1::ListRunsResponse* response);
  // ExportModel's checks (operator, digest prefix) and its stream.
  absl::StatusOr<ModelStream> OpenExport(grpc::CallbackServerContext* context, const v1::ExportModelRequest* request);

  Authorizer* const authorizer_;
  StateStore* const store_;
  BlobStore* const blobs_;
  RoundManager* const rounds_;
  const AdminServiceOptions options_;
};

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_ADMIN_SERVICE_H_
