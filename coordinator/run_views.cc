#include "coordinator/run_views.h"

#include <algorithm>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace fedtune::coordinator {

using federation::SiteStatus;
namespace {

void FillRunFields(const RunRecord& run, v1::RunStatus* status) {
  status->set_run_id(run.run_id);
  status->set_name(run.name);
  federation::SetState(run.state, status);
  *status->mutable_config() = run.config;
  status->set_current_round(run.current_round);
  status->set_base_model_digest(run.base_model_digest);
  status->set_final_model_digest(run.final_model_digest);
  status->set_started_ms(run.started_ms);
  status->set_finished_ms(run.finished_ms);
  status->set_message(run.message);
}

void FillUpdate(const UpdateRecord& u, v1::UpdateInfo* info) {
  info->set_site_id(u.site_id);
  federation::SetStatus(u.status, info);
  info->set_num_samples(u.num_samples);
  info->set_bytes(u.bytes);
  info->set_l2_norm(u.l2_norm);
  info->set_train_loss(u.train_loss);
  info->set_validation_loss(u.validation_loss);
  info->set_message(u.message);
  info->set_received_ms(u.received_ms);
}

absl::Status AddRounds(StateStore& store, const RunRecord& run, v1::RunStatus* status) {
  ASSIGN_OR_RETURN(std::vector<RoundRecord> rounds, store.ListRounds(run.run_id));
  ASSIGN_OR_RETURN(std::vector<UpdateRecord> updates,
                   store.ListUpdates(run.run_id, std::nullopt, std::nullopt, "", std::nullopt));
  for (const RoundRecord& r : rounds) {
    v1::RoundInfo* info = status->add_rounds();
    info->set_round(r.round);
    info->set_attempt(r.attempt);
    federation::SetState(r.state, info);
    info->set_model_digest(r.model_digest);
    info->set_result_digest(r.result_digest);
    info->set_opened_ms(r.opened_ms);
    info->set_closed_ms(r.closed_ms);
    info->set_deadline_ms(r.deadline_ms);
    info->set_message(r.message);
    for (const UpdateRecord& u : updates) {
      if (u.round == r.round && u.attempt == r.attempt) FillUpdate(u, info->add_updates());
    }
  }
  return absl::OkStatus();
}

// "revoked", "lost" (not heard from within the heartbeat timeout) or its last heartbeat's state.
std::string SiteState(const std::optional<SiteRecord>& site, const RunViewOptions& options) {
  if (!site) return "lost";
  if (site->status == SiteStatus::kRevoked) return std::string(federation::Text(SiteStatus::kRevoked));
  if (site->last_seen_ms == 0 ||
      options.now_ms - site->last_seen_ms > int64_t{options.heartbeat_timeout_seconds} * 1000) {
    return "lost";
  }
  return site->state.empty() ? "waiting" : site->state;
}

absl::Status AddSites(StateStore& store, const RunRecord& run, const RunViewOptions& options, v1::RunStatus* status) {
  ASSIGN_OR_RETURN(auto transfers, store.GetTransfers(run.run_id));
  ASSIGN_OR_RETURN(auto failures, store.LatestSiteFailures(run.run_id));
  for (const std::string& id : run.sites) {
    v1::SiteRunState* s = status->add_sites();
    s->set_site_id(id);
    ASSIGN_OR_RETURN(std::optional<SiteRecord> site, store.GetSite(id));
    if (site) {
      s->set_last_seen_ms(site->last_seen_ms);
      s->set_progress(site->progress);
      s->set_train_loss(site->train_loss);
    }
    s->set_state(SiteState(site, options));
    if (auto failure = failures.find(id); failure != failures.end()) *s->mutable_last_failure() = failure->second;
    auto it = transfers.find(id);
    if (it != transfers.end()) {
      s->set_bytes_down(it->second.first);
      s->set_bytes_up(it->second.second);
    }
  }
  int64_t down = 0, up = 0;
  for (const auto& [site, bytes] : transfers) {
    down += bytes.first;
    up += bytes.second;
  }
  status->set_bytes_down(down);
  status->set_bytes_up(up);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<v1::RunStatus> BuildRunStatus(StateStore& store, const std::string& run_id,
                                             const RunViewOptions& options) {
  RunRecord run;
  if (run_id.empty()) {
    ASSIGN_OR_RETURN(run, store.LatestRun());
  } else {
    ASSIGN_OR_RETURN(run, store.GetRun(run_id));
  }
  v1::RunStatus status;
  FillRunFields(run, &status);
  RETURN_IF_ERROR(AddRounds(store, run, &status));
  RETURN_IF_ERROR(AddSites(store, run, options, &status));
  return status;
}

absl::StatusOr<v1::RunReport> BuildRunReport(StateStore& store, const std::string& run_id,
                                             const RunViewOptions& options) {
  v1::RunReport report;
  ASSIGN_OR_RETURN(*report.mutable_status(), BuildRunStatus(store, run_id, options));
  const std::string id = report.status().run_id();
  ASSIGN_OR_RETURN(std::vector<MetricsRecord> metrics, store.ListMetrics(id));
  ASSIGN_OR_RETURN(RunRecord run, store.GetRun(id));
  for (const std::string& site_id : run.sites) {
    v1::SiteRunReport* s = report.add_sites();
    s->set_site_id(site_id);
    ASSIGN_OR_RETURN(std::optional<SiteRecord> site, store.GetSite(site_id));
    if (site) *s->mutable_dataset() = site->dataset;
    for (const MetricsRecord& m : metrics) {
      if (m.site_id == site_id) *s->add_metrics() = m.report;
    }
  }
  ASSIGN_OR_RETURN(std::vector<SharedModelRecord> shared, store.ListSharedModels(id));
  for (const SharedModelRecord& r : shared) {
    v1::SharedModel* m = report.add_shared_models();
    m->set_site_id(r.site_id);
    m->set_digest(r.digest);
    m->set_bytes(r.bytes);
  }
  return report;
}

absl::StatusOr<v1::ListRunsResponse> BuildRunList(StateStore& store, int limit) {
  if (limit < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("limit: ", limit, " runs asked; must be 0 (", kDefaultRunListLimit, ") or more"));
  }
  ASSIGN_OR_RETURN(std::vector<RunRecord> runs,
                   store.RecentRuns(limit == 0 ? kDefaultRunListLimit : std::min(limit, kMaxRunListLimit)));
  // Each run's traffic, all sites together: one grouped query for the whole list, not one per run.
  std::vector<std::string> ids;
  ids.reserve(runs.size());
  for (const RunRecord& run : runs) ids.push_back(run.run_id);
  ASSIGN_OR_RETURN(auto totals, store.GetRunTransferTotals(ids));
  v1::ListRunsResponse response;
  for (const RunRecord& run : runs) {
    v1::RunStatus* status = response.add_runs();
    FillRunFields(run, status);
    auto it = totals.find(run.run_id);
    if (it != totals.end()) {
      status->set_bytes_down(it->second.first);
      status->set_bytes_up(it->second.second);
    }
  }
  return response;
}

}  // namespace fedtune::coordinator
