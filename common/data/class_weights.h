// Positive-class weights for the weighted binary cross-entropy: per label,
// negatives / positives on the training split, guarded when a label has no
// positives (or no negatives) there.
#ifndef FEDTUNE_COMMON_DATA_CLASS_WEIGHTS_H_
#define FEDTUNE_COMMON_DATA_CLASS_WEIGHTS_H_

#include <array>
#include <string>
#include <vector>

#include "common/data/chexpert_labels.h"
#include "common/data/label_policy.h"

namespace fedtune::data {

struct ClassWeightOptions {
  // Weight of a label whose training targets have no positive mass or no
  // negative mass: the ratio is then 0 or infinite, and neither helps the loss.
  // Default 1 (unweighted).
  double degenerate_weight = 1.0;
  // Upper bound on any weight, so that a label with a handful of positives
  // cannot dominate the loss. Must be > 0. Default 1000.
  double max_weight = 1000.0;
};

struct PositiveWeights {
  std::array<double, kNumChexpertLabels> weight{};
  // The masses behind each weight: sums over the images where the label enters
  // the loss (mask 1) of target and of 1 - target. A soft label 0.7 counts 0.7
  // positive and 0.3 negative; a masked label counts nothing.
  std::array<double, kNumChexpertLabels> positives{};
  std::array<double, kNumChexpertLabels> negatives{};
  // True where the weight is degenerate_weight because positives or negatives
  // were 0.
  std::array<bool, kNumChexpertLabels> degenerate{};
  // True where max_weight capped the ratio.
  std::array<bool, kNumChexpertLabels> capped{};
};

// Computes the positive weights of the training split's targets (after the
// label policy). Pure function.
PositiveWeights ComputePositiveWeights(const std::vector<LabelTargets>& training_targets,
                                       const ClassWeightOptions& options = {});

// One line per label: "Cardiomegaly: 7.25 (positives 120.0, negatives 870.0)",
// with a "no positives: default weight", "no negatives: default weight" or
// "capped" note where one applies.
std::string FormatPositiveWeights(const PositiveWeights& weights);

}  // namespace fedtune::data

#endif  // FEDTUNE_COMMON_DATA_CLASS_WEIGHTS_H_
