#include "coordinator/cli/consortium_report.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/html/html.h"
#include "common/io/file_util.h"
#include "common/status_macros.h"
#include "coordinator/cli/report_format.h"
#include "coordinator/cli/terminal_text.h"
#include "coordinator/cli/text_table.h"
#include "nlohmann/json.hpp"

namespace fedtune::admin {
namespace {

using Json = nlohmann::ordered_json;
using html::PageEnd;
using html::PageStart;
using html::ReportStyle;

constexpr char kArrow[] = "\u2192";
constexpr char kEnDash[] = "\u2013";
constexpr char kMinus[] = "\u2212";

// The three models of a final evaluation, in the report's order.
constexpr int kModels = 3;
constexpr const char* kModelName[kModels] = {"open-source", "global", "adapted"};  // ModelEvaluation.name
constexpr const char* kModelKey[kModels] = {"open_source", "global", "adapted"};   // JSON keys
constexpr const char* kModelTitle[kModels] = {"Open-source", "Federated global", "Locally adapted"};

// The three comparisons: model b against model a.
struct PairSpec {
  int a;
  int b;
  const char* key;
  const char* title;
};
constexpr int kPairs = 3;
constexpr PairSpec kPair[kPairs] = {{0, 1, "global_vs_open_source", "global vs open-source"},
                                    {0, 2, "adapted_vs_open_source", "adapted vs open-source"},
                                    {1, 2, "adapted_vs_global", "adapted vs global"}};
constexpr int kAdaptedVsOpenSource = 1;

Json Num(std::optional<double> value) { return value ? Json(*value) : Json(nullptr); }
Json Num(double value) { return Num(Defined(value)); }

// Losses are positive; 0 means "not reported" (proto3's default).
std::optional<double> Loss(double value) {
  if (!(value > 0)) return std::nullopt;
  return Defined(value);
}

// A comparison found in a final report, in either orientation.
struct ComparisonView {
  const v1::ModelComparison* comparison = nullptr;
  bool reversed = false;  // Stored as a-vs-b instead of b-vs-a: improved and worsened swap.

  std::optional<double> PValue(const std::string& label) const {
    if (comparison == nullptr) return std::nullopt;
    for (int i = 0; i < comparison->labels_size() && i < comparison->delong_p_size(); ++i) {
      if (comparison->labels(i) == label) return Defined(comparison->delong_p(i));
    }
    return std::nullopt;
  }
  std::optional<double> Wilcoxon() const { return comparison ? Defined(comparison->wilcoxon_p()) : std::nullopt; }
  int Improved() const {
    if (comparison == nullptr) return 0;
    return reversed ? comparison->worsened_significant() : comparison->improved_significant();
  }
  int Worsened() const {
    if (comparison == nullptr) return 0;
    return reversed ? comparison->improved_significant() : comparison->worsened_significant();
  }
};

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

// What the report needs of one site, looked up once.
struct SiteView {
  const v1::SiteRunReport* site = nullptr;
  const v1::MetricsReport* final_report = nullptr;
  const v1::ModelEvaluation* model[kModels] = {nullptr, nullptr, nullptr};
  ComparisonView pair[kPairs];
  std::vector<std::string> labels;  // Union of the three models' labels, in first-seen order.
  std::map<std::string, const v1::LabelAuc*> label_auc[kModels];
  std::vector<const v1::MetricsReport*> rounds;  // kind "round", by round.

  const v1::LabelAuc* Auc(int m, const std::string& label) const {
    auto it = label_auc[m].find(label);
    return it == label_auc[m].end() ? nullptr : it->second;
  }
};

SiteView ViewOf(const v1::SiteRunReport& site) {
  SiteView view;
  view.site = &site;
  for (const v1::MetricsReport& metrics : site.metrics()) {
    if (metrics.kind() == "final") view.final_report = &metrics;  // The last one wins.
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

// Aggregates of one round attempt's updates.
struct RoundTotals {
  int accepted = 0;
  int refused = 0;
  int64_t samples = 0;
  int64_t bytes = 0;
  std::optional<double> mean_train_loss;
  std::optional<double> mean_validation_loss;
};

RoundTotals TotalsOf(const v1::RoundInfo& round) {
  RoundTotals t;
  double train = 0, validation = 0;
  int n_train = 0, n_validation = 0;
  for (const v1::UpdateInfo& u : round.updates()) {
    t.bytes += u.bytes();
    if (u.status() != "accepted") {
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

// The cross-site matrix: models named after other sites, found in each site's final report.
struct CrossSite {
  std::vector<std::string> sites;
  // (model of, evaluated at) -> evaluation. The diagonal is the site's own "adapted" model.
  std::map<std::pair<std::string, std::string>, const v1::ModelEvaluation*> cells;
  bool evaluated = false;  // At least one off-diagonal cell.
};

CrossSite CrossSiteOf(const std::vector<SiteView>& views) {
  CrossSite cross;
  std::set<std::string> ids;
  for (const SiteView& v : views) {
    cross.sites.push_back(v.site->site_id());
    ids.insert(v.site->site_id());
  }
  for (const SiteView& v : views) {
    const std::string& at = v.site->site_id();
    if (v.model[2] != nullptr) cross.cells[{at, at}] = v.model[2];
    if (v.final_report == nullptr) continue;
    for (const v1::ModelEvaluation& m : v.final_report->models()) {
      if (m.name() != at && ids.count(m.name()) > 0) {
        cross.cells[{m.name(), at}] = &m;
        cross.evaluated = true;
      }
    }
  }
  return cross;
}

constexpr char kNoCrossSite[] =
    "No cross-site evaluation was run: no site's final report holds an evaluation of another site's adapted model.";

// ----------------------------------------------------------------------------------------------------------------
// HTML

// The consortium page's rules, after the house style (html::ReportStyle).
constexpr char kStyle[] = R"css(h3 { font-size: 1.08em; margin-top: 1.4em; }
.warning { background: #fff4e5; border-left: 4px solid #e69f00; padding: 0.6em 1em; }
table { margin: 0.4em 0; }
td.text { text-align: left; white-space: normal; }
td.diag { background: #f3f6fa; }
code { font-size: 0.92em; }
svg.chart { font-size: 11px; font-family: inherit; }
svg.chart text { fill: #333; }
svg.chart .grid { stroke: #e4e4e4; stroke-width: 1; }
svg.chart .axis { stroke: #555; stroke-width: 1; }
svg.chart .m0 { fill: #0072b2; }
svg.chart .m1 { fill: #e69f00; }
svg.chart .m2 { fill: #009e73; }
)css";

std::string Td(const std::string& text) { return absl::StrCat("<td>", HtmlEscape(text), "</td>"); }
std::string TdText(const std::string& text) { return absl::StrCat("<td class=\"text\">", HtmlEscape(text), "</td>"); }
std::string TdNa() { return "<td class=\"na\">n/a</td>"; }

std::string AucTd(const v1::LabelAuc* auc) {
  if (auc == nullptr || !Defined(auc->auc())) return TdNa();
  std::string cell = absl::StrFormat("%.3f", auc->auc());
  if (Defined(auc->ci_low()) && Defined(auc->ci_high()) && auc->ci_high() > 0) {
    absl::StrAppend(&cell, " <span class=\"ci\">(", absl::StrFormat("%.3f", auc->ci_low()), kEnDash,
                    absl::StrFormat("%.3f", auc->ci_high()), ")</span>");
  }
  return absl::StrCat("<td>", cell, "</td>");
}

std::string PTd(std::optional<double> p) { return p ? Td(FormatP(p)) : TdNa(); }
std::string AucValueTd(std::optional<double> auc) { return auc ? Td(FormatAuc(auc)) : TdNa(); }

// Grouped bars: mean AUC of the three models per site.
std::string MeanAucChart(const std::vector<SiteSummary>& summaries) {
  std::vector<double> values;
  for (const SiteSummary& s : summaries) {
    for (const std::optional<double>& v : {s.mean_auc_open_source, s.mean_auc_global, s.mean_auc_adapted}) {
      if (v) values.push_back(*v);
    }
  }
  if (values.empty()) return "";
  double low = std::floor(*std::min_element(values.begin(), values.end()) * 10 - 0.5) / 10;
  low = std::clamp(low, 0.0, 0.9);
  const double high = 1.0;
  constexpr double kLeft = 44, kTop = 10, kPlotH = 180, kBar = 16, kGap = 22;
  const double group = 3 * kBar + kGap;
  constexpr double kLegendStep = 130;
  const double width = std::max(kLeft + group * summaries.size(), kLeft + kModels * kLegendStep) + 10;
  const double height = kTop + kPlotH + 62;
  auto y_of = [&](double v) { return kTop + (1 - (std::clamp(v, low, high) - low) / (high - low)) * kPlotH; };
  std::string svg = absl::StrFormat(
      "<svg class=\"chart\" width=\"%g\" height=\"%g\" viewBox=\"0 0 %g %g\" role=\"img\" "
      "aria-label=\"Mean AUC per site\">\n",
      width, height, width, height);
  for (int i = 0; i <= 4; ++i) {
    const double v = low + (high - low) * i / 4;
    absl::StrAppend(&svg, absl::StrFormat("<line class=\"grid\" x1=\"%g\" y1=\"%.1f\" x2=\"%g\" y2=\"%.1f\"/>"
                                          "<text x=\"%g\" y=\"%.1f\" text-anchor=\"end\">%.2f</text>\n",
                                          kLeft, y_of(v), width - 10, y_of(v), kLeft - 4, y_of(v) + 4, v));
  }
  for (size_t i = 0; i < summaries.size(); ++i) {
    const SiteSummary& s = summaries[i];
    const double x0 = kLeft + kGap / 2 + group * i;
    const std::optional<double> v[kModels] = {s.mean_auc_open_source, s.mean_auc_global, s.mean_auc_adapted};
    for (int m = 0; m < kModels; ++m) {
      if (!v[m]) continue;
      const double y = y_of(*v[m]);
      absl::StrAppend(&svg, absl::StrFormat("<rect class=\"m%d\" x=\"%.1f\" y=\"%.1f\" width=\"%g\" height=\"%.1f\">"
                                            "<title>%s, %s: %.3f</title></rect>\n",
                                            m, x0 + m * kBar, y, kBar - 2, kTop + kPlotH - y, HtmlEscape(s.site_id),
                                            kModelTitle[m], *v[m]));
    }
    absl::StrAppend(&svg, absl::StrFormat("<text x=\"%.1f\" y=\"%g\" text-anchor=\"middle\">%s</text>\n",
                                          x0 + 1.5 * kBar, kTop + kPlotH + 14, HtmlEscape(s.site_id)));
  }
  absl::StrAppend(&svg, absl::StrFormat("<line class=\"axis\" x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\"/>\n", kLeft,
                                        kTop + kPlotH, width - 10, kTop + kPlotH));
  for (int m = 0; m < kModels; ++m) {
    const double x = kLeft + m * kLegendStep;
    absl::StrAppend(&svg, absl::StrFormat("<rect class=\"m%d\" x=\"%g\" y=\"%g\" width=\"12\" height=\"12\"/>"
                                          "<text x=\"%g\" y=\"%g\">%s</text>\n",
                                          m, x, kTop + kPlotH + 32, x + 16, kTop + kPlotH + 42, kModelTitle[m]));
  }
  absl::StrAppend(&svg, "</svg>\n");
  return svg;
}

void AppendSummarySection(std::string* html, const std::vector<SiteSummary>& summaries) {
  absl::StrAppend(html, "<h2>Summary per site</h2>\n<table>\n<thead><tr><th>Site</th><th>Test cases</th>",
                  "<th>Mean AUC<br>open-source</th><th>Mean AUC<br>federated global</th>",
                  "<th>Mean AUC<br>locally adapted</th><th>Labels improved<br>(adapted vs open-source, p &lt; ",
                  kSignificance, ")</th><th>Labels worse</th><th>Wilcoxon p<br>(adapted vs open-source)</th>",
                  "</tr></thead>\n<tbody>\n");
  for (const SiteSummary& s : summaries) {
    const bool better = s.mean_auc_adapted && s.mean_auc_open_source && *s.mean_auc_adapted > *s.mean_auc_open_source;
    const bool worse = s.mean_auc_adapted && s.mean_auc_open_source && *s.mean_auc_adapted < *s.mean_auc_open_source;
    absl::StrAppend(html, "<tr",
                    better  ? " class=\"better\""
                    : worse ? " class=\"worse\""
                            : "",
                    "><td class=\"label\">", HtmlEscape(s.site_id), "</td>",
                    s.final_evaluation ? Td(absl::StrCat(s.test_cases)) : TdNa(), AucValueTd(s.mean_auc_open_source),
                    AucValueTd(s.mean_auc_global), AucValueTd(s.mean_auc_adapted),
                    s.final_evaluation ? Td(absl::StrCat(s.improved_significant, " of ", s.labels_compared)) : TdNa(),
                    s.final_evaluation ? Td(absl::StrCat(s.worsened_significant)) : TdNa(), PTd(s.wilcoxon_p),
                    "</tr>\n");
  }
  absl::StrAppend(html, "</tbody>\n</table>\n");
  absl::StrAppend(html, MeanAucChart(summaries));
  absl::StrAppend(html,
                  "<p class=\"note\">Mean AUC over the labels with both classes in the site's test split. Rows in "
                  "green (red): the locally adapted model has a higher (lower) mean AUC than the open-source model. "
                  "Labels improved: DeLong p &lt; ",
                  kSignificance,
                  " with the adapted model's AUC higher. Wilcoxon: signed-rank test over the per-label AUCs. n/a: "
                  "the site sent no final evaluation.</p>\n");
}

void AppendSiteSection(std::string* html, const SiteView& view, const v1::SiteRunState* run_state) {
  const v1::SiteRunReport& site = *view.site;
  absl::StrAppend(html, "<h3 id=\"site-", HtmlEscape(site.site_id()), "\">Site ", HtmlEscape(site.site_id()),
                  "</h3>\n");
  const v1::DatasetSummary& d = site.dataset();
  absl::StrAppend(html, "<p class=\"note\">Data: ", d.images(), " images (train ", d.train_images(), ", validation ",
                  d.validation_images(), ", test ", d.test_images(), ")");
  if (view.final_report != nullptr)
    absl::StrAppend(html, "; final evaluation on ", view.final_report->test_cases(), " test cases");
  if (run_state != nullptr) {
    absl::StrAppend(html, "; traffic ", HtmlEscape(FormatBytes(run_state->bytes_down())), " down, ",
                    HtmlEscape(FormatBytes(run_state->bytes_up())), " up");
  }
  absl::StrAppend(html, ".</p>\n");
  if (view.final_report == nullptr) {
    absl::StrAppend(html,
                    "<p class=\"warning\">This site sent no final evaluation (MetricsReport of kind "
                    "&quot;final&quot;): no per-label AUCs to show.</p>\n");
  } else {
    absl::StrAppend(html, "<table>\n<thead><tr><th rowspan=\"2\">Label</th><th rowspan=\"2\">n+</th>",
                    "<th rowspan=\"2\">n", kMinus, "</th><th colspan=\"3\">AUC (95% CI)</th>",
                    "<th colspan=\"3\">DeLong p</th></tr>\n<tr>");
    for (int m = 0; m < kModels; ++m) absl::StrAppend(html, "<th>", kModelTitle[m], "</th>");
    for (int p = 0; p < kPairs; ++p) absl::StrAppend(html, "<th>", kPair[p].title, "</th>");
    absl::StrAppend(html, "</tr></thead>\n<tbody>\n");
    for (const std::string& label : view.labels) {
      const v1::LabelAuc* aucs[kModels] = {view.Auc(0, label), view.Auc(1, label), view.Auc(2, label)};
      const v1::LabelAuc* any = aucs[0] ? aucs[0] : aucs[1] ? aucs[1] : aucs[2];
      std::string row_class;
      const std::optional<double> p = view.pair[kAdaptedVsOpenSource].PValue(label);
      if (p && *p < kSignificance && aucs[0] && aucs[2] && Defined(aucs[0]->auc()) && Defined(aucs[2]->auc())) {
        if (aucs[2]->auc() > aucs[0]->auc()) row_class = " class=\"better\"";
        if (aucs[2]->auc() < aucs[0]->auc()) row_class = " class=\"worse\"";
      }
      absl::StrAppend(html, "<tr", row_class, "><td class=\"label\">", HtmlEscape(label), "</td>",
                      Td(absl::StrCat(any->positives())), Td(absl::StrCat(any->negatives())));
      for (int m = 0; m < kModels; ++m) absl::StrAppend(html, AucTd(aucs[m]));
      for (int q = 0; q < kPairs; ++q) absl::StrAppend(html, PTd(view.pair[q].PValue(label)));
      absl::StrAppend(html, "</tr>\n");
    }
    absl::StrAppend(html, "<tr><td class=\"label\">Mean</td><td></td><td></td>");
    for (int m = 0; m < kModels; ++m) absl::StrAppend(html, AucValueTd(MeanAuc(view.model[m])));
    absl::StrAppend(html, "<td colspan=\"3\"></td></tr>\n</tbody>\n</table>\n<ul>\n");
    for (int q = 0; q < kPairs; ++q) {
      const ComparisonView& c = view.pair[q];
      if (c.comparison == nullptr) {
        absl::StrAppend(html, "<li>", kPair[q].title, ": not reported</li>\n");
        continue;
      }
      absl::StrAppend(html, "<li>", kPair[q].title, ": better on ", c.Improved(), ", worse on ", c.Worsened(),
                      " label(s) at p &lt; ", kSignificance, "; Wilcoxon p ", HtmlEscape(FormatP(c.Wilcoxon())),
                      "</li>\n");
    }
    absl::StrAppend(html, "</ul>\n");
  }
  if (!view.rounds.empty()) {
    absl::StrAppend(html, "<table>\n<thead><tr><th>Round</th><th>Train loss</th><th>Validation loss</th>",
                    "<th>Mean AUC global</th><th>Mean AUC after local fine-tuning</th></tr></thead>\n<tbody>\n");
    for (const v1::MetricsReport* r : view.rounds) {
      absl::StrAppend(html, "<tr>", Td(absl::StrCat(r->round())), Td(FormatLoss(Loss(r->train_loss()))),
                      Td(FormatLoss(Loss(r->validation_loss()))), AucValueTd(MeanAuc(FindModel(r, "global"))),
                      AucValueTd(MeanAuc(FindModel(r, "local"))), "</tr>\n");
    }
    absl::StrAppend(html, "</tbody>\n</table>\n");
  }
}

// One line per site: the training loss it reported for each round (MetricsReports of kind "round").
std::string LossChart(const std::vector<SiteView>& views) {
  struct Series {
    std::string site;
    std::vector<std::pair<int, double>> points;
  };
  std::vector<Series> series;
  int max_round = 1;
  double max_loss = 0;
  for (const SiteView& v : views) {
    Series s{v.site->site_id(), {}};
    for (const v1::MetricsReport* r : v.rounds) {
      if (std::optional<double> loss = Loss(r->train_loss())) {
        s.points.push_back({r->round(), *loss});
        max_round = std::max(max_round, r->round());
        max_loss = std::max(max_loss, *loss);
      }
    }
    if (!s.points.empty()) series.push_back(std::move(s));
  }
  if (series.empty()) return "";
  constexpr double kLeft = 52, kTop = 10, kW = 360, kH = 160;
  constexpr const char* kColors[] = {"#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442"};
  const double legend_rows = static_cast<double>(series.size());
  const double width = kLeft + kW + 20, height = kTop + kH + 40 + 16 * legend_rows;
  auto x_of = [&](int round) { return kLeft + (max_round == 1 ? kW / 2 : (round - 1) * kW / (max_round - 1)); };
  auto y_of = [&](double loss) { return kTop + (1 - loss / max_loss) * kH; };
  std::string svg = absl::StrFormat(
      "<svg class=\"chart\" width=\"%g\" height=\"%g\" viewBox=\"0 0 %g %g\" role=\"img\" "
      "aria-label=\"Training loss per round and site\">\n",
      width, height, width, height);
  for (int i = 0; i <= 4; ++i) {
    const double v = max_loss * i / 4;
    absl::StrAppend(&svg, absl::StrFormat("<line class=\"grid\" x1=\"%g\" y1=\"%.1f\" x2=\"%g\" y2=\"%.1f\"/>"
                                          "<text x=\"%g\" y=\"%.1f\" text-anchor=\"end\">%.3g</text>\n",
                                          kLeft, y_of(v), kLeft + kW, y_of(v), kLeft - 4, y_of(v) + 4, v));
  }
  for (int round = 1; round <= max_round; ++round) {
    absl::StrAppend(&svg, absl::StrFormat("<text x=\"%.1f\" y=\"%g\" text-anchor=\"middle\">%d</text>\n", x_of(round),
                                          kTop + kH + 14, round));
  }
  absl::StrAppend(&svg, absl::StrFormat("<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">round</text>\n", kLeft + kW / 2,
                                        kTop + kH + 28));
  for (size_t i = 0; i < series.size(); ++i) {
    const char* color = kColors[i % (sizeof(kColors) / sizeof(kColors[0]))];
    std::string points;
    for (const auto& [round, loss] : series[i].points) {
      absl::StrAppend(&points, points.empty() ? "" : " ", absl::StrFormat("%.1f,%.1f", x_of(round), y_of(loss)));
      absl::StrAppend(&svg, absl::StrFormat("<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"><title>%s, "
                                            "round %d: %.4f</title></circle>\n",
                                            x_of(round), y_of(loss), color, HtmlEscape(series[i].site), round, loss));
    }
    absl::StrAppend(&svg, absl::StrFormat("<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"%s\"/>\n",
                                          color, points));
    const double y = kTop + kH + 40 + 16 * static_cast<double>(i);
    absl::StrAppend(&svg,
                    absl::StrFormat("<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"%s\" "
                                    "stroke-width=\"2\"/><text x=\"%g\" y=\"%g\">%s</text>\n",
                                    kLeft, y - 4, kLeft + 22, y - 4, color, kLeft + 28, y, HtmlEscape(series[i].site)));
  }
  absl::StrAppend(&svg, "</svg>\n");
  return svg;
}

void AppendRoundsSection(std::string* html, const v1::RunStatus& status, const std::vector<SiteView>& views) {
  absl::StrAppend(html, "<h2>Rounds</h2>\n");
  if (status.rounds_size() == 0) {
    absl::StrAppend(html, "<p>No round was opened.</p>\n");
    return;
  }
  absl::StrAppend(html, "<table>\n<thead><tr><th>Round</th><th>Attempt</th><th>State</th><th>Accepted</th>",
                  "<th>Refused</th><th>Samples</th><th>Mean train loss</th><th>Mean validation loss</th>",
                  "<th>Bytes up</th><th>Model sent</th><th>Aggregated model</th><th>Note</th></tr></thead>\n<tbody>\n");
  for (const v1::RoundInfo& r : status.rounds()) {
    const RoundTotals t = TotalsOf(r);
    absl::StrAppend(html, "<tr>", Td(absl::StrCat(r.round())), Td(absl::StrCat(r.attempt())), TdText(r.state()),
                    Td(absl::StrCat(t.accepted)), Td(absl::StrCat(t.refused)), Td(absl::StrCat(t.samples)),
                    Td(FormatLoss(t.mean_train_loss)), Td(FormatLoss(t.mean_validation_loss)), Td(FormatBytes(t.bytes)),
                    "<td><code>", HtmlEscape(ShortDigest(r.model_digest())), "</code></td><td><code>",
                    HtmlEscape(ShortDigest(r.result_digest())), "</code></td>", TdText(r.message()), "</tr>\n");
  }
  absl::StrAppend(html, "</tbody>\n</table>\n");
  if (std::string chart = LossChart(views); !chart.empty()) {
    absl::StrAppend(html,
                    "<p class=\"note\">Training loss (mean BCE of the last local epoch) each site reported per "
                    "round:</p>\n",
                    chart);
  }
  absl::StrAppend(html, "<h3>Updates</h3>\n<table>\n<thead><tr><th>Round</th><th>Attempt</th>",
                  "<th>Site</th><th>Status</th><th>Samples</th><th>Bytes</th><th>L2 norm</th><th>Train loss</th>",
                  "<th>Validation loss</th><th>Message</th></tr></thead>\n<tbody>\n");
  for (const v1::RoundInfo& r : status.rounds()) {
    for (const v1::UpdateInfo& u : r.updates()) {
      absl::StrAppend(html, "<tr>", Td(absl::StrCat(r.round())), Td(absl::StrCat(r.attempt())), TdText(u.site_id()),
                      TdText(u.status()), Td(absl::StrCat(u.num_samples())), Td(FormatBytes(u.bytes())),
                      Td(absl::StrFormat("%.4g", u.l2_norm())), Td(FormatLoss(Loss(u.train_loss()))),
                      Td(FormatLoss(Loss(u.validation_loss()))), TdText(u.message()), "</tr>\n");
    }
  }
  absl::StrAppend(html, "</tbody>\n</table>\n");
}

void AppendCrossSiteSection(std::string* html, const CrossSite& cross) {
  absl::StrAppend(html, "<h2>Cross-site evaluation</h2>\n");
  if (!cross.evaluated) {
    absl::StrAppend(html, "<p>", HtmlEscape(kNoCrossSite), "</p>\n");
    return;
  }
  absl::StrAppend(html, "<p class=\"note\">Mean AUC of each site's locally adapted model (rows) on each site's test ",
                  "split (columns). The diagonal is the site's own model on its own data; n/a: not evaluated ",
                  "there.</p>\n<table>\n<thead><tr><th>Model of \\ evaluated at</th>");
  for (const std::string& at : cross.sites) absl::StrAppend(html, "<th>", HtmlEscape(at), "</th>");
  absl::StrAppend(html, "</tr></thead>\n<tbody>\n");
  for (const std::string& of : cross.sites) {
    absl::StrAppend(html, "<tr><td class=\"label\">", HtmlEscape(of), "</td>");
    for (const std::string& at : cross.sites) {
      auto it = cross.cells.find({of, at});
      if (it == cross.cells.end() || !MeanAuc(it->second)) {
        absl::StrAppend(html, TdNa());
      } else {
        absl::StrAppend(html, of == at ? "<td class=\"diag\">" : "<td>", FormatAuc(MeanAuc(it->second)), "</td>");
      }
    }
    absl::StrAppend(html, "</tr>\n");
  }
  absl::StrAppend(html, "</tbody>\n</table>\n");
}

// One line naming the run; its strings pass through TerminalSafe (the HTML escapes the result again).
std::string RunLine(const v1::RunStatus& status) {
  return absl::StrCat("run ", TerminalSafe(status.run_id()),
                      status.name().empty() ? "" : absl::StrCat(" \"", TerminalSafe(status.name()), "\""), " (",
                      status.state().empty() ? "unknown" : TerminalSafe(status.state()), ", ",
                      status.rounds_size() == 0 ? 0 : status.current_round(), " of ", status.config().rounds(),
                      " rounds)");
}

}  // namespace

std::vector<SiteSummary> SummarizeSites(const v1::RunReport& report) {
  std::vector<SiteSummary> out;
  for (const SiteView& view : ViewsOf(report)) out.push_back(SummaryOf(view));
  return out;
}

std::string ConsortiumReportJson(const v1::RunReport& report) {
  const v1::RunStatus& status = report.status();
  const std::vector<SiteView> views = ViewsOf(report);
  Json root;
  root["format"] = "fedtune-consortium-report-v1";
  Json run;
  run["id"] = status.run_id();
  run["name"] = status.name();
  run["state"] = status.state();
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
  root["run"] = std::move(run);

  Json summary = Json::array();
  for (const SiteView& view : views) {
    const SiteSummary s = SummaryOf(view);
    Json row;
    row["site_id"] = s.site_id;
    row["test_cases"] = s.test_cases;
    row["final_evaluation"] = s.final_evaluation;
    row["mean_auc"] = {{"open_source", Num(s.mean_auc_open_source)},
                       {"global", Num(s.mean_auc_global)},
                       {"adapted", Num(s.mean_auc_adapted)}};
    row["labels_compared"] = s.labels_compared;
    row["improved_significant"] = s.improved_significant;
    row["worsened_significant"] = s.worsened_significant;
    row["wilcoxon_p"] = Num(s.wilcoxon_p);
    summary.push_back(std::move(row));
  }
  root["summary"] = std::move(summary);

  Json sites = Json::array();
  for (const SiteView& view : views) {
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
    site["labels"] = std::move(labels);
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
                        {"train_loss", Num(Loss(r->train_loss()))},
                        {"validation_loss", Num(Loss(r->validation_loss()))},
                        {"mean_auc_global", Num(MeanAuc(FindModel(r, "global")))},
                        {"mean_auc_local", Num(MeanAuc(FindModel(r, "local")))}});
    }
    site["rounds"] = std::move(rounds);
    const v1::SiteRunState* state = RunStateOf(report, view.site->site_id());
    site["bytes_down"] = state ? state->bytes_down() : 0;
    site["bytes_up"] = state ? state->bytes_up() : 0;
    sites.push_back(std::move(site));
  }
  root["sites"] = std::move(sites);

  Json rounds = Json::array();
  for (const v1::RoundInfo& r : status.rounds()) {
    const RoundTotals t = TotalsOf(r);
    Json row;
    row["round"] = r.round();
    row["attempt"] = r.attempt();
    row["state"] = r.state();
    row["model_digest"] = r.model_digest();
    row["result_digest"] = r.result_digest();
    row["opened_ms"] = r.opened_ms();
    row["closed_ms"] = r.closed_ms();
    row["message"] = r.message();
    row["accepted"] = t.accepted;
    row["refused"] = t.refused;
    row["samples"] = t.samples;
    row["bytes_up"] = t.bytes;
    row["mean_train_loss"] = Num(t.mean_train_loss);
    row["mean_validation_loss"] = Num(t.mean_validation_loss);
    Json updates = Json::array();
    for (const v1::UpdateInfo& u : r.updates()) {
      updates.push_back({{"site_id", u.site_id()},
                         {"status", u.status()},
                         {"num_samples", u.num_samples()},
                         {"bytes", u.bytes()},
                         {"l2_norm", Num(u.l2_norm())},
                         {"train_loss", Num(Loss(u.train_loss()))},
                         {"validation_loss", Num(Loss(u.validation_loss()))},
                         {"message", u.message()}});
    }
    row["updates"] = std::move(updates);
    rounds.push_back(std::move(row));
  }
  root["rounds"] = std::move(rounds);

  const CrossSite cross = CrossSiteOf(views);
  Json cs;
  cs["evaluated"] = cross.evaluated;
  cs["note"] = cross.evaluated ? "" : kNoCrossSite;
  cs["sites"] = cross.sites;
  Json matrix = Json::array();
  for (const auto& [key, model] : cross.cells) {
    Json labels = Json::array();
    for (const v1::LabelAuc& l : model->labels()) labels.push_back({{"label", l.label()}, {"auc", Num(l.auc())}});
    matrix.push_back(
        {{"model_of", key.first}, {"evaluated_at", key.second}, {"mean_auc", Num(MeanAuc(model))}, {"labels", labels}});
  }
  cs["matrix"] = std::move(matrix);
  root["cross_site"] = std::move(cs);
  // Site-supplied strings may be invalid UTF-8, which dump() would throw on: replaced with U+FFFD instead.
  return root.dump(2, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace) + "\n";
}

std::string ConsortiumReportHtml(const v1::RunReport& report) {
  const v1::RunStatus& status = report.status();
  const std::vector<SiteView> views = ViewsOf(report);
  std::vector<SiteSummary> summaries;
  for (const SiteView& v : views) summaries.push_back(SummaryOf(v));
  const std::string title = absl::StrCat("fedtune consortium report: run ", status.run_id());
  std::string html;
  absl::StrAppend(&html, PageStart(HtmlEscape(title), absl::StrCat(ReportStyle(80), kStyle)));
  int with_both = 0, adapted_better = 0;
  for (const SiteSummary& s : summaries) {
    if (!s.mean_auc_adapted || !s.mean_auc_open_source) continue;
    ++with_both;
    if (*s.mean_auc_adapted > *s.mean_auc_open_source) ++adapted_better;
  }
  std::string headline;
  if (summaries.empty()) {
    headline = "No site took part in this run.";
  } else if (with_both == 0) {
    headline = "No site sent a final evaluation: the models cannot be compared.";
  } else {
    headline =
        absl::StrCat("The locally adapted model beats the open-source model on mean AUC at ", adapted_better, " of ",
                     with_both, " site", with_both == 1 ? "" : "s", " with a final evaluation",
                     adapted_better == with_both ? "." : absl::StrCat(" (not at ", with_both - adapted_better, ")."));
  }
  absl::StrAppend(&html, "<p class=\"", adapted_better == with_both && with_both > 0 ? "summary" : "warning", "\">",
                  HtmlEscape(headline), "</p>\n");
  absl::StrAppend(&html, "<ul>\n<li>Run: ", HtmlEscape(RunLine(status)));
  if (!status.message().empty()) absl::StrAppend(&html, " ", kEnDash, " ", HtmlEscape(status.message()));
  absl::StrAppend(&html, "</li>\n<li>Started ", HtmlEscape(FormatTimeMs(status.started_ms())), ", finished ",
                  HtmlEscape(FormatTimeMs(status.finished_ms())), "</li>\n<li>Aggregation ",
                  HtmlEscape(status.config().aggregation()), ", compression ",
                  HtmlEscape(status.config().compression()), ", ", status.config().local_epochs(),
                  " local epoch(s) per round, learning rate ", absl::StrFormat("%g", status.config().learning_rate()),
                  "</li>\n<li>Open-source model <code>", HtmlEscape(ShortDigest(status.base_model_digest())),
                  "</code> ", kArrow, " final global model <code>",
                  HtmlEscape(ShortDigest(status.final_model_digest())),
                  "</code></li>\n<li>Traffic: ", HtmlEscape(FormatBytes(status.bytes_down())), " down to the sites, ",
                  HtmlEscape(FormatBytes(status.bytes_up())),
                  " up to the coordinator (model weights and deltas only; no image left a site)</li>\n</ul>\n");
  AppendSummarySection(&html, summaries);
  absl::StrAppend(&html,
                  "<h2>Per site and label</h2>\n<p class=\"note\">Each site evaluated the three models on its "
                  "own test split: the open-source model the run started from, the federated global model "
                  "of the last round and the site's locally adapted model (its best local fine-tuning). AUC "
                  "with DeLong 95% confidence interval; DeLong p: paired two-sided test of two models' AUCs on "
                  "the same cases. Rows in green (red): adapted significantly better (worse) than "
                  "open-source.</p>\n");
  for (const SiteView& v : views) AppendSiteSection(&html, v, RunStateOf(report, v.site->site_id()));
  AppendRoundsSection(&html, status, views);
  AppendCrossSiteSection(&html, CrossSiteOf(views));
  absl::StrAppend(&html, "<p class=\"note\">Generated by fedtune from the coordinator's records. Only summary ",
                  "metrics reach the coordinator: no image or per-case prediction is in this report.</p>\n", PageEnd());
  return html;
}

std::string SiteSummaryText(const v1::RunReport& report) {
  TextTable table({"site", "test cases", "mean AUC open-source -> global -> adapted", "improved p<0.05", "worse p<0.05",
                   "Wilcoxon p"},
                  {false, true, false, true, true, true});
  for (const SiteSummary& s : SummarizeSites(report)) {
    if (!s.final_evaluation) {
      table.AddRow({s.site_id, "n/a", "n/a (no final evaluation)", "n/a", "n/a", "n/a"});
      continue;
    }
    table.AddRow({s.site_id, absl::StrCat(s.test_cases),
                  absl::StrCat(FormatAuc(s.mean_auc_open_source), " -> ", FormatAuc(s.mean_auc_global), " -> ",
                               FormatAuc(s.mean_auc_adapted)),
                  absl::StrCat(s.improved_significant, "/", s.labels_compared), absl::StrCat(s.worsened_significant),
                  FormatP(s.wilcoxon_p)});
  }
  return absl::StrCat("Consortium report: ", RunLine(report.status()), "\n", table.Render(),
                      "(improved/worse: labels where the adapted model's AUC differs from the open-source model's at "
                      "DeLong p < 0.05; Wilcoxon: adapted vs open-source over the labels)\n");
}

absl::StatusOr<ReportFiles> WriteConsortiumReport(const v1::RunReport& report, const std::string& out_dir) {
  RETURN_IF_ERROR(io::MakeDirectories(out_dir));
  ReportFiles files{out_dir + "/report.json", out_dir + "/report.html"};
  RETURN_IF_ERROR(io::WriteFileAtomically(files.json_path, ConsortiumReportJson(report)));
  RETURN_IF_ERROR(io::WriteFileAtomically(files.html_path, ConsortiumReportHtml(report)));
  return files;
}

}  // namespace fedtune::admin
