#include "common/stats/delong.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/stats/normal.h"
#include "common/status_macros.h"

namespace fedtune::stats {
namespace {

using int128 = __int128;

// Integer form of the components. For positive i, k10[i] = 2 * (#negatives
// scored below) + (#negatives tied), so V10[i] = k10[i] / (2n); for negative j,
// k01[j] = 2 * (#positives scored above) + (#positives tied), so V01[j] =
// k01[j] / (2m). These are exactly the midrank differences of Sun & Xu: k10 = 2
// (Tz - Tx) and k01 = 2m - 2 (Tz - Ty), obtained here from a single sort of the
// pooled scores.
struct IntComponents {
  int64_t m = 0;
  int64_t n = 0;
  std::vector<int64_t> k10;  // Per positive, input order.
  std::vector<int64_t> k01;  // Per negative, input order.
  int64_t sum_k10 = 0;       // AUC = sum_k10 / (2 m n).
};

absl::Status Validate(absl::Span<const int> truth, absl::Span<const double> scores) {
  if (truth.size() != scores.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("truth has ", truth.size(), " values but scores has ", scores.size()));
  }
  if (truth.size() > std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("too many cases (", truth.size(), "); at most 2^32 - 1"));
  }
  int64_t pos = 0;
  for (size_t i = 0; i < truth.size(); ++i) {
    if (truth[i] != 0 && truth[i] != 1) {
      return absl::InvalidArgumentError(absl::StrCat("truth value ", truth[i], " at case ", i, " is not 0 or 1"));
    }
    if (!std::isfinite(scores[i])) {
      return absl::InvalidArgumentError(absl::StrCat("score at case ", i, " is not finite"));
    }
    pos += truth[i];
  }
  if (pos == 0) return absl::InvalidArgumentError("no positive case: the AUC is undefined");
  if (pos == static_cast<int64_t>(truth.size())) {
    return absl::InvalidArgumentError("no negative case: the AUC is undefined");
  }
  return absl::OkStatus();
}

absl::StatusOr<IntComponents> ComputeInt(absl::Span<const int> truth, absl::Span<const double> scores) {
  RETURN_IF_ERROR(Validate(truth, scores));
  const size_t total = truth.size();
  IntComponents c;
  std::vector<int64_t> slot(total);  // Index of each case within its class.
  for (size_t i = 0; i < total; ++i) slot[i] = truth[i] == 1 ? c.m++ : c.n++;
  c.k10.assign(c.m, 0);
  c.k01.assign(c.n, 0);

  // Sorting (score, case) pairs keeps the comparisons cache-friendly; the case
  // index only breaks ties, which the tie groups below make irrelevant.
  std::vector<std::pair<double, uint32_t>> order(total);
  for (size_t i = 0; i < total; ++i) order[i] = {scores[i], static_cast<uint32_t>(i)};
  std::sort(order.begin(), order.end());

  int64_t pos_below = 0;
  int64_t neg_below = 0;
  for (size_t start = 0; start < total;) {
    size_t end = start;
    int64_t p = 0;
    int64_t q = 0;
    while (end < total && order[end].first == order[start].first) {
      (truth[order[end].second] == 1 ? p : q) += 1;
      ++end;
    }
    const int64_t k10 = 2 * neg_below + q;
    const int64_t k01 = 2 * (c.m - pos_below - p) + p;
    for (size_t r = start; r < end; ++r) {
      const uint32_t i = order[r].second;
      if (truth[i] == 1) {
        c.k10[slot[i]] = k10;
        c.sum_k10 += k10;
      } else {
        c.k01[slot[i]] = k01;
      }
    }
    pos_below += p;
    neg_below += q;
    start = end;
  }
  return c;
}

// Exact sample variance of values k / scale (k integers): (N sum k^2 - (sum
// k)^2) / (N (N - 1) scale^2). Requires N >= 2. The numerator is an exact
// 128-bit integer, so the result is correctly rounded up to the final
// conversions and independent of the order of the values.
double SampleVariance(const std::vector<int64_t>& k, double scale) {
  int128 sum = 0;
  int128 sum_sq = 0;
  for (int64_t v : k) {
    sum += v;
    sum_sq += static_cast<int128>(v) * v;
  }
  const int128 count = static_cast<int128>(k.size());
  const int128 numerator = count * sum_sq - sum * sum;
  return static_cast<double>(numerator) / (static_cast<double>(count) * static_cast<double>(count - 1)) /
         (scale * scale);
}

std::vector<int64_t> Difference(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  std::vector<int64_t> d(a.size());
  for (size_t i = 0; i < a.size(); ++i) d[i] = a[i] - b[i];
  return d;
}

double AucOf(const IntComponents& c) {
  return static_cast<double>(c.sum_k10) / (2.0 * static_cast<double>(c.m) * static_cast<double>(c.n));
}

// var(V10)/m + var(V01)/n for components given as integer numerators.
double DeLongVariance(const IntComponents& c, const std::vector<int64_t>& k10, const std::vector<int64_t>& k01) {
  const double m = static_cast<double>(c.m);
  const double n = static_cast<double>(c.n);
  return SampleVariance(k10, 2.0 * n) / m + SampleVariance(k01, 2.0 * m) / n;
}

std::pair<double, double> ClippedInterval(double center, double variance) {
  const double half = kZ975 * std::sqrt(variance);
  return {std::max(0.0, center - half), std::min(1.0, center + half)};
}

std::string TooFewNote(int64_t m, int64_t n) {
  return absl::StrCat("variance needs at least 2 positive and 2 negative cases (have ", m, " positive, ", n,
                      " negative)");
}

}  // namespace

absl::StatusOr<DeLongComponents> ComputeDeLongComponents(absl::Span<const int> truth, absl::Span<const double> scores) {
  ASSIGN_OR_RETURN(IntComponents c, ComputeInt(truth, scores));
  DeLongComponents out;
  out.auc = AucOf(c);
  out.v10.reserve(c.m);
  out.v01.reserve(c.n);
  for (int64_t k : c.k10) out.v10.push_back(static_cast<double>(k) / (2.0 * static_cast<double>(c.n)));
  for (int64_t k : c.k01) out.v01.push_back(static_cast<double>(k) / (2.0 * static_cast<double>(c.m)));
  return out;
}

absl::StatusOr<AucEstimate> EstimateAuc(absl::Span<const int> truth, absl::Span<const double> scores) {
  ASSIGN_OR_RETURN(IntComponents c, ComputeInt(truth, scores));
  AucEstimate out;
  out.n_pos = c.m;
  out.n_neg = c.n;
  out.auc = AucOf(c);
  if (c.m < 2 || c.n < 2) {
    out.note = TooFewNote(c.m, c.n);
    return out;
  }
  out.variance = DeLongVariance(c, c.k10, c.k01);
  out.ci95 = ClippedInterval(out.auc, *out.variance);
  return out;
}

absl::StatusOr<PairedDeLong> PairedDeLongTest(absl::Span<const int> truth, absl::Span<const double> scores_a,
                                              absl::Span<const double> scores_b) {
  if (scores_a.size() != scores_b.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the two scores differ in length (", scores_a.size(), " vs ", scores_b.size(), ")"));
  }
  ASSIGN_OR_RETURN(IntComponents a, ComputeInt(truth, scores_a));
  ASSIGN_OR_RETURN(IntComponents b, ComputeInt(truth, scores_b));
  PairedDeLong out;
  out.auc_a = AucOf(a);
  out.auc_b = AucOf(b);
  out.difference = out.auc_a - out.auc_b;
  if (a.m < 2 || a.n < 2) {
    out.note = TooFewNote(a.m, a.n);
    return out;
  }
  // var(AUC_a - AUC_b) from the components of the difference: equal to var_a +
  // var_b - 2 cov_ab, without the cancellation when the two scores are close.
  const double variance = DeLongVariance(a, Difference(a.k10, b.k10), Difference(a.k01, b.k01));
  out.variance = variance;
  const double se = std::sqrt(variance);
  out.ci95 = std::make_pair(out.difference - kZ975 * se, out.difference + kZ975 * se);
  if (se == 0.0) {
    if (a.sum_k10 == b.sum_k10) {
      out.z = 0.0;
      out.p_value = 1.0;
    } else {
      out.p_value = 0.0;
      out.note =
          "the standard error of the difference is 0 while the difference is "
          "not: z is unbounded";
    }
    return out;
  }
  out.z = out.difference / se;
  out.p_value = TwoSidedNormalPValue(*out.z);
  return out;
}

}  // namespace fedtune::stats
