#include "common/stats/youden.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/stats/normal.h"

namespace fedtune::stats {

absl::StatusOr<std::pair<double, double>> WilsonInterval(int64_t successes, int64_t trials) {
  if (trials <= 0 || successes < 0 || successes > trials) {
    return absl::InvalidArgumentError(
        absl::StrCat("Wilson interval needs 0 <= successes <= trials, trials > 0; got ", successes, "/", trials));
  }
  const double n = static_cast<double>(trials);
  const double p = static_cast<double>(successes) / n;
  const double z2 = kZ975 * kZ975;
  const double denom = 1.0 + z2 / n;
  const double center = (p + z2 / (2.0 * n)) / denom;
  const double half = kZ975 / denom * std::sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n));
  return std::make_pair(std::max(0.0, center - half), std::min(1.0, center + half));
}

absl::StatusOr<OperatingPoint> YoudenOptimalPoint(absl::Span<const int> truth, absl::Span<const double> scores) {
  if (truth.size() != scores.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("truth has ", truth.size(), " values but scores has ", scores.size()));
  }
  int64_t m = 0;
  for (size_t i = 0; i < truth.size(); ++i) {
    if (truth[i] != 0 && truth[i] != 1) {
      return absl::InvalidArgumentError(absl::StrCat("truth value ", truth[i], " at case ", i, " is not 0 or 1"));
    }
    if (!std::isfinite(scores[i]))
      return absl::InvalidArgumentError(absl::StrCat("score at case ", i, " is not finite"));
    m += truth[i];
  }
  const int64_t n = static_cast<int64_t>(truth.size()) - m;
  if (m == 0 || n == 0) {
    return absl::InvalidArgumentError("an operating point needs both positive and negative cases");
  }
  std::vector<uint32_t> order(truth.size());
  std::iota(order.begin(), order.end(), 0u);
  // Descending scores: lowering the threshold group by group adds that group's cases to "predicted positive".
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return scores[a] > scores[b]; });
  int64_t tp = 0;
  int64_t fp = 0;
  bool have_best = false;
  __int128 best_j = 0;
  OperatingPoint best;
  for (size_t start = 0; start < order.size();) {
    size_t end = start;
    const double t = scores[order[start]];
    while (end < order.size() && scores[order[end]] == t) {
      (truth[order[end]] == 1 ? tp : fp) += 1;
      ++end;
    }
    const int64_t tn = n - fp;
    // sensitivity + specificity = tp/m + tn/n, compared exactly as tp*n + tn*m.
    const __int128 j = static_cast<__int128>(tp) * n + static_cast<__int128>(tn) * m;
    if (!have_best || j > best_j) {
      have_best = true;
      best_j = j;
      best.threshold = t;
      best.true_positives = tp;
      best.true_negatives = tn;
    }
    start = end;
  }
  best.sensitivity = static_cast<double>(best.true_positives) / static_cast<double>(m);
  best.specificity = static_cast<double>(best.true_negatives) / static_cast<double>(n);
  best.sensitivity_ci95 = *WilsonInterval(best.true_positives, m);
  best.specificity_ci95 = *WilsonInterval(best.true_negatives, n);
  return best;
}

}  // namespace fedtune::stats
