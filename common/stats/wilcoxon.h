// Wilcoxon signed-rank test (two-sided) over paired values, as the study used it to compare the 14 per-label AUCs
// of two models ("overall AUC").
#ifndef FEDTUNE_COMMON_STATS_WILCOXON_H_
#define FEDTUNE_COMMON_STATS_WILCOXON_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace fedtune::stats {

struct WilcoxonResult {
  enum class Method { kExact, kNormal };
  int64_t n = 0;  // Non-zero differences used.
  int64_t zeros_dropped = 0;
  double r_plus = 0;  // Sum of the ranks of |d| over positive differences (midranks for ties).
  double r_minus = 0;
  double statistic = 0;           // min(R+, R-).
  std::optional<double> z;        // Normal method only.
  std::optional<double> p_value;  // nullopt when n == 0 (nothing to test); see note.
  Method method = Method::kNormal;
  std::string note;
};

const char* MethodName(WilcoxonResult::Method method);  // "exact" or "normal".

// Tests whether the differences d are symmetric about 0. Zero differences are dropped (Wilcoxon's method). The exact
// null distribution is used when n <= 50 and there were no zeros and no ties; otherwise the normal approximation
// with tie correction, var = n(n+1)(2n+1)/24 - sum(t^3 - t)/48, and no continuity correction.
// Exact: p = min(1, 2 P(T <= statistic)). InvalidArgument when a difference is not finite.
absl::StatusOr<WilcoxonResult> WilcoxonSignedRank(absl::Span<const double> differences);

// Convenience: differences a[i] - b[i]. InvalidArgument when the lengths differ.
absl::StatusOr<WilcoxonResult> WilcoxonSignedRank(absl::Span<const double> a, absl::Span<const double> b);

}  // namespace fedtune::stats

#endif  // FEDTUNE_COMMON_STATS_WILCOXON_H_
