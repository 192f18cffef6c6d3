#include "common/data/class_weights.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"

namespace fedtune::data {

PositiveWeights ComputePositiveWeights(const std::vector<LabelTargets>& training_targets,
                                       const ClassWeightOptions& options) {
  CHECK_GT(options.max_weight, 0.0);
  PositiveWeights w;
  for (const LabelTargets& t : training_targets) {
    for (int l = 0; l < kNumChexpertLabels; ++l) {
      if (t.mask[l] <= 0) continue;
      w.positives[l] += t.target[l];
      w.negatives[l] += 1.0 - t.target[l];
    }
  }
  for (int l = 0; l < kNumChexpertLabels; ++l) {
    // Masses below this are rounding residue of soft labels, not evidence.
    constexpr double kTiny = 1e-9;
    if (w.positives[l] <= kTiny || w.negatives[l] <= kTiny) {
      w.weight[l] = options.degenerate_weight;
      w.degenerate[l] = true;
      continue;
    }
    w.weight[l] = w.negatives[l] / w.positives[l];
    if (w.weight[l] > options.max_weight) {
      w.weight[l] = options.max_weight;
      w.capped[l] = true;
    }
  }
  return w;
}

std::string FormatPositiveWeights(const PositiveWeights& weights) {
  std::string out;
  for (int l = 0; l < kNumChexpertLabels; ++l) {
    absl::StrAppendFormat(&out, "%s: %.4g (positives %.1f, negatives %.1f)", kChexpertLabels[l], weights.weight[l],
                          weights.positives[l], weights.negatives[l]);
    if (weights.degenerate[l]) {
      absl::StrAppend(&out, weights.positives[l] <= 1e-9 ? " no positives" : " no negatives", ": default weight");
    }
    if (weights.capped[l]) absl::StrAppend(&out, " capped");
    absl::StrAppend(&out, "\n");
  }
  return out;
}

}  // namespace fedtune::data
