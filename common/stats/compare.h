// The comparison of two models' scores on the same cases, label by label (AUC
// with DeLong CI, Youden operating point, paired DeLong test) and overall (mean
// AUC, Wilcoxon signed-rank test over the per-label AUCs), as the study
// compared its open-source and locally fine-tuned models. Used by `fedtune
// stats compare` and the site reports.
#ifndef FEDTUNE_COMMON_STATS_COMPARE_H_
#define FEDTUNE_COMMON_STATS_COMPARE_H_

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/stats/delong.h"
#include "common/stats/wilcoxon.h"
#include "common/stats/youden.h"

namespace fedtune::stats {

// One label's cases: truth (0/1) and the two models' scores, all the same
// length. Cases whose truth is unknown are already excluded by the caller.
struct LabelScores {
  std::string name;
  std::vector<int> truth;
  std::vector<double> a;
  std::vector<double> b;
};

// One model's result on one label. Fields are nullopt when undefined, with
// `note` saying why.
struct ModelSummary {
  std::optional<double> auc;                      // Needs >= 1 positive and >= 1 negative.
  std::optional<double> variance;                 // Needs >= 2 of each.
  std::optional<std::pair<double, double>> ci95;  // Needs >= 2 of each.
  std::optional<OperatingPoint> youden;           // Needs >= 1 of each.
  std::string note;
};

struct LabelComparison {
  std::string name;
  int64_t n_pos = 0;
  int64_t n_neg = 0;
  ModelSummary a;
  ModelSummary b;
  std::optional<PairedDeLong> delong;  // nullopt when an AUC is undefined; its
                                       // z/p may be nullopt (see PairedDeLong).
};

struct ComparisonReport {
  std::vector<LabelComparison> labels;
  // Over the labels where both AUCs are defined (n = that count before zero
  // differences are dropped).
  int64_t labels_compared = 0;
  std::optional<double> mean_auc_a;
  std::optional<double> mean_auc_b;
  WilcoxonResult wilcoxon;  // Over AUC_a - AUC_b of those labels.
  // 95% bootstrap confidence intervals of mean_auc_a / mean_auc_b over the cases (bootstrap.h). CompareModels leaves
  // them nullopt (it does not know which entries of different labels are the same case); a caller that does fills
  // them in (RunEvaluate).
  std::optional<std::pair<double, double>> mean_auc_ci_a;
  std::optional<std::pair<double, double>> mean_auc_ci_b;
};

// Computes the report. InvalidArgument (naming the label) when a label's
// vectors differ in length, a truth value is not 0/1, or a score is not finite.
// Labels with a single class are reported with null AUCs, not as errors.
absl::StatusOr<ComparisonReport> CompareModels(const std::vector<LabelScores>& labels);

// The report as JSON, with the field names of `fedtune stats compare` (see
// docs/researcher-guide.md); undefined values are null and a "note" field says
// why. "overall" has "mean_auc_a_ci95" / "mean_auc_b_ci95" ([low, high]) only when
// the intervals were computed.
nlohmann::ordered_json ComparisonReportToJson(const ComparisonReport& report);

// A fixed-width table for terminals: label, n+, n-, AUC a [CI], AUC b [CI],
// difference a-b, DeLong p; then a line with the mean AUCs and the Wilcoxon
// result.
std::string FormatComparisonTable(const ComparisonReport& report);

}  // namespace fedtune::stats

#endif  // FEDTUNE_COMMON_STATS_COMPARE_H_
