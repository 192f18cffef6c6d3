#include "common/data/class_weights.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "common/data/manifest.h"
#include "common/data/stratified_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fedtune::data {
namespace {

using ::testing::HasSubstr;

LabelTargets Targets(float value, float mask = 1.0f) {
  LabelTargets t;
  t.target.fill(value);
  t.mask.fill(mask);
  return t;
}

TEST(PositiveWeightsTest, NegativesOverPositives) {
  std::vector<LabelTargets> train;
  for (int i = 0; i < 3; ++i) train.push_back(Targets(1.0f));
  for (int i = 0; i < 9; ++i) train.push_back(Targets(0.0f));
  train[0].target[kEdema] = 0.0f;  // Edema: 2 positives, 10 negatives.
  PositiveWeights w = ComputePositiveWeights(train);
  EXPECT_DOUBLE_EQ(w.weight[kCardiomegaly], 3.0);
  EXPECT_DOUBLE_EQ(w.positives[kCardiomegaly], 3.0);
  EXPECT_DOUBLE_EQ(w.negatives[kCardiomegaly], 9.0);
  EXPECT_DOUBLE_EQ(w.weight[kEdema], 5.0);
  EXPECT_FALSE(w.degenerate[kEdema]);
  EXPECT_FALSE(w.capped[kEdema]);
}

TEST(PositiveWeightsTest, SoftLabelsCountFractionallyAndMaskedLabelsNotAtAll) {
  std::vector<LabelTargets> train = {Targets(0.75f), Targets(0.0f), Targets(0.0f), Targets(1.0f, 0.0f)};
  PositiveWeights w = ComputePositiveWeights(train);
  EXPECT_DOUBLE_EQ(w.positives[kPneumonia], 0.75);
  EXPECT_DOUBLE_EQ(w.negatives[kPneumonia], 2.25);
  EXPECT_DOUBLE_EQ(w.weight[kPneumonia], 3.0);
}

TEST(PositiveWeightsTest, GuardsLabelsWithoutPositivesOrNegatives) {
  std::vector<LabelTargets> train = {Targets(0.0f), Targets(0.0f)};
  train[0].target[kFracture] = 1.0f;
  train[1].target[kFracture] = 1.0f;  // Fracture: only positives.
  ClassWeightOptions options;
  options.degenerate_weight = 1.0;
  PositiveWeights w = ComputePositiveWeights(train, options);
  EXPECT_EQ(w.weight[kPneumothorax], 1.0);
  EXPECT_TRUE(w.degenerate[kPneumothorax]);
  EXPECT_EQ(w.weight[kFracture], 1.0);
  EXPECT_TRUE(w.degenerate[kFracture]);
  for (int l = 0; l < kNumChexpertLabels; ++l) {
    EXPECT_TRUE(std::isfinite(w.weight[l]));
  }
  // No training data at all: every label degenerate, no division by zero.
  PositiveWeights empty = ComputePositiveWeights({});
  for (int l = 0; l < kNumChexpertLabels; ++l) EXPECT_EQ(empty.weight[l], 1.0);
  EXPECT_THAT(FormatPositiveWeights(w), HasSubstr("Fracture: 1 (positives 2.0, negatives 0.0) no negatives"));
  EXPECT_THAT(FormatPositiveWeights(w), HasSubstr("Pneumothorax: 1 (positives 0.0, negatives 2.0) no positives"));
}

TEST(PositiveWeightsTest, CapsHugeRatios) {
  std::vector<LabelTargets> train(1000, Targets(0.0f));
  train[0].target[kLungLesion] = 1.0f;
  ClassWeightOptions options;
  options.max_weight = 100.0;
  PositiveWeights w = ComputePositiveWeights(train, options);
  EXPECT_EQ(w.weight[kLungLesion], 100.0);
  EXPECT_TRUE(w.capped[kLungLesion]);
  EXPECT_DOUBLE_EQ(ComputePositiveWeights(train).weight[kLungLesion], 999.0);
}

TEST(PositiveWeightsTest, FromTheTrainingSplitOfAManifest) {
  // Patient i has one image; Edema is positive for patients 0..9 of 40.
  std::vector<ManifestEntry> entries(40);
  for (int i = 0; i < 40; ++i) {
    entries[i].path = absl::StrCat("p/patient", i, "/study1/view1_frontal.jpg");
    entries[i].patient_id = absl::StrCat("patient", i);
    entries[i].study_id = absl::StrCat("patient", i, "/study1");
    entries[i].labels.fill(RawLabel::kNegative);
    if (i < 10) entries[i].labels[kEdema] = RawLabel::kPositive;
  }
  Manifest manifest("m.csv", entries);
  SplitOptions options;
  options.train = 0.5;
  options.validation = 0.5;
  options.test = 0;
  absl::StatusOr<DatasetSplit> split = SplitByPatient(manifest, options);
  ASSERT_TRUE(split.ok()) << split.status();
  const std::vector<size_t> train = split->EntriesIn(Split::kTrain);
  LabelPolicy policy;
  policy.hierarchy_correction = false;
  PositiveWeights w = ComputePositiveWeights(TargetsForEntries(manifest, train, policy));
  // Stratification puts 5 of the 10 positives into the 20 training images.
  EXPECT_EQ(train.size(), 20u);
  EXPECT_DOUBLE_EQ(w.positives[kEdema], 5.0);
  EXPECT_DOUBLE_EQ(w.weight[kEdema], 3.0);
  EXPECT_TRUE(w.degenerate[kCardiomegaly]);
}

}  // namespace
}  // namespace fedtune::data
