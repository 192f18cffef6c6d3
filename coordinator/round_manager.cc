#include "coordinator/round_manager.h"

#include <algorithm>
#include <filesystem>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/federation/states.h"
#include "common/fl/bundle_file.h"
#include "common/fl/encoding.h"
#include "common/io/file_util.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "coordinator/coordinator_config.h"
#include "coordinator/coordinator_metrics.h"
#include "coordinator/round_transitions.h"
#include "coordinator/run_config_privacy.h"
#include "coordinator/run_views.h"

namespace fedtune::coordinator {

using federation::RoundState;
using federation::RunState;
using federation::SiteStatus;
using federation::UploadStatus;
namespace {

constexpr char kRestartedDuringSecAgg[] = "coordinator restarted during secure aggregation";

// The run's personalization and Ditto's lambda into a task's plan.
void SetPersonalization(const v1::RunConfig& c, v1::TrainingPlan* plan) {
  plan->set_personalization(federation::ToProto(c.personalization()));
  if (c.personalization() == v1::RunConfig::DITTO) plan->set_ditto_lambda(c.ditto_lambda());
}

// The run's privacy settings into a TRAIN task's plan.
void SetPrivacy(const v1::RunConfig& c, v1::TrainingPlan* plan) {
  plan->set_secure_aggregation(c.secure_aggregation());
  if (c.secure_aggregation()) plan->set_secagg_range(c.secagg_range());
  plan->set_dp(DpMode(c));
  if (plan->dp() != kDpNone) {
    plan->set_dp_noise_multiplier(c.dp_noise_multiplier());
    plan->set_dp_clip_norm(c.dp_clip_norm());
  }
}

// The sites a new run selects: the listed ones (each must be approved), or every approved site (at least
// min_sites).
absl::StatusOr<std::vector<std::string>> SelectSites(StateStore& store, const v1::RunConfig& config) {
  std::vector<std::string> sites;
  if (config.sites().empty()) {
    ASSIGN_OR_RETURN(std::vector<SiteRecord> all, store.ListSites());
    for (const SiteRecord& s : all) {
      if (s.status == SiteStatus::kApproved) sites.push_back(s.site_id);
    }
    if (static_cast<int>(sites.size()) < config.min_sites()) {
      return absl::FailedPreconditionError(absl::StrCat("only ", sites.size(), " approved site(s) [",
                                                        absl::StrJoin(sites, ", "), "] but min_sites is ",
                                                        config.min_sites()));
    }
    return sites;
  }
  for (const std::string& id : config.sites()) {
    ASSIGN_OR_RETURN(std::optional<SiteRecord> site, store.GetSite(id));
    if (!site) return absl::InvalidArgumentError(absl::StrCat("sites: unknown site '", id, "'"));
    if (site->status != SiteStatus::kApproved) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sites: site '", id, "' is ", federation::Text(site->status),
          site->status == SiteStatus::kPending ? absl::StrCat(" (run `fedtune sites approve ", id, "`)") : ""));
    }
    sites.push_back(id);
  }
  return sites;
}

// The digest of the model a new run starts from: config.base_model (a digest or a unique prefix), else the latest
// model version.
absl::StatusOr<std::string> ResolveBaseModel(StateStore& store, const v1::RunConfig& config) {
  if (config.has_base_model() && !config.base_model().empty()) {
    if (config.base_model().size() < 8) {
      return absl::InvalidArgumentError("base_model: give a model digest or a prefix of at least 8 hex digits");
    }
    ASSIGN_OR_RETURN(std::vector<ModelVersion> found, store.FindModelVersions(config.base_model()));
    if (found.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("base_model: no model version ", config.base_model()));
    }
    if (found.size() > 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("base_model: prefix ", config.base_model(), " matches ", found.size(), " model versions"));
    }
    // A site's shared adapted model was consented for its run's sites only: never another run's starting point.
    if (!found.front().run_id.empty()) {
      ASSIGN_OR_RETURN(std::vector<SharedModelRecord> shared, store.ListSharedModels(found.front().run_id));
      for (const SharedModelRecord& m : shared) {
        if (m.digest == found.front().digest) {
          return absl::InvalidArgumentError(absl::StrCat(
              "base_model: ", config.base_model(), " is site ", m.site_id,
              "'s adapted model shared for the cross-site evaluation of run ", m.run_id, ", not a global model"));
        }
      }
    }
    return found.front().digest;
  }
  ASSIGN_OR_RETURN(std::optional<ModelVersion> latest, store.LatestModelVersion());
  if (!latest) {
    return absl::FailedPreconditionError(
        "no model to start from: set initial_model in the coordinator config or base_model in the run config");
  }
  return latest->digest;
}

}  // namespace

absl::Status RoundManager::CheckRound(int round, int min, const RunRecord& run) {
  if (round < min) {
    return absl::InvalidArgumentError(absl::StrCat("round ", round, " must be >= ", min, " (run ", run.run_id, ")"));
  }
  if (round > run.config.rounds()) {
    return absl::OutOfRangeError(
        absl::StrCat("round ", round, " is beyond the ", run.config.rounds(), " round(s) of run ", run.run_id));
  }
  return absl::OkStatus();
}

RoundManager::RoundManager(StateStore* store, BlobStore* blobs, RoundManagerOptions options)
    : store_(store), blobs_(blobs), options_(std::move(options)), spool_(options_.state_dir) {}

RoundManager::~RoundManager() = default;

std::string RoundManager::SpillDir() const { return options_.state_dir + "/spill"; }

int64_t RoundManager::NowMs() const { return absl::ToUnixMillis(Now()); }

absl::Time RoundManager::Now() const { return options_.clock ? options_.clock() : absl::Now(); }

RunViewOptions RoundManager::ViewOptions() const {
  RunViewOptions view;
  view.now_ms = NowMs();
  view.heartbeat_timeout_seconds = options_.heartbeat_timeout_seconds;
  return view;
}

absl::StatusOr<std::unique_ptr<RoundManager>> RoundManager::Create(StateStore* store, BlobStore* blobs,
                                                                   RoundManagerOptions options) {
  if (options.state_dir.empty()) return absl::InvalidArgumentError("RoundManager needs a state_dir");
  RETURN_IF_ERROR(io::MakeDirectories(options.state_dir + "/spool"));
  RETURN_IF_ERROR(io::MakeDirectories(options.state_dir + "/fedadam"));
  RETURN_IF_ERROR(io::MakeDirectories(options.state_dir + "/spill"));
  std::unique_ptr<RoundManager> manager(new RoundManager(store, blobs, std::move(options)));
  RETURN_IF_ERROR(manager->Recover());
  {
    absl::MutexLock lock(&manager->mu_);
    manager->PublishRoundLocked();
  }
  return manager;
}

// ---------------------------------------------------------------------------------------------------------------
// Recovery

absl::Status RoundManager::RebuildAggregatorLocked() {
  ActiveRun& a = *active_;
  RETURN_IF_ERROR(a.ResetAggregator());
  a.accepted.clear();
  ASSIGN_OR_RETURN(std::vector<UpdateRecord> updates,
                   store_->ListUpdates(a.run.run_id, a.round.round, a.round.attempt, "", UploadStatus::kAccepted));
  for (const UpdateRecord& u : updates) {
    if (!std::filesystem::exists(u.spool_path)) {
      return absl::DataLossError(absl::StrCat("accepted update of site ", u.site_id, " for run ", u.run_id, " round ",
                                              u.round, " attempt ", u.attempt, ": spool file '", u.spool_path,
                                              "' is missing"));
    }
    // The same path as acceptance, tensor by tensor; the norm is computed again when the aggregator clips. A
    // secure-aggregation upload is a masked vector that went to the session, never to the aggregator.
    if (!a.secure_aggregation()) {
      RETURN_IF_ERROR(a.AddUpdateFile(
          u.spool_path, u.num_samples, -1.0,
          absl::StrCat("accepted update of site ", u.site_id, " for run ", u.run_id, " round ", u.round)));
    }
    a.accepted[u.site_id] = u.sha256;
  }
  ReleaseFreeMemory();
  return absl::OkStatus();
}

absl::Status RoundManager::RebuildPartialsLocked() {
  ActiveRun& a = *active_;
  a.partials.clear();
  ASSIGN_OR_RETURN(std::vector<UpdateRecord> accepted,
                   store_->ListUpdates(a.run.run_id, a.round.round, a.round.attempt, "", UploadStatus::kAccepted));
  std::set<std::string> keep;  // File names of the accepted updates: never partial uploads.
  for (const UpdateRecord& u : accepted) keep.insert(std::filesystem::path(u.spool_path).filename().string());
  for (const auto& [path, site] : spool_.ListAttempt(a.run.run_id, a.round.round, a.round.attempt, keep)) {
    a.partials[path] = ActiveRun::Partial{site, SpoolDir::SizeOf(path), false};
  }
  return absl::OkStatus();
}

absl::Status RoundManager::Recover() {
  ASSIGN_OR_RETURN(std::optional<RunRecord> run, store_->ActiveRun());
  // An evaluating run keeps its partial adapted-model uploads (round 0, attempt 0) for a resume.
  if (!run || run->state != RunState::kRunning) {
    spool_.RemoveAllBut(run && run->state == RunState::kEvaluating ? run->run_id : "", 0, 0);
  }
  // Spill files are the aggregators' own; the open attempt's is rebuilt from the spool files below.
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(SpillDir(), ec)) {
    std::filesystem::remove(entry.path(), ec);
  }
  if (!run) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::vector<RoundRecord> rounds, store_->ListRounds(run->run_id));
  const RoundRecord* open = nullptr;
  for (const RoundRecord& r : rounds) {
    if (r.state == RoundState::kOpen) open = &r;
  }
  if (run->state == RunState::kRunning && open == nullptr) {
    return absl::DataLossError(absl::StrCat("run ", run->run_id, " is running but has no open round"));
  }
  const RoundRecord* last = open != nullptr ? open : (rounds.empty() ? nullptr : &rounds.back());
  ASSIGN_OR_RETURN(std::unique_ptr<ActiveRun> active, LoadActiveRun(*blobs_, *run, last, SpillDir()));
  absl::MutexLock lock(&mu_);
  active_ = std::move(active);
  if (run->state == RunState::kRunning && run->config.secure_aggregation()) {
    // The session's keys, shares and running sum were in memory only: the attempt cannot go on.
    spool_.RemoveAllBut(run->run_id, open->round, open->attempt);
    LOG(WARNING) << "run " << run->run_id << " round " << open->round << " attempt " << open->attempt
                 << ": the coordinator restarted during secure aggregation; the attempt fails";
    return FailAttemptLocked(kRestartedDuringSecAgg);
  }
  if (run->state == RunState::kRunning) {
    spool_.RemoveAllBut(run->run_id, open->round, open->attempt);
    RETURN_IF_ERROR(RebuildAggregatorLocked());
    RETURN_IF_ERROR(RebuildPartialsLocked());
    ASSIGN_OR_RETURN(std::vector<UpdateRecord> declined,
                     store_->ListUpdates(run->run_id, open->round, open->attempt, "", UploadStatus::kDeclined));
    for (const UpdateRecord& u : declined) active_->declined.insert(u.site_id);
    LOG(INFO) << "recovered run " << run->run_id << " round " << active_->round.round << " attempt "
              << active_->round.attempt << " with " << active_->accepted.size() << " accepted update(s)";
  } else {
    ASSIGN_OR_RETURN(std::vector<MetricsRecord> metrics, store_->ListMetrics(run->run_id));
    for (const MetricsRecord& m : metrics) {
      if (m.kind == "final") active_->finals.insert(m.site_id);
    }
    RETURN_IF_ERROR(RecoverCrossEvaluationLocked());
    LOG(INFO) << "recovered run " << run->run_id << " in final evaluation";
  }
  return absl::OkStatus();
}

std::string RoundManager::ActiveRunId() {
  absl::MutexLock lock(&mu_);
  return active_ ? active_->run.run_id : "";
}

void RoundManager::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutdown_ = true;
  SignalTasksLocked();
}

// ---------------------------------------------------------------------------------------------------------------
// Operator

absl::StatusOr<std::string> RoundManager::StartRun(const v1::RunConfig& config) {
  RETURN_IF_ERROR(ValidateRunConfig(config));
  absl::MutexLock lock(&mu_);
  if (active_) {
    return absl::FailedPreconditionError(absl::StrCat("run ", active_->run.run_id, " is ",
                                                      federation::Text(active_->run.state),
                                                      ": only one run at a time (abort it with `fedtune run abort`)"));
  }
  ASSIGN_OR_RETURN(std::vector<std::string> sites, SelectSites(*store_, config));
  ASSIGN_OR_RETURN(std::string base, ResolveBaseModel(*store_, config));
  ASSIGN_OR_RETURN(std::string run_id, store_->NextRunId());
  const int64_t now = NowMs();
  RunRecord run;
  run.run_id = run_id;
  run.name = config.name();
  run.config = config;
  run.state = RunState::kRunning;
  run.sites = sites;
  run.base_model_digest = base;
  run.current_round = 1;
  run.started_ms = now;
  RoundRecord round;
  round.run_id = run_id;
  round.round = 1;
  round.attempt = 1;
  round.state = RoundState::kOpen;
  round.model_digest = base;
  round.opened_ms = now;
  round.deadline_ms = now + int64_t{config.round_deadline_seconds()} * 1000;
  ASSIGN_OR_RETURN(std::unique_ptr<ActiveRun> active, LoadActiveRun(*blobs_, run, &round, SpillDir()));
  if (config.secure_aggregation() && sites.size() < 2) {
    return absl::FailedPreconditionError(absl::StrCat("secure_aggregation needs at least 2 sites; the run would have ",
                                                      sites.size(), " [", absl::StrJoin(sites, ", "), "]"));
  }
  if (config.secure_aggregation() && config.secagg_threshold() > static_cast<int>(sites.size())) {
    return absl::FailedPreconditionError(absl::StrCat("secagg_threshold ", config.secagg_threshold(),
                                                      " is more than the run's ", sites.size(), " site(s) [",
                                                      absl::StrJoin(sites, ", "), "]"));
  }
  RETURN_IF_ERROR(store_->CreateRun(run, round));
  active_ = std::move(active);
  if (options_.metrics != nullptr) options_.metrics->RunStarted();
  PublishRoundLocked();
  StartSecAggLocked();
  const ScopedLogContext log_context("", run_id, 1);
  LOG(INFO) << "run " << run_id << " started: " << config.rounds() << " round(s), sites " << absl::StrJoin(sites, ",")
            << ", base model " << base;
  SignalTasksLocked();
  return run_id;
}

absl::StatusOr<v1::RunStatus> RoundManager::AbortRun(const std::string& run_id, const std::string& reason) {
  {
    absl::MutexLock lock(&mu_);
    std::string id = run_id;
    if (id.empty()) {
      if (!active_) return absl::FailedPreconditionError("no active run to abort");
      id = active_->run.run_id;
    }
    if (!active_ || active_->run.run_id != id) {
      ASSIGN_OR_RETURN(RunRecord run, store_->GetRun(id));
      return absl::FailedPreconditionError(absl::StrCat("run ", id, " is already ", federation::Text(run.state)));
    }
    const RunTransition t = AbortTransition(*active_, reason, NowMs());
    RETURN_IF_ERROR(store_->ApplyTransition(t));
    if (active_->run.state == RunState::kRunning) {
      spool_.RemoveAttempt(id, active_->round.round, active_->round.attempt);
    } else {
      spool_.RemoveAttempt(id, 0, 0);  // Partial adapted-model uploads (cross-site evaluation).
    }
    LOG(INFO) << "run " << id << " " << t.run.message;
    RETURN_IF_ERROR(AdvanceLocked(t));
  }
  return GetRunStatus(run_id);
}

absl::StatusOr<v1::RunStatus> RoundManager::GetRunStatus(const std::string& run_id) {
  ASSIGN_OR_RETURN(v1::RunStatus status, BuildRunStatus(*store_, run_id, ViewOptions()));
  absl::MutexLock lock(&mu_);
  // The open attempt of a secure-aggregation run: its message says where the session stands.
  if (active_ && active_->run.run_id == status.run_id() && active_->run.state == RunState::kRunning) {
    const std::string phase = SecAggStatusLocked();
    for (v1::RoundInfo& r : *status.mutable_rounds()) {
      if (!phase.empty() && r.round() == active_->round.round && r.attempt() == active_->round.attempt) {
        r.set_message(phase);
      }
    }
  }
  return status;
}

absl::StatusOr<v1::RunReport> RoundManager::GetRunReport(const std::string& run_id) {
  return BuildRunReport(*store_, run_id, ViewOptions());
}

// ---------------------------------------------------------------------------------------------------------------
// Sites

absl::StatusOr<v1::Task> RoundManager::NextTaskLocked(const std::string& site_id) {
  v1::Task task;
  task.set_kind(v1::Task::NONE);
  if (!active_ || !active_->selected(site_id)) return task;
  const ActiveRun& a = *active_;
  const v1::RunConfig& c = a.run.config;
  task.set_run_id(a.run.run_id);
  task.set_total_rounds(c.rounds());
  task.set_base_model_digest(a.run.base_model_digest);
  ASSIGN_OR_RETURN(int64_t base_bytes, blobs_->Size(a.run.base_model_digest));
  task.set_base_model_bytes(base_bytes);
  if (a.run.state == RunState::kRunning) {
    if (a.accepted.count(site_id) > 0 || a.declined.count(site_id) > 0) {
      task.Clear();
      task.set_kind(v1::Task::NONE);
      return task;
    }
    task.set_kind(v1::Task::TRAIN);
    task.set_round(a.round.round);
    task.set_attempt(a.round.attempt);
    task.set_model_digest(a.round.model_digest);
    ASSIGN_OR_RETURN(int64_t bytes, blobs_->Size(a.round.model_digest));
    task.set_model_bytes(bytes);
    task.set_deadline_ms(a.round.deadline_ms);
    v1::TrainingPlan* plan = task.mutable_plan();
    plan->set_local_epochs(c.local_epochs());
    plan->set_learning_rate(c.learning_rate());
    plan->set_batch_size(c.batch_size());
    plan->set_proximal_mu(c.aggregation() == "fedprox" ? c.proximal_mu() : 0.0);
    ASSIGN_OR_RETURN(const fl::Encoding encoding, fl::ParseEncoding(c.compression()));
    fl::SetEncoding(encoding, plan);
    plan->set_topk_fraction(c.topk_fraction());
    SetPersonalization(c, plan);
    SetPrivacy(c, plan);
    return task;
  }
  if (a.run.state == RunState::kEvaluating && a.cross_stage) return CrossEvaluateTaskLocked(site_id, std::move(task));
  if (a.run.state == RunState::kEvaluating && a.finals.count(site_id) == 0) {
    task.set_kind(v1::Task::EVALUATE);
    task.set_round(0);
    // The plan of the run's training (the local-only baseline trains with it) and its personalization (the
    // site's adapted model depends on it).
    v1::TrainingPlan* plan = task.mutable_plan();
    plan->set_local_epochs(c.local_epochs());
    plan->set_learning_rate(c.learning_rate());
    plan->set_batch_size(c.batch_size());
    SetPersonalization(c, plan);
    plan->set_local_only_baseline(c.local_only_baseline());
    plan->set_local_only_epochs(c.local_only_epochs() > 0 ? c.local_only_epochs() : c.rounds() * c.local_epochs());
    task.set_cross_site_evaluation(c.cross_site_evaluation());
    task.set_model_digest(a.run.final_model_digest);
    ASSIGN_OR_RETURN(int64_t bytes, blobs_->Size(a.run.final_model_digest));
    task.set_model_bytes(bytes);
    task.set_deadline_ms(a.run.evaluation_deadline_ms);
    return task;
  }
  task.Clear();
  task.set_kind(v1::Task::NONE);
  return task;
}

absl::Status RoundManager::AddEndedRuns(const std::string& site_id, v1::Task* task) {
  ASSIGN_OR_RETURN(std::vector<RunRecord> runs, store_->RecentRuns(kEndedRunsSent));
  for (const RunRecord& run : runs) {
    if (run.active() || std::find(run.sites.begin(), run.sites.end(), site_id) == run.sites.end()) continue;
    task->add_ended_runs(run.run_id);
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Task> RoundManager::NextTask(const std::string& site_id) {
  // Asked by GetTask (also each time a waiting long-poll is re-checked): the site waits for work.
  if (options_.metrics != nullptr) options_.metrics->SiteWaitingForTask(site_id);
  v1::Task task;
  {
    absl::MutexLock lock(&mu_);
    ASSIGN_OR_RETURN(task, NextTaskLocked(site_id));
  }
  RETURN_IF_ERROR(AddEndedRuns(site_id, &task));
  return task;
}

void RoundManager::PublishRoundLocked() {
  if (options_.metrics == nullptr) return;
  if (!active_) {
    options_.metrics->SetCurrentRound(0, false);
    return;
  }
  const bool open = active_->run.state == RunState::kRunning;
  options_.metrics->SetCurrentRound(open ? active_->round.round : active_->run.current_round, open);
}

void RoundManager::SignalTasksLocked() {
  task_cv_.SignalAll();
  if (task_listener_) task_listener_();
}

void RoundManager::SetTaskListener(std::function<void()> listener) {
  absl::MutexLock lock(&mu_);
  task_listener_ = std::move(listener);
}

absl::StatusOr<v1::Task> RoundManager::WaitForTask(const std::string& site_id, absl::Duration wait,
                                                   const std::function<bool()>& cancelled) {
  const absl::Time end = absl::Now() + wait;
  v1::Task task;
  {
    absl::MutexLock lock(&mu_);
    while (true) {
      ASSIGN_OR_RETURN(task, NextTaskLocked(site_id));
      if (task.kind() != v1::Task::NONE || shutdown_ || absl::Now() >= end || (cancelled && cancelled())) break;
      // Short slices so that a cancelled call (client gone) is noticed without a signal.
      task_cv_.WaitWithTimeout(&mu_, std::min(absl::Milliseconds(500), end - absl::Now()));
    }
  }
  RETURN_IF_ERROR(AddEndedRuns(site_id, &task));
  return task;
}

absl::StatusOr<v1::HeartbeatResponse> RoundManager::Heartbeat(const std::string& site_id,
                                                              const v1::HeartbeatRequest& request) {
  if (request.round() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("round ", request.round(), " must be >= 0 (run ", request.run_id(), ")"));
  }
  RETURN_IF_ERROR(store_->SetSiteState(site_id, request.state(), request.progress(), request.train_loss(), NowMs()));
  if (options_.metrics != nullptr) options_.metrics->SiteHeartbeat(site_id, request.state());
  v1::HeartbeatResponse response;
  if (request.run_id().empty()) return response;
  absl::MutexLock lock(&mu_);
  if (!active_ || active_->run.run_id != request.run_id()) {
    absl::StatusOr<RunRecord> run = store_->GetRun(request.run_id());
    if (run.ok() && run->state == RunState::kCompleted && request.round() > 0) {
      // The run ended with this round: a site whose update counted may still finish and report its round metrics.
      ASSIGN_OR_RETURN(
          std::vector<UpdateRecord> mine,
          store_->ListUpdates(request.run_id(), request.round(), std::nullopt, site_id, UploadStatus::kAccepted));
      if (!mine.empty()) return response;
    }
    response.set_cancel(true);
    response.set_run_ended(true);
    response.set_reason(run.ok() ? absl::StrCat("run ", request.run_id(), " is ", federation::Text(run->state))
                                 : absl::StrCat("unknown run ", request.run_id()));
    return response;
  }
  if (!active_->selected(site_id)) {
    response.set_cancel(true);
    response.set_reason(absl::StrCat("site ", site_id, " is not selected for run ", request.run_id()));
    return response;
  }
  RETURN_IF_ERROR(CheckRound(request.round(), 0, active_->run));
  const int round = request.round();
  if (round > 0 && active_->run.state == RunState::kRunning && round == active_->round.round &&
      active_->declined.count(site_id) > 0) {
    response.set_cancel(true);
    response.set_reason(absl::StrCat("site ", site_id, " declined run ", request.run_id(), " round ", round,
                                     " attempt ", active_->round.attempt));
    return response;
  }
  if (round > 0 && !(active_->run.state == RunState::kRunning && round == active_->round.round)) {
    // A round that is no longer open: the work is only still wanted if its update counted (round metrics follow).
    ASSIGN_OR_RETURN(std::vector<UpdateRecord> mine,
                     store_->ListUpdates(request.run_id(), round, std::nullopt, site_id, UploadStatus::kAccepted));
    if (mine.empty()) {
      response.set_cancel(true);
      response.set_reason(absl::StrCat("run ", request.run_id(), " round ", round, " is no longer open"));
    }
  }
  return response;
}

absl::Status RoundManager::ReportMetrics(const std::string& site_id, const v1::MetricsReport& report) {
  const bool cross = report.kind() == "cross_site";
  if (report.kind() != "round" && report.kind() != "final" && !cross) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics kind '", report.kind(), "' is not 'round', 'final' or 'cross_site'"));
  }
  ASSIGN_OR_RETURN(RunRecord run, store_->GetRun(report.run_id()));
  if (std::find(run.sites.begin(), run.sites.end(), site_id) == run.sites.end()) {
    return absl::PermissionDeniedError(absl::StrCat("site ", site_id, " is not selected for run ", report.run_id()));
  }
  RETURN_IF_ERROR(CheckRound(report.round(), report.kind() == "round" ? 1 : 0, run));
  if (cross && (report.round() != 0 || !run.config.cross_site_evaluation())) {
    return absl::InvalidArgumentError(absl::StrCat("a 'cross_site' report must have round 0 and a run with ",
                                                   "cross_site_evaluation (run ", report.run_id(), ", round ",
                                                   report.round(), ")"));
  }
  MetricsRecord record;
  record.run_id = report.run_id();
  record.round = report.kind() == "round" ? report.round() : 0;
  record.site_id = site_id;
  record.kind = report.kind();
  record.report = report;
  record.received_ms = NowMs();
  RETURN_IF_ERROR(store_->InsertMetrics(record));
  absl::MutexLock lock(&mu_);
  if (report.kind() == "final" && active_ && active_->run.run_id == report.run_id() &&
      active_->run.state == RunState::kEvaluating) {
    active_->finals.insert(site_id);
    ASSIGN_OR_RETURN(std::set<std::string> eligible, EligibleSitesLocked());
    if (std::includes(active_->finals.begin(), active_->finals.end(), eligible.begin(), eligible.end())) {
      if (!active_->cross_stage) RETURN_IF_ERROR(EndFinalEvaluationLocked("every site sent its final evaluation"));
    }
  }
  if (cross && active_ && active_->run.run_id == report.run_id() && active_->run.state == RunState::kEvaluating) {
    active_->cross_done.insert(site_id);
    if (active_->cross_stage) RETURN_IF_ERROR(MaybeFinishCrossEvaluationLocked());
  }
  return absl::OkStatus();
}

absl::Status RoundManager::CheckModelAccess(const std::string& site_id, const std::string& digest) {
  ASSIGN_OR_RETURN(std::vector<RunRecord> runs, store_->RunsUsingModel(digest));
  for (const RunRecord& run : runs) {
    if (std::find(run.sites.begin(), run.sites.end(), site_id) != run.sites.end()) return absl::OkStatus();
  }
  return absl::PermissionDeniedError(
      absl::StrCat("site ", site_id, " takes part in no run that uses model version ", digest));
}

absl::StatusOr<std::set<std::string>> RoundManager::EligibleSitesLocked() {
  std::set<std::string> eligible;
  for (const std::string& id : active_->run.sites) {
    ASSIGN_OR_RETURN(std::optional<SiteRecord> site, store_->GetSite(id));
    if (site && site->status == SiteStatus::kRevoked) continue;
    eligible.insert(id);
  }
  return eligible;
}

// ---------------------------------------------------------------------------------------------------------------
// Round transitions

absl::Status RoundManager::AdvanceLocked(const RunTransition& t) {
  SignalTasksLocked();
  if (options_.metrics != nullptr && t.finish_round) {
    options_.metrics->RoundEnded(federation::Text(t.finish_round->state));
  }
  if (!t.run.active()) {
    active_.reset();
    PublishRoundLocked();
    return absl::OkStatus();
  }
  ActiveRun& a = *active_;
  a.run = t.run;
  a.round = t.open_round ? *t.open_round : *t.finish_round;
  PublishRoundLocked();
  RETURN_IF_ERROR(a.StartAttempt());
  if (t.open_round) StartSecAggLocked();
  return absl::OkStatus();
}

absl::StatusOr<std::set<std::string>> RoundManager::ExpectedSitesLocked() {
  ASSIGN_OR_RETURN(std::set<std::string> eligible, EligibleSitesLocked());
  for (const std::string& site : active_->declined) eligible.erase(site);
  return eligible;
}

absl::Status RoundManager::MaybeCloseLocked() {
  if (!active_ || active_->run.state != RunState::kRunning) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::set<std::string> expected, ExpectedSitesLocked());
  const ActiveRun& a = *active_;
  const int min_sites = a.run.config.min_sites();
  if (!a.declined.empty() && static_cast<int>(expected.size()) < min_sites) {
    // Declines left fewer sites than min_sites: the attempt can no longer close, so it fails now, not at the deadline.
    return FailAttemptLocked(absl::StrCat(a.declined.size(), " site(s) declined [", absl::StrJoin(a.declined, ", "),
                                          "]: ", expected.size(), " site(s) left, min_sites is ", min_sites));
  }
  // A secure-aggregation round closes through its session (SecAggProgressLocked).
  if (a.secure_aggregation()) return absl::OkStatus();
  if (static_cast<int>(a.accepted.size()) >= min_sites && a.AllAccepted(expected)) return CloseRoundLocked();
  return absl::OkStatus();
}

absl::Status RoundManager::CloseRoundLocked() {
  const ScopedLogContext log_context("", active_->run.run_id, active_->round.round);
  // FedAdam's state advances in place in Step; if closing fails later (and the round stays open for the next tick),
  // the state before this round is read back from its file (the run's fedadam_state_path, not replaced yet), so
  // the retry does not apply the step twice. No copy of the state is kept meanwhile: it is two models. When even
  // that file cannot be read, the round does not close until it can (each tick tries again, as does a restart).
  fl::FedAdam* adam = active_->fedadam.get();
  const std::string adam_path = active_->run.fedadam_state_path;
  const int64_t adam_rounds = active_->run.fedadam_rounds;
  auto restore = [&]() -> absl::Status {
    absl::StatusOr<fl::TensorMap> before = adam_path.empty() ? fl::TensorMap() : fl::DecodeTensorBundleFile(adam_path);
    if (!before.ok()) return before.status();
    return adam->RestoreState(*std::move(before), adam_rounds);
  };
  if (adam != nullptr && active_->fedadam_stale) {
    if (absl::Status restored = restore(); !restored.ok()) {
      return absl::FailedPreconditionError(absl::StrCat("run ", active_->run.run_id, " round ", active_->round.round,
                                                        ": FedAdam's state could not be read back after a failed "
                                                        "close (",
                                                        restored.message(), "); the round closes once it can"));
    }
    active_->fedadam_stale = false;
  }
  absl::Status status = CloseRoundOnceLocked();
  if (!status.ok() && active_ && active_->run.state == RunState::kRunning && active_->aggregator->damaged()) {
    // The close took the FedAvg sum (TakeResult): the round stays open, so build it again from the recorded updates.
    absl::Status rebuilt = RebuildAggregatorLocked();
    if (!rebuilt.ok()) LOG(ERROR) << "rebuilding the aggregator after a failed close: " << rebuilt;
  }
  if (!status.ok() && adam != nullptr && active_ && active_->fedadam.get() == adam && adam->rounds() != adam_rounds) {
    if (absl::Status restored = restore(); !restored.ok()) {
      active_->fedadam_stale = true;
      LOG(ERROR) << "restoring FedAdam's state after a failed close: " << restored;
    }
  }
  return status;
}

absl::Status RoundManager::CloseRoundOnceLocked() {
  ActiveRun& a = *active_;
  const int64_t now = NowMs();
  AggregatedRound result;
  // Wall time (the injected clock may stand still), for fedtune_coordinator_aggregation_seconds.
  const absl::Time aggregation_start = absl::Now();
  if (a.secure_aggregation()) {
    ASSIGN_OR_RETURN(SecAggStep step, SecAggStepLocked());
    ASSIGN_OR_RETURN(result, AggregateSecAggRound(a, std::move(step), blobs_, options_.state_dir, now));
  } else {
    ASSIGN_OR_RETURN(result, AggregateRound(a, blobs_, options_.state_dir, now));
  }
  const absl::Duration aggregation_time = absl::Now() - aggregation_start;
  const RunTransition t = CloseRoundTransition(a, result, now);
  RETURN_IF_ERROR(store_->ApplyTransition(t));
  // Once per closed round: a close that fails here is retried on the next tick.
  if (options_.metrics != nullptr) options_.metrics->AggregationFinished(absl::ToDoubleSeconds(aggregation_time));
  LOG(INFO) << "run " << a.run.run_id << " round " << a.round.round << " closed: " << t.finish_round->message
            << "; global model " << result.digest;
  spool_.RemoveAttempt(a.run.run_id, a.round.round, a.round.attempt);
  if (t.run.active()) a.SetGlobal(std::move(result.checkpoint));
  result = AggregatedRound();  // The old global model, the result and its buffers go before the memory is released.
  absl::Status advanced = AdvanceLocked(t);
  ReleaseFreeMemory();  // Under the lock, but a close holds it for the aggregation and the checkpoint anyway.
  return advanced;
}

absl::Status RoundManager::FailAttemptLocked(const std::string& why) {
  ActiveRun& a = *active_;
  const RunTransition t = FailAttemptTransition(a, NowMs(), why);
  RETURN_IF_ERROR(store_->ApplyTransition(t));
  LOG(WARNING) << "run " << a.run.run_id << " round " << a.round.round << " attempt " << a.round.attempt
               << " failed: " << t.finish_round->message << (t.open_round ? "; retrying" : "; the run failed");
  spool_.RemoveAttempt(a.run.run_id, a.round.round, a.round.attempt);
  return AdvanceLocked(t);
}

absl::Status RoundManager::FinishEvaluationLocked(const std::string& message) {
  const RunTransition t = FinishEvaluationTransition(*active_, message, NowMs());
  RETURN_IF_ERROR(store_->ApplyTransition(t));
  spool_.RemoveAttempt(t.run.run_id, 0, 0);  // Partial adapted-model uploads.
  LOG(INFO) << "run " << t.run.run_id << " " << t.run.message;
  return AdvanceLocked(t);
}

absl::Status RoundManager::Tick() {
  absl::MutexLock lock(&mu_);
  if (!active_) return absl::OkStatus();
  // The ticker's lines (deadlines, failed attempts, closes) carry the run and round they are about.
  const ScopedLogContext log_context("", active_->run.run_id, active_->round.round);
  const int64_t now = NowMs();
  if (active_->run.state == RunState::kRunning && active_->secure_aggregation()) {
    // The session's phases have their own deadlines (the masked uploads end at the round's deadline).
    if (!active_->secagg) {
      return FailAttemptLocked(active_->secagg_error.empty() ? "secure aggregation did not start"
                                                             : active_->secagg_error);
    }
    RETURN_IF_ERROR(MaybeCloseLocked());  // Declines may have left too few sites.
    if (!active_ || active_->run.state != RunState::kRunning || !active_->secagg) return absl::OkStatus();
    active_->secagg->Tick(Now());
    const int64_t backstop =
        active_->round.deadline_ms + 3 * int64_t{active_->run.config.secagg_phase_seconds()} * 1000;
    const SecAggSession::Phase phase = active_->secagg->phase();
    if (now >= backstop && phase != SecAggSession::Phase::kDone && phase != SecAggSession::Phase::kFailed) {
      return FailAttemptLocked(absl::StrCat("secure aggregation did not finish (phase ",
                                            SecAggSession::PhaseName(phase), ") by the round's deadline plus 3 x ",
                                            "secagg_phase_seconds"));
    }
    return SecAggProgressLocked();
  }
  if (active_->run.state == RunState::kRunning) {
    if (now < active_->round.deadline_ms) return MaybeCloseLocked();  // E.g. a site was revoked meanwhile.
    if (!active_->accepted.empty() && static_cast<int>(active_->accepted.size()) >= active_->run.config.min_sites()) {
      return CloseRoundLocked();
    }
    return FailAttemptLocked();
  }
  if (active_->run.state == RunState::kEvaluating && active_->cross_stage) {
    if (now >= active_->cross_deadline_ms) return FinishEvaluationLocked("cross-site evaluation deadline passed");
    return MaybeFinishCrossEvaluationLocked();  // E.g. the last site still waited for was revoked meanwhile.
  }
  if (active_->run.state == RunState::kEvaluating && now >= active_->run.evaluation_deadline_ms) {
    return EndFinalEvaluationLocked("deadline passed");
  }
  if (active_->run.state == RunState::kEvaluating) {
    // Every final report may be in without the evaluation having ended: a restart between the last report and the
    // transition that ends it, or the last site still waited for was revoked meanwhile.
    ASSIGN_OR_RETURN(std::set<std::string> eligible, EligibleSitesLocked());
    if (std::includes(active_->finals.begin(), active_->finals.end(), eligible.begin(), eligible.end())) {
      return EndFinalEvaluationLocked("every site sent its final evaluation");
    }
  }
  return absl::OkStatus();
}

}  // namespace fedtune::coordinator
