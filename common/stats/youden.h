// Youden-optimal operating point of a score, with Wilson score intervals for its sensitivity and specificity.
#ifndef FEDTUNE_COMMON_STATS_YOUDEN_H_
#define FEDTUNE_COMMON_STATS_YOUDEN_H_

#include <cstdint>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace fedtune::stats {

// Wilson score interval (95%, z = 1.959963984540054) for `successes` out of `trials`.
// InvalidArgument when trials <= 0 or successes is outside [0, trials].
absl::StatusOr<std::pair<double, double>> WilsonInterval(int64_t successes, int64_t trials);

struct OperatingPoint {
  double threshold = 0;  // Predict positive when score >= threshold.
  int64_t true_positives = 0;
  int64_t true_negatives = 0;
  double sensitivity = 0;  // true_positives / positives.
  double specificity = 0;  // true_negatives / negatives.
  std::pair<double, double> sensitivity_ci95;
  std::pair<double, double> specificity_ci95;
};

// The threshold t among the observed scores that maximizes sensitivity + specificity (Youden's J) for the rule
// "positive when score >= t". J is compared exactly (as the integer TP*n + TN*m), and among equal J the largest
// threshold wins, so the answer does not depend on the order of the cases.
// Errors as ComputeDeLongComponents (lengths, 0/1 truth, finite scores, both classes present).
absl::StatusOr<OperatingPoint> YoudenOptimalPoint(absl::Span<const int> truth, absl::Span<const double> scores);

}  // namespace fedtune::stats

#endif  // FEDTUNE_COMMON_STATS_YOUDEN_H_
