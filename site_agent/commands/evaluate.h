// `fedtune-site evaluate`: the study's comparison of the base (open-source) model and the locally fine-tuned model on
// the site's test split — per-label AUC with DeLong CIs, paired DeLong tests, Youden operating points, mean AUC and
// the Wilcoxon signed-rank test over labels — written as predictions.csv, report.json, a self-contained report.html
// and Grad-CAM overlays.
//
// Truth for evaluation: a manifest value 1.0 is positive; 0.0 and blank are negative (the study: blank labels are
// negatives); -1.0 (uncertain) excludes that image from that label. Scores are per image.
#ifndef FEDTUNE_SITE_AGENT_COMMANDS_EVALUATE_H_
#define FEDTUNE_SITE_AGENT_COMMANDS_EVALUATE_H_

#include <string>

#include "absl/status/statusor.h"
#include "common/cli/command.h"
#include "common/stats/compare.h"
#include "site_agent/commands/predict.h"

namespace fedtune::agent {

struct EvaluateOptions {
  std::string base_model;     // Checkpoint a ("open-source model").
  std::string model;          // Checkpoint b ("fine-tuned model").
  std::string manifest;       // Test manifest (CheXpert CSV).
  std::string data_root;      // The manifest's paths are relative to this.
  std::string out_dir;        // Created if missing.
  PredictOptions predict;     // Image size 0 = each checkpoint's own.
  int gradcam_per_label = 3;  // Top-scoring test images per label shown with Grad-CAM (0: none).
  bool study_level = false;   // Per study (PredictStudies: DuoNet on two-view studies) instead of per image.
  std::string title = "fedtune evaluation report";
  // With predict.input.raster_bits_stored = -1 (auto): the manifest whose images the estimate samples (raster_bits.h;
  // paths relative to data_root), so that an evaluation resolves the value its model was trained with (the site's
  // whole manifest, as training sampled it). Empty (default): `manifest`.
  std::string raster_bits_manifest;
};

struct EvaluateResult {
  stats::ComparisonReport report;
  std::string summary_line;  // As in report.html.
  int64_t images = 0;        // Cases evaluated: images, or studies with study_level.
};

// Runs the evaluation and writes OUT/predictions.csv, OUT/report.json, OUT/report.html, OUT/gradcam/*.png (all
// atomically). Errors: those of the checkpoints, manifest, images (per predict.on_error) and statistics, each naming
// its file; InvalidArgument when the two models name different labels.
absl::StatusOr<EvaluateResult> RunEvaluate(const EvaluateOptions& options);

// fedtune-site evaluate --base B.ckpt --model M.ckpt --manifest test.csv --root DIR --out REPORT_DIR
//   [--gradcam-per-label K] [--device D] [--image-size N] [--skip-unreadable] [--level image|study] [--quiet]
cli::Command MakeEvaluateCommand();

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_COMMANDS_EVALUATE_H_
