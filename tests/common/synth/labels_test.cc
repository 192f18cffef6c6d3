#include "common/synth/labels.h"

#include <cmath>

#include "common/data/chexpert_labels.h"
#include "common/synth/profile.h"
#include "gtest/gtest.h"

namespace fedtune::synth {
namespace {

constexpr int kDraws = 20000;

int Rank(Reported r) { return static_cast<int>(r); }  // blank < 0.0 < -1.0 < 1.0, as declared.

fedtune::v1::SynthProfile Public() {
  auto profile = LoadProfile("public");
  EXPECT_TRUE(profile.ok()) << profile.status();
  return *profile;
}

TEST(LabelsTest, OwnPrevalenceMatchesProfileAndHierarchyHolds) {
  const auto profile = Public();
  const LabelModel model = MakeLabelModel(profile);
  Rng rng(7);
  std::array<int, data::kNumChexpertLabels> own{}, present{};
  for (int n = 0; n < kDraws; ++n) {
    const TrueFindings t = SampleTrueLabels(model, rng);
    for (int i = 0; i < data::kNumChexpertLabels; ++i) {
      own[i] += t.own[i];
      present[i] += t.present[i];
      if (t.own[i]) {
        ASSERT_TRUE(t.present[i]);
      }
    }
    for (const auto& [child, parent] : data::kChexpertHierarchy) {
      if (t.present[child]) {
        ASSERT_TRUE(t.present[parent]) << data::kChexpertLabels[child];
      }
    }
    bool any = false;
    for (int i = 1; i < data::kNumChexpertLabels; ++i) any = any || (i != data::kSupportDevices && t.present[i]);
    ASSERT_EQ(t.present[data::kNoFinding], !any);
  }
  for (int i = 1; i < data::kNumChexpertLabels; ++i) {
    const double p = model.prevalence[i];
    const double tolerance = 4 * std::sqrt(p * (1 - p) / kDraws) + 1e-3;
    EXPECT_NEAR(static_cast<double>(own[i]) / kDraws, p, tolerance) << data::kChexpertLabels[i];
  }
  // Parents gain prevalence from their children.
  EXPECT_GT(present[data::kLungOpacity], own[data::kLungOpacity] * 2);
  EXPECT_GE(present[data::kConsolidation], own[data::kConsolidation]);
  // Public has some healthy studies, but not most.
  EXPECT_GT(present[data::kNoFinding], kDraws / 20);
  EXPECT_LT(present[data::kNoFinding], kDraws / 2);
}

TEST(LabelsTest, CoOccurrenceLinksCardiacFindings) {
  auto profile = Public();
  double lift[2];
  for (int strong = 0; strong < 2; ++strong) {
    profile.set_co_occurrence(strong ? 1.0 : 0.0);
    const LabelModel model = MakeLabelModel(profile);
    Rng rng(11);
    int edema = 0, cardio = 0, both = 0;
    for (int n = 0; n < kDraws; ++n) {
      const TrueFindings t = SampleTrueLabels(model, rng);
      edema += t.own[data::kEdema];
      cardio += t.own[data::kCardiomegaly];
      both += t.own[data::kEdema] && t.own[data::kCardiomegaly];
    }
    // P(Edema | Cardiomegaly) / P(Edema).
    lift[strong] = (static_cast<double>(both) / cardio) / (static_cast<double>(edema) / kDraws);
  }
  EXPECT_NEAR(lift[0], 1.0, 0.12);
  EXPECT_GT(lift[1], 1.8);
}

TEST(LabelsTest, ReportingFollowsPracticeAndHierarchy) {
  auto profile = Public();
  for (auto& l : *profile.mutable_labels()) {
    if (l.label() == "Edema") {
      l.set_uncertain_probability(0.3);
      l.set_omitted_probability(0.2);
      l.set_absent_uncertain_probability(0.05);
      l.set_negative_mention_probability(0.4);
    }
  }
  const LabelModel model = MakeLabelModel(profile);
  Rng rng(3);
  int present = 0, uncertain = 0, omitted = 0, absent = 0, absent_uncertain = 0, negative = 0;
  for (int n = 0; n < kDraws; ++n) {
    const TrueFindings t = SampleTrueLabels(model, rng);
    const ReportVector r = ReportLabels(model, t.present, rng);
    const Reported e = r[data::kEdema];
    if (t.present[data::kEdema]) {
      ++present;
      uncertain += e == Reported::kUncertain;
      omitted += e == Reported::kBlank;
      ASSERT_NE(e, Reported::kNegative);
    } else {
      ++absent;
      absent_uncertain += e == Reported::kUncertain;
      negative += e == Reported::kNegative;
      ASSERT_NE(e, Reported::kPositive);
    }
    for (const auto& [child, parent] : data::kChexpertHierarchy) {
      ASSERT_GE(Rank(r[parent]), Rank(r[child])) << data::kChexpertLabels[child];
    }
    bool any = false;
    for (int i = 1; i < data::kNumChexpertLabels; ++i) {
      any = any || (i != data::kSupportDevices && (r[i] == Reported::kPositive || r[i] == Reported::kUncertain));
    }
    ASSERT_EQ(r[data::kNoFinding], any ? Reported::kBlank : Reported::kPositive);
  }
  EXPECT_NEAR(static_cast<double>(uncertain) / present, 0.3, 0.03);
  EXPECT_NEAR(static_cast<double>(omitted) / present, 0.7 * 0.2, 0.03);
  EXPECT_NEAR(static_cast<double>(absent_uncertain) / absent, 0.05, 0.01);
  EXPECT_NEAR(static_cast<double>(negative) / absent, 0.95 * 0.4, 0.02);
}

TEST(LabelsTest, CsvSpelling) {
  EXPECT_STREQ(ReportedToCsv(Reported::kBlank), "");
  EXPECT_STREQ(ReportedToCsv(Reported::kNegative), "0.0");
  EXPECT_STREQ(ReportedToCsv(Reported::kUncertain), "-1.0");
  EXPECT_STREQ(ReportedToCsv(Reported::kPositive), "1.0");
}

}  // namespace
}  // namespace fedtune::synth
