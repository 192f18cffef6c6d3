#include "coordinator/site_service.h"

#include <sys/stat.h>

#include <algorithm>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/federation/failure_stage.h"
#include "common/io/sha256.h"
#include "common/logging.h"
#include "common/net/grpc_status.h"
#include "common/net/tls.h"
#include "common/status_macros.h"
#include "coordinator/coordinator_metrics.h"
#include "coordinator/model_stream.h"
#include "coordinator/model_write_reactor.h"
#include "coordinator/upload_receiver.h"

namespace fedtune::coordinator {

using federation::SiteStatus;
namespace {

constexpr char kCoordinatorVersion[] = "fedtune-coordinator 0.1.0";

// A unary call answered with `status` (the response filled before).
grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context, const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

// FailureReport's bounds (federation.proto; site_service.h).
constexpr size_t kMaxFailureRunIdBytes = 128;
constexpr size_t kMaxFailureClassBytes = 64;
constexpr size_t kMaxFailureMessageBytes = 2048;
constexpr int kMaxFailureLogLines = 20;
constexpr size_t kMaxFailureLogLineBytes = 512;

absl::Status TooLong(absl::string_view field, size_t bytes, size_t limit) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", bytes, " bytes, above the limit of ", limit));
}

// The report's fields within their bounds; InvalidArgument naming the first field that is not.
absl::Status CheckFailureReport(const v1::FailureReport& r) {
  if (r.run_id().size() > kMaxFailureRunIdBytes) return TooLong("run_id", r.run_id().size(), kMaxFailureRunIdBytes);
  if (r.round() < 0) return absl::InvalidArgumentError(absl::StrCat("round: ", r.round(), " is negative"));
  if (r.attempt() < 0) return absl::InvalidArgumentError(absl::StrCat("attempt: ", r.attempt(), " is negative"));
  if (!v1::Task::Kind_IsValid(r.task_kind())) {
    return absl::InvalidArgumentError(absl::StrCat("task_kind: ", r.task_kind(), " is not a task kind"));
  }
  if (!federation::IsReportableFailureStage(r.stage())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stage: ", r.stage(), " is not a failure stage (download, training, evaluation, upload or other)"));
  }
  if (r.error_class().size() > kMaxFailureClassBytes) {
    return TooLong("error_class", r.error_class().size(), kMaxFailureClassBytes);
  }
  if (r.status_code() < 1 || r.status_code() > 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("status_code: ", r.status_code(), " is not the code of a failure (1 to 16)"));
  }
  if (r.message().size() > kMaxFailureMessageBytes) {
    return TooLong("message", r.message().size(), kMaxFailureMessageBytes);
  }
  if (r.log_lines_size() > kMaxFailureLogLines) {
    return absl::InvalidArgumentError(
        absl::StrCat("log_lines: ", r.log_lines_size(), " lines, above the limit of ", kMaxFailureLogLines));
  }
  for (int i = 0; i < r.log_lines_size(); ++i) {
    if (r.log_lines(i).size() > kMaxFailureLogLineBytes) {
      return TooLong(absl::StrCat("log_lines[", i, "]"), r.log_lines(i).size(), kMaxFailureLogLineBytes);
    }
  }
  return absl::OkStatus();
}

}  // namespace

SiteServiceImpl::SiteServiceImpl(Authorizer* authorizer, StateStore* store, BlobStore* blobs, RoundManager* rounds,
                                 SiteServiceOptions options)
    : authorizer_(authorizer),
      store_(store),
      blobs_(blobs),
      rounds_(rounds),
      options_(std::move(options)),
      limiter_(options_.call_limits),
      waiters_(rounds),
      decoders_(options_.max_concurrent_decodes) {
  rounds_->SetTaskListener([this] { waiters_.Notify(); });
}

SiteServiceImpl::~SiteServiceImpl() {
  rounds_->SetTaskListener(nullptr);
  EndLongPolls();
  StopDecoders();
}

void SiteServiceImpl::EndLongPolls() { waiters_.Shutdown(); }

void SiteServiceImpl::StopDecoders() { decoders_.Shutdown(); }

int64_t SiteServiceImpl::NowMs() const { return absl::ToUnixMillis(options_.clock ? options_.clock() : absl::Now()); }

absl::StatusOr<pki::PeerIdentity> SiteServiceImpl::Admit(const grpc::ServerContextBase& context, const char* rpc,
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

grpc::ServerUnaryReactor* SiteServiceImpl::Hello(grpc::CallbackServerContext* context, const v1::HelloRequest* request,
                                                 v1::HelloResponse* response) {
  return Answer(context, DoHello(context, request, response));
}

grpc::Status SiteServiceImpl::DoHello(grpc::CallbackServerContext* context, const v1::HelloRequest* request,
                                      v1::HelloResponse* response) {
  constexpr char kRpc[] = "SiteService/Hello";
  SiteCallLimiter::Slot slot;
  absl::StatusOr<pki::PeerIdentity> peer = Admit(*context, kRpc, Access::kSiteHello, false, &slot);
  if (!peer.ok()) return Reply(peer.status(), kRpc, "");
  const ScopedLogContext log_context(peer->common_name, "", 0);  // The call's log lines name the site.
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

grpc::ServerUnaryReactor* SiteServiceImpl::GetTask(grpc::CallbackServerContext* context,
                                                   const v1::GetTaskRequest* request, v1::Task* response) {
  constexpr char kRpc[] = "SiteService/GetTask";
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  SiteCallLimiter::Slot slot;
  absl::StatusOr<pki::PeerIdentity> peer = Admit(*context, kRpc, Access::kApprovedSite, false, &slot);
  if (!peer.ok()) {
    reactor->Finish(Reply(peer.status(), kRpc, ""));
    return reactor;
  }
  const ScopedLogContext log_context(peer->common_name, "", 0);
  // The slot stays taken until the call is answered: a long-poll counts among the site's calls.
  auto held = std::make_shared<SiteCallLimiter::Slot>(std::move(slot));
  auto answer = [reactor, response, held, site = peer->common_name](absl::StatusOr<v1::Task> task) {
    const ScopedLogContext log_context(site, "", 0);  // Also when the waiters' thread answers.
    *held = SiteCallLimiter::Slot();  // Free before the site sees the answer: its next call must not find it counted.
    if (!task.ok()) {
      reactor->Finish(Reply(task.status(), "SiteService/GetTask", site));
      return;
    }
    *response = *std::move(task);
    reactor->Finish(grpc::Status::OK);
  };
  const int wait = std::clamp(request->wait_seconds(), 0, options_.task_wait_seconds);
  if (wait == 0) {
    answer(rounds_->NextTask(peer->common_name));
    return reactor;
  }
  TaskWaiters::Waiter waiter;
  waiter.site_id = peer->common_name;
  waiter.deadline = absl::Now() + absl::Seconds(wait);
  waiter.cancelled = [context] { return context->IsCancelled(); };
  waiter.answer = std::move(answer);
  waiters_.Add(std::move(waiter));
  return reactor;
}

grpc::ServerUnaryReactor* SiteServiceImpl::Heartbeat(grpc::CallbackServerContext* context,
                                                     const v1::HeartbeatRequest* request,
                                                     v1::HeartbeatResponse* response) {
  return Answer(context, DoHeartbeat(context, request, response));
}

grpc::Status SiteServiceImpl::DoHeartbeat(grpc::CallbackServerContext* context, const v1::HeartbeatRequest* request,
                                          v1::HeartbeatResponse* response) {
  constexpr char kRpc[] = "SiteService/Heartbeat";
  SiteCallLimiter::Slot slot;
  absl::StatusOr<pki::PeerIdentity> peer =
      Admit(*context, kRpc, Access::kApprovedSite, false, &slot, request->run_id(), request->round());
  if (!peer.ok()) return Reply(peer.status(), kRpc, "");
  const ScopedLogContext log_context(peer->common_name, request->run_id(), request->round());
  absl::StatusOr<v1::HeartbeatResponse> answer = rounds_->Heartbeat(peer->common_name, *request);
  if (!answer.ok()) {
    authorizer_->Audit(*context, kRpc, *peer, answer.status(), request->run_id(), request->round());
    return Reply(answer.status(), kRpc, peer->common_name);
  }
  *response = *std::move(answer);
  return grpc::Status::OK;
}

grpc::ServerWriteReactor<v1::Chunk>* SiteServiceImpl::DownloadModel(grpc::CallbackServerContext* context,
                                                                    const v1::DownloadRequest* request) {
  constexpr char kRpc[] = "SiteService/DownloadModel";
  SiteCallLimiter::Slot slot;
  absl::StatusOr<pki::PeerIdentity> peer = Admit(*context, kRpc, Access::kApprovedSite, true, &slot);
  if (!peer.ok()) return new FinishedWriter<v1::Chunk>(Reply(peer.status(), kRpc, ""));
  const ScopedLogContext log_context(peer->common_name, "", 0);
  const std::string& digest = request->digest();
  auto refuse = [&](const absl::Status& status) {
    authorizer_->Audit(*context, kRpc, *peer, status, rounds_->ActiveRunId());
    return new FinishedWriter<v1::Chunk>(Reply(status, kRpc, peer->common_name));
  };
  if (!io::IsSha256Hex(digest)) {
    return refuse(absl::InvalidArgumentError(
        absl::StrCat("digest '", digest.substr(0, 80), "' is not a SHA-256 (64 lowercase hex digits)")));
  }
  absl::StatusOr<std::optional<ModelVersion>> version = store_->GetModelVersion(digest);
  if (!version.ok()) return new FinishedWriter<v1::Chunk>(Reply(version.status(), kRpc, peer->common_name));
  if (!*version) return refuse(absl::NotFoundError(absl::StrCat("no model version ", digest)));
  absl::Status allowed = rounds_->CheckModelAccess(peer->common_name, digest);
  if (!allowed.ok()) return refuse(allowed);
  absl::StatusOr<ModelStream> stream = ModelStream::Open(*blobs_, digest, request->offset());
  if (!stream.ok()) return refuse(stream.status());
  auto on_end = [this, site = peer->common_name](const absl::Status& outcome, int64_t sent) {
    const ScopedLogContext log_context(site, "", 0);
    absl::Status counted = store_->AddTransfer(rounds_->ActiveRunId(), site, sent, 0);
    if (!counted.ok()) LOG(WARNING) << "counting downloaded bytes: " << counted;
    if (options_.metrics != nullptr) options_.metrics->SiteSentBytes(site, sent);
    return Reply(outcome, "SiteService/DownloadModel", site);
  };
  return new ModelWriteReactor(*std::move(stream), options_.chunk_bytes, "download", std::move(slot),
                               std::move(on_end));
}

grpc::ServerUnaryReactor* SiteServiceImpl::GetUploadOffset(grpc::CallbackServerContext* context,
                                                           const v1::UploadOffsetRequest* request,
                                                           v1::UploadOffsetResponse* response) {
  return Answer(context, DoGetUploadOffset(context, request, response));
}

grpc::Status SiteServiceImpl::DoGetUploadOffset(grpc::CallbackServerContext* context,
                                                const v1::UploadOffsetRequest* request,
                                                v1::UploadOffsetResponse* response) {
  constexpr char kRpc[] = "SiteService/GetUploadOffset";
  SiteCallLimiter::Slot slot;
  absl::StatusOr<pki::PeerIdentity> peer =
      Admit(*context, kRpc, Access::kApprovedSite, false, &slot, request->run_id(), request->round());
  if (!peer.ok()) return Reply(peer.status(), kRpc, "");
  const ScopedLogContext log_context(peer->common_name, request->run_id(), request->round());
  absl::StatusOr<UploadTarget> target =
      request->kind() == v1::UPLOAD_KIND_ADAPTED_MODEL
          ? rounds_->PrepareSharedModelUpload(peer->common_name, request->run_id(), request->round(), request->sha256())
          : rounds_->PrepareUpload(peer->common_name, request->run_id(), request->round(), request->sha256());
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

// An UploadUpdate stream: each message is handed to the UploadSession as gRPC delivers it (one read in flight);
// a complete payload is decoded on the decode workers, and the call answered from there.
class SiteServiceImpl::UploadReactor final : public grpc::ServerReadReactor<v1::UploadChunk> {
 public:
  UploadReactor(SiteServiceImpl* service, grpc::CallbackServerContext* context, v1::UploadResponse* response,
                pki::PeerIdentity peer, SiteCallLimiter::Slot slot)
      : service_(service),
        context_(context),
        response_(response),
        peer_(std::move(peer)),
        slot_(std::move(slot)),
        session_(service->rounds_, peer_.common_name) {
    StartRead(&chunk_);
  }

  void OnReadDone(bool ok) override {
    const ScopedLogContext log_context(peer_.common_name, "", 0);
    if (ok && session_.Take(chunk_)) {
      StartRead(&chunk_);
      return;
    }
    // The stream ended (half-close, cancellation, broken connection) or the session wants no more.
    session_.End(!ok && context_->IsCancelled());
    if (session_.NeedsDecode()) {
      service_->decoders_.Submit([this] {
        const ScopedLogContext log_context(peer_.common_name, "", 0);
        Complete(session_.Conclude());
      });
    } else {
      Complete(session_.Conclude());
    }
  }

  void OnDone() override { delete this; }

 private:
  void Complete(UploadOutcome outcome) {
    constexpr char kRpc[] = "SiteService/UploadUpdate";
    const ScopedLogContext log_context(peer_.common_name, outcome.header.run_id(), outcome.header.round());
    if (outcome.bytes_up > 0) {
      absl::Status counted =
          service_->store_->AddTransfer(outcome.header.run_id(), peer_.common_name, 0, outcome.bytes_up);
      if (!counted.ok()) LOG(WARNING) << "counting uploaded bytes: " << counted;
    }
    if (CoordinatorMetrics* metrics = service_->options_.metrics; metrics != nullptr) {
      metrics->SiteReceivedBytes(peer_.common_name, outcome.bytes_up);
      if (outcome.header.offset() > 0) metrics->UploadResumed(peer_.common_name);
    }
    // The outcome of every upload is audited with its run and round (the authorization could not know them).
    service_->authorizer_->Audit(*context_, kRpc, peer_, outcome.result.status(), outcome.header.run_id(),
                                 outcome.header.round());
    slot_ = SiteCallLimiter::Slot();  // Free before the site sees the answer (its next call must not find it counted).
    if (!outcome.result.ok()) {
      Finish(Reply(outcome.result.status(), kRpc, peer_.common_name));
      return;
    }
    *response_ = *std::move(outcome.result);
    Finish(grpc::Status::OK);
  }

  SiteServiceImpl* const service_;
  grpc::CallbackServerContext* const context_;
  v1::UploadResponse* const response_;
  const pki::PeerIdentity peer_;
  SiteCallLimiter::Slot slot_;
  UploadSession session_;
  v1::UploadChunk chunk_;
};

grpc::ServerReadReactor<v1::UploadChunk>* SiteServiceImpl::UploadUpdate(grpc::CallbackServerContext* context,
                                                                        v1::UploadResponse* response) {
  constexpr char kRpc[] = "SiteService/UploadUpdate";
  SiteCallLimiter::Slot slot;
  absl::StatusOr<pki::PeerIdentity> peer = Admit(*context, kRpc, Access::kApprovedSite, true, &slot);
  if (!peer.ok()) return new FinishedReader<v1::UploadChunk>(Reply(peer.status(), kRpc, ""));
  return new UploadReactor(this, context, response, *std::move(peer), std::move(slot));
}

grpc::ServerUnaryReactor* SiteServiceImpl::ReportMetrics(grpc::CallbackServerContext* context,
                                                         const v1::MetricsReport* request,
                                                         v1::ReportMetricsResponse* /*response*/) {
  return Answer(context, DoReportMetrics(context, request));
}

grpc::Status SiteServiceImpl::DoReportMetrics(grpc::CallbackServerContext* context, const v1::MetricsReport* request) {
  constexpr char kRpc[] = "SiteService/ReportMetrics";
  SiteCallLimiter::Slot slot;
  absl::StatusOr<pki::PeerIdentity> peer =
      Admit(*context, kRpc, Access::kApprovedSite, false, &slot, request->run_id(), request->round());
  if (!peer.ok()) return Reply(peer.status(), kRpc, "");
  const ScopedLogContext log_context(peer->common_name, request->run_id(), request->round());
  absl::Status status = rounds_->ReportMetrics(peer->common_name, *request);
  if (!status.ok()) {
    authorizer_->Audit(*context, kRpc, *peer, status, request->run_id(), request->round());
  }
  return Reply(status, kRpc, peer->common_name);
}

grpc::Status SiteServiceImpl::DoSiteCall(grpc::CallbackServerContext* context, const char* rpc,
                                         const std::string& run_id, int round,
                                         const std::function<absl::Status(const pki::PeerIdentity& peer)>& work) {
  SiteCallLimiter::Slot slot;
  absl::StatusOr<pki::PeerIdentity> peer = Admit(*context, rpc, Access::kApprovedSite, false, &slot, run_id, round);
  if (!peer.ok()) return Reply(peer.status(), rpc, "");
  const ScopedLogContext log_context(peer->common_name, run_id, round);
  absl::Status status = work(*peer);
  if (!status.ok()) authorizer_->Audit(*context, rpc, *peer, status, run_id, round);
  return Reply(status, rpc, peer->common_name);
}

grpc::ServerUnaryReactor* SiteServiceImpl::DeclineTask(grpc::CallbackServerContext* context,
                                                       const v1::DeclineRequest* request,
                                                       v1::DeclineResponse* /*response*/) {
  return Answer(context, DoSiteCall(context, "SiteService/DeclineTask", request->run_id(), request->round(),
                                    [&](const pki::PeerIdentity& peer) {
                                      return rounds_->DeclineTask(peer.common_name, *request);
                                    }));
}

grpc::ServerUnaryReactor* SiteServiceImpl::ReportFailure(grpc::CallbackServerContext* context,
                                                         const v1::FailureReport* request,
                                                         v1::ReportFailureResponse* /*response*/) {
  return Answer(context,
                DoSiteCall(context, "SiteService/ReportFailure", request->run_id(), request->round(),
                           [&](const pki::PeerIdentity& peer) { return RecordFailure(peer.common_name, *request); }));
}

absl::Status SiteServiceImpl::RecordFailure(const std::string& site_id, const v1::FailureReport& report) {
  RETURN_IF_ERROR(CheckFailureReport(report));
  if (!report.run_id().empty()) {
    // Only the runs the site takes part in: a site writes to its own history and its own runs' views, no other.
    ASSIGN_OR_RETURN(RunRecord run, store_->GetRun(report.run_id()));
    if (std::find(run.sites.begin(), run.sites.end(), site_id) == run.sites.end()) {
      return absl::PermissionDeniedError(absl::StrCat("site ", site_id, " does not take part in run ", run.run_id,
                                                      ": its failure report for that run is refused"));
    }
  }
  v1::SiteFailure failure;
  failure.set_site_id(site_id);
  *failure.mutable_report() = report;
  failure.set_received_ms(NowMs());
  RETURN_IF_ERROR(store_->InsertSiteFailure(failure));
  if (CoordinatorMetrics* metrics = options_.metrics; metrics != nullptr) {
    metrics->SiteFailure(site_id, federation::FailureStageText(report.stage()));
  }
  // The site's text is escaped, so that it cannot forge log lines; it was scrubbed of paths and ids at the site.
  LOG(WARNING) << "site " << site_id << " reported a failure"
               << (report.run_id().empty()
                       ? std::string()
                       : absl::StrCat(" in run ", report.run_id(), " round ", report.round(), " attempt ",
                                      report.attempt(), " (", v1::Task::Kind_Name(report.task_kind()), ")"))
               << ", stage " << federation::FailureStageText(report.stage()) << ": "
               << absl::CHexEscape(report.error_class()) << " (code " << report.status_code()
               << "): " << absl::CHexEscape(report.message()) << (report.will_retry() ? " (it will retry)" : "") << " ["
               << report.log_lines_size() << " log line(s): `fedtune sites show " << site_id << "`]";
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* SiteServiceImpl::SecAggAdvertiseKeys(grpc::CallbackServerContext* context,
                                                               const v1::SecAggKeys* request,
                                                               v1::SecAggAck* /*response*/) {
  return Answer(context, DoSiteCall(context, "SiteService/SecAggAdvertiseKeys", request->run_id(), request->round(),
                                    [&](const pki::PeerIdentity& peer) {
                                      // The certificate the site authenticated with: its keys' signature is checked
                                      // against it, and the peers get it with the roster.
                                      return rounds_->SecAggAdvertiseKeys(peer.common_name,
                                                                          net::PeerCertificatePem(*context), *request);
                                    }));
}

grpc::ServerUnaryReactor* SiteServiceImpl::SecAggShareKeys(grpc::CallbackServerContext* context,
                                                           const v1::SecAggShareUpload* request,
                                                           v1::SecAggAck* /*response*/) {
  return Answer(context, DoSiteCall(context, "SiteService/SecAggShareKeys", request->run_id(), request->round(),
                                    [&](const pki::PeerIdentity& peer) {
                                      return rounds_->SecAggShareKeys(peer.common_name, *request);
                                    }));
}

grpc::ServerUnaryReactor* SiteServiceImpl::SecAggRevealShares(grpc::CallbackServerContext* context,
                                                              const v1::SecAggReveal* request,
                                                              v1::SecAggAck* /*response*/) {
  return Answer(context, DoSiteCall(context, "SiteService/SecAggRevealShares", request->run_id(), request->round(),
                                    [&](const pki::PeerIdentity& peer) {
                                      return rounds_->SecAggRevealShares(peer.common_name, *request);
                                    }));
}

template <typename Response>
grpc::ServerUnaryReactor* SiteServiceImpl::PhaseLongPoll(
    grpc::CallbackServerContext* context, const char* rpc, const v1::SecAggPhaseRequest* request, Response* response,
    std::function<absl::StatusOr<Response>(const std::string& site_id, const v1::SecAggPhaseRequest& request)> get) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  SiteCallLimiter::Slot slot;
  absl::StatusOr<pki::PeerIdentity> peer =
      Admit(*context, rpc, Access::kApprovedSite, false, &slot, request->run_id(), request->round());
  if (!peer.ok()) {
    reactor->Finish(Reply(peer.status(), rpc, ""));
    return reactor;
  }
  const ScopedLogContext log_context(peer->common_name, request->run_id(), request->round());
  // The slot stays taken until the call is answered: a long-poll counts among the site's calls (as GetTask's).
  auto held = std::make_shared<SiteCallLimiter::Slot>(std::move(slot));
  auto finish = [this, reactor, response, held, context, rpc, peer = *peer, run_id = request->run_id(),
                 round = request->round()](absl::StatusOr<Response> result) {
    const ScopedLogContext log_context(peer.common_name, run_id, round);
    *held = SiteCallLimiter::Slot();
    if (!result.ok()) {
      authorizer_->Audit(*context, rpc, peer, result.status(), run_id, round);
      reactor->Finish(Reply(result.status(), rpc, peer.common_name));
      return;
    }
    *response = *std::move(result);
    reactor->Finish(grpc::Status::OK);
  };
  const v1::SecAggPhaseRequest copy = *request;
  absl::StatusOr<Response> now = get(peer->common_name, copy);
  const int wait = std::clamp(request->wait_seconds(), 0, options_.task_wait_seconds);
  if (wait == 0 || !now.ok() || now->ready()) {
    finish(std::move(now));
    return reactor;
  }
  TaskWaiters::Waiter waiter;
  waiter.site_id = peer->common_name;
  waiter.deadline = absl::Now() + absl::Seconds(wait);
  waiter.cancelled = [context] { return context->IsCancelled(); };
  waiter.poll = [get = std::move(get), finish = std::move(finish), site = peer->common_name, copy](bool due) {
    absl::StatusOr<Response> result = get(site, copy);
    if (result.ok() && !result->ready() && !due) return false;
    finish(std::move(result));
    return true;
  };
  waiters_.Add(std::move(waiter));
  return reactor;
}

grpc::ServerUnaryReactor* SiteServiceImpl::SecAggGetRoster(grpc::CallbackServerContext* context,
                                                           const v1::SecAggPhaseRequest* request,
                                                           v1::SecAggRoster* response) {
  return PhaseLongPoll<v1::SecAggRoster>(
      context, "SiteService/SecAggGetRoster", request, response,
      [this](const std::string& site, const v1::SecAggPhaseRequest& r) { return rounds_->SecAggGetRoster(site, r); });
}

grpc::ServerUnaryReactor* SiteServiceImpl::SecAggGetInbox(grpc::CallbackServerContext* context,
                                                          const v1::SecAggPhaseRequest* request,
                                                          v1::SecAggInbox* response) {
  return PhaseLongPoll<v1::SecAggInbox>(
      context, "SiteService/SecAggGetInbox", request, response,
      [this](const std::string& site, const v1::SecAggPhaseRequest& r) { return rounds_->SecAggGetInbox(site, r); });
}

grpc::ServerUnaryReactor* SiteServiceImpl::SecAggGetUnmaskRequest(grpc::CallbackServerContext* context,
                                                                  const v1::SecAggPhaseRequest* request,
                                                                  v1::SecAggUnmaskRequest* response) {
  return PhaseLongPoll<v1::SecAggUnmaskRequest>(context, "SiteService/SecAggGetUnmaskRequest", request, response,
                                                [this](const std::string& site, const v1::SecAggPhaseRequest& r) {
                                                  return rounds_->SecAggGetUnmaskRequest(site, r);
                                                });
}

}  // namespace fedtune::coordinator
