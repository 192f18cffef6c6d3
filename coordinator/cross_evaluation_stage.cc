// RoundManager's cross-evaluation stage (see round_manager.h): after the final evaluation of a run with
// cross_site_evaluation, every site that reported its final evaluation evaluates the other sites' shared adapted
// models on its own test split (CROSS_EVALUATE) and reports kind "cross_site"; the run then completes.
#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "coordinator/round_manager.h"

namespace fedtune::coordinator {

using federation::RunState;

absl::Status RoundManager::EndFinalEvaluationLocked(const std::string& message) {
  if (active_->run.config.cross_site_evaluation()) return StartCrossEvaluationLocked(message);
  return FinishEvaluationLocked(message);
}

absl::Status RoundManager::StartCrossEvaluationLocked(const std::string& message) {
  ActiveRun& a = *active_;
  const int64_t now = NowMs();
  CrossEvaluationRecord record;
  record.run_id = a.run.run_id;
  record.started_ms = now;
  record.deadline_ms = now + int64_t{a.run.config.round_deadline_seconds()} * 1000;
  RETURN_IF_ERROR(store_->StartCrossEvaluation(record));
  a.cross_stage = true;
  a.cross_deadline_ms = record.deadline_ms;
  LOG(INFO) << "run " << a.run.run_id << ": final evaluation ended (" << message << "); cross-site evaluation of "
            << a.shared.size() << " shared adapted model(s) begins";
  SignalTasksLocked();
  return MaybeFinishCrossEvaluationLocked();
}

std::vector<v1::SharedModel> RoundManager::CrossModelsForLocked(const std::string& site_id) {
  std::vector<v1::SharedModel> models;
  for (const auto& [owner, model] : active_->shared) {
    if (owner != site_id) models.push_back(model);
  }
  return models;
}

absl::Status RoundManager::MaybeFinishCrossEvaluationLocked() {
  ActiveRun& a = *active_;
  ASSIGN_OR_RETURN(std::set<std::string> eligible, EligibleSitesLocked());
  int waiting = 0;
  for (const std::string& site : eligible) {
    if (a.finals.count(site) == 0 || a.cross_done.count(site) > 0) continue;
    if (!CrossModelsForLocked(site).empty()) ++waiting;
  }
  if (waiting > 0) return absl::OkStatus();
  return FinishEvaluationLocked(absl::StrCat("every site sent its final evaluation; cross-site evaluation of ",
                                             a.shared.size(), " shared adapted model(s) by ", a.cross_done.size(),
                                             " site(s)"));
}

absl::StatusOr<v1::Task> RoundManager::CrossEvaluateTaskLocked(const std::string& site_id, v1::Task task) {
  const ActiveRun& a = *active_;
  std::vector<v1::SharedModel> models;
  if (a.finals.count(site_id) > 0 && a.cross_done.count(site_id) == 0) models = CrossModelsForLocked(site_id);
  if (models.empty()) {
    task.Clear();
    task.set_kind(v1::Task::NONE);
    return task;
  }
  task.set_kind(v1::Task::CROSS_EVALUATE);
  task.set_round(0);
  task.set_cross_site_evaluation(true);
  task.set_model_digest(a.run.final_model_digest);
  ASSIGN_OR_RETURN(int64_t bytes, blobs_->Size(a.run.final_model_digest));
  task.set_model_bytes(bytes);
  task.set_deadline_ms(a.cross_deadline_ms);
  for (v1::SharedModel& m : models) *task.add_shared_models() = std::move(m);
  return task;
}

absl::Status RoundManager::RecoverCrossEvaluationLocked() {
  ActiveRun& a = *active_;
  ASSIGN_OR_RETURN(std::vector<SharedModelRecord> shared, store_->ListSharedModels(a.run.run_id));
  for (const SharedModelRecord& s : shared) {
    v1::SharedModel& m = a.shared[s.site_id];
    m.set_site_id(s.site_id);
    m.set_digest(s.digest);
    m.set_bytes(s.bytes);
  }
  ASSIGN_OR_RETURN(std::optional<CrossEvaluationRecord> stage, store_->GetCrossEvaluation(a.run.run_id));
  if (!stage) return absl::OkStatus();
  a.cross_stage = true;
  a.cross_deadline_ms = stage->deadline_ms;
  ASSIGN_OR_RETURN(std::vector<MetricsRecord> metrics, store_->ListMetrics(a.run.run_id));
  for (const MetricsRecord& m : metrics) {
    if (m.kind == "cross_site") a.cross_done.insert(m.site_id);
  }
  LOG(INFO) << "recovered run " << a.run.run_id << " in cross-site evaluation (" << a.cross_done.size()
            << " site(s) reported, " << a.shared.size() << " shared model(s))";
  return absl::OkStatus();
}

}  // namespace fedtune::coordinator
