// report.html of the consortium report: one self-contained page (inline CSS and SVG, no script).
#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/federation/states.h"
#include "common/html/html.h"
#include "coordinator/cli/consortium_reference.h"
#include "coordinator/cli/consortium_report.h"
#include "coordinator/cli/consortium_view.h"
#include "coordinator/cli/report_format.h"

namespace fedtune::admin {
namespace consortium {
namespace {

using html::kArrow;
using html::kEnDash;
using html::kMinus;
using html::PageEnd;
using html::PageStart;
using html::ReportStyle;

// The consortium page's rules, after the house style (html::ReportStyle).
constexpr char kStyle[] = R"css(h3 { font-size: 1.08em; margin-top: 1.4em; }
.warning { background: #fff4e5; border-left: 4px solid #e69f00; padding: 0.6em 1em; }
table { margin: 0.4em 0; }
td.text { text-align: left; white-space: normal; }
td.diag { background: #f3f6fa; }
table.cross td.diag { outline: 2px solid #333; outline-offset: -2px; }
table.cross .sig { font-size: 0.85em; }
.legend .swatch { display: inline-block; padding: 0 0.4em; margin: 0 1px; }
code { font-size: 0.92em; }
svg.chart { font-size: 11px; font-family: inherit; }
svg.chart text { fill: #333; }
svg.chart .grid { stroke: #e4e4e4; stroke-width: 1; }
svg.chart .axis { stroke: #555; stroke-width: 1; }
svg.chart .m0 { fill: #0072b2; }
svg.chart .m1 { fill: #e69f00; }
svg.chart .m2 { fill: #009e73; }
svg.chart .m3 { fill: #cc79a7; }
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
    for (const std::optional<double>& v :
         {s.mean_auc_open_source, s.mean_auc_global, s.mean_auc_adapted, s.mean_auc_local_only}) {
      if (v) values.push_back(*v);
    }
  }
  if (values.empty()) return "";
  double low = std::floor(*std::min_element(values.begin(), values.end()) * 10 - 0.5) / 10;
  low = std::clamp(low, 0.0, 0.9);
  const double high = 1.0;
  constexpr double kLeft = 44, kTop = 10, kPlotH = 180, kBar = 16, kGap = 22;
  const double group = kModels * kBar + kGap;
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
    const std::optional<double> v[kModels] = {s.mean_auc_open_source, s.mean_auc_global, s.mean_auc_adapted,
                                              s.mean_auc_local_only};
    for (int m = 0; m < kModels; ++m) {
      if (!v[m]) continue;
      const double y = y_of(*v[m]);
      absl::StrAppend(&svg, absl::StrFormat("<rect class=\"m%d\" x=\"%.1f\" y=\"%.1f\" width=\"%g\" height=\"%.1f\">"
                                            "<title>%s, %s: %.3f</title></rect>\n",
                                            m, x0 + m * kBar, y, kBar - 2, kTop + kPlotH - y, HtmlEscape(s.site_id),
                                            kModelTitle[m], *v[m]));
    }
    absl::StrAppend(&svg, absl::StrFormat("<text x=\"%.1f\" y=\"%g\" text-anchor=\"middle\">%s</text>\n",
                                          x0 + kModels * kBar / 2, kTop + kPlotH + 14, HtmlEscape(s.site_id)));
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
                  "<th>Mean AUC<br>locally adapted</th><th>Mean AUC<br>local only</th><th>Labels improved<br>(adapted "
                  "vs open-source, p &lt; ",
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
                    AucValueTd(s.mean_auc_global), AucValueTd(s.mean_auc_adapted), AucValueTd(s.mean_auc_local_only),
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
                    "<th rowspan=\"2\">n", kMinus, "</th><th colspan=\"", kModels, "\">AUC (95% CI)</th>",
                    "<th colspan=\"", kPairs, "\">DeLong p</th></tr>\n<tr>");
    for (int m = 0; m < kModels; ++m) absl::StrAppend(html, "<th>", kModelTitle[m], "</th>");
    for (int p = 0; p < kPairs; ++p) absl::StrAppend(html, "<th>", kPair[p].title, "</th>");
    absl::StrAppend(html, "</tr></thead>\n<tbody>\n");
    for (const std::string& label : view.labels) {
      const v1::LabelAuc* aucs[kModels] = {};
      const v1::LabelAuc* any = nullptr;
      for (int m = 0; m < kModels; ++m) {
        aucs[m] = view.Auc(m, label);
        if (any == nullptr) any = aucs[m];
      }
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
    absl::StrAppend(html, "<td colspan=\"", kPairs, "\"></td></tr>\n</tbody>\n</table>\n<ul>\n");
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
      absl::StrAppend(html, "<tr>", Td(absl::StrCat(r->round())), Td(FormatLoss(ReportedLoss(r->train_loss()))),
                      Td(FormatLoss(ReportedLoss(r->validation_loss()))), AucValueTd(MeanAuc(FindModel(r, "global"))),
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
      if (std::optional<double> loss = ReportedLoss(r->train_loss())) {
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
  absl::StrAppend(
      html, "<table>\n<thead><tr><th>Round</th><th>Attempt</th><th>State</th><th>Accepted</th>",
      "<th>Refused</th><th>Declined</th><th>Samples</th><th>Mean train loss</th><th>Mean validation loss</th>",
      "<th>Bytes up</th><th>Model sent</th><th>Aggregated model</th><th>Note</th></tr></thead>\n<tbody>\n");
  for (const v1::RoundInfo& r : status.rounds()) {
    const RoundTotals t = TotalsOf(r);
    const std::string state = federation::DisplayText(r);
    absl::StrAppend(html, "<tr>", Td(absl::StrCat(r.round())), Td(absl::StrCat(r.attempt())), TdText(state),
                    Td(absl::StrCat(t.accepted)), Td(absl::StrCat(t.refused)), Td(absl::StrCat(t.declined)),
                    Td(absl::StrCat(t.samples)), Td(FormatLoss(t.mean_train_loss)),
                    Td(FormatLoss(t.mean_validation_loss)), Td(FormatBytes(t.bytes)), "<td><code>",
                    HtmlEscape(ShortDigest(r.model_digest())), "</code></td><td><code>",
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
                      TdText(UpdateStatusText(u)), Td(absl::StrCat(u.num_samples())), Td(FormatBytes(u.bytes())),
                      Td(absl::StrFormat("%.4g", u.l2_norm())), Td(FormatLoss(ReportedLoss(u.train_loss()))),
                      Td(FormatLoss(ReportedLoss(u.validation_loss()))), TdText(u.message()), "</tr>\n");
    }
  }
  absl::StrAppend(html, "</tbody>\n</table>\n");
}

// The sites' spent differential privacy and the declined rounds; nothing for a run without DP.
void AppendPrivacySection(std::string* html, const v1::RunReport& report, const PrivacyView& p) {
  if (!p.any) return;
  const v1::RunConfig& config = report.status().config();
  absl::StrAppend(html, "<h2>Differential privacy</h2>\n<p class=\"note\">Run setting: <code>dp ",
                  HtmlEscape(config.dp().empty() ? "none" : config.dp()), "</code>");
  if (config.dp() == "dp-sgd" || config.dp() == "dp-fedavg") {
    absl::StrAppend(html, ", noise multiplier ", absl::StrFormat("%g", config.dp_noise_multiplier()), ", clip norm ",
                    absl::StrFormat("%g", config.dp_clip_norm()));
  }
  absl::StrAppend(html, config.secure_aggregation() ? ", secure aggregation" : "",
                  ". Each site accounts its own epsilon (its RDP accountant over all its training, at its own "
                  "delta) and declines a round that would exceed its budget; the coordinator cannot change a "
                  "site's budget.</p>\n");
  absl::StrAppend(html, "<p class=\"",
                  p.consortium_epsilon && std::isinf(*p.consortium_epsilon) ? "warning" : "summary",
                  "\">Consortium epsilon ", HtmlEscape(FormatEpsilon(p.consortium_epsilon)),
                  p.delta ? absl::StrFormat(" at delta %g", *p.delta) : std::string(), ". ",
                  HtmlEscape(kParallelComposition), "</p>\n");
  if (!p.complete()) {
    absl::StrAppend(html, "<p class=\"warning\">Consortium epsilon ", HtmlEscape(MissingAccountsText(p)), ".</p>\n");
  }
  absl::StrAppend(html,
                  "<table>\n<thead><tr><th>Site</th><th>Epsilon spent</th><th>Delta</th><th>Budget "
                  "(max_epsilon)</th><th>Private steps</th><th>Declined rounds</th></tr></thead>\n<tbody>\n");
  for (const SitePrivacy& site : p.sites) {
    const std::string declined = site.declined_rounds.empty() ? "-" : absl::StrJoin(site.declined_rounds, ", ");
    if (site.account == nullptr) {
      absl::StrAppend(html, "<tr>", TdText(site.site_id), TdNa(), TdNa(), TdNa(), TdNa(), TdText(declined), "</tr>\n");
      continue;
    }
    const v1::PrivacyAccount& a = *site.account;
    const double epsilon = site.non_private() ? std::numeric_limits<double>::infinity() : a.epsilon();
    absl::StrAppend(html, "<tr>", TdText(site.site_id), Td(FormatEpsilon(epsilon)),
                    Td(absl::StrFormat("%g", a.delta())),
                    Td(a.max_epsilon() > 0 ? absl::StrFormat("%g", a.max_epsilon()) : "none"),
                    Td(absl::StrCat(a.private_steps())), TdText(declined), "</tr>\n");
  }
  absl::StrAppend(html, "</tbody>\n</table>\n");
  if (p.declined.empty()) return;
  absl::StrAppend(html, "<h3>Declined rounds</h3>\n<table>\n<thead><tr><th>Round</th><th>Attempt</th><th>Site</th>",
                  "<th>Reason</th></tr></thead>\n<tbody>\n");
  for (const DeclinedUpdate& d : p.declined) {
    absl::StrAppend(html, "<tr>", Td(absl::StrCat(d.round)), Td(absl::StrCat(d.attempt)), TdText(d.site_id),
                    TdText(d.reason), "</tr>\n");
  }
  absl::StrAppend(html, "</tbody>\n</table>\n");
}

// The background of a cross-site cell: a blue whose depth grows with the mean AUC from 0.5 (white) to 1.0.
std::string AucColour(double auc) {
  const double t = std::clamp((auc - 0.5) / 0.5, 0.0, 1.0);
  return absl::StrFormat("hsl(210, 70%%, %.0f%%)", 97 - 52 * t);
}

std::string AucStyle(double auc) {
  const double t = std::clamp((auc - 0.5) / 0.5, 0.0, 1.0);
  return absl::StrCat("background: ", AucColour(auc), t > 0.6 ? "; color: #fff" : "");
}

void AppendCrossSiteSection(std::string* html, const CrossSiteMatrix& x) {
  absl::StrAppend(html, "<h2>Cross-site evaluation</h2>\n");
  if (!x.evaluated && x.not_shared.empty()) {
    absl::StrAppend(html, "<p>", HtmlEscape(kNoCrossSite), "</p>\n");
    if (!x.cross_site_run) return;
  }
  absl::StrAppend(html, "<p class=\"note\">Mean AUC of each model (rows) on each site's own test split (columns): ",
                  "each site's locally adapted model, the federated global model and the open-source model. The ",
                  "diagonal is a site's own model on its own data; off the diagonal, how a site's model travels to ",
                  "the other hospitals. Marks compare a cell with the global model at the same site: the smallest ",
                  "per-label paired DeLong p, Bonferroni-adjusted over the labels.</p>\n<table class=\"cross\">\n",
                  "<thead><tr><th>Model \\ evaluated at</th>");
  for (const std::string& at : x.sites) absl::StrAppend(html, "<th>", HtmlEscape(at), "</th>");
  absl::StrAppend(html, "</tr></thead>\n<tbody>\n");
  for (size_t r = 0; r < x.rows.size(); ++r) {
    absl::StrAppend(html, "<tr><td class=\"label\">", HtmlEscape(x.rows[r]), "</td>");
    for (size_t c = 0; c < x.sites.size(); ++c) {
      const CrossCell& cell = x.cells[r][c];
      const bool diagonal = x.row_sites[r] == x.sites[c];
      if (cell.status == CellStatus::kNotShared) {
        absl::StrAppend(html, "<td class=\"na\">not shared</td>");
        continue;
      }
      if (cell.status != CellStatus::kOk || !cell.mean_auc) {
        absl::StrAppend(html, TdNa());
        continue;
      }
      std::string mark;
      if (cell.significant() && cell.direction_known) {
        mark = absl::StrCat(" <span class=\"sig\" title=\"", cell.better ? "higher" : "lower",
                            " AUC than global on its most significant label, adjusted p = ", FormatP(cell.p_vs_global),
                            "\">", cell.better ? "\u25B2" : "\u25BC", "</span>");
      }
      absl::StrAppend(html, "<td", diagonal ? " class=\"diag\"" : "", " style=\"", AucStyle(*cell.mean_auc), "\">",
                      FormatAuc(cell.mean_auc), mark, "</td>");
    }
    absl::StrAppend(html, "</tr>\n");
  }
  absl::StrAppend(html, "</tbody>\n</table>\n<p class=\"note legend\">Mean AUC ");
  for (double auc : {0.5, 0.6, 0.7, 0.8, 0.9, 1.0}) {
    absl::StrAppend(html, "<span class=\"swatch\" style=\"", AucStyle(auc), "\">", absl::StrFormat("%.1f", auc),
                    "</span>");
  }
  absl::StrAppend(html, "; \u25B2 / \u25BC: the model differs from the global model at that site (adjusted p &lt; ",
                  absl::StrFormat("%.2f", kSignificance), "), with a higher / lower AUC on the label of the smallest ",
                  "p (the mean AUC may still move the other way); outlined: a site's own model on its own data; ",
                  "not shared: the site declined to share its adapted model (SiteAgentConfig.share_adapted_model); ",
                  "n/a: not evaluated there.</p>\n");
  if (!x.not_shared.empty()) {
    std::string sites;
    for (const std::string& s : x.not_shared) absl::StrAppend(&sites, sites.empty() ? "" : ", ", s);
    absl::StrAppend(html, "<p class=\"note\">Not shared: ", HtmlEscape(sites), ".</p>\n");
  }
}

// The whole page.
std::string PageHtml(const v1::RunReport& report, const v1::RunReport* reference) {
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
  AppendPrivacySection(&html, report, PrivacyOf(report, views));
  if (reference != nullptr) absl::StrAppend(&html, ReferenceHtml(status, ReferenceOf(report, *reference)));
  AppendCrossSiteSection(&html, CrossSiteOf(report, views));
  absl::StrAppend(&html, "<p class=\"note\">Generated by fedtune from the coordinator's records. Only summary ",
                  "metrics reach the coordinator: no image or per-case prediction is in this report.</p>\n", PageEnd());
  return html;
}

}  // namespace
}  // namespace consortium

std::string ConsortiumReportHtml(const v1::RunReport& report, const v1::RunReport* reference) {
  return consortium::PageHtml(report, reference);
}

}  // namespace fedtune::admin
