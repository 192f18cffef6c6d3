// The empirical ROC curve of a score, for plotting next to the DeLong AUCs of common/stats (same conventions: truth
// 1 = positive, 0 = negative; a higher score means "more likely positive").
#ifndef FEDTUNE_COMMON_EVAL_ROC_H_
#define FEDTUNE_COMMON_EVAL_ROC_H_

#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace fedtune::eval {

struct RocPoint {
  double fpr = 0;        // 1 - specificity: negatives with score >= threshold / negatives.
  double tpr = 0;        // Sensitivity: positives with score >= threshold / positives.
  double threshold = 0;  // "Positive when score >= threshold"; +infinity for the first point (0, 0).
};

// The ROC curve from (0, 0) to (1, 1): the first point has threshold +infinity, then one point per distinct score,
// in decreasing order of threshold. Cases tied at a score move the curve in one straight (diagonal) step, so the
// trapezoid area under the points equals the Mann-Whitney AUC with ties counting 1/2 (stats::EstimateAuc).
// InvalidArgument when truth and scores differ in length, a truth value is not 0/1, a score is not finite, or
// there is no positive or no negative case (the curve is then undefined).
absl::StatusOr<std::vector<RocPoint>> RocCurve(absl::Span<const int> truth, absl::Span<const double> scores);

}  // namespace fedtune::eval

#endif  // FEDTUNE_COMMON_EVAL_ROC_H_
