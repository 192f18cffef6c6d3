// Bootstrap confidence intervals of the mean AUC over labels, for the site reports' "mean AUC (95% CI)".
//
// The cases (images or studies) of a test split are resampled with replacement; the labels of a case stay together
// (one draw of a case brings all its labels along), so the correlation between labels is kept. In each resample the
// mean AUC is taken over the labels that have both classes in the full sample AND in that resample (a label lacking
// a class in a resample is left out of that resample's mean, for every model alike); a resample in which no label is
// left is discarded. The interval is the percentile interval of the resampled means (numpy's default "linear"
// quantile). Scores tied within a label count 1/2, as in delong.h.
//
// Determinism: the draws come from std::mt19937_64 seeded with BootstrapOptions.seed and are mapped to case indices
// portably, so a seed gives the same interval on every platform and run.
//
// Thread safety: reentrant.
#ifndef FEDTUNE_COMMON_STATS_BOOTSTRAP_H_
#define FEDTUNE_COMMON_STATS_BOOTSTRAP_H_

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/stats/compare.h"

namespace fedtune::stats {

struct BootstrapOptions {
  int resamples = 1000;      // Number of resamples. 1 to 1000000. Default 1000.
  uint64_t seed = 20261207;  // Seed of the draws. Default 20261207.
  double level = 0.95;       // Coverage of the interval, in (0, 1). Default 0.95.
};

// The intervals of the two models of a comparison (LabelScores.a and .b); nullopt when no label has both classes
// in the full sample or fewer than half of the resamples were usable.
struct MeanAucIntervals {
  std::optional<std::pair<double, double>> a;
  std::optional<std::pair<double, double>> b;
  int usable_resamples = 0;  // Resamples with at least one label that has both classes.
};

// `labels[l]` holds label l's cases (as CompareModels takes them: uncertain cases already left out) and
// `case_of[l][i]` the case index (0 <= index < num_cases) of its entry i, so that labels can share cases.
// InvalidArgument (naming the label) when case_of and labels differ in size, a label's truth, scores and case indices
// differ in length, an index is out of range or repeated within a label, a truth value is not 0/1 or a score is not
// finite; and for options outside their ranges.
absl::StatusOr<MeanAucIntervals> BootstrapMeanAuc(const std::vector<LabelScores>& labels,
                                                  const std::vector<std::vector<size_t>>& case_of, size_t num_cases,
                                                  const BootstrapOptions& options = {});

// The AUC of `scores` against `truth` with case i counted weights[i] times (a weight of 0 drops the case); ties
// count 1/2. nullopt when the positives' or the negatives' total weight is 0. The three spans have equal length
// (CHECKed); weights >= 0.
std::optional<double> WeightedAuc(absl::Span<const int> truth, absl::Span<const double> scores,
                                  absl::Span<const double> weights);

// The q-quantile (0 <= q <= 1) of `values` (not empty; sorted in place) with linear interpolation between order
// statistics (numpy.quantile's default).
double Quantile(std::vector<double>& values, double q);

}  // namespace fedtune::stats

#endif  // FEDTUNE_COMMON_STATS_BOOTSTRAP_H_
