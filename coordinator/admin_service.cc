#include "coordinator/admin_service.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/net/grpc_status.h"
#include "common/status_macros.h"
#include "coordinator/model_stream.h"
#include "coordinator/model_write_reactor.h"
#include "coordinator/run_views.h"

namespace fedtune::coordinator {

v1::SiteInfo ToSiteInfo(const SiteRecord& site) {
  v1::SiteInfo info;
  info.set_site_id(site.site_id);
  federation::SetStatus(site.status, &info);
  info.set_first_seen_ms(site.first_seen_ms);
  info.set_last_seen_ms(site.last_seen_ms);
  info.set_certificate_serial(site.certificate_serial);
  *info.mutable_dataset() = site.dataset;
  *info.mutable_capabilities() = site.capabilities;
  info.set_state(site.state);
  info.set_key_sha256(site.key_sha256);
  info.set_offered_key_sha256(site.offered_key_sha256);
  info.set_offered_serial(site.offered_serial);
  return info;
}

v1::SiteInfo ToSiteInfo(const SiteRecord& site, const std::map<std::string, v1::SiteFailure>& latest_failures) {
  v1::SiteInfo info = ToSiteInfo(site);
  if (auto it = latest_failures.find(site.site_id); it != latest_failures.end()) {
    *info.mutable_last_failure() = it->second;
  }
  return info;
}

AdminServiceImpl::AdminServiceImpl(Authorizer* authorizer, StateStore* store, BlobStore* blobs, RoundManager* rounds,
                                   AdminServiceOptions options)
    : authorizer_(authorizer), store_(store), blobs_(blobs), rounds_(rounds), options_(std::move(options)) {}

int64_t AdminServiceImpl::NowMs() const { return absl::ToUnixMillis(options_.clock ? options_.clock() : absl::Now()); }

grpc::ServerUnaryReactor* AdminServiceImpl::ListSites(grpc::CallbackServerContext* context,
                                                      const v1::ListSitesRequest* request,
                                                      v1::ListSitesResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(DoListSites(context, request, response));
  return reactor;
}

grpc::ServerUnaryReactor* AdminServiceImpl::ApproveSite(grpc::CallbackServerContext* context,
                                                        const v1::SiteRequest* request, v1::SiteResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(DoApproveSite(context, request, response));
  return reactor;
}

grpc::ServerUnaryReactor* AdminServiceImpl::RevokeSite(grpc::CallbackServerContext* context,
                                                       const v1::SiteRequest* request, v1::SiteResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(DoRevokeSite(context, request, response));
  return reactor;
}

grpc::ServerUnaryReactor* AdminServiceImpl::GetSite(grpc::CallbackServerContext* context,
                                                    const v1::SiteRequest* request, v1::SiteResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(DoGetSite(context, request, response));
  return reactor;
}

grpc::ServerUnaryReactor* AdminServiceImpl::StartRun(grpc::CallbackServerContext* context,
                                                     const v1::StartRunRequest* request,
                                                     v1::StartRunResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(DoStartRun(context, request, response));
  return reactor;
}

grpc::ServerUnaryReactor* AdminServiceImpl::GetRunStatus(grpc::CallbackServerContext* context,
                                                         const v1::RunStatusRequest* request, v1::RunStatus* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(DoGetRunStatus(context, request, response));
  return reactor;
}

grpc::ServerUnaryReactor* AdminServiceImpl::AbortRun(grpc::CallbackServerContext* context,
                                                     const v1::AbortRunRequest* request, v1::RunStatus* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(DoAbortRun(context, request, response));
  return reactor;
}

grpc::ServerUnaryReactor* AdminServiceImpl::GetRunReport(grpc::CallbackServerContext* context,
                                                         const v1::RunReportRequest* request, v1::RunReport* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(DoGetRunReport(context, request, response));
  return reactor;
}

grpc::Status AdminServiceImpl::DoListSites(grpc::CallbackServerContext* context, const v1::ListSitesRequest*,
                                           v1::ListSitesResponse* response) {
  absl::StatusOr<pki::PeerIdentity> peer =
      authorizer_->Authorize(*context, "AdminService/ListSites", Access::kOperator);
  if (!peer.ok()) return net::ToPeerGrpcStatus(peer.status());
  absl::StatusOr<std::vector<SiteRecord>> sites = store_->ListSites();
  if (!sites.ok()) return net::ToPeerGrpcStatus(sites.status());
  absl::StatusOr<std::map<std::string, v1::SiteFailure>> failures = store_->LatestSiteFailures(std::nullopt);
  if (!failures.ok()) return net::ToPeerGrpcStatus(failures.status());
  for (const SiteRecord& s : *sites) *response->add_sites() = ToSiteInfo(s, *failures);
  return grpc::Status::OK;
}

grpc::Status AdminServiceImpl::DoGetSite(grpc::CallbackServerContext* context, const v1::SiteRequest* request,
                                         v1::SiteResponse* response) {
  absl::StatusOr<pki::PeerIdentity> peer = authorizer_->Authorize(*context, "AdminService/GetSite", Access::kOperator);
  if (!peer.ok()) return net::ToPeerGrpcStatus(peer.status());
  if (request->site_id().empty()) return net::ToPeerGrpcStatus(absl::InvalidArgumentError("site_id: required"));
  absl::StatusOr<std::optional<SiteRecord>> site = store_->GetSite(request->site_id());
  if (!site.ok()) return net::ToPeerGrpcStatus(site.status());
  if (!site->has_value()) {
    return net::ToPeerGrpcStatus(absl::NotFoundError(absl::StrCat("unknown site '", request->site_id(), "'")));
  }
  absl::StatusOr<std::vector<v1::SiteFailure>> failures = store_->ListSiteFailures(request->site_id());
  if (!failures.ok()) return net::ToPeerGrpcStatus(failures.status());
  std::map<std::string, v1::SiteFailure> latest;
  if (!failures->empty()) latest[request->site_id()] = failures->front();
  *response->mutable_site() = ToSiteInfo(**site, latest);
  for (v1::SiteFailure& f : *failures) *response->add_failures() = std::move(f);
  return grpc::Status::OK;
}

grpc::Status AdminServiceImpl::DoApproveSite(grpc::CallbackServerContext* context, const v1::SiteRequest* request,
                                             v1::SiteResponse* response) {
  absl::StatusOr<pki::PeerIdentity> peer =
      authorizer_->Authorize(*context, "AdminService/ApproveSite", Access::kOperator);
  if (!peer.ok()) return net::ToPeerGrpcStatus(peer.status());
  if (request->site_id().empty()) return net::ToPeerGrpcStatus(absl::InvalidArgumentError("site_id: required"));
  const std::string expected = absl::AsciiStrToLower(request->expected_key_sha256());
  if (!expected.empty() &&
      (!request->replace_key() || expected.size() < 16 || expected.size() > 64 ||
       !std::all_of(expected.begin(), expected.end(), [](char c) { return absl::ascii_isxdigit(c); }))) {
    return net::ToPeerGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("expected_key_sha256: '", request->expected_key_sha256(),
                     "' must be 16 to 64 hex digits of a key sha256, and goes with replace_key")));
  }
  absl::StatusOr<SiteRecord> site =
      request->replace_key()
          ? store_->ReplaceSiteKey(request->site_id(), expected, NowMs())
          : store_->SetSiteStatus(request->site_id(), federation::SiteStatus::kApproved, true, NowMs());
  if (!site.ok()) return net::ToPeerGrpcStatus(site.status());
  if (request->replace_key()) {
    LOG(WARNING) << "operator " << peer->common_name << " approved site " << request->site_id()
                 << " and accepted its new key sha256 " << site->key_sha256;
  } else {
    LOG(INFO) << "operator " << peer->common_name << " approved site " << request->site_id();
  }
  *response->mutable_site() = ToSiteInfo(*site);
  return grpc::Status::OK;
}

grpc::Status AdminServiceImpl::DoRevokeSite(grpc::CallbackServerContext* context, const v1::SiteRequest* request,
                                            v1::SiteResponse* response) {
  absl::StatusOr<pki::PeerIdentity> peer =
      authorizer_->Authorize(*context, "AdminService/RevokeSite", Access::kOperator);
  if (!peer.ok()) return net::ToPeerGrpcStatus(peer.status());
  absl::StatusOr<SiteRecord> site =
      store_->SetSiteStatus(request->site_id(), federation::SiteStatus::kRevoked, false, NowMs());
  if (!site.ok()) return net::ToPeerGrpcStatus(site.status());
  LOG(WARNING) << "operator " << peer->common_name << " revoked site " << request->site_id()
               << (request->reason().empty() ? "" : absl::StrCat(": ", request->reason()));
  // A revoked site no longer counts for "every site reported": the open round may close now.
  absl::Status ticked = rounds_->Tick();
  if (!ticked.ok())
    LOG(WARNING) << "re-checking the open round after revoking " << request->site_id() << ": " << ticked;
  *response->mutable_site() = ToSiteInfo(*site);
  return grpc::Status::OK;
}

grpc::Status AdminServiceImpl::DoStartRun(grpc::CallbackServerContext* context, const v1::StartRunRequest* request,
                                          v1::StartRunResponse* response) {
  absl::StatusOr<pki::PeerIdentity> peer = authorizer_->Authorize(*context, "AdminService/StartRun", Access::kOperator);
  if (!peer.ok()) return net::ToPeerGrpcStatus(peer.status());
  absl::StatusOr<std::string> run_id = rounds_->StartRun(request->config());
  if (!run_id.ok()) return net::ToPeerGrpcStatus(run_id.status());
  LOG(INFO) << "operator " << peer->common_name << " started run " << *run_id;
  response->set_run_id(*run_id);
  return grpc::Status::OK;
}

grpc::Status AdminServiceImpl::DoGetRunStatus(grpc::CallbackServerContext* context, const v1::RunStatusRequest* request,
                                              v1::RunStatus* response) {
  absl::StatusOr<pki::PeerIdentity> peer =
      authorizer_->Authorize(*context, "AdminService/GetRunStatus", Access::kOperator, request->run_id());
  if (!peer.ok()) return net::ToPeerGrpcStatus(peer.status());
  absl::StatusOr<v1::RunStatus> status = rounds_->GetRunStatus(request->run_id());
  if (!status.ok()) return net::ToPeerGrpcStatus(status.status());
  *response = *std::move(status);
  return grpc::Status::OK;
}

grpc::Status AdminServiceImpl::DoAbortRun(grpc::CallbackServerContext* context, const v1::AbortRunRequest* request,
                                          v1::RunStatus* response) {
  absl::StatusOr<pki::PeerIdentity> peer =
      authorizer_->Authorize(*context, "AdminService/AbortRun", Access::kOperator, request->run_id());
  if (!peer.ok()) return net::ToPeerGrpcStatus(peer.status());
  const std::string reason = request->reason().empty()
                                 ? absl::StrCat("by operator ", peer->common_name)
                                 : absl::StrCat(request->reason(), " (operator ", peer->common_name, ")");
  absl::StatusOr<v1::RunStatus> status = rounds_->AbortRun(request->run_id(), reason);
  if (!status.ok()) return net::ToPeerGrpcStatus(status.status());
  *response = *std::move(status);
  return grpc::Status::OK;
}

grpc::ServerWriteReactor<v1::Chunk>* AdminServiceImpl::ExportModel(grpc::CallbackServerContext* context,
                                                                   const v1::ExportModelRequest* request) {
  absl::StatusOr<ModelStream> stream = OpenExport(context, request);
  if (!stream.ok()) return new FinishedWriter<v1::Chunk>(net::ToPeerGrpcStatus(stream.status()));
  return new ModelWriteReactor(*std::move(stream), options_.chunk_bytes, "export", SiteCallLimiter::Slot(),
                               [](const absl::Status& outcome, int64_t) { return net::ToPeerGrpcStatus(outcome); });
}

absl::StatusOr<ModelStream> AdminServiceImpl::OpenExport(grpc::CallbackServerContext* context,
                                                         const v1::ExportModelRequest* request) {
  ASSIGN_OR_RETURN(pki::PeerIdentity peer,
                   authorizer_->Authorize(*context, "AdminService/ExportModel", Access::kOperator));
  const std::string prefix = absl::AsciiStrToLower(request->digest());
  if (prefix.size() < 8 || prefix.size() > 64 ||
      !std::all_of(prefix.begin(), prefix.end(), [](char c) { return absl::ascii_isxdigit(c); })) {
    return absl::InvalidArgumentError(
        absl::StrCat("digest: '", request->digest(), "' is not a digest or a prefix of at least 8 hex digits"));
  }
  ASSIGN_OR_RETURN(std::vector<ModelVersion> found, store_->FindModelVersions(prefix));
  if (found.empty()) return absl::NotFoundError(absl::StrCat("no model version ", prefix));
  if (found.size() > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("digest prefix ", prefix, " matches ", found.size(), " model versions: give more digits"));
  }
  return ModelStream::Open(*blobs_, found.front().digest, request->offset());
}

grpc::Status AdminServiceImpl::DoGetRunReport(grpc::CallbackServerContext* context, const v1::RunReportRequest* request,
                                              v1::RunReport* response) {
  absl::StatusOr<pki::PeerIdentity> peer =
      authorizer_->Authorize(*context, "AdminService/GetRunReport", Access::kOperator, request->run_id());
  if (!peer.ok()) return net::ToPeerGrpcStatus(peer.status());
  absl::StatusOr<v1::RunReport> report = rounds_->GetRunReport(request->run_id());
  if (!report.ok()) return net::ToPeerGrpcStatus(report.status());
  *response = *std::move(report);
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* AdminServiceImpl::ListRuns(grpc::CallbackServerContext* context,
                                                     const v1::ListRunsRequest* request,
                                                     v1::ListRunsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(DoListRuns(context, request, response));
  return reactor;
}

grpc::Status AdminServiceImpl::DoListRuns(grpc::CallbackServerContext* context, const v1::ListRunsRequest* request,
                                          v1::ListRunsResponse* response) {
  absl::StatusOr<pki::PeerIdentity> peer = authorizer_->Authorize(*context, "AdminService/ListRuns", Access::kOperator);
  if (!peer.ok()) return net::ToPeerGrpcStatus(peer.status());
  absl::StatusOr<v1::ListRunsResponse> runs = BuildRunList(*store_, request->limit());
  if (!runs.ok()) return net::ToPeerGrpcStatus(runs.status());
  *response = *std::move(runs);
  return grpc::Status::OK;
}

}  // namespace fedtune::coordinator
