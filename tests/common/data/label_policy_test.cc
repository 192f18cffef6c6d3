#include "common/data/label_policy.h"

#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fedtune::data {
namespace {

using ::testing::HasSubstr;

RawLabels AllBlank() {
  RawLabels raw;
  raw.fill(RawLabel::kBlank);
  return raw;
}

LabelPolicy NoHierarchy(UncertainPolicy uncertain) {
  LabelPolicy policy;
  policy.uncertain = uncertain;
  policy.hierarchy_correction = false;
  return policy;
}

// One image with each raw value on a label outside the hierarchy.
RawLabels Mixed() {
  RawLabels raw = AllBlank();
  raw[kNoFinding] = RawLabel::kPositive;
  raw[kPneumothorax] = RawLabel::kNegative;
  raw[kPleuralEffusion] = RawLabel::kUncertain;
  return raw;  // kFracture stays blank.
}

TEST(LabelPolicyTest, DefaultIsTheStudys) {
  LabelPolicy policy;
  EXPECT_EQ(policy.uncertain, UncertainPolicy::kSoft);
  EXPECT_EQ(policy.blank, BlankPolicy::kZero);
  EXPECT_DOUBLE_EQ(policy.soft_low, 0.55);
  EXPECT_DOUBLE_EQ(policy.soft_high, 0.85);
  EXPECT_TRUE(policy.hierarchy_correction);
  policy.seed = 42;
  EXPECT_EQ(DescribeLabelPolicy(policy), "uncertain=u-soft[0.55,0.85] seed=42 blank=zero hierarchy=on");
}

TEST(LabelPolicyTest, SoftPolicyDrawsInRangeAndIsDeterministic) {
  LabelPolicy policy = NoHierarchy(UncertainPolicy::kSoft);
  policy.seed = 7;
  LabelTargets t = ApplyLabelPolicy(Mixed(), "a/patient1/study1/view1_frontal.jpg", policy);
  EXPECT_EQ(t.target[kNoFinding], 1.0f);
  EXPECT_EQ(t.target[kPneumothorax], 0.0f);
  EXPECT_EQ(t.target[kFracture], 0.0f);  // Blank -> 0.
  EXPECT_GE(t.target[kPleuralEffusion], 0.55f);
  EXPECT_LT(t.target[kPleuralEffusion], 0.85f);
  for (int l = 0; l < kNumChexpertLabels; ++l) EXPECT_EQ(t.mask[l], 1.0f) << l;

  // Same (seed, image, label) -> same draw, whatever else happens in between.
  LabelTargets again = ApplyLabelPolicy(Mixed(), "a/patient1/study1/view1_frontal.jpg", policy);
  EXPECT_EQ(again.target[kPleuralEffusion], t.target[kPleuralEffusion]);
  EXPECT_EQ(SoftLabel(policy, "a/patient1/study1/view1_frontal.jpg", kPleuralEffusion), t.target[kPleuralEffusion]);
}

TEST(LabelPolicyTest, SoftDrawsAreUniformAndDependOnSeedImageAndLabel) {
  LabelPolicy policy = NoHierarchy(UncertainPolicy::kSoft);
  policy.seed = 1;
  constexpr int kN = 20000;
  double sum = 0;
  int bins[6] = {};
  std::set<float> distinct;
  for (int i = 0; i < kN; ++i) {
    const float v = SoftLabel(policy, absl::StrCat("img", i, ".png"), i % kNumChexpertLabels);
    ASSERT_GE(v, 0.55f);
    ASSERT_LT(v, 0.85f);
    sum += v;
    ++bins[std::min(5, static_cast<int>((v - 0.55) / 0.05))];
    distinct.insert(v);
  }
  EXPECT_NEAR(sum / kN, 0.70, 0.005);
  for (int b = 0; b < 6; ++b) {
    EXPECT_NEAR(bins[b], kN / 6.0, 5 * std::sqrt(kN / 6.0)) << "bin " << b;
  }
  EXPECT_GT(distinct.size(), kN * 0.99);

  // Changing any of seed, image or label changes the draw.
  const float base = SoftLabel(policy, "x.png", kEdema);
  LabelPolicy other_seed = policy;
  other_seed.seed = 2;
  EXPECT_NE(SoftLabel(other_seed, "x.png", kEdema), base);
  EXPECT_NE(SoftLabel(policy, "y.png", kEdema), base);
  EXPECT_NE(SoftLabel(policy, "x.png", kAtelectasis), base);
}

TEST(LabelPolicyTest, SoftRangeIsConfigurable) {
  LabelPolicy policy = NoHierarchy(UncertainPolicy::kSoft);
  policy.soft_low = 0.3;
  policy.soft_high = 0.4;
  for (int i = 0; i < 100; ++i) {
    const float v = SoftLabel(policy, absl::StrCat(i), 0);
    EXPECT_GE(v, 0.3f);
    EXPECT_LT(v, 0.4f);
  }
}

TEST(LabelPolicyTest, UOnesUZerosUIgnore) {
  LabelTargets ones = ApplyLabelPolicy(Mixed(), "i", NoHierarchy(UncertainPolicy::kOnes));
  EXPECT_EQ(ones.target[kPleuralEffusion], 1.0f);
  EXPECT_EQ(ones.mask[kPleuralEffusion], 1.0f);

  LabelTargets zeros = ApplyLabelPolicy(Mixed(), "i", NoHierarchy(UncertainPolicy::kZeros));
  EXPECT_EQ(zeros.target[kPleuralEffusion], 0.0f);
  EXPECT_EQ(zeros.mask[kPleuralEffusion], 1.0f);

  LabelTargets ignore = ApplyLabelPolicy(Mixed(), "i", NoHierarchy(UncertainPolicy::kIgnore));
  EXPECT_EQ(ignore.target[kPleuralEffusion], 0.0f);
  EXPECT_EQ(ignore.mask[kPleuralEffusion], 0.0f);
  // Certain labels are untouched by every policy.
  for (const LabelTargets* t : {&ones, &zeros, &ignore}) {
    EXPECT_EQ(t->target[kNoFinding], 1.0f);
    EXPECT_EQ(t->target[kPneumothorax], 0.0f);
    EXPECT_EQ(t->mask[kNoFinding], 1.0f);
    EXPECT_EQ(t->mask[kFracture], 1.0f);
  }
}

TEST(LabelPolicyTest, BlankIgnore) {
  LabelPolicy policy = NoHierarchy(UncertainPolicy::kZeros);
  policy.blank = BlankPolicy::kIgnore;
  LabelTargets t = ApplyLabelPolicy(Mixed(), "i", policy);
  EXPECT_EQ(t.mask[kFracture], 0.0f);
  EXPECT_EQ(t.mask[kPneumothorax], 1.0f);
  EXPECT_EQ(t.mask[kNoFinding], 1.0f);
}

TEST(HierarchyTest, PositiveChildMakesParentsPositiveTransitively) {
  RawLabels raw = AllBlank();
  raw[kPneumonia] = RawLabel::kPositive;
  raw[kConsolidation] = RawLabel::kNegative;
  raw[kLungOpacity] = RawLabel::kNegative;
  raw[kCardiomegaly] = RawLabel::kPositive;
  LabelTargets t = ApplyLabelPolicy(raw, "i", LabelPolicy{});
  EXPECT_EQ(t.target[kConsolidation], 1.0f);
  EXPECT_EQ(t.target[kLungOpacity], 1.0f);
  EXPECT_EQ(t.target[kEnlargedCardiomediastinum], 1.0f);
  EXPECT_EQ(t.target[kNoFinding], 0.0f);  // Not part of the hierarchy.

  LabelPolicy off;
  off.hierarchy_correction = false;
  LabelTargets uncorrected = ApplyLabelPolicy(raw, "i", off);
  EXPECT_EQ(uncorrected.target[kConsolidation], 0.0f);
  EXPECT_EQ(uncorrected.target[kLungOpacity], 0.0f);
  EXPECT_EQ(uncorrected.target[kEnlargedCardiomediastinum], 0.0f);
}

TEST(HierarchyTest, EveryChildOfLungOpacity) {
  for (int child : {kEdema, kConsolidation, kPneumonia, kLungLesion, kAtelectasis}) {
    RawLabels raw = AllBlank();
    raw[child] = RawLabel::kPositive;
    LabelTargets t = ApplyLabelPolicy(raw, "i", LabelPolicy{});
    EXPECT_EQ(t.target[kLungOpacity], 1.0f) << kChexpertLabels[child];
    EXPECT_EQ(t.target[kEnlargedCardiomediastinum], 0.0f) << kChexpertLabels[child];
  }
  // A parent does not make its children positive.
  RawLabels raw = AllBlank();
  raw[kLungOpacity] = RawLabel::kPositive;
  LabelTargets t = ApplyLabelPolicy(raw, "i", LabelPolicy{});
  for (int child : {kEdema, kConsolidation, kPneumonia, kLungLesion, kAtelectasis}) {
    EXPECT_EQ(t.target[child], 0.0f);
  }
}

TEST(HierarchyTest, SoftChildLiftsParentToTheMax) {
  LabelPolicy policy;
  policy.seed = 3;
  RawLabels raw = AllBlank();
  raw[kEdema] = RawLabel::kUncertain;
  raw[kLungOpacity] = RawLabel::kNegative;
  LabelTargets t = ApplyLabelPolicy(raw, "img", policy);
  EXPECT_EQ(t.target[kLungOpacity], SoftLabel(policy, "img", kEdema));

  // Both soft: the parent keeps the larger of its own draw and the child's.
  raw[kLungOpacity] = RawLabel::kUncertain;
  t = ApplyLabelPolicy(raw, "img", policy);
  EXPECT_EQ(t.target[kLungOpacity], std::max(SoftLabel(policy, "img", kEdema), SoftLabel(policy, "img", kLungOpacity)));

  // A positive parent stays 1.
  raw[kLungOpacity] = RawLabel::kPositive;
  t = ApplyLabelPolicy(raw, "img", policy);
  EXPECT_EQ(t.target[kLungOpacity], 1.0f);
}

TEST(HierarchyTest, MaskedLabelsUnderUIgnore) {
  LabelPolicy policy;
  policy.uncertain = UncertainPolicy::kIgnore;
  // An ignored child changes nothing.
  RawLabels raw = AllBlank();
  raw[kCardiomegaly] = RawLabel::kUncertain;
  raw[kEnlargedCardiomediastinum] = RawLabel::kNegative;
  LabelTargets t = ApplyLabelPolicy(raw, "i", policy);
  EXPECT_EQ(t.mask[kCardiomegaly], 0.0f);
  EXPECT_EQ(t.target[kEnlargedCardiomediastinum], 0.0f);
  EXPECT_EQ(t.mask[kEnlargedCardiomediastinum], 1.0f);
  // A positive child un-ignores an uncertain parent: the parent is known
  // positive.
  raw[kCardiomegaly] = RawLabel::kPositive;
  raw[kEnlargedCardiomediastinum] = RawLabel::kUncertain;
  t = ApplyLabelPolicy(raw, "i", policy);
  EXPECT_EQ(t.target[kEnlargedCardiomediastinum], 1.0f);
  EXPECT_EQ(t.mask[kEnlargedCardiomediastinum], 1.0f);
}

TEST(LabelPolicyTest, TargetsForEntriesKeysDrawsByPath) {
  std::vector<ManifestEntry> entries(3);
  for (int i = 0; i < 3; ++i) {
    entries[i].path = absl::StrCat("p/patient", i, "/study1/view1_frontal.jpg");
    entries[i].patient_id = absl::StrCat("patient", i);
    entries[i].study_id = absl::StrCat("patient", i, "/study1");
    entries[i].labels = Mixed();
  }
  Manifest manifest("m.csv", entries);
  LabelPolicy policy;
  policy.seed = 11;
  std::vector<LabelTargets> targets = TargetsForEntries(manifest, {2, 0}, policy);
  ASSERT_EQ(targets.size(), 2u);
  EXPECT_EQ(targets[0].target[kPleuralEffusion], SoftLabel(policy, entries[2].path, kPleuralEffusion));
  EXPECT_EQ(targets[1].target[kPleuralEffusion], SoftLabel(policy, entries[0].path, kPleuralEffusion));
  EXPECT_NE(targets[0].target[kPleuralEffusion], targets[1].target[kPleuralEffusion]);
}

TEST(LabelPolicyTest, ParsesNames) {
  EXPECT_EQ(*ParseUncertainPolicy("u-soft"), UncertainPolicy::kSoft);
  EXPECT_EQ(*ParseUncertainPolicy("U-Ones"), UncertainPolicy::kOnes);
  EXPECT_EQ(*ParseUncertainPolicy("zeros"), UncertainPolicy::kZeros);
  EXPECT_EQ(*ParseUncertainPolicy("u-ignore"), UncertainPolicy::kIgnore);
  EXPECT_THAT(ParseUncertainPolicy("u-maybe").status().message(), HasSubstr("u-maybe"));
  EXPECT_EQ(*ParseBlankPolicy("ZERO"), BlankPolicy::kZero);
  EXPECT_EQ(*ParseBlankPolicy("ignore"), BlankPolicy::kIgnore);
  EXPECT_FALSE(ParseBlankPolicy("one").ok());
  for (UncertainPolicy p :
       {UncertainPolicy::kSoft, UncertainPolicy::kOnes, UncertainPolicy::kZeros, UncertainPolicy::kIgnore}) {
    EXPECT_EQ(*ParseUncertainPolicy(UncertainPolicyName(p)), p);
  }
}

TEST(LabelPolicyTest, ValidatesSoftRange) {
  LabelPolicy policy;
  EXPECT_TRUE(ValidateLabelPolicy(policy).ok());
  policy.soft_low = 0.9;
  EXPECT_EQ(ValidateLabelPolicy(policy).code(), absl::StatusCode::kInvalidArgument);
  policy.soft_low = -0.1;
  policy.soft_high = 0.5;
  EXPECT_EQ(ValidateLabelPolicy(policy).code(), absl::StatusCode::kInvalidArgument);
  policy.soft_low = 0.5;
  policy.soft_high = 1.5;
  EXPECT_EQ(ValidateLabelPolicy(policy).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtune::data
