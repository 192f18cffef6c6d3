#include "coordinator/cli/consortium_view.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/federation/states.h"
#include "coordinator/cli/report_format.h"
#include "coordinator/cli/terminal_text.h"

namespace fedtune::admin::consortium {
namespace {

SiteView ViewOf(const v1::SiteRunReport& site) {
  SiteView view;
  view.site = &site;
  for (const v1::MetricsReport& metrics : site.metrics()) {
    if (metrics.kind() == "final") view.final_report = &metrics;  // The last one wins.
    if (metrics.kind() == "cross_site") view.cross_report = &metrics;
    if (metrics.kind() == "round") view.rounds.push_back(&metrics);
  }
  std::stable_sort(view.rounds.begin(), view.rounds.end(),
                   [](const v1::MetricsReport* x, const v1::MetricsReport* y) { return x->round() < y->round(); });
  if (view.final_report == nullptr) return view;
  std::set<std::string> seen;
  for (int m = 0; m < kModels; ++m) {
    for (const v1::ModelEvaluation& model : view.final_report->models()) {
      if (model.name() == kModelName[m]) view.model[m] = &model;
    }
    if (view.model[m] == nullptr) continue;
    for (const v1::LabelAuc& label : view.model[m]->labels()) {
      view.label_auc[m][label.label()] = &label;
      if (seen.insert(label.label()).second) view.labels.push_back(label.label());
    }
  }
  for (int p = 0; p < kPairs; ++p) {
    for (const v1::ModelComparison& c : view.final_report->comparisons()) {
      if (c.model_a() == kModelName[kPair[p].a] && c.model_b() == kModelName[kPair[p].b]) {
        view.pair[p] = {&c, false};
      } else if (view.pair[p].comparison == nullptr && c.model_a() == kModelName[kPair[p].b] &&
                 c.model_b() == kModelName[kPair[p].a]) {
        view.pair[p] = {&c, true};
      }
    }
  }
  return view;
}

}  // namespace

std::optional<double> ReportedLoss(double value) {
  if (!(value > 0)) return std::nullopt;
  return Defined(value);
}

std::optional<double> MeanAuc(const v1::ModelEvaluation* model) {
  if (model == nullptr) return std::nullopt;
  if (std::optional<double> mean = Defined(model->mean_auc()); mean && *mean > 0) return mean;
  // Not filled in: the mean over the labels with a defined AUC.
  double sum = 0;
  int n = 0;
  for (const v1::LabelAuc& label : model->labels()) {
    if (std::isfinite(label.auc())) {
      sum += label.auc();
      ++n;
    }
  }
  if (n == 0) return std::nullopt;
  return sum / n;
}

std::vector<SiteView> ViewsOf(const v1::RunReport& report) {
  std::vector<SiteView> views;
  for (const v1::SiteRunReport& site : report.sites()) views.push_back(ViewOf(site));
  return views;
}

const v1::SiteRunState* RunStateOf(const v1::RunReport& report, const std::string& site_id) {
  for (const v1::SiteRunState& s : report.status().sites()) {
    if (s.site_id() == site_id) return &s;
  }
  return nullptr;
}

SiteSummary SummaryOf(const SiteView& view) {
  SiteSummary s;
  s.site_id = view.site->site_id();
  s.final_evaluation = view.final_report != nullptr;
  if (view.final_report != nullptr) s.test_cases = view.final_report->test_cases();
  s.mean_auc_open_source = MeanAuc(view.model[0]);
  s.mean_auc_global = MeanAuc(view.model[1]);
  s.mean_auc_adapted = MeanAuc(view.model[2]);
  s.mean_auc_local_only = MeanAuc(view.model[kLocalOnly]);
  const ComparisonView& c = view.pair[kAdaptedVsOpenSource];
  for (const std::string& label : view.labels) {
    const v1::LabelAuc* a = view.Auc(0, label);
    const v1::LabelAuc* b = view.Auc(2, label);
    if (a == nullptr || b == nullptr || !Defined(a->auc()) || !Defined(b->auc())) continue;
    ++s.labels_compared;
    if (c.comparison == nullptr) continue;
    if (std::optional<double> p = c.PValue(label); p && *p < kSignificance) {
      if (b->auc() > a->auc()) ++s.improved_significant;
      if (b->auc() < a->auc()) ++s.worsened_significant;
    }
  }
  // Per-label p-values missing (a site sending only counts): fall back to the site's own counts.
  if (c.comparison != nullptr && c.comparison->delong_p_size() == 0) {
    s.improved_significant = c.Improved();
    s.worsened_significant = c.Worsened();
  }
  s.wilcoxon_p = c.Wilcoxon();
  return s;
}

RoundTotals TotalsOf(const v1::RoundInfo& round) {
  RoundTotals t;
  double train = 0, validation = 0;
  int n_train = 0, n_validation = 0;
  for (const v1::UpdateInfo& u : round.updates()) {
    t.bytes += u.bytes();
    if (IsDeclined(u)) {
      ++t.declined;
      continue;
    }
    if (!federation::IsAccepted(u)) {
      ++t.refused;
      continue;
    }
    ++t.accepted;
    t.samples += u.num_samples();
    if (std::isfinite(u.train_loss()) && u.train_loss() > 0) {
      train += u.train_loss();
      ++n_train;
    }
    if (std::isfinite(u.validation_loss()) && u.validation_loss() > 0) {
      validation += u.validation_loss();
      ++n_validation;
    }
  }
  if (n_train > 0) t.mean_train_loss = train / n_train;
  if (n_validation > 0) t.mean_validation_loss = validation / n_validation;
  return t;
}

const v1::ModelEvaluation* FindModel(const v1::MetricsReport* metrics, const std::string& name) {
  if (metrics == nullptr) return nullptr;
  for (const v1::ModelEvaluation& m : metrics->models()) {
    if (m.name() == name) return &m;
  }
  return nullptr;
}

namespace {

// The AUC of `label` in `model`; NaN when missing.
double AucOfLabel(const v1::ModelEvaluation* model, const std::string& label) {
  if (model == nullptr) return std::nan("");
  for (const v1::LabelAuc& l : model->labels()) {
    if (l.label() == label) return l.auc();
  }
  return std::nan("");
}

// The comparison of `name` with "global" in `metrics` (either orientation), summarized for a matrix cell.
void CompareWithGlobal(const v1::MetricsReport* metrics, const std::string& name, CrossCell* cell) {
  if (metrics == nullptr) return;
  for (const v1::ModelComparison& c : metrics->comparisons()) {
    const bool forward = c.model_a() == "global" && c.model_b() == name;
    const bool reversed = c.model_b() == "global" && c.model_a() == name;
    if (!forward && !reversed) continue;
    int compared = 0;
    std::optional<double> min_p;
    double difference = std::nan("");  // Row model minus global, on the label of min_p (NaN: unknown).
    for (int i = 0; i < c.delong_p_size(); ++i) {
      const std::optional<double> p = Defined(c.delong_p(i));
      if (!p) continue;
      ++compared;
      if (!min_p || *p < *min_p) {
        min_p = p;
        difference = std::nan("");
        if (i < c.auc_difference_size() && Defined(c.auc_difference(i))) {
          difference = forward ? c.auc_difference(i) : -c.auc_difference(i);
        } else if (i < c.labels_size()) {  // No differences sent: from the two models' AUCs on that label.
          difference =
              AucOfLabel(FindModel(metrics, name), c.labels(i)) - AucOfLabel(FindModel(metrics, "global"), c.labels(i));
        }
      }
    }
    if (!min_p) return;
    cell->p_vs_global = std::min(1.0, *min_p * compared);
    cell->direction_known = std::isfinite(difference);
    cell->better = difference > 0;
    return;
  }
}

CrossCell Cell(const v1::MetricsReport* metrics, const std::string& name, bool compare) {
  CrossCell cell;
  cell.model = FindModel(metrics, name);
  if (cell.model == nullptr) return cell;
  cell.status = CellStatus::kOk;
  cell.mean_auc = MeanAuc(cell.model);
  if (compare) CompareWithGlobal(metrics, name, &cell);
  return cell;
}

}  // namespace

CrossSiteMatrix CrossSiteOf(const v1::RunReport& report, const std::vector<SiteView>& views) {
  CrossSiteMatrix x;
  x.cross_site_run = report.status().config().cross_site_evaluation();
  std::set<std::string> shared;
  for (const v1::SharedModel& m : report.shared_models()) shared.insert(m.site_id());
  for (const SiteView& v : views) x.sites.push_back(v.site->site_id());
  for (const SiteView& v : views) {
    const std::string& id = v.site->site_id();
    if (x.cross_site_run && shared.count(id) == 0 &&
        (v.final_report == nullptr || !v.final_report->adapted_model_shared())) {
      if (v.final_report != nullptr) x.not_shared.push_back(id);
    }
  }
  const std::set<std::string> declined(x.not_shared.begin(), x.not_shared.end());
  for (const SiteView& row : views) {
    const std::string& of = row.site->site_id();
    x.rows.push_back(absl::StrCat("adapted model of ", of));
    x.row_sites.push_back(of);
    std::vector<CrossCell> cells;
    for (const SiteView& at : views) {
      const std::string& where = at.site->site_id();
      if (of == where) {
        cells.push_back(Cell(at.final_report, "adapted", true));
      } else if (declined.count(of) > 0) {
        CrossCell cell;
        cell.status = CellStatus::kNotShared;
        cells.push_back(cell);
      } else {
        CrossCell cell = Cell(at.cross_report, of, true);
        if (cell.status != CellStatus::kOk) cell = Cell(at.final_report, of, true);
        if (cell.status == CellStatus::kOk) x.evaluated = true;
        cells.push_back(cell);
      }
    }
    x.cells.push_back(std::move(cells));
  }
  for (const char* name : {"global", "open-source"}) {
    x.rows.push_back(name);
    x.row_sites.push_back("");
    std::vector<CrossCell> cells;
    for (const SiteView& at : views) cells.push_back(Cell(at.final_report, name, std::string(name) != "global"));
    x.cells.push_back(std::move(cells));
  }
  return x;
}

bool IsDeclined(const v1::UpdateInfo& update) { return update.upload_status() == v1::UPLOAD_STATUS_DECLINED; }

std::string UpdateStatusText(const v1::UpdateInfo& update) {
  return IsDeclined(update) ? "declined" : federation::DisplayText(update);
}

PrivacyView PrivacyOf(const v1::RunReport& report, const std::vector<SiteView>& views) {
  PrivacyView out;
  for (const SiteView& view : views) {
    SitePrivacy site;
    site.site_id = view.site->site_id();
    for (const v1::MetricsReport& metrics : view.site->metrics()) {
      if (metrics.has_privacy()) site.account = &metrics.privacy();
    }
    out.sites.push_back(std::move(site));
  }
  for (const v1::RoundInfo& r : report.status().rounds()) {
    for (const v1::UpdateInfo& u : r.updates()) {
      if (!IsDeclined(u)) continue;
      out.declined.push_back({r.round(), r.attempt(), u.site_id(), u.message()});
      auto site = std::find_if(out.sites.begin(), out.sites.end(),
                               [&u](const SitePrivacy& s) { return s.site_id == u.site_id(); });
      if (site == out.sites.end()) {  // A site that sent no report at all.
        out.sites.push_back({u.site_id(), nullptr, {}});
        site = out.sites.end() - 1;
      }
      if (std::find(site->declined_rounds.begin(), site->declined_rounds.end(), r.round()) ==
          site->declined_rounds.end()) {
        site->declined_rounds.push_back(r.round());
      }
    }
  }
  for (SitePrivacy& site : out.sites) {
    std::sort(site.declined_rounds.begin(), site.declined_rounds.end());
    if (site.account == nullptr) continue;
    const double epsilon = site.non_private() ? std::numeric_limits<double>::infinity() : site.account->epsilon();
    // A NaN or negative epsilon is not an account: left out of the maximum.
    if (!(epsilon >= 0)) continue;
    out.consortium_epsilon = std::max(out.consortium_epsilon.value_or(0.0), epsilon);
    if (std::isfinite(site.account->delta()) && site.account->delta() > 0) {
      out.delta = std::max(out.delta.value_or(0.0), site.account->delta());
    }
  }
  const std::string& dp = report.status().config().dp();
  if (!dp.empty() && dp != "none") {
    for (const SitePrivacy& site : out.sites) {
      const bool valid = site.account != nullptr && (site.non_private() || site.account->epsilon() >= 0);
      if (valid) continue;
      bool accepted = false;
      for (const v1::RoundInfo& r : report.status().rounds()) {
        for (const v1::UpdateInfo& u : r.updates()) {
          accepted = accepted || (u.site_id() == site.site_id && federation::IsAccepted(u));
        }
      }
      if (accepted) out.missing_accounts.push_back(site.site_id);
    }
    if (!out.missing_accounts.empty()) out.consortium_epsilon.reset();
  }
  out.any = out.consortium_epsilon.has_value() || !out.missing_accounts.empty() || !out.declined.empty() ||
            dp == "dp-sgd" || dp == "dp-fedavg";
  return out;
}

std::string MissingAccountsText(const PrivacyView& view) {
  if (view.complete()) return "";
  std::vector<std::string> names;
  for (const std::string& s : view.missing_accounts) names.push_back(TerminalSafe(s, 64));
  return absl::StrCat("n/a: no privacy account from ", absl::StrJoin(names, ", "),
                      " (site(s) with an accepted update: an older agent or a lost report)");
}

std::string FormatEpsilon(std::optional<double> epsilon) {
  if (!epsilon || std::isnan(*epsilon)) return "n/a";
  if (std::isinf(*epsilon)) return "∞ (non-private)";
  return absl::StrFormat("%.4g", *epsilon);
}

std::string RunLine(const v1::RunStatus& status) {
  const std::string state = federation::DisplayText(status);
  return absl::StrCat("run ", TerminalSafe(status.run_id()),
                      status.name().empty() ? "" : absl::StrCat(" \"", TerminalSafe(status.name()), "\""), " (",
                      state.empty() ? "unknown" : TerminalSafe(state), ", ",
                      status.rounds_size() == 0 ? 0 : status.current_round(), " of ", status.config().rounds(),
                      " rounds)");
}

}  // namespace fedtune::admin::consortium
