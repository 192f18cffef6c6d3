// RoundManager's privacy calls (see round_manager.h, "Privacy"): a site declining a round (DeclineTask), and secure
// aggregation: the open attempt's SecAggSession (secure_aggregation.h) started with the attempt, the six SecAgg*
// calls, masked uploads going to the session instead of the aggregator, and the round's close from the session's
// recovered sum.
#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/federation/states.h"
#include "common/fl/tensor_map.h"
#include "common/io/file_util.h"
#include "common/logging.h"
#include "common/secagg/session.h"
#include "common/status_macros.h"
#include "coordinator/coordinator_metrics.h"
#include "coordinator/round_manager.h"
#include "coordinator/run_config_privacy.h"
#include "fedtune/v1/tensor.pb.h"

namespace fedtune::coordinator {

using federation::RunState;
using federation::UploadStatus;
namespace {

// "declined: REASON (privacy: epsilon E of max_epsilon M at delta D, S private step(s), non-private training)".
std::string DeclineMessage(const v1::DeclineRequest& request) {
  std::string message = absl::StrCat("declined: ", request.reason().empty() ? "no reason given" : request.reason());
  if (request.has_privacy()) {
    const v1::PrivacyAccount& p = request.privacy();
    absl::StrAppend(&message, " (privacy: epsilon ", p.epsilon(),
                    p.max_epsilon() > 0 ? absl::StrCat(" of max_epsilon ", p.max_epsilon()) : "", " at delta ",
                    p.delta(), ", ", p.private_steps(), " private step(s)",
                    p.round_epsilon() > 0 ? absl::StrCat(", epsilon after this round ", p.round_epsilon()) : "",
                    p.non_private_training() ? ", non-private training" : "", ")");
  }
  return message;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Declined rounds

absl::Status RoundManager::DeclineTask(const std::string& site_id, const v1::DeclineRequest& request) {
  if (request.reason().size() > kMaxDeclineReasonBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("decline: reason has ", request.reason().size(), " bytes, at most ", kMaxDeclineReasonBytes));
  }
  if (request.attempt() < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("decline: attempt ", request.attempt(), " must be >= 1 (run ", request.run_id(), ")"));
  }
  ASSIGN_OR_RETURN(RunRecord run, store_->GetRun(request.run_id()));
  if (std::find(run.sites.begin(), run.sites.end(), site_id) == run.sites.end()) {
    return absl::PermissionDeniedError(absl::StrCat("site ", site_id, " is not selected for run ", request.run_id()));
  }
  RETURN_IF_ERROR(CheckRound(request.round(), 1, run));
  const std::string what =
      absl::StrCat("run ", request.run_id(), " round ", request.round(), " attempt ", request.attempt());
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(
      std::vector<UpdateRecord> accepted,
      store_->ListUpdates(request.run_id(), request.round(), request.attempt(), site_id, UploadStatus::kAccepted));
  if (!accepted.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("site ", site_id, " cannot decline ", what, ": its update was accepted"));
  }
  if (active_ && active_->IsOpenAttempt(request.run_id(), request.round(), request.attempt()) &&
      (active_->accepted.count(site_id) > 0 ||
       (active_->secagg != nullptr && active_->secagg->HasMaskedInput(site_id)))) {
    // Its masked vector is in the session's sum already (the record of the acceptance may have failed).
    return absl::FailedPreconditionError(
        absl::StrCat("site ", site_id, " cannot decline ", what, ": its update was received"));
  }
  if (!active_ || !active_->IsOpenAttempt(request.run_id(), request.round(), request.attempt())) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, " is not open (",
                     active_ && active_->run.run_id == request.run_id() && active_->run.state == RunState::kRunning
                         ? absl::StrCat("open: round ", active_->round.round, " attempt ", active_->round.attempt)
                         : absl::StrCat("run ", federation::Text(run.state)),
                     ")"));
  }
  ActiveRun& a = *active_;
  if (a.declined.count(site_id) > 0) return absl::OkStatus();  // Idempotent.
  UpdateRecord u;
  u.run_id = request.run_id();
  u.round = request.round();
  u.attempt = request.attempt();
  u.site_id = site_id;
  u.status = UploadStatus::kDeclined;
  u.message = DeclineMessage(request);
  u.received_ms = NowMs();
  RETURN_IF_ERROR(store_->InsertUpdate(u).status());
  if (options_.metrics != nullptr) options_.metrics->UploadResult(site_id, federation::Text(UploadStatus::kDeclined));
  a.declined.insert(site_id);
  SupersedeLocked(site_id, "");  // Its partial uploads of the attempt are of no use any more.
  // The reason is the site's text: escaped in the log, so that it cannot forge log lines.
  LOG(INFO) << "site " << site_id << " " << absl::CHexEscape(u.message) << " for " << what;
  SignalTasksLocked();
  // Secure aggregation: the session stops waiting for it (in kKeys it leaves the expected sites; later it counts as
  // dropped).
  if (a.secagg) a.secagg->Decline(site_id, Now());
  // The round may close without it, or fail now when too few sites are left (MaybeCloseLocked).
  absl::Status closed = MaybeCloseLocked();
  if (closed.ok()) closed = SecAggProgressLocked();
  if (!closed.ok()) LOG(ERROR) << "closing " << what << " after site " << site_id << " declined: " << closed;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------------------
// Secure aggregation: the session

void RoundManager::StartSecAggLocked() {
  if (!active_ || active_->run.state != RunState::kRunning || !active_->secure_aggregation()) return;
  ActiveRun& a = *active_;
  const v1::RunConfig& c = a.run.config;
  auto fail = [&](const absl::Status& why) {
    a.secagg_error = absl::StrCat("secure aggregation could not start: ", why.message());
    LOG(ERROR) << "run " << a.run.run_id << " round " << a.round.round << " attempt " << a.round.attempt << ": "
               << a.secagg_error;
  };
  absl::StatusOr<std::set<std::string>> expected = ExpectedSitesLocked();
  if (!expected.ok()) return fail(expected.status());
  absl::StatusOr<secagg::Layout> layout = secagg::MakeLayout(*a.global);
  if (!layout.ok()) return fail(layout.status());
  SecAggSessionOptions options;
  options.session = secagg::SessionId{a.run.run_id, a.round.round, a.round.attempt};
  options.expected_sites = *std::move(expected);
  options.threshold = c.secagg_threshold();
  options.configured_threshold = c.secagg_threshold();
  options.min_participants = c.min_sites();  // The session needs max(t, min_sites, 2) in each set.
  options.range = c.secagg_range();
  options.vector_length = layout->length;
  options.phase_timeout = absl::Seconds(c.secagg_phase_seconds());
  options.round_deadline = absl::FromUnixMillis(a.round.deadline_ms);
  options.used_public_keys = a.secagg_used_keys;
  absl::StatusOr<std::unique_ptr<SecAggSession>> session = SecAggSession::Create(options, Now());
  if (!session.ok()) return fail(session.status());
  a.secagg = *std::move(session);
  a.secagg_vector_length = layout->length;
  a.secagg_phase = a.secagg->phase();
  LOG(INFO) << "run " << a.run.run_id << " round " << a.round.round << " attempt " << a.round.attempt
            << ": secure aggregation over " << options.expected_sites.size() << " site(s), " << layout->length
            << " entries, range " << options.range;
}

absl::StatusOr<SecAggSession*> RoundManager::SecAggSessionLocked(const std::string& site_id, const std::string& run_id,
                                                                 int round, int attempt) {
  const std::string what = absl::StrCat("run ", run_id, " round ", round, " attempt ", attempt);
  if (!active_ || active_->run.run_id != run_id) {
    ASSIGN_OR_RETURN(RunRecord run, store_->GetRun(run_id));  // NotFound for an unknown run.
    return absl::FailedPreconditionError(absl::StrCat("run ", run_id, " is ", federation::Text(run.state)));
  }
  ActiveRun& a = *active_;
  if (!a.selected(site_id)) {
    return absl::PermissionDeniedError(absl::StrCat("site ", site_id, " is not selected for run ", run_id));
  }
  if (!a.secure_aggregation()) {
    return absl::FailedPreconditionError(absl::StrCat("run ", run_id, " does not use secure aggregation"));
  }
  if (!a.IsOpenAttempt(run_id, round, attempt)) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, " is not the open attempt",
                     a.run.state == RunState::kRunning
                         ? absl::StrCat(" (open: round ", a.round.round, " attempt ", a.round.attempt, ")")
                         : absl::StrCat(" (run ", federation::Text(a.run.state), ")")));
  }
  if (a.declined.count(site_id) > 0) {
    return absl::FailedPreconditionError(absl::StrCat("site ", site_id, " declined ", what));
  }
  if (!a.secagg) {
    return absl::FailedPreconditionError(absl::StrCat(what, ": ", a.secagg_error));
  }
  return a.secagg.get();
}

absl::Status RoundManager::SecAggProgressLocked() {
  if (!active_ || active_->run.state != RunState::kRunning || !active_->secagg) return absl::OkStatus();
  ActiveRun& a = *active_;
  const SecAggSession::Phase phase = a.secagg->phase();
  if (phase != a.secagg_phase) {
    LOG(INFO) << "run " << a.run.run_id << " round " << a.round.round << " attempt " << a.round.attempt
              << ": secure aggregation " << SecAggSession::PhaseName(a.secagg_phase) << " -> "
              << SecAggSession::PhaseName(phase);
    a.secagg_phase = phase;
    SignalTasksLocked();  // Long-polls waiting for the phase's end.
  }
  if (phase == SecAggSession::Phase::kFailed) {
    return FailAttemptLocked(absl::StrCat("secure aggregation failed: ", a.secagg->failure()));
  }
  if (phase != SecAggSession::Phase::kDone) return absl::OkStatus();
  absl::Status closed = CloseRoundLocked();
  if (closed.code() == absl::StatusCode::kInvalidArgument && active_ && active_->secagg_result.has_value()) {
    // The recovered mean itself was refused (not finite, over max_update_norm): no retry can change it.
    return FailAttemptLocked(absl::StrCat("secure aggregation's result was refused: ", closed.message()));
  }
  return closed;
}

absl::StatusOr<SecAggStep> RoundManager::SecAggStepLocked() {
  ActiveRun& a = *active_;
  if (!a.secagg_result.has_value()) {
    ASSIGN_OR_RETURN(SecAggSession::Result result, a.secagg->TakeResult());
    a.secagg_result = std::move(result);
  }
  const SecAggSession::Result& r = *a.secagg_result;
  const v1::RunConfig& c = a.run.config;
  const int64_t n = static_cast<int64_t>(r.survivors.size());
  if (n < 1) return absl::InternalError("secure aggregation finished without survivors");
  ASSIGN_OR_RETURN(secagg::Layout layout, secagg::MakeLayout(*a.global));
  if (static_cast<int64_t>(r.sum.size()) != layout.length) {
    return absl::InternalError(
        absl::StrCat("secure aggregation's sum has ", r.sum.size(), " entries, the layout ", layout.length));
  }
  const bool dp_fedavg = c.dp() == kDpFedAvg;
  // FedAvg: the sites pre-scaled their deltas by num_samples / max_num_samples, so the weighted mean is
  // sum * max_num_samples / total_samples. DP-FedAvg: uniform weights, the sites clipped and noised: sum / |U3|.
  double scale = 0;
  if (dp_fedavg) {
    scale = 1.0 / static_cast<double>(n);
  } else {
    if (r.total_samples <= 0 || r.max_num_samples <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("secure aggregation's num_samples: total ", r.total_samples,
                                                     ", largest ", r.max_num_samples, " must be > 0"));
    }
    scale = static_cast<double>(r.max_num_samples) / static_cast<double>(r.total_samples);
  }
  std::vector<double> mean(r.sum.size());
  for (size_t i = 0; i < r.sum.size(); ++i) {
    mean[i] = r.sum[i] * scale;
    if (!std::isfinite(mean[i])) {
      return absl::InvalidArgumentError(absl::StrCat("entry ", i, " of the mean is not finite"));
    }
  }
  SecAggStep step;
  ASSIGN_OR_RETURN(step.mean, secagg::Unflatten(mean, layout));
  mean = {};
  const double norm = fl::L2Norm(step.mean);
  if (c.max_update_norm() > 0 && norm > c.max_update_norm()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the mean update's L2 norm ", norm, " is above max_update_norm ", c.max_update_norm()));
  }
  step.updates = n;
  step.samples = r.total_samples;
  step.description = absl::StrCat(
      "secure aggregation of ", n, " of ", a.secagg->keys_sites().size(), " site(s) [",
      absl::StrJoin(r.survivors, ", "), "], ",
      dp_fedavg ? absl::StrCat("dp-fedavg (sites clip to ", c.dp_clip_norm(), " and add noise, multiplier ",
                               c.dp_noise_multiplier(), "), uniform weights")
                : "weighted by num_samples",
      c.aggregation() == "fedadam" ? ", fedadam" : "", ", fixed-point error <= ", r.error_bound * scale,
      " per entry, mean norm ", norm);
  return step;
}

std::string RoundManager::SecAggStatusLocked() {
  if (!active_ || !active_->secure_aggregation()) return "";
  const ActiveRun& a = *active_;
  if (!a.secagg) return a.secagg_error;
  // E.g. "secure aggregation: shares 3/4". Declined sites are in the round's updates (status "declined").
  return a.secagg->Describe();
}

// ---------------------------------------------------------------------------------------------------------------
// Secure aggregation: the sites' calls

absl::Status RoundManager::SecAggAdvertiseKeys(const std::string& site_id, const std::string& certificate_pem,
                                               const v1::SecAggKeys& keys) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(SecAggSession * session, SecAggSessionLocked(site_id, keys.run_id(), keys.round(), keys.attempt()));
  RETURN_IF_ERROR(session->AdvertiseKeys(site_id, certificate_pem, keys, Now()));
  absl::Status progress = SecAggProgressLocked();
  if (!progress.ok()) LOG(ERROR) << "secure aggregation of run " << keys.run_id() << ": " << progress;
  return absl::OkStatus();
}

absl::StatusOr<v1::SecAggRoster> RoundManager::SecAggGetRoster(const std::string& site_id,
                                                               const v1::SecAggPhaseRequest& request) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(SecAggSession * session,
                   SecAggSessionLocked(site_id, request.run_id(), request.round(), request.attempt()));
  return session->Roster(site_id);
}

absl::Status RoundManager::SecAggShareKeys(const std::string& site_id, const v1::SecAggShareUpload& upload) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(SecAggSession * session,
                   SecAggSessionLocked(site_id, upload.run_id(), upload.round(), upload.attempt()));
  RETURN_IF_ERROR(session->ShareKeys(site_id, upload, Now()));
  absl::Status progress = SecAggProgressLocked();
  if (!progress.ok()) LOG(ERROR) << "secure aggregation of run " << upload.run_id() << ": " << progress;
  return absl::OkStatus();
}

absl::StatusOr<v1::SecAggInbox> RoundManager::SecAggGetInbox(const std::string& site_id,
                                                             const v1::SecAggPhaseRequest& request) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(SecAggSession * session,
                   SecAggSessionLocked(site_id, request.run_id(), request.round(), request.attempt()));
  return session->Inbox(site_id);
}

absl::StatusOr<v1::SecAggUnmaskRequest> RoundManager::SecAggGetUnmaskRequest(const std::string& site_id,
                                                                             const v1::SecAggPhaseRequest& request) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(SecAggSession * session,
                   SecAggSessionLocked(site_id, request.run_id(), request.round(), request.attempt()));
  return session->UnmaskRequest(site_id);
}

absl::Status RoundManager::SecAggRevealShares(const std::string& site_id, const v1::SecAggReveal& reveal) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(SecAggSession * session,
                   SecAggSessionLocked(site_id, reveal.run_id(), reveal.round(), reveal.attempt()));
  RETURN_IF_ERROR(session->Reveal(site_id, reveal, Now()));
  absl::Status progress = SecAggProgressLocked();
  if (!progress.ok()) LOG(ERROR) << "secure aggregation of run " << reveal.run_id() << ": " << progress;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------------------
// Secure aggregation: masked uploads

absl::StatusOr<std::vector<uint32_t>> RoundManager::ReadMaskedUpload(const UploadTarget& target, int64_t length,
                                                                     const std::string& what) {
  absl::StatusOr<std::string> bytes = io::ReadFile(target.spool_path);
  if (!bytes.ok()) {
    LOG(ERROR) << "reading the payload of the " << what << ": " << bytes.status();
    return absl::InternalError(
        absl::StrCat(what, ": the received payload could not be read back on the coordinator; upload it again"));
  }
  v1::TensorBundle bundle;
  if (!bundle.ParseFromString(*bytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": the payload is not a TensorBundle; a secure-aggregation round takes a masked vector"));
  }
  absl::StatusOr<std::vector<uint32_t>> masked = secagg::ReadMaskedBundle(bundle, length);
  if (!masked.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": a secure-aggregation round takes a masked vector (tensor '",
                                                   secagg::kMaskedTensorName, "', ", length,
                                                   " entries): ", masked.status().message()));
  }
  return masked;
}

absl::StatusOr<v1::UploadResponse> RoundManager::AcceptMaskedLocked(
    const std::string& site_id, const v1::UploadHeader& header, const UploadTarget& target,
    const SecAggSession* session, const std::vector<uint32_t>& masked, const std::string& what) {
  if (!active_ || !active_->IsOpenAttempt(header.run_id(), header.round(), target.attempt) ||
      active_->secagg.get() != session || active_->accepted.count(site_id) > 0) {
    return absl::FailedPreconditionError(absl::StrCat(what, ": the round changed while it was read"));
  }
  if (active_->declined.count(site_id) > 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": site ", site_id, " declined attempt ", target.attempt, ": no update is taken"));
  }
  SecAggSession& s = *active_->secagg;
  if (s.share_sites().count(site_id) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": site ", site_id,
                                                   " is not among the sites that shared their keys (U2) in attempt ",
                                                   target.attempt, ": its masked vector cannot be unmasked"));
  }
  // A masked vector the session took before (its record then failed) is not added twice.
  if (!s.HasMaskedInput(site_id)) RETURN_IF_ERROR(s.AddMaskedInput(site_id, masked, header.num_samples(), Now()));
  ASSIGN_OR_RETURN(v1::UploadResponse response, RecordAcceptedLocked(site_id, header, target, 0.0, what));
  absl::Status progress = SecAggProgressLocked();
  if (!progress.ok()) LOG(ERROR) << "secure aggregation of run " << header.run_id() << ": " << progress;
  return response;
}

}  // namespace fedtune::coordinator
