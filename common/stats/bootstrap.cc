#include "common/stats/bootstrap.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace fedtune::stats {
namespace {

// One model's scores of one label, sorted once: the entries in ascending score order and where each run of tied
// scores ends.
struct SortedScores {
  std::vector<size_t> order;
  std::vector<size_t> group_end;  // Exclusive ends of the tie groups, in `order`.
};

SortedScores Sort(absl::Span<const double> scores) {
  SortedScores s;
  s.order.resize(scores.size());
  std::iota(s.order.begin(), s.order.end(), size_t{0});
  std::stable_sort(s.order.begin(), s.order.end(), [&](size_t x, size_t y) { return scores[x] < scores[y]; });
  for (size_t i = 1; i <= s.order.size(); ++i) {
    if (i == s.order.size() || scores[s.order[i]] != scores[s.order[i - 1]]) s.group_end.push_back(i);
  }
  return s;
}

// Sum over positives of weight x (weight of negatives below + half the tied negatives' weight), over the total
// weights; the caller has checked both totals are > 0.
double AucOfSorted(const SortedScores& sorted, absl::Span<const int> truth, const std::vector<double>& weight,
                   double positives, double negatives) {
  double below = 0;
  double sum = 0;
  size_t begin = 0;
  for (size_t end : sorted.group_end) {
    double pos = 0, neg = 0;
    for (size_t k = begin; k < end; ++k) {
      const size_t i = sorted.order[k];
      (truth[i] == 1 ? pos : neg) += weight[i];
    }
    sum += pos * (below + 0.5 * neg);
    below += neg;
    begin = end;
  }
  return sum / (positives * negatives);
}

absl::Status CheckLabel(const LabelScores& label, const std::vector<size_t>& cases, size_t num_cases) {
  auto invalid = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("bootstrap: label '", label.name, "': ", what));
  };
  if (label.truth.size() != label.a.size() || label.truth.size() != label.b.size() ||
      label.truth.size() != cases.size()) {
    return invalid("truth, scores and case indices differ in length");
  }
  std::vector<bool> seen(num_cases, false);
  for (size_t i = 0; i < cases.size(); ++i) {
    if (cases[i] >= num_cases) return invalid(absl::StrCat("case index ", cases[i], " is not below ", num_cases));
    if (seen[cases[i]]) return invalid(absl::StrCat("case index ", cases[i], " appears twice"));
    seen[cases[i]] = true;
    if (label.truth[i] != 0 && label.truth[i] != 1) return invalid(absl::StrCat("truth value ", label.truth[i]));
    if (!std::isfinite(label.a[i]) || !std::isfinite(label.b[i])) return invalid("a score is not finite");
  }
  return absl::OkStatus();
}

}  // namespace

std::optional<double> WeightedAuc(absl::Span<const int> truth, absl::Span<const double> scores,
                                  absl::Span<const double> weights) {
  CHECK_EQ(truth.size(), scores.size());
  CHECK_EQ(truth.size(), weights.size());
  double positives = 0, negatives = 0;
  for (size_t i = 0; i < truth.size(); ++i) (truth[i] == 1 ? positives : negatives) += weights[i];
  if (!(positives > 0) || !(negatives > 0)) return std::nullopt;
  const std::vector<double> weight(weights.begin(), weights.end());
  return AucOfSorted(Sort(scores), truth, weight, positives, negatives);
}

double Quantile(std::vector<double>& values, double q) {
  CHECK(!values.empty());
  std::sort(values.begin(), values.end());
  const double position = q * static_cast<double>(values.size() - 1);
  const size_t low = static_cast<size_t>(std::floor(position));
  const size_t high = std::min(low + 1, values.size() - 1);
  const double fraction = position - static_cast<double>(low);
  return values[low] + fraction * (values[high] - values[low]);
}

absl::StatusOr<MeanAucIntervals> BootstrapMeanAuc(const std::vector<LabelScores>& labels,
                                                  const std::vector<std::vector<size_t>>& case_of, size_t num_cases,
                                                  const BootstrapOptions& options) {
  if (options.resamples < 1 || options.resamples > 1000000) {
    return absl::InvalidArgumentError(absl::StrCat("bootstrap: resamples is ", options.resamples, ", not in [1, 1e6]"));
  }
  if (!(options.level > 0 && options.level < 1)) {
    return absl::InvalidArgumentError(absl::StrCat("bootstrap: level is ", options.level, ", not in (0, 1)"));
  }
  if (labels.size() != case_of.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("bootstrap: ", labels.size(), " labels but ", case_of.size(), " case index lists"));
  }
  // The labels of the mean: both classes in the full sample (as CompareModels' mean AUC).
  struct Used {
    const LabelScores* scores;
    const std::vector<size_t>* cases;
    SortedScores a;
    SortedScores b;
  };
  std::vector<Used> used;
  for (size_t l = 0; l < labels.size(); ++l) {
    if (absl::Status ok = CheckLabel(labels[l], case_of[l], num_cases); !ok.ok()) return ok;
    const int64_t positives = std::count(labels[l].truth.begin(), labels[l].truth.end(), 1);
    if (positives == 0 || positives == static_cast<int64_t>(labels[l].truth.size())) continue;
    used.push_back({&labels[l], &case_of[l], Sort(labels[l].a), Sort(labels[l].b)});
  }
  MeanAucIntervals out;
  if (used.empty() || num_cases == 0) return out;

  std::mt19937_64 engine(options.seed);
  std::vector<int> drawn(num_cases);
  std::vector<double> weight;
  std::vector<double> means_a, means_b;
  for (int r = 0; r < options.resamples; ++r) {
    std::fill(drawn.begin(), drawn.end(), 0);
    // A 53-bit uniform scaled to [0, num_cases): the same indices on every standard library.
    for (size_t k = 0; k < num_cases; ++k) {
      const double u = static_cast<double>(engine() >> 11) * (1.0 / 9007199254740992.0);
      ++drawn[std::min(num_cases - 1, static_cast<size_t>(u * static_cast<double>(num_cases)))];
    }
    double sum_a = 0, sum_b = 0;
    int n = 0;
    for (const Used& label : used) {
      const LabelScores& s = *label.scores;
      weight.resize(s.truth.size());
      double positives = 0, negatives = 0;
      for (size_t i = 0; i < s.truth.size(); ++i) {
        weight[i] = drawn[(*label.cases)[i]];
        (s.truth[i] == 1 ? positives : negatives) += weight[i];
      }
      if (positives == 0 || negatives == 0) continue;  // This label lacks a class in this resample: left out.
      sum_a += AucOfSorted(label.a, s.truth, weight, positives, negatives);
      sum_b += AucOfSorted(label.b, s.truth, weight, positives, negatives);
      ++n;
    }
    if (n == 0) continue;
    means_a.push_back(sum_a / n);
    means_b.push_back(sum_b / n);
  }
  out.usable_resamples = static_cast<int>(means_a.size());
  if (2 * out.usable_resamples < options.resamples) return out;
  const double tail = (1 - options.level) / 2;
  out.a = std::make_pair(Quantile(means_a, tail), Quantile(means_a, 1 - tail));
  out.b = std::make_pair(Quantile(means_b, tail), Quantile(means_b, 1 - tail));
  return out;
}

}  // namespace fedtune::stats
