#include "coordinator/round_manager.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/fl/aggregate.h"
#include "common/fl/bundle_file.h"
#include "common/fl/codec.h"
#include "common/fl/model_tensors.h"
#include "common/fl/tensor_map.h"
#include "common/fl/validate.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "common/logging.h"
#include "common/model/checkpoint.h"
#include "common/status_macros.h"
#include "coordinator/coordinator_config.h"

namespace fedtune::coordinator {

// The in-memory side of the active run: what the database does not hold (the decoded global model, the
// aggregator, FedAdam), rebuilt from it at start-up.
struct RoundManager::Active {
  RunRecord run;
  RoundRecord round;  // The open round (running) or the last closed one (evaluating).
  model::Checkpoint global_checkpoint;
  std::shared_ptr<const fl::TensorMap> global;
  std::unique_ptr<fl::Aggregator> aggregator;
  std::unique_ptr<fl::FedAdam> fedadam;
  std::set<std::string> accepted;  // Sites with an accepted update in the open attempt.
  std::set<std::string> finals;    // Sites that sent their final MetricsReport (evaluating).
  // A partial upload of the open attempt: a spool file not accepted, being received or kept for a resume.
  struct Partial {
    std::string site_id;
    int64_t bytes = 0;        // Announced total_bytes (after a restart: the file's size until it is resumed).
    bool superseded = false;  // Removed when the stream receiving it ends.
  };
  std::map<std::string, Partial> partials;  // By spool path.
  bool selected(const std::string& site) const {
    return std::find(run.sites.begin(), run.sites.end(), site) != run.sites.end();
  }
};

namespace {

absl::StatusOr<fl::AggregatorOptions> AggregatorOptionsFor(const v1::RunConfig& config) {
  fl::AggregatorOptions options;
  const std::string& agg = config.aggregation();
  if (agg == "trimmed_mean") {
    options.method = fl::AggregationMethod::kTrimmedMean;
  } else if (agg == "median") {
    options.method = fl::AggregationMethod::kMedian;
  } else {
    options.method = fl::AggregationMethod::kFedAvg;  // fedavg, fedprox, fedadam.
  }
  options.trim_fraction = config.trim_fraction();
  options.clip_norm = config.clip_norm();
  return options;
}

std::string Iso8601(absl::Time t) { return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone()); }

// The site of a spool file name "<prefix><site>-<sha256>.upload" (prefix "r<round>-a<attempt>-"), or "" when the
// name is not one.
std::string SpoolFileSite(absl::string_view name, absl::string_view prefix) {
  constexpr absl::string_view kSuffix = ".upload";
  constexpr size_t kSha = 64;
  if (!absl::ConsumePrefix(&name, prefix) || !absl::ConsumeSuffix(&name, kSuffix) || name.size() < kSha + 2) return "";
  const absl::string_view sha = name.substr(name.size() - kSha);
  if (!io::IsSha256Hex(std::string(sha)) || name[name.size() - kSha - 1] != '-') return "";
  return std::string(name.substr(0, name.size() - kSha - 1));
}

// InvalidArgument below `min`, OutOfRange beyond the run's rounds, naming the field.
absl::Status CheckRound(int round, int min, const RunRecord& run) {
  if (round < min) {
    return absl::InvalidArgumentError(absl::StrCat("round ", round, " must be >= ", min, " (run ", run.run_id, ")"));
  }
  if (round > run.config.rounds()) {
    return absl::OutOfRangeError(
        absl::StrCat("round ", round, " is beyond the ", run.config.rounds(), " round(s) of run ", run.run_id));
  }
  return absl::OkStatus();
}

}  // namespace

RoundManager::RoundManager(StateStore* store, BlobStore* blobs, RoundManagerOptions options)
    : store_(store), blobs_(blobs), options_(std::move(options)) {}

RoundManager::~RoundManager() = default;

int64_t RoundManager::NowMs() const { return absl::ToUnixMillis(options_.clock ? options_.clock() : absl::Now()); }

absl::StatusOr<std::unique_ptr<RoundManager>> RoundManager::Create(StateStore* store, BlobStore* blobs,
                                                                   RoundManagerOptions options) {
  if (options.state_dir.empty()) return absl::InvalidArgumentError("RoundManager needs a state_dir");
  RETURN_IF_ERROR(io::MakeDirectories(options.state_dir + "/spool"));
  RETURN_IF_ERROR(io::MakeDirectories(options.state_dir + "/fedadam"));
  std::unique_ptr<RoundManager> manager(new RoundManager(store, blobs, std::move(options)));
  RETURN_IF_ERROR(manager->Recover());
  return manager;
}

std::string RoundManager::SpoolPath(const std::string& run_id, int round, int attempt, const std::string& site_id,
                                    const std::string& sha256) const {
  return absl::StrCat(options_.state_dir, "/spool/", run_id, "/r", round, "-a", attempt, "-", site_id, "-", sha256,
                      ".upload");
}

void RoundManager::RemoveSpoolFiles(const std::string& run_id, int round, int attempt) {
  const std::string prefix = absl::StrCat("r", round, "-a", attempt, "-");
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(options_.state_dir + "/spool/" + run_id, ec)) {
    if (absl::StartsWith(entry.path().filename().string(), prefix)) std::filesystem::remove(entry.path(), ec);
  }
}

absl::StatusOr<std::unique_ptr<RoundManager::Active>> RoundManager::LoadActive(const RunRecord& run,
                                                                               const RoundRecord* round) {
  auto active = std::make_unique<Active>();
  active->run = run;
  if (round != nullptr) active->round = *round;
  const std::string digest = run.state == "running" ? active->round.model_digest : run.final_model_digest;
  ASSIGN_OR_RETURN(active->global_checkpoint, model::LoadCheckpoint(blobs_->PathOf(digest)));
  active->global = std::make_shared<const fl::TensorMap>(fl::CheckpointTensors(active->global_checkpoint));
  ASSIGN_OR_RETURN(fl::AggregatorOptions agg_options, AggregatorOptionsFor(run.config));
  ASSIGN_OR_RETURN(active->aggregator, fl::MakeAggregator(agg_options));
  if (run.config.aggregation() == "fedadam") {
    fl::FedAdamOptions adam;
    adam.learning_rate = run.config.server_learning_rate();
    ASSIGN_OR_RETURN(active->fedadam, fl::FedAdam::Create(adam));
    if (!run.fedadam_state_path.empty()) {
      ASSIGN_OR_RETURN(fl::TensorMap state, fl::DecodeTensorBundleFile(run.fedadam_state_path));
      RETURN_IF_ERROR(active->fedadam->RestoreState(state, run.fedadam_rounds));
    }
  }
  return active;
}

absl::Status RoundManager::RebuildAggregatorLocked() {
  Active& a = *active_;
  ASSIGN_OR_RETURN(fl::AggregatorOptions agg_options, AggregatorOptionsFor(a.run.config));
  ASSIGN_OR_RETURN(a.aggregator, fl::MakeAggregator(agg_options));
  a.accepted.clear();
  ASSIGN_OR_RETURN(std::vector<UpdateRecord> updates,
                   store_->ListUpdates(a.run.run_id, a.round.round, a.round.attempt, "", "accepted"));
  for (const UpdateRecord& u : updates) {
    if (!std::filesystem::exists(u.spool_path)) {
      return absl::DataLossError(absl::StrCat("accepted update of site ", u.site_id, " for run ", u.run_id, " round ",
                                              u.round, " attempt ", u.attempt, ": spool file '", u.spool_path,
                                              "' is missing"));
    }
    ASSIGN_OR_RETURN(fl::TensorMap delta, fl::DecodeTensorBundleFile(u.spool_path, a.global.get()));
    RETURN_IF_ERROR(a.aggregator->Add(delta, u.num_samples));
    a.accepted.insert(u.site_id);
  }
  return absl::OkStatus();
}

void RoundManager::RemoveStaleSpoolFiles(const std::string& keep_run, const std::string& keep_prefix) {
  // Spool files of rounds that closed, failed or were aborted just before a crash (the transaction committed, the
  // removal did not happen): nothing refers to them any more.
  std::error_code ec;
  for (const auto& dir : std::filesystem::directory_iterator(options_.state_dir + "/spool", ec)) {
    if (!dir.is_directory()) continue;
    const std::string run = dir.path().filename().string();
    for (const auto& entry : std::filesystem::directory_iterator(dir.path(), ec)) {
      if (run == keep_run && absl::StartsWith(entry.path().filename().string(), keep_prefix)) continue;
      std::filesystem::remove(entry.path(), ec);
    }
    if (run != keep_run) std::filesystem::remove(dir.path(), ec);
  }
}

absl::Status RoundManager::Recover() {
  ASSIGN_OR_RETURN(std::optional<RunRecord> run, store_->ActiveRun());
  if (!run || run->state != "running") RemoveStaleSpoolFiles("", "");
  if (!run) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::vector<RoundRecord> rounds, store_->ListRounds(run->run_id));
  const RoundRecord* open = nullptr;
  for (const RoundRecord& r : rounds) {
    if (r.state == "open") open = &r;
  }
  if (run->state == "running" && open == nullptr) {
    return absl::DataLossError(absl::StrCat("run ", run->run_id, " is running but has no open round"));
  }
  const RoundRecord* last = open != nullptr ? open : (rounds.empty() ? nullptr : &rounds.back());
  ASSIGN_OR_RETURN(std::unique_ptr<Active> active, LoadActive(*run, last));
  absl::MutexLock lock(&mu_);
  active_ = std::move(active);
  if (run->state == "running") {
    RemoveStaleSpoolFiles(run->run_id, absl::StrCat("r", open->round, "-a", open->attempt, "-"));
    RETURN_IF_ERROR(RebuildAggregatorLocked());
    RETURN_IF_ERROR(RebuildPartialsLocked());
    LOG(INFO) << "recovered run " << run->run_id << " round " << active_->round.round << " attempt "
              << active_->round.attempt << " with " << active_->accepted.size() << " accepted update(s)";
  } else {
    ASSIGN_OR_RETURN(std::vector<MetricsRecord> metrics, store_->ListMetrics(run->run_id));
    for (const MetricsRecord& m : metrics) {
      if (m.kind == "final") active_->finals.insert(m.site_id);
    }
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
  task_cv_.SignalAll();
}

// ---------------------------------------------------------------------------------------------------------------
// Operator

absl::StatusOr<std::string> RoundManager::StartRun(const v1::RunConfig& config) {
  RETURN_IF_ERROR(ValidateRunConfig(config));
  absl::MutexLock lock(&mu_);
  if (active_) {
    return absl::FailedPreconditionError(absl::StrCat("run ", active_->run.run_id, " is ", active_->run.state,
                                                      ": only one run at a time (abort it with `fedtune run abort`)"));
  }
  std::vector<std::string> sites;
  if (config.sites().empty()) {
    ASSIGN_OR_RETURN(std::vector<SiteRecord> all, store_->ListSites());
    for (const SiteRecord& s : all) {
      if (s.status == "approved") sites.push_back(s.site_id);
    }
    if (static_cast<int>(sites.size()) < config.min_sites()) {
      return absl::FailedPreconditionError(absl::StrCat("only ", sites.size(), " approved site(s) [",
                                                        absl::StrJoin(sites, ", "), "] but min_sites is ",
                                                        config.min_sites()));
    }
  } else {
    for (const std::string& id : config.sites()) {
      ASSIGN_OR_RETURN(std::optional<SiteRecord> site, store_->GetSite(id));
      if (!site) return absl::InvalidArgumentError(absl::StrCat("sites: unknown site '", id, "'"));
      if (site->status != "approved") {
        return absl::FailedPreconditionError(
            absl::StrCat("sites: site '", id, "' is ", site->status,
                         site->status == "pending" ? absl::StrCat(" (run `fedtune sites approve ", id, "`)") : ""));
      }
      sites.push_back(id);
    }
  }
  std::string base;
  if (config.has_base_model() && !config.base_model().empty()) {
    if (config.base_model().size() < 8) {
      return absl::InvalidArgumentError("base_model: give a model digest or a prefix of at least 8 hex digits");
    }
    ASSIGN_OR_RETURN(std::vector<ModelVersion> found, store_->FindModelVersions(config.base_model()));
    if (found.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("base_model: no model version ", config.base_model()));
    }
    if (found.size() > 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("base_model: prefix ", config.base_model(), " matches ", found.size(), " model versions"));
    }
    base = found.front().digest;
  } else {
    ASSIGN_OR_RETURN(std::optional<ModelVersion> latest, store_->LatestModelVersion());
    if (!latest) {
      return absl::FailedPreconditionError(
          "no model to start from: set initial_model in the coordinator config or base_model in the run config");
    }
    base = latest->digest;
  }
  ASSIGN_OR_RETURN(std::string run_id, store_->NextRunId());
  const int64_t now = NowMs();
  RunRecord run;
  run.run_id = run_id;
  run.name = config.name();
  run.config = config;
  run.state = "running";
  run.sites = sites;
  run.base_model_digest = base;
  run.current_round = 1;
  run.started_ms = now;
  RoundRecord round;
  round.run_id = run_id;
  round.round = 1;
  round.attempt = 1;
  round.state = "open";
  round.model_digest = base;
  round.opened_ms = now;
  round.deadline_ms = now + int64_t{config.round_deadline_seconds()} * 1000;
  ASSIGN_OR_RETURN(std::unique_ptr<Active> active, LoadActive(run, &round));
  RETURN_IF_ERROR(store_->CreateRun(run, round));
  active_ = std::move(active);
  LOG(INFO) << "run " << run_id << " started: " << config.rounds() << " round(s), sites " << absl::StrJoin(sites, ",")
            << ", base model " << base;
  task_cv_.SignalAll();
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
      return absl::FailedPreconditionError(absl::StrCat("run ", id, " is already ", run.state));
    }
    const int64_t now = NowMs();
    RunTransition t;
    t.run = active_->run;
    t.run.state = "aborted";
    t.run.finished_ms = now;
    t.run.message = reason.empty() ? "aborted by the operator" : absl::StrCat("aborted: ", reason);
    if (active_->run.state == "running") {
      RoundRecord r = active_->round;
      r.state = "aborted";
      r.closed_ms = now;
      r.message = t.run.message;
      t.finish_round = r;
    }
    RETURN_IF_ERROR(store_->ApplyTransition(t));
    if (active_->run.state == "running") RemoveSpoolFiles(id, active_->round.round, active_->round.attempt);
    LOG(INFO) << "run " << id << " " << t.run.message;
    active_.reset();
    task_cv_.SignalAll();
  }
  return GetRunStatus(run_id);
}

absl::StatusOr<v1::RunStatus> RoundManager::GetRunStatus(const std::string& run_id) {
  RunRecord run;
  if (run_id.empty()) {
    ASSIGN_OR_RETURN(run, store_->LatestRun());
  } else {
    ASSIGN_OR_RETURN(run, store_->GetRun(run_id));
  }
  const int64_t now = NowMs();
  v1::RunStatus status;
  status.set_run_id(run.run_id);
  status.set_name(run.name);
  status.set_state(run.state);
  *status.mutable_config() = run.config;
  status.set_current_round(run.current_round);
  status.set_base_model_digest(run.base_model_digest);
  status.set_final_model_digest(run.final_model_digest);
  status.set_started_ms(run.started_ms);
  status.set_finished_ms(run.finished_ms);
  status.set_message(run.message);
  ASSIGN_OR_RETURN(std::vector<RoundRecord> rounds, store_->ListRounds(run.run_id));
  ASSIGN_OR_RETURN(std::vector<UpdateRecord> updates,
                   store_->ListUpdates(run.run_id, std::nullopt, std::nullopt, "", ""));
  for (const RoundRecord& r : rounds) {
    v1::RoundInfo* info = status.add_rounds();
    info->set_round(r.round);
    info->set_attempt(r.attempt);
    info->set_state(r.state);
    info->set_model_digest(r.model_digest);
    info->set_result_digest(r.result_digest);
    info->set_opened_ms(r.opened_ms);
    info->set_closed_ms(r.closed_ms);
    info->set_deadline_ms(r.deadline_ms);
    info->set_message(r.message);
    for (const UpdateRecord& u : updates) {
      if (u.round != r.round || u.attempt != r.attempt) continue;
      v1::UpdateInfo* ui = info->add_updates();
      ui->set_site_id(u.site_id);
      ui->set_status(u.status);
      ui->set_num_samples(u.num_samples);
      ui->set_bytes(u.bytes);
      ui->set_l2_norm(u.l2_norm);
      ui->set_train_loss(u.train_loss);
      ui->set_validation_loss(u.validation_loss);
      ui->set_message(u.message);
      ui->set_received_ms(u.received_ms);
    }
  }
  ASSIGN_OR_RETURN(auto transfers, store_->GetTransfers(run.run_id));
  int64_t down = 0, up = 0;
  for (const std::string& id : run.sites) {
    v1::SiteRunState* s = status.add_sites();
    s->set_site_id(id);
    ASSIGN_OR_RETURN(std::optional<SiteRecord> site, store_->GetSite(id));
    if (site) {
      s->set_last_seen_ms(site->last_seen_ms);
      s->set_progress(site->progress);
      s->set_train_loss(site->train_loss);
      if (site->status == "revoked") {
        s->set_state("revoked");
      } else if (site->last_seen_ms == 0 ||
                 now - site->last_seen_ms > int64_t{options_.heartbeat_timeout_seconds} * 1000) {
        s->set_state("lost");
      } else {
        s->set_state(site->state.empty() ? "waiting" : site->state);
      }
    } else {
      s->set_state("lost");
    }
    auto it = transfers.find(id);
    if (it != transfers.end()) {
      s->set_bytes_down(it->second.first);
      s->set_bytes_up(it->second.second);
    }
  }
  for (const auto& [site, bytes] : transfers) {
    down += bytes.first;
    up += bytes.second;
  }
  status.set_bytes_down(down);
  status.set_bytes_up(up);
  return status;
}

absl::StatusOr<v1::RunReport> RoundManager::GetRunReport(const std::string& run_id) {
  v1::RunReport report;
  ASSIGN_OR_RETURN(*report.mutable_status(), GetRunStatus(run_id));
  const std::string id = report.status().run_id();
  ASSIGN_OR_RETURN(std::vector<MetricsRecord> metrics, store_->ListMetrics(id));
  ASSIGN_OR_RETURN(RunRecord run, store_->GetRun(id));
  for (const std::string& site_id : run.sites) {
    v1::SiteRunReport* s = report.add_sites();
    s->set_site_id(site_id);
    ASSIGN_OR_RETURN(std::optional<SiteRecord> site, store_->GetSite(site_id));
    if (site) *s->mutable_dataset() = site->dataset;
    for (const MetricsRecord& m : metrics) {
      if (m.site_id == site_id) *s->add_metrics() = m.report;
    }
  }
  return report;
}

// ---------------------------------------------------------------------------------------------------------------
// Sites

absl::StatusOr<v1::Task> RoundManager::NextTaskLocked(const std::string& site_id) {
  v1::Task task;
  task.set_kind(v1::Task::NONE);
  if (!active_ || !active_->selected(site_id)) return task;
  const Active& a = *active_;
  const v1::RunConfig& c = a.run.config;
  task.set_run_id(a.run.run_id);
  task.set_total_rounds(c.rounds());
  task.set_base_model_digest(a.run.base_model_digest);
  ASSIGN_OR_RETURN(int64_t base_bytes, blobs_->Size(a.run.base_model_digest));
  task.set_base_model_bytes(base_bytes);
  if (a.run.state == "running") {
    if (a.accepted.count(site_id) > 0) {
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
    plan->set_encoding(c.compression());
    plan->set_topk_fraction(c.topk_fraction());
    return task;
  }
  if (a.run.state == "evaluating" && a.finals.count(site_id) == 0) {
    task.set_kind(v1::Task::EVALUATE);
    task.set_round(0);
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
  v1::Task task;
  {
    absl::MutexLock lock(&mu_);
    ASSIGN_OR_RETURN(task, NextTaskLocked(site_id));
  }
  RETURN_IF_ERROR(AddEndedRuns(site_id, &task));
  return task;
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
  v1::HeartbeatResponse response;
  if (request.run_id().empty()) return response;
  absl::MutexLock lock(&mu_);
  if (!active_ || active_->run.run_id != request.run_id()) {
    absl::StatusOr<RunRecord> run = store_->GetRun(request.run_id());
    if (run.ok() && run->state == "completed" && request.round() > 0) {
      // The run ended with this round: a site whose update counted may still finish and report its round metrics.
      ASSIGN_OR_RETURN(std::vector<UpdateRecord> mine,
                       store_->ListUpdates(request.run_id(), request.round(), std::nullopt, site_id, "accepted"));
      if (!mine.empty()) return response;
    }
    response.set_cancel(true);
    response.set_run_ended(true);
    response.set_reason(run.ok() ? absl::StrCat("run ", request.run_id(), " is ", run->state)
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
  if (round > 0 && !(active_->run.state == "running" && round == active_->round.round)) {
    // A round that is no longer open: the work is only still wanted if its update counted (round metrics follow).
    ASSIGN_OR_RETURN(std::vector<UpdateRecord> mine,
                     store_->ListUpdates(request.run_id(), round, std::nullopt, site_id, "accepted"));
    if (mine.empty()) {
      response.set_cancel(true);
      response.set_reason(absl::StrCat("run ", request.run_id(), " round ", round, " is no longer open"));
    }
  }
  return response;
}

absl::Status RoundManager::ReportMetrics(const std::string& site_id, const v1::MetricsReport& report) {
  if (report.kind() != "round" && report.kind() != "final") {
    return absl::InvalidArgumentError(absl::StrCat("metrics kind '", report.kind(), "' is not 'round' or 'final'"));
  }
  ASSIGN_OR_RETURN(RunRecord run, store_->GetRun(report.run_id()));
  if (std::find(run.sites.begin(), run.sites.end(), site_id) == run.sites.end()) {
    return absl::PermissionDeniedError(absl::StrCat("site ", site_id, " is not selected for run ", report.run_id()));
  }
  RETURN_IF_ERROR(CheckRound(report.round(), report.kind() == "final" ? 0 : 1, run));
  MetricsRecord record;
  record.run_id = report.run_id();
  record.round = report.kind() == "final" ? 0 : report.round();
  record.site_id = site_id;
  record.kind = report.kind();
  record.report = report;
  record.received_ms = NowMs();
  RETURN_IF_ERROR(store_->InsertMetrics(record));
  absl::MutexLock lock(&mu_);
  if (report.kind() == "final" && active_ && active_->run.run_id == report.run_id() &&
      active_->run.state == "evaluating") {
    active_->finals.insert(site_id);
    ASSIGN_OR_RETURN(std::set<std::string> eligible, EligibleSitesLocked());
    if (std::includes(active_->finals.begin(), active_->finals.end(), eligible.begin(), eligible.end())) {
      RETURN_IF_ERROR(FinishEvaluationLocked("every site sent its final evaluation"));
    }
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
    if (site && site->status == "revoked") continue;
    eligible.insert(id);
  }
  return eligible;
}

// ---------------------------------------------------------------------------------------------------------------
// Uploads

absl::StatusOr<UploadTarget> RoundManager::PrepareUploadLocked(const std::string& site_id, const std::string& run_id,
                                                               int round, const std::string& sha256) {
  if (!io::IsSha256Hex(sha256)) {
    return absl::InvalidArgumentError(absl::StrCat("sha256 '", sha256, "' is not 64 lowercase hex digits"));
  }
  if (round < 1) return absl::InvalidArgumentError(absl::StrCat("round ", round, " must be >= 1 (run ", run_id, ")"));
  ASSIGN_OR_RETURN(RunRecord run, store_->GetRun(run_id));
  if (std::find(run.sites.begin(), run.sites.end(), site_id) == run.sites.end()) {
    return absl::PermissionDeniedError(absl::StrCat("site ", site_id, " is not selected for run ", run_id));
  }
  RETURN_IF_ERROR(CheckRound(round, 1, run));
  ASSIGN_OR_RETURN(std::vector<UpdateRecord> mine,
                   store_->ListUpdates(run_id, round, std::nullopt, site_id, "accepted"));
  for (const UpdateRecord& u : mine) {
    if (u.sha256 == sha256) {
      UploadTarget target;
      target.accepted = true;
      target.attempt = u.attempt;
      return target;
    }
  }
  if (!active_ || active_->run.run_id != run_id || active_->run.state != "running" || active_->round.round != round) {
    return absl::FailedPreconditionError(
        absl::StrCat("run ", run_id, " round ", round, " is not open (run ", run.state,
                     run.state == "running" ? absl::StrCat(", current round ", run.current_round) : "", ")"));
  }
  for (const UpdateRecord& u : mine) {
    if (u.attempt == active_->round.attempt) {
      return absl::AlreadyExistsError(absl::StrCat("site ", site_id, " already has an accepted update for run ", run_id,
                                                   " round ", round, " (sha256 ", u.sha256, ")"));
    }
  }
  UploadTarget target;
  target.attempt = active_->round.attempt;
  target.spool_path = SpoolPath(run_id, round, target.attempt, site_id, sha256);
  return target;
}

absl::StatusOr<UploadTarget> RoundManager::PrepareUpload(const std::string& site_id, const std::string& run_id,
                                                         int round, const std::string& sha256) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(UploadTarget target, PrepareUploadLocked(site_id, run_id, round, sha256));
  if (!target.accepted) RETURN_IF_ERROR(io::MakeDirectories(options_.state_dir + "/spool/" + run_id));
  return target;
}

void RoundManager::DropPartialLocked(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove(path, ec);
  if (active_) active_->partials.erase(path);
}

void RoundManager::SupersedeLocked(const std::string& site_id, const std::string& keep_path) {
  if (!active_) return;
  std::vector<std::string> drop;
  for (auto& [path, partial] : active_->partials) {
    if (partial.site_id != site_id || path == keep_path) continue;
    if (receiving_.count(path) > 0) {
      partial.superseded = true;  // Its stream removes it when it ends.
    } else {
      drop.push_back(path);
    }
  }
  for (const std::string& path : drop) {
    LOG(INFO) << "site " << site_id << " superseded its partial upload " << path;
    DropPartialLocked(path);
  }
}

absl::Status RoundManager::RebuildPartialsLocked() {
  Active& a = *active_;
  a.partials.clear();
  ASSIGN_OR_RETURN(std::vector<UpdateRecord> accepted,
                   store_->ListUpdates(a.run.run_id, a.round.round, a.round.attempt, "", "accepted"));
  std::set<std::string> keep;  // File names of the accepted updates: never partial uploads.
  for (const UpdateRecord& u : accepted) keep.insert(std::filesystem::path(u.spool_path).filename().string());
  const std::string prefix = absl::StrCat("r", a.round.round, "-a", a.round.attempt, "-");
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(options_.state_dir + "/spool/" + a.run.run_id, ec)) {
    const std::string path = entry.path().string();
    if (keep.count(entry.path().filename().string()) > 0) continue;
    const std::string site = SpoolFileSite(entry.path().filename().string(), prefix);
    if (site.empty()) {
      std::filesystem::remove(entry.path(), ec);  // Not a name this manager writes.
      continue;
    }
    a.partials[path] = Active::Partial{site, io::FileSize(path).value_or(0), false};
  }
  return absl::OkStatus();
}

absl::StatusOr<UploadTarget> RoundManager::BeginUpload(const std::string& site_id, const v1::UploadHeader& header) {
  if (header.total_bytes() < 1 || header.total_bytes() > options_.max_upload_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("upload: total_bytes ", header.total_bytes(), " is outside [1, ",
                                                   options_.max_upload_bytes, "] (max_upload_bytes)"));
  }
  if (header.offset() < 0 || header.offset() > header.total_bytes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("upload: offset ", header.offset(), " is outside [0, total_bytes ", header.total_bytes(), "]"));
  }
  if (header.num_samples() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("upload: num_samples ", header.num_samples(), " must be > 0"));
  }
  if (!std::isfinite(header.train_loss()) || !std::isfinite(header.validation_loss())) {
    return absl::InvalidArgumentError(absl::StrCat("upload: train_loss ", header.train_loss(), " and validation_loss ",
                                                   header.validation_loss(), " must be finite"));
  }
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(UploadTarget target, PrepareUploadLocked(site_id, header.run_id(), header.round(), header.sha256()));
  if (target.accepted) return target;
  const std::string& path = target.spool_path;
  if (receiving_.count(path) > 0) {
    return absl::AbortedError(absl::StrCat("another upload of this payload by site ", site_id, " for run ",
                                           header.run_id(), " round ", header.round(), " is in progress"));
  }
  // What this upload would make of the limits: its own earlier bytes (a resume) count once, at total_bytes; the
  // site's idle partial uploads of other payloads are superseded by it, so they do not count.
  int open = 1;
  int64_t site_bytes = header.total_bytes();
  int64_t round_bytes = header.total_bytes();
  for (const auto& [other, partial] : active_->partials) {
    if (other == path || (partial.site_id == site_id && receiving_.count(other) == 0)) continue;
    round_bytes += partial.bytes;
    if (partial.site_id == site_id) {
      ++open;
      site_bytes += partial.bytes;
    }
  }
  const std::string where = absl::StrCat("site ", site_id, " run ", header.run_id(), " round ", header.round());
  absl::Status over;
  if (open > options_.max_open_uploads_per_site) {
    over = absl::ResourceExhaustedError(absl::StrCat(where, ": ", open, " partial uploads at once would exceed ",
                                                     "max_open_uploads_per_site ", options_.max_open_uploads_per_site,
                                                     "; finish or abandon the one in progress"));
  } else if (site_bytes > options_.max_spool_bytes_per_site) {
    over = absl::ResourceExhaustedError(absl::StrCat(where, ": ", site_bytes,
                                                     " bytes of partial uploads would exceed max_spool_bytes_per_site ",
                                                     options_.max_spool_bytes_per_site));
  } else if (round_bytes > options_.max_spool_bytes_per_round) {
    over = absl::ResourceExhaustedError(
        absl::StrCat(where, ": the round's partial uploads (", round_bytes, " bytes with this one) would exceed ",
                     "max_spool_bytes_per_round ", options_.max_spool_bytes_per_round, "; retry later"));
  }
  if (!over.ok()) {
    DropPartialLocked(path);
    absl::Status recorded = RecordRefusal(site_id, header, target.attempt, over);
    if (!recorded.ok()) LOG(ERROR) << "recording the refusal of an upload of " << where << ": " << recorded;
    LOG(WARNING) << "refused an upload: " << over;
    return over;
  }
  RETURN_IF_ERROR(io::MakeDirectories(options_.state_dir + "/spool/" + header.run_id()));
  SupersedeLocked(site_id, path);
  active_->partials[path] = Active::Partial{site_id, header.total_bytes(), false};
  receiving_.insert(path);
  target.claimed = true;
  return target;
}

absl::Status RoundManager::EndUpload(const std::string& site_id, const v1::UploadHeader& header,
                                     const UploadTarget& target, absl::Status why) {
  if (!target.claimed) return why;
  absl::MutexLock lock(&mu_);
  receiving_.erase(target.spool_path);
  const bool open_attempt = active_ && active_->run.run_id == header.run_id() && active_->run.state == "running" &&
                            active_->round.round == header.round() && active_->round.attempt == target.attempt;
  if (why.code() == absl::StatusCode::kInvalidArgument && open_attempt) {
    DropPartialLocked(target.spool_path);
    absl::Status recorded = RecordRefusal(site_id, header, target.attempt, why);
    if (!recorded.ok()) LOG(ERROR) << "recording the refusal of an upload of site " << site_id << ": " << recorded;
    LOG(WARNING) << "refused an upload of site " << site_id << " for run " << header.run_id() << " round "
                 << header.round() << ": " << why;
    return why;
  }
  bool keep = false;
  if (open_attempt) {
    auto it = active_->partials.find(target.spool_path);
    keep = it != active_->partials.end() && !it->second.superseded && io::FileSize(target.spool_path).value_or(0) > 0;
  }
  if (!keep) DropPartialLocked(target.spool_path);  // Nothing worth resuming.
  return why;
}

absl::Status RoundManager::RecordRefusal(const std::string& site_id, const v1::UploadHeader& header, int attempt,
                                         const absl::Status& why) {
  UpdateRecord u;
  u.run_id = header.run_id();
  u.round = header.round();
  u.attempt = attempt;
  u.site_id = site_id;
  u.sha256 = header.sha256();
  u.bytes = header.total_bytes();
  u.num_samples = header.num_samples();
  u.train_loss = std::isfinite(header.train_loss()) ? header.train_loss() : 0;
  u.validation_loss = std::isfinite(header.validation_loss()) ? header.validation_loss() : 0;
  u.status = "refused";
  u.message = absl::StrCat(absl::StatusCodeToString(why.code()), ": ", why.message());
  u.received_ms = NowMs();
  return store_->InsertUpdate(u).status();
}

absl::StatusOr<v1::UploadResponse> RoundManager::AcceptUpload(const std::string& site_id,
                                                              const v1::UploadHeader& header,
                                                              const UploadTarget& target) {
  const std::string what =
      absl::StrCat("update from ", site_id, " for run ", header.run_id(), " round ", header.round());
  // A claim of BeginUpload ends here, whatever the outcome.
  absl::Cleanup release = [&] {
    if (!target.claimed) return;
    absl::MutexLock lock(&mu_);
    receiving_.erase(target.spool_path);
  };
  // Every refusal: the spool file goes, the refusal is recorded. Called without mu_.
  auto refuse = [&](absl::Status why) -> absl::Status {
    {
      absl::MutexLock lock(&mu_);
      DropPartialLocked(target.spool_path);
    }
    absl::Status recorded = RecordRefusal(site_id, header, target.attempt, why);
    if (!recorded.ok()) LOG(ERROR) << "recording the refusal of the " << what << ": " << recorded;
    LOG(WARNING) << "refused " << what << ": " << why;
    return why;
  };
  // A refusal for a reason the round itself gives (closed meanwhile, another payload accepted), else `fallback`.
  auto round_or = [&](absl::Status fallback) -> absl::Status {
    absl::MutexLock lock(&mu_);
    absl::StatusOr<UploadTarget> now = PrepareUploadLocked(site_id, header.run_id(), header.round(), header.sha256());
    if (!now.ok()) return now.status();
    if (!now->accepted && now->attempt != target.attempt) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": attempt ", target.attempt, " ended while the upload was received"));
    }
    return fallback;
  };
  if (header.num_samples() <= 0) {
    return refuse(
        absl::InvalidArgumentError(absl::StrCat(what, ": num_samples ", header.num_samples(), " must be > 0")));
  }
  absl::StatusOr<std::string> sha = io::Sha256File(target.spool_path);
  if (!sha.ok()) {
    // Most likely the round closed and its spool files went; otherwise an I/O problem for the operator's log.
    LOG(ERROR) << "reading the payload of the " << what << ": " << sha.status();
    return refuse(round_or(absl::InternalError(absl::StrCat(what,
                                                            ": the received payload could not be read back on "
                                                            "the coordinator; upload it again"))));
  }
  if (*sha != header.sha256()) {
    return refuse(absl::DataLossError(absl::StrCat(
        what, ": tampered or corrupt payload: the SHA-256 of the ", io::FileSize(target.spool_path).value_or(0),
        " bytes received is ", *sha, " but the header says ", header.sha256(), "; the received data was discarded")));
  }
  absl::MutexLock decode_lock(&decode_mu_);
  std::shared_ptr<const fl::TensorMap> global;
  double max_norm = 0;
  absl::Status changed;
  {
    absl::MutexLock lock(&mu_);
    absl::StatusOr<UploadTarget> now = PrepareUploadLocked(site_id, header.run_id(), header.round(), header.sha256());
    if (!now.ok()) {
      changed = now.status();
    } else if (now->accepted) {
      // Accepted meanwhile by another stream: this one's file is that update's only when the attempt is the same.
      if (now->attempt != target.attempt) DropPartialLocked(target.spool_path);
      v1::UploadResponse response;
      response.set_status("accepted");
      response.set_message("accepted before (same payload)");
      return response;
    } else if (now->attempt != target.attempt) {
      changed = absl::FailedPreconditionError(
          absl::StrCat(what, ": attempt ", target.attempt, " ended while the upload was received"));
    } else {
      global = active_->global;
      max_norm = active_->run.config.max_update_norm();
    }
  }
  if (!changed.ok()) return refuse(changed);
  absl::StatusOr<fl::TensorMap> delta = fl::DecodeTensorBundleFile(target.spool_path, global.get());
  if (!delta.ok()) {
    // The decoder names the file; the site is told about its payload only.
    const std::string detail =
        absl::StrReplaceAll(delta.status().message(), {{target.spool_path + ": ", ""}, {target.spool_path, "payload"}});
    if (delta.status().code() != absl::StatusCode::kInvalidArgument) {
      LOG(ERROR) << "decoding the payload of the " << what << ": " << delta.status();
      return refuse(round_or(absl::InternalError(absl::StrCat(what,
                                                              ": the received payload could not be read back "
                                                              "on the coordinator; upload it again"))));
    }
    return refuse(absl::InvalidArgumentError(absl::StrCat(what, ": ", detail)));
  }
  fl::ValidationOptions validation;
  validation.max_l2_norm = max_norm;
  absl::StatusOr<fl::UpdateSummary> summary = fl::ValidateUpdate(*global, *delta, validation, what);
  if (!summary.ok()) return refuse(summary.status());

  absl::Status refused;
  {
    absl::MutexLock lock(&mu_);
    absl::StatusOr<UploadTarget> now = PrepareUploadLocked(site_id, header.run_id(), header.round(), header.sha256());
    if (!now.ok()) {
      refused = now.status();
    } else if (now->accepted || now->attempt != target.attempt || active_->global != global) {
      refused = absl::FailedPreconditionError(absl::StrCat(what, ": the round changed while it was validated"));
    } else if (absl::Status added = active_->aggregator->Add(*delta, header.num_samples()); !added.ok()) {
      refused = absl::InvalidArgumentError(absl::StrCat(what, ": ", added.message()));
    } else {
      delta->clear();  // In the aggregator now: free it before a close aggregates.
      return RecordAcceptedLocked(site_id, header, target, summary->l2_norm, what);
    }
  }
  return refuse(refused);
}

absl::StatusOr<v1::UploadResponse> RoundManager::RecordAcceptedLocked(const std::string& site_id,
                                                                      const v1::UploadHeader& header,
                                                                      const UploadTarget& target, double l2_norm,
                                                                      const std::string& what) {
  UpdateRecord u;
  u.run_id = header.run_id();
  u.round = header.round();
  u.attempt = target.attempt;
  u.site_id = site_id;
  u.sha256 = header.sha256();
  u.bytes = io::FileSize(target.spool_path).value_or(0);
  u.num_samples = header.num_samples();
  u.l2_norm = l2_norm;
  u.train_loss = header.train_loss();
  u.validation_loss = header.validation_loss();
  u.status = "accepted";
  u.message = absl::StrCat("norm ", l2_norm);
  u.spool_path = target.spool_path;
  u.received_ms = NowMs();
  absl::StatusOr<int64_t> inserted = store_->InsertUpdate(u);
  if (!inserted.ok()) {
    // The aggregator holds the delta but the database does not: rebuild it from the recorded updates. The spool
    // file stays (GetUploadOffset: complete), so the site's next attempt goes straight to acceptance.
    absl::Status rebuilt = RebuildAggregatorLocked();
    if (!rebuilt.ok()) LOG(ERROR) << "rebuilding the aggregator of run " << u.run_id << ": " << rebuilt;
    LOG(ERROR) << "recording the " << what << ": " << inserted.status();
    return absl::InternalError(absl::StrCat(what, ": the coordinator could not record it; upload it again"));
  }
  active_->accepted.insert(site_id);
  active_->partials.erase(target.spool_path);  // Accepted: no longer a partial upload.
  SupersedeLocked(site_id, target.spool_path);
  LOG(INFO) << "accepted " << what << " attempt " << target.attempt << ": " << u.num_samples << " samples, norm "
            << u.l2_norm << " (" << active_->accepted.size() << "/" << active_->run.sites.size() << ")";
  v1::UploadResponse response;
  response.set_status("accepted");
  response.set_received_bytes(u.bytes);
  response.set_l2_norm(u.l2_norm);
  response.set_message(absl::StrCat("accepted for run ", u.run_id, " round ", u.round));
  absl::Status closed = MaybeCloseLocked();
  if (!closed.ok()) LOG(ERROR) << "closing run " << u.run_id << " round " << u.round << ": " << closed;
  task_cv_.SignalAll();
  return response;
}

// ---------------------------------------------------------------------------------------------------------------
// Round transitions

absl::Status RoundManager::MaybeCloseLocked() {
  if (!active_ || active_->run.state != "running") return absl::OkStatus();
  ASSIGN_OR_RETURN(std::set<std::string> eligible, EligibleSitesLocked());
  const Active& a = *active_;
  if (static_cast<int>(a.accepted.size()) >= a.run.config.min_sites() &&
      std::includes(a.accepted.begin(), a.accepted.end(), eligible.begin(), eligible.end())) {
    return CloseRoundLocked();
  }
  return absl::OkStatus();
}

absl::Status RoundManager::CloseRoundLocked() {
  // FedAdam's state advances in Step; if closing fails later (and the round stays open for the next tick), the
  // state before this round is put back so the retry does not apply the step twice.
  fl::TensorMap adam_before;
  int64_t adam_rounds_before = 0;
  if (active_->fedadam) {
    for (const auto& [name, t] : active_->fedadam->ExportState()) adam_before[name] = t.clone();
    adam_rounds_before = active_->fedadam->rounds();
  }
  fl::FedAdam* adam = active_->fedadam.get();
  absl::Status status = CloseRoundOnceLocked();
  if (!status.ok() && adam != nullptr && active_ && active_->fedadam.get() == adam &&
      adam->rounds() != adam_rounds_before) {
    absl::Status restored = adam->RestoreState(adam_before, adam_rounds_before);
    if (!restored.ok()) LOG(ERROR) << "restoring FedAdam's state after a failed close: " << restored;
  }
  return status;
}

absl::Status RoundManager::CloseRoundOnceLocked() {
  Active& a = *active_;
  const int64_t now = NowMs();
  ASSIGN_OR_RETURN(fl::TensorMap step, a.aggregator->Result());
  std::string adam_path;
  if (a.fedadam) {
    ASSIGN_OR_RETURN(step, a.fedadam->Step(step));
    ASSIGN_OR_RETURN(fl::EncodedBundle state, fl::EncodeTensors(a.fedadam->ExportState()));
    adam_path = absl::StrCat(options_.state_dir, "/fedadam/", a.run.run_id, "-round-", a.round.round, ".bundle");
    RETURN_IF_ERROR(io::WriteFileAtomically(adam_path, state.bundle.SerializeAsString()));
  }
  ASSIGN_OR_RETURN(fl::TensorMap next_global, fl::ApplyDelta(*a.global, step));
  ASSIGN_OR_RETURN(model::Checkpoint checkpoint, fl::CheckpointWithTensors(a.global_checkpoint, next_global));
  checkpoint.metadata.provenance.parent_digest = a.global_checkpoint.weights_sha256;
  checkpoint.metadata.provenance.source =
      absl::StrCat("fedtune federation run ", a.run.run_id, " round ", a.round.round, " (", a.aggregator->Describe(),
                   ", ", a.aggregator->num_updates(), " sites, ", a.aggregator->total_samples(), " samples)");
  checkpoint.metadata.provenance.epochs = a.run.config.local_epochs();
  checkpoint.metadata.provenance.created_at = Iso8601(absl::FromUnixMillis(now));
  const std::string temp = blobs_->TempPath();
  absl::StatusOr<std::string> saved = model::SaveCheckpoint(&checkpoint, temp);
  if (!saved.ok()) {
    std::error_code ec;
    std::filesystem::remove(temp, ec);
    return saved.status();
  }
  ASSIGN_OR_RETURN(std::string digest, blobs_->Adopt(temp));
  ASSIGN_OR_RETURN(int64_t bytes, blobs_->Size(digest));

  RunTransition t;
  t.run = a.run;
  if (a.fedadam) {
    t.run.fedadam_state_path = adam_path;
    t.run.fedadam_rounds = a.fedadam->rounds();
  }
  RoundRecord finished = a.round;
  finished.state = "closed";
  finished.result_digest = digest;
  finished.closed_ms = now;
  finished.message = absl::StrCat(a.aggregator->num_updates(), " update(s), ", a.aggregator->total_samples(),
                                  " samples: ", a.aggregator->Describe());
  t.finish_round = finished;
  ModelVersion version;
  version.digest = digest;
  version.parent_digest = a.round.model_digest;
  version.path = blobs_->PathOf(digest);
  version.run_id = a.run.run_id;
  version.round = a.round.round;
  version.bytes = bytes;
  version.created_ms = now;
  t.new_model = version;
  RoundRecord next;
  if (a.round.round < a.run.config.rounds()) {
    next.run_id = a.run.run_id;
    next.round = a.round.round + 1;
    next.attempt = 1;
    next.state = "open";
    next.model_digest = digest;
    next.opened_ms = now;
    next.deadline_ms = now + int64_t{a.run.config.round_deadline_seconds()} * 1000;
    t.open_round = next;
    t.run.current_round = next.round;
  } else {
    t.run.final_model_digest = digest;
    if (a.run.config.final_evaluation()) {
      t.run.state = "evaluating";
      t.run.evaluation_deadline_ms = now + int64_t{a.run.config.round_deadline_seconds()} * 1000;
    } else {
      t.run.state = "completed";
      t.run.finished_ms = now;
      t.run.message = absl::StrCat("completed ", a.run.config.rounds(), " round(s)");
    }
  }
  RETURN_IF_ERROR(store_->ApplyTransition(t));
  LOG(INFO) << "run " << a.run.run_id << " round " << a.round.round << " closed: " << finished.message
            << "; global model " << digest;
  const int closed_round = a.round.round;
  RemoveSpoolFiles(a.run.run_id, closed_round, a.round.attempt);
  if (t.run.state == "completed") {
    active_.reset();
  } else {
    a.run = t.run;
    a.global_checkpoint = std::move(checkpoint);
    a.global = std::make_shared<const fl::TensorMap>(fl::CheckpointTensors(a.global_checkpoint));
    ASSIGN_OR_RETURN(fl::AggregatorOptions agg_options, AggregatorOptionsFor(a.run.config));
    ASSIGN_OR_RETURN(a.aggregator, fl::MakeAggregator(agg_options));
    a.accepted.clear();
    a.partials.clear();
    a.round = t.open_round ? next : finished;
  }
  task_cv_.SignalAll();
  return absl::OkStatus();
}

absl::Status RoundManager::FailAttemptLocked() {
  Active& a = *active_;
  const int64_t now = NowMs();
  RunTransition t;
  t.run = a.run;
  RoundRecord failed = a.round;
  failed.state = "failed";
  failed.closed_ms = now;
  failed.message = absl::StrCat("deadline passed with ", a.accepted.size(), " accepted update(s), min_sites is ",
                                a.run.config.min_sites());
  t.finish_round = failed;
  RoundRecord next;
  if (a.round.attempt < a.run.config.max_round_attempts()) {
    next = a.round;
    next.attempt = a.round.attempt + 1;
    next.state = "open";
    next.result_digest.clear();
    next.opened_ms = now;
    next.closed_ms = 0;
    next.message.clear();
    next.deadline_ms = now + int64_t{a.run.config.round_deadline_seconds()} * 1000;
    t.open_round = next;
  } else {
    t.run.state = "failed";
    t.run.finished_ms = now;
    t.run.message = absl::StrCat("round ", a.round.round, " failed ", a.round.attempt, " time(s): ", failed.message);
  }
  RETURN_IF_ERROR(store_->ApplyTransition(t));
  LOG(WARNING) << "run " << a.run.run_id << " round " << a.round.round << " attempt " << a.round.attempt
               << " failed: " << failed.message << (t.open_round ? "; retrying" : "; the run failed");
  RemoveSpoolFiles(a.run.run_id, a.round.round, a.round.attempt);
  if (!t.open_round) {
    active_.reset();
  } else {
    a.run = t.run;
    a.round = next;
    ASSIGN_OR_RETURN(fl::AggregatorOptions agg_options, AggregatorOptionsFor(a.run.config));
    ASSIGN_OR_RETURN(a.aggregator, fl::MakeAggregator(agg_options));
    a.accepted.clear();
    a.partials.clear();
  }
  task_cv_.SignalAll();
  return absl::OkStatus();
}

absl::Status RoundManager::FinishEvaluationLocked(const std::string& message) {
  Active& a = *active_;
  RunTransition t;
  t.run = a.run;
  t.run.state = "completed";
  t.run.finished_ms = NowMs();
  t.run.message = absl::StrCat("completed ", a.run.config.rounds(), " round(s); final evaluation: ", message, " (",
                               a.finals.size(), " of ", a.run.sites.size(), " sites)");
  RETURN_IF_ERROR(store_->ApplyTransition(t));
  LOG(INFO) << "run " << a.run.run_id << " " << t.run.message;
  active_.reset();
  task_cv_.SignalAll();
  return absl::OkStatus();
}

absl::Status RoundManager::Tick() {
  absl::MutexLock lock(&mu_);
  if (!active_) return absl::OkStatus();
  const int64_t now = NowMs();
  if (active_->run.state == "running") {
    if (now < active_->round.deadline_ms) return MaybeCloseLocked();  // E.g. a site was revoked meanwhile.
    if (!active_->accepted.empty() && static_cast<int>(active_->accepted.size()) >= active_->run.config.min_sites()) {
      return CloseRoundLocked();
    }
    return FailAttemptLocked();
  }
  if (active_->run.state == "evaluating" && now >= active_->run.evaluation_deadline_ms) {
    return FinishEvaluationLocked("deadline passed");
  }
  return absl::OkStatus();
}

}  // namespace fedtune::coordinator
