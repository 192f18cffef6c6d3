// report.json of the consortium report (layout in consortium_report.h).
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "common/federation/states.h"
#include "coordinator/cli/consortium_reference.h"
#include "coordinator/cli/consortium_report.h"
#include "coordinator/cli/consortium_view.h"
#include "coordinator/cli/report_format.h"
#include "nlohmann/json.hpp"

namespace fedtune::admin {
namespace {

using Json = nlohmann::ordered_json;

}  // namespace

namespace consortium {
namespace {

Json Num(std::optional<double> value) { return value ? Json(*value) : Json(nullptr); }
Json Num(double value) { return Num(Defined(value)); }

Json RunJson(const v1::RunStatus& status) {
  Json run;
  run["id"] = status.run_id();
  run["name"] = status.name();
  run["state"] = federation::DisplayText(status);
  run["message"] = status.message();
  run["started_ms"] = status.started_ms();
  run["finished_ms"] = status.finished_ms();
  run["current_round"] = status.current_round();
  run["rounds_planned"] = status.config().rounds();
  run["aggregation"] = status.config().aggregation();
  run["compression"] = status.config().compression();
  run["base_model_digest"] = status.base_model_digest();
  run["final_model_digest"] = status.final_model_digest();
  run["bytes_down"] = status.bytes_down();
  run["bytes_up"] = status.bytes_up();
  return run;
}

Json SummaryJson(const std::vector<SiteView>& views) {
  Json summary = Json::array();
  for (const SiteView& view : views) {
    const SiteSummary s = SummaryOf(view);
    Json row;
    row["site_id"] = s.site_id;
    row["test_cases"] = s.test_cases;
    row["final_evaluation"] = s.final_evaluation;
    row["mean_auc"] = {{"open_source", Num(s.mean_auc_open_source)},
                       {"global", Num(s.mean_auc_global)},
                       {"adapted", Num(s.mean_auc_adapted)},
                       {"local_only", Num(s.mean_auc_local_only)}};
    row["labels_compared"] = s.labels_compared;
    row["improved_significant"] = s.improved_significant;
    row["worsened_significant"] = s.worsened_significant;
    row["wilcoxon_p"] = Num(s.wilcoxon_p);
    summary.push_back(std::move(row));
  }
  return summary;
}

// The site's per-label AUCs of the three models and DeLong p-values of the three comparisons.
Json SiteLabelsJson(const SiteView& view) {
  Json labels = Json::array();
  for (const std::string& label : view.labels) {
    Json row;
    row["label"] = label;
    const v1::LabelAuc* any = nullptr;
    Json aucs = Json::object();
    for (int m = 0; m < kModels; ++m) {
      const v1::LabelAuc* a = view.Auc(m, label);
      if (a != nullptr && any == nullptr) any = a;
      aucs[kModelKey[m]] = a == nullptr ? Json(nullptr)
                                        : Json{{"auc", Num(a->auc())},
                                               {"ci_low", Num(Defined(a->auc()) ? a->ci_low() : NAN)},
                                               {"ci_high", Num(Defined(a->auc()) ? a->ci_high() : NAN)}};
    }
    row["positives"] = any->positives();
    row["negatives"] = any->negatives();
    row["auc"] = std::move(aucs);
    Json p = Json::object();
    for (int q = 0; q < kPairs; ++q) p[kPair[q].key] = Num(view.pair[q].PValue(label));
    row["delong_p"] = std::move(p);
    labels.push_back(std::move(row));
  }
  return labels;
}

Json SiteJson(const v1::RunReport& report, const SiteView& view) {
  Json site;
  site["site_id"] = view.site->site_id();
  const v1::DatasetSummary& d = view.site->dataset();
  site["dataset"] = {{"images", d.images()},
                     {"train_images", d.train_images()},
                     {"validation_images", d.validation_images()},
                     {"test_images", d.test_images()}};
  site["test_cases"] = view.final_report ? view.final_report->test_cases() : 0;
  site["final_evaluation"] = view.final_report != nullptr;
  Json models = Json::object();
  for (int m = 0; m < kModels; ++m) {
    if (view.model[m] == nullptr) {
      models[kModelKey[m]] = nullptr;
    } else {
      models[kModelKey[m]] = {{"digest", view.model[m]->digest()}, {"mean_auc", Num(MeanAuc(view.model[m]))}};
    }
  }
  site["models"] = std::move(models);
  site["labels"] = SiteLabelsJson(view);
  Json comparisons = Json::object();
  for (int q = 0; q < kPairs; ++q) {
    const ComparisonView& c = view.pair[q];
    comparisons[kPair[q].key] = c.comparison == nullptr ? Json(nullptr)
                                                        : Json{{"wilcoxon_p", Num(c.Wilcoxon())},
                                                               {"improved_significant", c.Improved()},
                                                               {"worsened_significant", c.Worsened()}};
  }
  site["comparisons"] = std::move(comparisons);
  Json rounds = Json::array();
  for (const v1::MetricsReport* r : view.rounds) {
    rounds.push_back({{"round", r->round()},
                      {"train_loss", Num(ReportedLoss(r->train_loss()))},
                      {"validation_loss", Num(ReportedLoss(r->validation_loss()))},
                      {"mean_auc_global", Num(MeanAuc(FindModel(r, "global")))},
                      {"mean_auc_local", Num(MeanAuc(FindModel(r, "local")))}});
  }
  site["rounds"] = std::move(rounds);
  const v1::SiteRunState* state = RunStateOf(report, view.site->site_id());
  site["bytes_down"] = state ? state->bytes_down() : 0;
  site["bytes_up"] = state ? state->bytes_up() : 0;
  return site;
}

Json RoundJson(const v1::RoundInfo& r) {
  const RoundTotals t = TotalsOf(r);
  Json row;
  row["round"] = r.round();
  row["attempt"] = r.attempt();
  row["state"] = federation::DisplayText(r);
  row["model_digest"] = r.model_digest();
  row["result_digest"] = r.result_digest();
  row["opened_ms"] = r.opened_ms();
  row["closed_ms"] = r.closed_ms();
  row["message"] = r.message();
  row["accepted"] = t.accepted;
  row["refused"] = t.refused;
  row["declined"] = t.declined;
  row["samples"] = t.samples;
  row["bytes_up"] = t.bytes;
  row["mean_train_loss"] = Num(t.mean_train_loss);
  row["mean_validation_loss"] = Num(t.mean_validation_loss);
  Json updates = Json::array();
  for (const v1::UpdateInfo& u : r.updates()) {
    updates.push_back({{"site_id", u.site_id()},
                       {"status", UpdateStatusText(u)},
                       {"num_samples", u.num_samples()},
                       {"bytes", u.bytes()},
                       {"l2_norm", Num(u.l2_norm())},
                       {"train_loss", Num(ReportedLoss(u.train_loss()))},
                       {"validation_loss", Num(ReportedLoss(u.validation_loss()))},
                       {"message", u.message()}});
  }
  row["updates"] = std::move(updates);
  return row;
}

// An epsilon as JSON: null for none and for +inf (JSON has no infinity; "non_private_training" says which).
Json EpsilonJson(std::optional<double> epsilon) {
  return epsilon && std::isfinite(*epsilon) ? Json(*epsilon) : Json(nullptr);
}

Json PrivacyJson(const v1::RunReport& report, const std::vector<SiteView>& views) {
  const PrivacyView p = PrivacyOf(report, views);
  const v1::RunConfig& config = report.status().config();
  Json out;
  out["dp"] = config.dp();
  out["dp_noise_multiplier"] = Num(config.dp_noise_multiplier());
  out["dp_clip_norm"] = Num(config.dp_clip_norm());
  out["secure_aggregation"] = config.secure_aggregation();
  out["consortium_epsilon"] = EpsilonJson(p.consortium_epsilon);
  // False when a site with an accepted update has no account: consortium_epsilon is then null (n/a).
  out["consortium_epsilon_complete"] = p.complete();
  out["sites_without_account"] = p.missing_accounts;
  out["consortium_non_private"] = p.consortium_epsilon && std::isinf(*p.consortium_epsilon);
  out["delta"] = Num(p.delta);
  out["composition"] = kParallelComposition;
  Json sites = Json::array();
  for (const SitePrivacy& site : p.sites) {
    Json row;
    row["site_id"] = site.site_id;
    row["reported"] = site.account != nullptr;
    const v1::PrivacyAccount empty;
    const v1::PrivacyAccount& a = site.account ? *site.account : empty;
    row["epsilon"] = site.account && !site.non_private() ? Num(a.epsilon()) : Json(nullptr);
    row["non_private_training"] = site.non_private();
    row["delta"] = site.account ? Num(a.delta()) : Json(nullptr);
    row["max_epsilon"] = site.account ? Num(a.max_epsilon()) : Json(nullptr);
    row["private_steps"] = a.private_steps();
    row["declined_rounds"] = site.declined_rounds;
    sites.push_back(std::move(row));
  }
  out["sites"] = std::move(sites);
  Json declined = Json::array();
  for (const DeclinedUpdate& d : p.declined) {
    declined.push_back({{"round", d.round}, {"attempt", d.attempt}, {"site_id", d.site_id}, {"reason", d.reason}});
  }
  out["declined"] = std::move(declined);
  return out;
}

Json CrossSiteJson(const v1::RunReport& report, const std::vector<SiteView>& views) {
  const CrossSiteMatrix x = CrossSiteOf(report, views);
  Json cs;
  cs["evaluated"] = x.evaluated;
  cs["note"] = x.evaluated ? "" : kNoCrossSite;
  cs["sites"] = x.sites;
  cs["models"] = x.rows;
  Json model_sites = Json::array();
  for (const std::string& s : x.row_sites) model_sites.push_back(s.empty() ? Json() : Json(s));
  cs["model_sites"] = std::move(model_sites);
  Json mean_auc = Json::array(), p_values = Json::array(), status = Json::array();
  Json matrix = Json::array();  // Every available adapted-model cell (the layout before the full matrix).
  for (size_t r = 0; r < x.rows.size(); ++r) {
    Json auc_row = Json::array(), p_row = Json::array(), status_row = Json::array();
    for (size_t c = 0; c < x.sites.size(); ++c) {
      const CrossCell& cell = x.cells[r][c];
      auc_row.push_back(Num(cell.mean_auc));
      p_row.push_back(Num(cell.p_vs_global));
      status_row.push_back(cell.status == CellStatus::kOk          ? "ok"
                           : cell.status == CellStatus::kNotShared ? "not shared"
                                                                   : "n/a");
      if (!x.row_sites[r].empty() && cell.model != nullptr) {
        Json labels = Json::array();
        for (const v1::LabelAuc& l : cell.model->labels()) {
          labels.push_back({{"label", l.label()}, {"auc", Num(l.auc())}});
        }
        matrix.push_back({{"model_of", x.row_sites[r]},
                          {"evaluated_at", x.sites[c]},
                          {"mean_auc", Num(cell.mean_auc)},
                          {"labels", labels}});
      }
    }
    mean_auc.push_back(std::move(auc_row));
    p_values.push_back(std::move(p_row));
    status.push_back(std::move(status_row));
  }
  cs["mean_auc"] = std::move(mean_auc);
  cs["delong_p_vs_global"] = std::move(p_values);
  cs["cell_status"] = std::move(status);
  cs["not_shared"] = x.not_shared;
  cs["matrix"] = std::move(matrix);
  Json shared = Json::array();
  for (const v1::SharedModel& m : report.shared_models()) {
    shared.push_back({{"site_id", m.site_id()}, {"digest", m.digest()}, {"bytes", m.bytes()}});
  }
  cs["shared_models"] = std::move(shared);
  return cs;
}

}  // namespace
}  // namespace consortium

std::string ConsortiumReportJson(const v1::RunReport& report, const v1::RunReport* reference) {
  const v1::RunStatus& status = report.status();
  const std::vector<consortium::SiteView> views = consortium::ViewsOf(report);
  Json root;
  root["format"] = "fedtune-consortium-report-v1";
  root["run"] = consortium::RunJson(status);
  root["summary"] = consortium::SummaryJson(views);
  Json sites = Json::array();
  for (const consortium::SiteView& view : views) sites.push_back(consortium::SiteJson(report, view));
  root["sites"] = std::move(sites);
  Json rounds = Json::array();
  for (const v1::RoundInfo& r : status.rounds()) rounds.push_back(consortium::RoundJson(r));
  root["rounds"] = std::move(rounds);
  root["cross_site"] = consortium::CrossSiteJson(report, views);
  root["privacy"] = consortium::PrivacyJson(report, views);
  if (reference != nullptr) root["reference"] = consortium::ReferenceJson(consortium::ReferenceOf(report, *reference));
  // Site-supplied strings may be invalid UTF-8, which dump() would throw on: replaced with U+FFFD instead.
  return root.dump(2, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace fedtune::admin
