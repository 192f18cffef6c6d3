#include "common/eval/roc.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace fedtune::eval {

absl::StatusOr<std::vector<RocPoint>> RocCurve(absl::Span<const int> truth, absl::Span<const double> scores) {
  if (truth.size() != scores.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ROC: ", truth.size(), " truth values but ", scores.size(), " scores"));
  }
  int64_t positives = 0;
  for (size_t i = 0; i < truth.size(); ++i) {
    if (truth[i] != 0 && truth[i] != 1) {
      return absl::InvalidArgumentError(absl::StrCat("ROC: truth value ", truth[i], " at case ", i, " is not 0/1"));
    }
    if (!std::isfinite(scores[i])) {
      return absl::InvalidArgumentError(absl::StrCat("ROC: score at case ", i, " is not finite"));
    }
    positives += truth[i];
  }
  const int64_t negatives = static_cast<int64_t>(truth.size()) - positives;
  if (positives == 0 || negatives == 0) {
    return absl::InvalidArgumentError(absl::StrCat("ROC: needs positive and negative cases, got ", positives,
                                                   " positive and ", negatives, " negative"));
  }
  std::vector<size_t> order(truth.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t i, size_t j) { return scores[i] > scores[j]; });

  std::vector<RocPoint> curve;
  curve.push_back({0.0, 0.0, std::numeric_limits<double>::infinity()});
  int64_t tp = 0, fp = 0;
  for (size_t k = 0; k < order.size();) {
    const double threshold = scores[order[k]];
    for (; k < order.size() && scores[order[k]] == threshold; ++k) {
      if (truth[order[k]] == 1) {
        ++tp;
      } else {
        ++fp;
      }
    }
    // Exact at the end: fp == negatives and tp == positives give exactly 1.
    curve.push_back({static_cast<double>(fp) / static_cast<double>(negatives),
                     static_cast<double>(tp) / static_cast<double>(positives), threshold});
  }
  return curve;
}

}  // namespace fedtune::eval
