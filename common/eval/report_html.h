// The evaluation report as one self-contained HTML page (`fedtune-site evaluate` writes it as report.html): a summary
// line, the per-label comparison table, one ROC plot per label with both models' curves (inline SVG) and a Grad-CAM
// gallery (PNG images inlined as data: URIs). It needs no external asset, no network and no JavaScript, so that it
// can be mailed or archived and opened anywhere; all caller-supplied text is HTML-escaped.
//
// Model a is the base (open-source) model, model b the fine-tuned one, as in stats::ComparisonReport.
#ifndef FEDTUNE_COMMON_EVAL_REPORT_HTML_H_
#define FEDTUNE_COMMON_EVAL_REPORT_HTML_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "common/stats/compare.h"

namespace fedtune::eval {

// One image of the Grad-CAM gallery.
struct GalleryEntry {
  std::string label;     // The label whose Grad-CAM map is shown.
  std::string image_id;  // The case, as an operator can find it (manifest path, study id).
  double score = 0;      // The fine-tuned model's probability for the label on this case.
  std::string png;       // PNG bytes of the overlay (GradCamOverlayPng).
};

struct EvaluationHtmlInputs {
  std::string title = "fedtune evaluation report";  // Page title and heading.
  std::string model_a_name = "Open-source model";   // Display name of model a (base).
  std::string model_b_name = "Fine-tuned model";    // Display name of model b (fine-tuned).
  // Free-text lines shown as lists, e.g. "Test split: 1,204 studies, 1,877 images (site-a/test.csv)" and
  // "Fine-tuned model: site-a round 12, sha256 3f2a...". Default: none.
  std::vector<std::string> dataset_lines;
  std::vector<std::string> provenance_lines;
  // The comparison (stats::CompareModels) and the scores it was computed from, for the ROC curves. A label of
  // `report` is plotted when `scores` holds an entry of the same name whose truth has both classes; labels without
  // one are still tabulated.
  stats::ComparisonReport report;
  std::vector<stats::LabelScores> scores;
  std::vector<GalleryEntry> gallery;  // Shown in this order. Default: empty (the section says so).
  std::string gallery_note;           // Optional sentence above the gallery (which model, how images were chosen).
  double significance = 0.05;         // Level for "better"/"worse" in the summary and the table's highlighting.
};

// The summary sentence, e.g. "Fine-tuned model better on 6 of 14 labels at p < 0.05, worse on 1; mean AUC
// 0.771 → 0.802, Wilcoxon p = 0.003". "Better" counts the labels where AUC b > AUC a with DeLong p < significance,
// "worse" those where AUC b < AUC a with p < significance; "of N" is report.labels_compared. Plain UTF-8 text, not
// escaped.
std::string EvaluationSummaryLine(const stats::ComparisonReport& report, absl::string_view model_b_name,
                                  double significance = 0.05);

// The whole page (UTF-8). Never fails: undefined values print as "n/a" with the report's note.
std::string RenderEvaluationHtml(const EvaluationHtmlInputs& in);

}  // namespace fedtune::eval

#endif  // FEDTUNE_COMMON_EVAL_REPORT_HTML_H_
