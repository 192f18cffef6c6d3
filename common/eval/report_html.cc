#include "common/eval/report_html.h"

#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/eval/roc.h"
#include "common/html/html.h"

namespace fedtune::eval {
namespace {

using html::Escape;
using html::kArrow;
using html::kEnDash;
using html::kMinus;

std::string FormatP(std::optional<double> p) {
  if (!p.has_value()) return "n/a";
  if (*p < 0.001) return "< 0.001";
  return absl::StrFormat("%.3f", *p);
}

// "p = 0.003" / "p < 0.001" / "p n/a".
std::string PClause(std::optional<double> p) {
  if (!p.has_value()) return "p n/a";
  if (*p < 0.001) return "p < 0.001";
  return absl::StrFormat("p = %.3f", *p);
}

std::string FormatAuc(const std::optional<double>& auc) { return auc ? absl::StrFormat("%.3f", *auc) : "n/a"; }

// A signed number with a typographic minus sign.
std::string Signed(double x, int decimals) {
  std::string digits = absl::StrFormat("%.*f", decimals, std::fabs(x));
  // Values that round to zero print without a sign.
  if (digits == absl::StrFormat("%.*f", decimals, 0.0)) return digits;
  return absl::StrCat(x < 0 ? kMinus : "+", digits);
}

enum class Verdict { kNone, kBetter, kWorse };

Verdict VerdictOf(const stats::LabelComparison& label, double significance) {
  if (!label.delong || !label.delong->p_value || !label.a.auc || !label.b.auc) return Verdict::kNone;
  if (!(*label.delong->p_value < significance)) return Verdict::kNone;
  if (*label.b.auc > *label.a.auc) return Verdict::kBetter;
  if (*label.b.auc < *label.a.auc) return Verdict::kWorse;
  return Verdict::kNone;
}

std::string AucCell(const stats::ModelSummary& m) {
  if (!m.auc) return absl::StrCat("<td class=\"na\" title=\"", Escape(m.note), "\">n/a</td>");
  std::string cell = absl::StrFormat("%.3f", *m.auc);
  if (m.ci95) {
    absl::StrAppend(&cell, " <span class=\"ci\">(", absl::StrFormat("%.3f", m.ci95->first), kEnDash,
                    absl::StrFormat("%.3f", m.ci95->second), ")</span>");
  }
  return absl::StrCat("<td>", cell, "</td>");
}

std::string YoudenCell(const stats::ModelSummary& m) {
  if (!m.youden) return "<td class=\"na\">n/a</td>";
  return absl::StrFormat("<td title=\"positive when score &ge; %.4g\">%.2f / %.2f</td>", m.youden->threshold,
                         m.youden->sensitivity, m.youden->specificity);
}

std::string DifferenceCell(const stats::LabelComparison& label) {
  if (!label.a.auc || !label.b.auc) return "<td class=\"na\">n/a</td>";
  // The report stores a - b; the page shows b - a, the fine-tuned model's gain.
  std::string cell = Signed(*label.b.auc - *label.a.auc, 3);
  if (label.delong && label.delong->ci95) {
    absl::StrAppend(&cell, " <span class=\"ci\">(", Signed(-label.delong->ci95->second, 3), " to ",
                    Signed(-label.delong->ci95->first, 3), ")</span>");
  }
  return absl::StrCat("<td>", cell, "</td>");
}

// Geometry of the ROC plots, in SVG user units.
constexpr double kLeft = 46, kTop = 12, kSide = 220, kWidth = kLeft + kSide + 16;
constexpr double kLegendTop = kTop + kSide + 38, kHeight = kLegendTop + 36;

double PlotX(double fpr) { return kLeft + fpr * kSide; }
double PlotY(double tpr) { return kTop + (1.0 - tpr) * kSide; }

// Polyline points, rounded to 0.1 unit with repeated points dropped: at most a few thousand points per curve
// however many cases there are.
std::string PolylinePoints(const std::vector<RocPoint>& curve) {
  std::string out, last;
  for (const RocPoint& p : curve) {
    std::string point = absl::StrFormat("%.1f,%.1f", PlotX(p.fpr), PlotY(p.tpr));
    if (point == last) continue;
    absl::StrAppend(&out, out.empty() ? "" : " ", point);
    last = std::move(point);
  }
  return out;
}

std::string RocSvg(const std::string& label, const std::vector<RocPoint>& a, const std::vector<RocPoint>& b,
                   const std::string& a_legend, const std::string& b_legend) {
  std::string svg = absl::StrFormat(
      "<svg class=\"roc\" width=\"%g\" height=\"%g\" viewBox=\"0 0 %g %g\" role=\"img\" aria-label=\"ROC curves, "
      "%s\">\n",
      kWidth, kHeight, kWidth, kHeight, Escape(label));
  // Grid, ticks and tick labels.
  for (int i = 0; i <= 4; ++i) {
    const double v = i / 4.0;
    absl::StrAppend(&svg, absl::StrFormat("<line class=\"grid\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>",
                                          PlotX(v), PlotY(0), PlotX(v), PlotY(1)));
    absl::StrAppend(&svg, absl::StrFormat("<line class=\"grid\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>",
                                          PlotX(0), PlotY(v), PlotX(1), PlotY(v)));
    absl::StrAppend(&svg, absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g</text>", PlotX(v),
                                          PlotY(0) + 14, v));
    absl::StrAppend(&svg, absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", PlotX(0) - 4,
                                          PlotY(v) + 4, v));
  }
  absl::StrAppend(&svg,
                  absl::StrFormat("<rect class=\"frame\" x=\"%g\" y=\"%g\" width=\"%g\" height=\"%g\"/>", kLeft, kTop,
                                  kSide, kSide),
                  absl::StrFormat("<line class=\"chance\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n",
                                  PlotX(0), PlotY(0), PlotX(1), PlotY(1)));
  // Axis titles.
  absl::StrAppend(&svg,
                  absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">1 %s specificity</text>",
                                  PlotX(0.5), PlotY(0) + 30, kMinus),
                  absl::StrFormat("<text x=\"12\" y=\"%.1f\" text-anchor=\"middle\" transform=\"rotate(-90 12 "
                                  "%.1f)\">sensitivity</text>\n",
                                  PlotY(0.5), PlotY(0.5)));
  // Curves: a dashed blue, b solid orange (Okabe-Ito colours, distinguishable in grey print too).
  absl::StrAppend(&svg, "<polyline class=\"curve-a\" points=\"", PolylinePoints(a), "\"/>\n");
  absl::StrAppend(&svg, "<polyline class=\"curve-b\" points=\"", PolylinePoints(b), "\"/>\n");
  // Legend below the plot.
  absl::StrAppend(
      &svg,
      absl::StrFormat("<line class=\"curve-a\" x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\"/>", kLeft, kLegendTop - 4,
                      kLeft + 22, kLegendTop - 4),
      absl::StrFormat("<text x=\"%g\" y=\"%g\">%s</text>\n", kLeft + 28, kLegendTop, Escape(a_legend)),
      absl::StrFormat("<line class=\"curve-b\" x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\"/>", kLeft, kLegendTop + 14,
                      kLeft + 22, kLegendTop + 14),
      absl::StrFormat("<text x=\"%g\" y=\"%g\">%s</text>\n", kLeft + 28, kLegendTop + 18, Escape(b_legend)));
  absl::StrAppend(&svg, "</svg>");
  return svg;
}

// The evaluation page's rules, after the house style (html::ReportStyle).
constexpr char kStyle[] = R"css(.plots, .gallery { display: flex; flex-wrap: wrap; gap: 1.2em; }
figure { margin: 0; }
figcaption { font-size: 0.9em; text-align: center; }
svg.roc { font-size: 11px; font-family: inherit; }
svg.roc text { fill: #333; }
svg.roc .grid { stroke: #e4e4e4; stroke-width: 1; }
svg.roc .frame { fill: none; stroke: #555; stroke-width: 1; }
svg.roc .chance { stroke: #999; stroke-width: 1; stroke-dasharray: 3 3; }
svg.roc .curve-a { fill: none; stroke: #0072b2; stroke-width: 2; stroke-dasharray: 6 3; }
svg.roc .curve-b { fill: none; stroke: #e69f00; stroke-width: 2; }
.gallery img { width: 224px; height: 224px; image-rendering: auto; border: 1px solid #ccc; display: block; }
.gallery figcaption { max-width: 224px; overflow-wrap: anywhere; }
)css";

void AppendList(std::string* html, const std::vector<std::string>& lines) {
  if (lines.empty()) return;
  absl::StrAppend(html, "<ul>\n");
  for (const std::string& line : lines) absl::StrAppend(html, "<li>", Escape(line), "</li>\n");
  absl::StrAppend(html, "</ul>\n");
}

}  // namespace

std::string EvaluationSummaryLine(const stats::ComparisonReport& report, absl::string_view model_b_name,
                                  double significance) {
  int better = 0, worse = 0;
  for (const stats::LabelComparison& label : report.labels) {
    switch (VerdictOf(label, significance)) {
      case Verdict::kBetter:
        ++better;
        break;
      case Verdict::kWorse:
        ++worse;
        break;
      case Verdict::kNone:
        break;
    }
  }
  std::string line =
      absl::StrFormat("%s better on %d of %d label%s at p < %g, worse on %d; mean AUC ", model_b_name, better,
                      report.labels_compared, report.labels_compared == 1 ? "" : "s", significance, worse);
  if (report.mean_auc_a && report.mean_auc_b) {
    absl::StrAppend(&line, absl::StrFormat("%.3f", *report.mean_auc_a), " ", kArrow, " ",
                    absl::StrFormat("%.3f", *report.mean_auc_b));
  } else {
    absl::StrAppend(&line, "n/a");
  }
  absl::StrAppend(&line, ", Wilcoxon ", PClause(report.wilcoxon.p_value));
  const int64_t undefined = static_cast<int64_t>(report.labels.size()) - report.labels_compared;
  if (undefined > 0) {
    absl::StrAppend(&line, " (", undefined, " label", undefined == 1 ? "" : "s", " without a defined AUC)");
  }
  return line;
}

std::string RenderEvaluationHtml(const EvaluationHtmlInputs& in) {
  const std::string a_name = Escape(in.model_a_name);
  const std::string b_name = Escape(in.model_b_name);
  std::string html;
  absl::StrAppend(&html,
                  fedtune::html::PageStart(Escape(in.title), absl::StrCat(fedtune::html::ReportStyle(72), kStyle)));
  absl::StrAppend(&html, "<p class=\"summary\">",
                  Escape(EvaluationSummaryLine(in.report, in.model_b_name, in.significance)), "</p>\n");

  // Data and models.
  if (!in.dataset_lines.empty()) {
    absl::StrAppend(&html, "<h2>Test data</h2>\n");
    AppendList(&html, in.dataset_lines);
  }
  if (!in.provenance_lines.empty()) {
    absl::StrAppend(&html, "<h2>Models</h2>\n");
    AppendList(&html, in.provenance_lines);
  }

  // The table.
  absl::StrAppend(&html, "<h2>Per-label results</h2>\n<table>\n<thead>\n<tr><th rowspan=\"2\">Label</th>",
                  "<th rowspan=\"2\">n+</th><th rowspan=\"2\">n", kMinus, "</th>", "<th rowspan=\"2\">AUC<br>", a_name,
                  "<br>(95% CI)</th><th rowspan=\"2\">AUC<br>", b_name, "<br>(95% CI)</th>",
                  "<th rowspan=\"2\">Difference<br>", b_name, " ", kMinus, " ", a_name, "<br>(95% CI)</th>",
                  "<th rowspan=\"2\">DeLong p</th>", "<th colspan=\"2\">Sensitivity / specificity at Youden point</th>",
                  "</tr>\n<tr><th>", a_name, "</th><th>", b_name, "</th></tr>\n</thead>\n<tbody>\n");
  for (const stats::LabelComparison& label : in.report.labels) {
    const Verdict verdict = VerdictOf(label, in.significance);
    absl::StrAppend(&html, "<tr",
                    verdict == Verdict::kBetter  ? " class=\"better\""
                    : verdict == Verdict::kWorse ? " class=\"worse\""
                                                 : "",
                    "><td class=\"label\">", Escape(label.name), "</td><td>", label.n_pos, "</td><td>", label.n_neg,
                    "</td>", AucCell(label.a), AucCell(label.b), DifferenceCell(label));
    if (label.delong && label.delong->p_value) {
      absl::StrAppend(&html, "<td>", Escape(FormatP(label.delong->p_value)), "</td>");
    } else {
      absl::StrAppend(&html, "<td class=\"na\" title=\"", Escape(label.delong ? label.delong->note : label.a.note),
                      "\">n/a</td>");
    }
    absl::StrAppend(&html, YoudenCell(label.a), YoudenCell(label.b), "</tr>\n");
  }
  absl::StrAppend(&html, "</tbody>\n</table>\n");
  absl::StrAppend(
      &html, "<p class=\"note\">AUC: area under the ROC curve with DeLong 95% confidence interval. DeLong p: paired ",
      "test of the two AUCs on the same cases; rows in green (red) mark labels where ", b_name,
      " is significantly better (worse) at p &lt; ", absl::StrFormat("%g", in.significance),
      ". Youden point: the threshold maximizing sensitivity + specificity. Mean AUC and the Wilcoxon signed-rank ",
      "test are over the labels where both AUCs are defined. n/a: the label has no positive or no negative case.",
      "</p>\n");

  // ROC plots.
  std::map<std::string, const stats::LabelScores*> scores_by_name;
  for (const stats::LabelScores& s : in.scores) scores_by_name.emplace(s.name, &s);
  absl::StrAppend(&html, "<h2>ROC curves</h2>\n<div class=\"plots\">\n");
  std::vector<std::string> unplotted;
  for (const stats::LabelComparison& label : in.report.labels) {
    auto it = scores_by_name.find(label.name);
    std::string why;
    if (!label.a.auc || !label.b.auc) {
      why = "no AUC (single class)";
    } else if (it == scores_by_name.end()) {
      why = "scores not provided";
    } else {
      absl::StatusOr<std::vector<RocPoint>> roc_a = RocCurve(it->second->truth, it->second->a);
      absl::StatusOr<std::vector<RocPoint>> roc_b = RocCurve(it->second->truth, it->second->b);
      if (roc_a.ok() && roc_b.ok()) {
        absl::StrAppend(
            &html, "<figure>\n",
            RocSvg(label.name, *roc_a, *roc_b, absl::StrCat(in.model_a_name, ", AUC ", FormatAuc(label.a.auc)),
                   absl::StrCat(in.model_b_name, ", AUC ", FormatAuc(label.b.auc))),
            "\n<figcaption>", Escape(label.name), "</figcaption>\n</figure>\n");
        continue;
      }
      why = std::string((roc_a.ok() ? roc_b.status() : roc_a.status()).message());
    }
    unplotted.push_back(absl::StrCat(label.name, ": ", why));
  }
  absl::StrAppend(&html, "</div>\n");
  if (!unplotted.empty()) {
    absl::StrAppend(&html, "<p class=\"note\">Not plotted:</p>\n");
    AppendList(&html, unplotted);
  }

  // Gallery.
  absl::StrAppend(&html, "<h2>Grad-CAM gallery</h2>\n<p class=\"note\">",
                  in.gallery_note.empty() ? "" : absl::StrCat(Escape(in.gallery_note), " "),
                  "Warm colours (red, yellow) mark the regions that raised the model's score for the label most; ",
                  "blue marks regions that did not. Grad-CAM maps are coarse (one value per cell of the last ",
                  "convolutional layer) and show where the model looked, not a segmentation of the finding.</p>\n");
  if (in.gallery.empty()) {
    absl::StrAppend(&html, "<p>No Grad-CAM images were produced.</p>\n");
  } else {
    absl::StrAppend(&html, "<div class=\"gallery\">\n");
    for (const GalleryEntry& entry : in.gallery) {
      const std::string label = Escape(entry.label);
      const std::string id = Escape(entry.image_id);
      absl::StrAppend(&html, "<figure><img src=\"data:image/png;base64,", absl::Base64Escape(entry.png),
                      "\" alt=\"Grad-CAM of ", label, " on ", id, "\"><figcaption><strong>", label, "</strong><br>", id,
                      "<br>score ", absl::StrFormat("%.3f", entry.score), "</figcaption></figure>\n");
    }
    absl::StrAppend(&html, "</div>\n");
  }
  absl::StrAppend(&html, fedtune::html::PageEnd());
  return html;
}

}  // namespace fedtune::eval
