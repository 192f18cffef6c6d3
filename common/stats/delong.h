// ROC AUC and DeLong's variance, confidence interval and paired test, with the fast midrank algorithm of
// Sun & Xu (2014), "Fast implementation of DeLong's algorithm for comparing the areas under correlated receiver
// operating characteristic curves", IEEE Signal Processing Letters 21(11). O(n log n) time, O(n) memory.
//
// Conventions: truth is 1 (positive) or 0 (negative); a higher score means "more likely positive"; the AUC is the
// Mann-Whitney probability that a positive case outscores a negative one, ties counting 1/2.
//
// Exactness: the structural components are kept as integer numerators (counts of negatives below, doubled so that
// ties count 1/2) over common denominators, and variances and covariances are formed from exact 128-bit integer
// sums. The results therefore do not depend on the order of the cases, and var(a - b) never suffers the
// cancellation of var_a + var_b - 2 cov.
#ifndef FEDTUNE_COMMON_STATS_DELONG_H_
#define FEDTUNE_COMMON_STATS_DELONG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace fedtune::stats {

// DeLong's structural components of one score.
struct DeLongComponents {
  double auc = 0;
  // V10[i]: fraction of negatives outscored by positive i (ties 1/2), in the order positives appear in the input.
  std::vector<double> v10;
  // V01[j]: fraction of positives that outscore negative j (ties 1/2), in the order negatives appear in the input.
  std::vector<double> v01;
};

// Computes the AUC and the components. InvalidArgument when truth and scores differ in length, a truth value is
// not 0/1, a score is not finite, or there is no positive or no negative case.
absl::StatusOr<DeLongComponents> ComputeDeLongComponents(absl::Span<const int> truth, absl::Span<const double> scores);

// An AUC with DeLong's variance and 95% CI. variance/ci95 are nullopt, with `note` saying why, when there are fewer
// than 2 positives or fewer than 2 negatives.
struct AucEstimate {
  int64_t n_pos = 0;
  int64_t n_neg = 0;
  double auc = 0;
  std::optional<double> variance;                 // var(V10)/m + var(V01)/n, sample variances.
  std::optional<std::pair<double, double>> ci95;  // auc -+ 1.959963984540054 sqrt(variance), clipped to [0, 1].
  std::string note;
};

// Errors as ComputeDeLongComponents.
absl::StatusOr<AucEstimate> EstimateAuc(absl::Span<const int> truth, absl::Span<const double> scores);

// DeLong's test of two correlated AUCs (two scores of the same cases).
struct PairedDeLong {
  double auc_a = 0;
  double auc_b = 0;
  double difference = 0;                          // auc_a - auc_b.
  std::optional<double> variance;                 // var(auc_a - auc_b) = var_a + var_b - 2 cov_ab.
  std::optional<double> z;                        // difference / sqrt(variance).
  std::optional<double> p_value;                  // 2 Phi(-|z|).
  std::optional<std::pair<double, double>> ci95;  // difference -+ 1.959963984540054 sqrt(variance).
  std::string note;                               // Why a field is nullopt, or a degenerate case.
};

// Paired test. With fewer than 2 positives or 2 negatives only the AUCs and the difference are set. When the
// difference and its standard error are both 0: z = 0, p = 1. When only the standard error is 0 (for example two
// classifiers that are each constant on every class): z is nullopt, p = 0, and `note` says so.
// Errors as ComputeDeLongComponents, applied to both scores; scores_a and scores_b must have equal length.
absl::StatusOr<PairedDeLong> PairedDeLongTest(absl::Span<const int> truth, absl::Span<const double> scores_a,
                                              absl::Span<const double> scores_b);

}  // namespace fedtune::stats

#endif  // FEDTUNE_COMMON_STATS_DELONG_H_
