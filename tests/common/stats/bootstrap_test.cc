#include "common/stats/bootstrap.h"

#include <cmath>
#include <random>
#include <vector>

#include "common/stats/delong.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fedtune::stats {
namespace {

using ::testing::DoubleNear;
using ::testing::HasSubstr;

// n cases, positives with probability `prevalence`; model a's score is truth * shift + noise, b's is pure noise.
LabelScores RandomLabel(const char* name, int n, double prevalence, double shift, uint64_t seed) {
  std::mt19937_64 engine(seed);
  std::uniform_real_distribution<double> uniform(0, 1);
  std::normal_distribution<double> normal(0, 1);
  LabelScores label;
  label.name = name;
  for (int i = 0; i < n; ++i) {
    const int truth = uniform(engine) < prevalence ? 1 : 0;
    label.truth.push_back(truth);
    label.a.push_back(truth * shift + normal(engine));
    label.b.push_back(normal(engine));
  }
  return label;
}

std::vector<size_t> Identity(size_t n, size_t offset = 0) {
  std::vector<size_t> cases(n);
  for (size_t i = 0; i < n; ++i) cases[i] = offset + i;
  return cases;
}

TEST(WeightedAucTest, EqualsTheAucOfTheExpandedSample) {
  const LabelScores label = RandomLabel("x", 60, 0.4, 0.8, 3);
  std::vector<double> scores = label.a;
  for (double& s : scores) s = std::round(s * 4) / 4;  // Ties.
  std::mt19937_64 engine(5);
  std::vector<double> weights;
  std::vector<int> truth_expanded;
  std::vector<double> scores_expanded;
  for (size_t i = 0; i < scores.size(); ++i) {
    const int w = static_cast<int>(engine() % 4);  // 0 to 3 copies.
    weights.push_back(w);
    for (int k = 0; k < w; ++k) {
      truth_expanded.push_back(label.truth[i]);
      scores_expanded.push_back(scores[i]);
    }
  }
  const absl::StatusOr<AucEstimate> expected = EstimateAuc(truth_expanded, scores_expanded);
  ASSERT_TRUE(expected.ok()) << expected.status();
  const std::optional<double> weighted = WeightedAuc(label.truth, scores, weights);
  ASSERT_TRUE(weighted.has_value());
  EXPECT_THAT(*weighted, DoubleNear(expected->auc, 1e-12));
  EXPECT_FALSE(WeightedAuc({1, 1, 0}, {0.1, 0.2, 0.3}, {1, 1, 0}).has_value());  // No negative left.
}

TEST(QuantileTest, LinearInterpolationAsNumpy) {
  std::vector<double> v = {4, 1, 3, 2};
  EXPECT_DOUBLE_EQ(Quantile(v, 0), 1);
  EXPECT_DOUBLE_EQ(Quantile(v, 1), 4);
  EXPECT_DOUBLE_EQ(Quantile(v, 0.5), 2.5);      // numpy.quantile([1,2,3,4], 0.5)
  EXPECT_DOUBLE_EQ(Quantile(v, 0.025), 1.075);  // numpy.quantile([1,2,3,4], 0.025)
}

TEST(BootstrapMeanAucTest, PerfectSeparationGivesAPointInterval) {
  LabelScores label{"x", {0, 0, 1, 1, 0, 1}, {0.1, 0.2, 0.8, 0.9, 0.3, 0.7}, {0.5, 0.5, 0.5, 0.5, 0.5, 0.5}};
  const absl::StatusOr<MeanAucIntervals> ci = BootstrapMeanAuc({label}, {Identity(6)}, 6);
  ASSERT_TRUE(ci.ok()) << ci.status();
  ASSERT_TRUE(ci->a && ci->b);
  EXPECT_DOUBLE_EQ(ci->a->first, 1);
  EXPECT_DOUBLE_EQ(ci->a->second, 1);
  EXPECT_DOUBLE_EQ(ci->b->first, 0.5);  // All tied.
  EXPECT_DOUBLE_EQ(ci->b->second, 0.5);
}

// For one label the bootstrap interval of the AUC and DeLong's normal interval estimate the same spread: their
// widths agree within 25% at n = 600 (both are about 0.09 wide here), and both hold the AUC.
TEST(BootstrapMeanAucTest, OneLabelAgreesWithDeLong) {
  for (uint64_t seed : {11, 12, 13}) {
    const LabelScores label = RandomLabel("x", 600, 0.3, 1.0, seed);
    const absl::StatusOr<AucEstimate> delong = EstimateAuc(label.truth, label.a);
    ASSERT_TRUE(delong.ok() && delong->ci95);
    const absl::StatusOr<MeanAucIntervals> ci = BootstrapMeanAuc({label}, {Identity(600)}, 600);
    ASSERT_TRUE(ci.ok() && ci->a) << ci.status();
    const double delong_width = delong->ci95->second - delong->ci95->first;
    const double width = ci->a->second - ci->a->first;
    EXPECT_GT(width, 0.75 * delong_width) << "seed " << seed;
    EXPECT_LT(width, 1.25 * delong_width) << "seed " << seed;
    EXPECT_LT(ci->a->first, delong->auc);
    EXPECT_GT(ci->a->second, delong->auc);
    EXPECT_EQ(ci->usable_resamples, 1000);
  }
}

// Labels kept together: two copies of one label on the same cases move together in every resample, so the mean's
// interval is the label's own. On disjoint cases (independent labels) the mean's interval is clearly narrower.
TEST(BootstrapMeanAucTest, LabelsOfACaseStayTogether) {
  const LabelScores label = RandomLabel("x", 400, 0.3, 1.0, 21);
  LabelScores copy = label;
  copy.name = "y";
  const auto one = BootstrapMeanAuc({label}, {Identity(400)}, 400);
  const auto together = BootstrapMeanAuc({label, copy}, {Identity(400), Identity(400)}, 400);
  const auto apart = BootstrapMeanAuc({label, copy}, {Identity(400), Identity(400, 400)}, 800);
  ASSERT_TRUE(one.ok() && together.ok() && apart.ok());
  EXPECT_DOUBLE_EQ(together->a->first, one->a->first);
  EXPECT_DOUBLE_EQ(together->a->second, one->a->second);
  const double width_one = one->a->second - one->a->first;
  const double width_apart = apart->a->second - apart->a->first;
  EXPECT_LT(width_apart, 0.85 * width_one);  // About 1/sqrt(2) of it.
}

TEST(BootstrapMeanAucTest, DeterministicPerSeedAndStableAcrossSeeds) {
  const std::vector<LabelScores> labels = {RandomLabel("x", 300, 0.3, 1.0, 31), RandomLabel("y", 300, 0.2, 0.5, 32)};
  const std::vector<std::vector<size_t>> cases = {Identity(300), Identity(300)};
  const auto first = BootstrapMeanAuc(labels, cases, 300);
  const auto again = BootstrapMeanAuc(labels, cases, 300);
  BootstrapOptions other;
  other.seed = 7;
  const auto reseeded = BootstrapMeanAuc(labels, cases, 300, other);
  ASSERT_TRUE(first.ok() && again.ok() && reseeded.ok());
  EXPECT_EQ(first->a, again->a);
  EXPECT_EQ(first->b, again->b);
  EXPECT_NE(first->a, reseeded->a);
  EXPECT_THAT(reseeded->a->first, DoubleNear(first->a->first, 0.02));
  EXPECT_THAT(reseeded->a->second, DoubleNear(first->a->second, 0.02));
  // Model b is noise: its interval holds 0.5; model a's lies above it.
  EXPECT_LT(first->b->first, 0.5);
  EXPECT_GT(first->b->second, 0.5);
  EXPECT_GT(first->a->first, 0.6);
}

// A label without positives does not enter the mean at all; a label with one positive enters only the resamples that
// drew it (about 63% of them), and leaves the others' means to the remaining labels.
TEST(BootstrapMeanAucTest, LabelsLackingAClass) {
  const LabelScores main = RandomLabel("x", 200, 0.3, 1.0, 41);
  LabelScores none{"none", std::vector<int>(200, 0), main.a, main.b};
  const auto alone = BootstrapMeanAuc({main}, {Identity(200)}, 200);
  const auto with_none = BootstrapMeanAuc({main, none}, {Identity(200), Identity(200)}, 200);
  ASSERT_TRUE(alone.ok() && with_none.ok());
  EXPECT_EQ(alone->a, with_none->a);

  LabelScores rare{"rare", std::vector<int>(200, 0), main.a, main.b};
  rare.truth[17] = 1;
  const auto with_rare = BootstrapMeanAuc({main, rare}, {Identity(200), Identity(200)}, 200);
  ASSERT_TRUE(with_rare.ok() && with_rare->a);
  EXPECT_EQ(with_rare->usable_resamples, 1000);
  const auto only_rare = BootstrapMeanAuc({rare}, {Identity(200)}, 200);
  ASSERT_TRUE(only_rare.ok());
  EXPECT_GT(only_rare->usable_resamples, 500);  // About 634 of 1000 resamples draw case 17.
  EXPECT_LT(only_rare->usable_resamples, 750);
}

TEST(BootstrapMeanAucTest, InvalidInput) {
  LabelScores label{"Edema", {0, 1}, {0.1, 0.2}, {0.3, 0.4}};
  EXPECT_THAT(BootstrapMeanAuc({label}, {{0, 2}}, 2).status().message(), HasSubstr("'Edema': case index 2"));
  EXPECT_THAT(BootstrapMeanAuc({label}, {{0, 0}}, 2).status().message(), HasSubstr("appears twice"));
  EXPECT_THAT(BootstrapMeanAuc({label}, {{0}}, 2).status().message(), HasSubstr("differ in length"));
  EXPECT_THAT(BootstrapMeanAuc({label}, {}, 2).status().message(), HasSubstr("1 labels but 0"));
  LabelScores nan = label;
  nan.a[0] = NAN;
  EXPECT_THAT(BootstrapMeanAuc({nan}, {{0, 1}}, 2).status().message(), HasSubstr("not finite"));
  BootstrapOptions bad;
  bad.resamples = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(BootstrapMeanAuc({label}, {{0, 1}}, 2, bad).status()));
  const auto empty = BootstrapMeanAuc({}, {}, 0);
  ASSERT_TRUE(empty.ok());
  EXPECT_FALSE(empty->a.has_value());
}

}  // namespace
}  // namespace fedtune::stats
