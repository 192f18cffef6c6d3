// The standard normal distribution, computed through erfc so that tail probabilities keep full relative precision
// (no 1 - Phi(z) cancellation for large |z|).
#ifndef FEDTUNE_COMMON_STATS_NORMAL_H_
#define FEDTUNE_COMMON_STATS_NORMAL_H_

namespace fedtune::stats {

// 97.5th percentile of the standard normal: half-width multiplier of a two-sided 95% interval.
inline constexpr double kZ975 = 1.959963984540054;

// Phi(x) = P(Z <= x) = erfc(-x / sqrt(2)) / 2.
double NormalCdf(double x);

// Two-sided p-value of a z statistic: 2 * Phi(-|z|) = erfc(|z| / sqrt(2)).
double TwoSidedNormalPValue(double z);

}  // namespace fedtune::stats

#endif  // FEDTUNE_COMMON_STATS_NORMAL_H_
