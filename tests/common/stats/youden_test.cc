#include "common/stats/youden.h"

#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace fedtune::stats {
namespace {

TEST(WilsonIntervalTest, MatchesClosedForm) {
  // Values from the closed form evaluated independently in Python.
  auto half = WilsonInterval(1, 2);
  ASSERT_TRUE(half.ok());
  EXPECT_NEAR(half->first, 0.09453120573423074, 1e-15);
  EXPECT_NEAR(half->second, 0.9054687942657693, 1e-15);
  auto all = WilsonInterval(2, 2);
  EXPECT_NEAR(all->first, 0.34238022750665303, 1e-15);
  EXPECT_EQ(all->second, 1.0);
  auto seven = WilsonInterval(7, 10);
  EXPECT_NEAR(seven->first, 0.39677814746114537, 1e-15);
  EXPECT_NEAR(seven->second, 0.8922087325936989, 1e-15);
  auto none = WilsonInterval(0, 5);
  EXPECT_EQ(none->first, 0.0);
  EXPECT_GT(none->second, 0.0);
}

TEST(WilsonIntervalTest, RejectsImpossibleCounts) {
  EXPECT_FALSE(WilsonInterval(1, 0).ok());
  EXPECT_FALSE(WilsonInterval(3, 2).ok());
  EXPECT_FALSE(WilsonInterval(-1, 2).ok());
}

TEST(YoudenTest, HandWorkedCaseAndTieBreak) {
  // t=.9: sens 1/2, spec 1 (J 1.5); t=.5: 1/2, 1/2; t=.4: 1, 1/2 (J 1.5); t=.1:
  // 1, 0. Tie -> larger threshold.
  auto p = YoudenOptimalPoint({1, 1, 0, 0}, {0.9, 0.4, 0.5, 0.1});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->threshold, 0.9);
  EXPECT_EQ(p->sensitivity, 0.5);
  EXPECT_EQ(p->specificity, 1.0);
  EXPECT_EQ(p->true_positives, 1);
  EXPECT_EQ(p->true_negatives, 2);
  EXPECT_NEAR(p->sensitivity_ci95.first, 0.09453120573423074, 1e-15);
}

TEST(YoudenTest, PerfectSeparation) {
  auto p = YoudenOptimalPoint({0, 1, 0, 1, 1}, {0.1, 0.8, 0.3, 0.7, 0.9});
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->threshold, 0.7);
  EXPECT_EQ(p->sensitivity, 1.0);
  EXPECT_EQ(p->specificity, 1.0);
}

TEST(YoudenTest, TiedScoresMoveTogether) {
  // All scores tied: the only threshold predicts everything positive.
  auto p = YoudenOptimalPoint({0, 1, 0, 1}, {0.5, 0.5, 0.5, 0.5});
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->sensitivity, 1.0);
  EXPECT_EQ(p->specificity, 0.0);
}

TEST(YoudenTest, MaximizesJOverAllThresholdsOnRandomData) {
  std::mt19937_64 rng(5);
  std::normal_distribution<double> noise;
  std::vector<int> truth;
  std::vector<double> scores;
  for (int i = 0; i < 500; ++i) {
    int y = i % 3 == 0;
    truth.push_back(y);
    scores.push_back(std::round((y + noise(rng)) * 4) / 4);
  }
  auto p = YoudenOptimalPoint(truth, scores);
  ASSERT_TRUE(p.ok());
  double best = -1;
  for (double t : scores) {
    double tp = 0, tn = 0, m = 0, n = 0;
    for (size_t i = 0; i < truth.size(); ++i) {
      (truth[i] ? m : n) += 1;
      if (truth[i] && scores[i] >= t) tp += 1;
      if (!truth[i] && scores[i] < t) tn += 1;
    }
    best = std::max(best, tp / m + tn / n);
  }
  EXPECT_NEAR(p->sensitivity + p->specificity, best, 1e-12);
}

TEST(YoudenTest, Errors) {
  EXPECT_FALSE(YoudenOptimalPoint({1, 1}, {0.1, 0.2}).ok());
  EXPECT_FALSE(YoudenOptimalPoint({1, 0}, {0.1}).ok());
  EXPECT_FALSE(YoudenOptimalPoint({1, 0}, {NAN, 0.1}).ok());
}

}  // namespace
}  // namespace fedtune::stats
