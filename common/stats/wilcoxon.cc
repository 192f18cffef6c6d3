#include "common/stats/wilcoxon.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/stats/normal.h"

namespace fedtune::stats {
namespace {

constexpr int64_t kMaxExactN = 50;

// P(T <= w) for T the signed-rank statistic of n untied, non-zero differences under the null: the number of
// subsets of {1..n} whose sum is <= w, over 2^n. Counts fit in 64 bits for n <= 50 (max 2^50).
double ExactCdf(int64_t n, int64_t w) {
  const int64_t max_sum = n * (n + 1) / 2;
  std::vector<uint64_t> count(max_sum + 1, 0);
  count[0] = 1;
  for (int64_t k = 1; k <= n; ++k) {
    for (int64_t s = k * (k + 1) / 2; s >= k; --s) count[s] += count[s - k];
  }
  uint64_t below = 0;
  for (int64_t s = 0; s <= std::min(w, max_sum); ++s) below += count[s];
  return std::ldexp(static_cast<double>(below), static_cast<int>(-n));
}

}  // namespace

const char* MethodName(WilcoxonResult::Method method) {
  return method == WilcoxonResult::Method::kExact ? "exact" : "normal";
}

absl::StatusOr<WilcoxonResult> WilcoxonSignedRank(absl::Span<const double> differences) {
  WilcoxonResult out;
  std::vector<double> d;
  for (size_t i = 0; i < differences.size(); ++i) {
    if (!std::isfinite(differences[i])) {
      return absl::InvalidArgumentError(absl::StrCat("difference ", i, " is not finite"));
    }
    if (differences[i] == 0.0) {
      ++out.zeros_dropped;
    } else {
      d.push_back(differences[i]);
    }
  }
  out.n = static_cast<int64_t>(d.size());
  if (out.n == 0) {
    out.note = "no non-zero differences: nothing to test";
    return out;
  }
  std::sort(d.begin(), d.end(), [](double a, double b) { return std::fabs(a) < std::fabs(b); });
  // Midranks of |d|; ranks are doubled to stay integral until the end.
  int64_t r_plus2 = 0;
  int64_t r_minus2 = 0;
  double tie_term = 0;  // sum over tie groups of t^3 - t.
  bool ties = false;
  for (size_t start = 0; start < d.size();) {
    size_t end = start;
    while (end < d.size() && std::fabs(d[end]) == std::fabs(d[start])) ++end;
    const int64_t t = static_cast<int64_t>(end - start);
    if (t > 1) {
      ties = true;
      tie_term += static_cast<double>(t) * t * t - t;
    }
    const int64_t rank2 = static_cast<int64_t>(start + 1 + end);  // 2 * midrank of positions start..end-1.
    for (size_t i = start; i < end; ++i) (d[i] > 0 ? r_plus2 : r_minus2) += rank2;
    start = end;
  }
  out.r_plus = static_cast<double>(r_plus2) / 2.0;
  out.r_minus = static_cast<double>(r_minus2) / 2.0;
  out.statistic = std::min(out.r_plus, out.r_minus);
  const double n = static_cast<double>(out.n);
  if (out.n <= kMaxExactN && out.zeros_dropped == 0 && !ties) {
    out.method = WilcoxonResult::Method::kExact;
    out.p_value = std::min(1.0, 2.0 * ExactCdf(out.n, std::min(r_plus2, r_minus2) / 2));
    return out;
  }
  out.method = WilcoxonResult::Method::kNormal;
  const double mean = n * (n + 1) / 4.0;
  // Positive for every n >= 1, even when all |d| are tied.
  const double variance = n * (n + 1) * (2 * n + 1) / 24.0 - tie_term / 48.0;
  out.z = (out.statistic - mean) / std::sqrt(variance);
  out.p_value = TwoSidedNormalPValue(*out.z);
  return out;
}

absl::StatusOr<WilcoxonResult> WilcoxonSignedRank(absl::Span<const double> a, absl::Span<const double> b) {
  if (a.size() != b.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("paired samples differ in length (", a.size(), " vs ", b.size(), ")"));
  }
  std::vector<double> d(a.size());
  for (size_t i = 0; i < a.size(); ++i) d[i] = a[i] - b[i];
  return WilcoxonSignedRank(absl::MakeConstSpan(d));
}

}  // namespace fedtune::stats
