#include "common/stats/delong.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/brute_force_stats.h"

namespace fedtune::stats {
namespace {

TEST(DeLongTest, HandWorkedCaseWithoutTies) {
  // Pairs (pos, neg): (.9,.5) (.9,.1) (.4,.5) (.4,.1) -> 3 of 4 concordant.
  std::vector<int> truth = {1, 1, 0, 0};
  std::vector<double> scores = {0.9, 0.4, 0.5, 0.1};
  auto c = ComputeDeLongComponents(truth, scores);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->auc, 0.75);
  EXPECT_EQ(c->v10, (std::vector<double>{1.0, 0.5}));
  EXPECT_EQ(c->v01, (std::vector<double>{0.5, 1.0}));
  auto e = EstimateAuc(truth, scores);
  ASSERT_TRUE(e.ok());
  // var(V10) = var(V01) = 0.125; variance = 0.125/2 + 0.125/2.
  ASSERT_TRUE(e->variance.has_value());
  EXPECT_DOUBLE_EQ(*e->variance, 0.125);
  ASSERT_TRUE(e->ci95.has_value());
  EXPECT_NEAR(e->ci95->first, 0.05704808782516102, 1e-15);
  EXPECT_EQ(e->ci95->second, 1.0);  // Clipped.
  EXPECT_EQ(e->n_pos, 2);
  EXPECT_EQ(e->n_neg, 2);
}

TEST(DeLongTest, HandWorkedCaseWithTies) {
  // Both positives tie with one negative: each positive beats .1 (1) and ties
  // .5 (1/2).
  std::vector<int> truth = {1, 0, 1, 0};
  std::vector<double> scores = {0.5, 0.5, 0.5, 0.1};
  auto e = EstimateAuc(truth, scores);
  ASSERT_TRUE(e.ok());
  EXPECT_DOUBLE_EQ(e->auc, 0.75);
  // V10 = [.75, .75] (variance 0), V01 = [.5, 1] (variance .125): variance = 0
  // + .125 / 2.
  EXPECT_DOUBLE_EQ(*e->variance, 0.0625);
}

TEST(DeLongTest, AllTiesGiveHalfAndZeroVariance) {
  std::vector<int> truth = {1, 0, 1, 0, 1};
  std::vector<double> scores(5, 0.3);
  auto e = EstimateAuc(truth, scores);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->auc, 0.5);
  EXPECT_EQ(*e->variance, 0.0);
  EXPECT_EQ(e->ci95->first, 0.5);
  EXPECT_EQ(e->ci95->second, 0.5);
}

TEST(DeLongTest, TwoCasesHaveAucButNoVariance) {
  std::vector<int> truth = {0, 1};
  std::vector<double> scores = {0.2, 0.7};
  auto e = EstimateAuc(truth, scores);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->auc, 1.0);
  EXPECT_FALSE(e->variance.has_value());
  EXPECT_FALSE(e->ci95.has_value());
  EXPECT_NE(e->note.find("at least 2 positive"), std::string::npos) << e->note;
}

TEST(DeLongTest, SingleClassAndBadInputAreErrors) {
  EXPECT_EQ(EstimateAuc({1, 1}, {0.1, 0.2}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EstimateAuc({0, 0, 0}, {0.1, 0.2, 0.3}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EstimateAuc({}, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EstimateAuc({1, 0}, {0.1}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EstimateAuc({1, 2}, {0.1, 0.2}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EstimateAuc({1, 0}, {NAN, 0.2}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EstimateAuc({1, 0}, {INFINITY, 0.2}).status().code(), absl::StatusCode::kInvalidArgument);
}

struct RandomCase {
  std::vector<int> truth;
  std::vector<double> a;
  std::vector<double> b;
};

// Scores rounded to one decimal so that ties are frequent, b correlated with a.
RandomCase MakeRandomCase(uint64_t seed, int size) {
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution label(0.3);
  std::normal_distribution<double> noise(0.0, 1.0);
  RandomCase c;
  for (int i = 0; i < size; ++i) {
    const int y = label(rng) ? 1 : 0;
    const double a = 0.8 * y + noise(rng);
    const double b = 0.5 * a + 0.6 * y + noise(rng);
    c.truth.push_back(y);
    c.a.push_back(std::round(a * 10) / 10);
    c.b.push_back(std::round(b * 10) / 10);
  }
  return c;
}

TEST(DeLongTest, AgreesWithBruteForceOnRandomDataWithTies) {
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    RandomCase c = MakeRandomCase(seed, 50 + 37 * static_cast<int>(seed));
    auto fast = ComputeDeLongComponents(c.truth, c.a);
    ASSERT_TRUE(fast.ok()) << fast.status();
    testing::BruteForceDeLong slow = testing::BruteForceComponents(c.truth, c.a);
    EXPECT_NEAR(fast->auc, slow.auc, 1e-12) << "seed " << seed;
    ASSERT_EQ(fast->v10.size(), slow.v10.size());
    ASSERT_EQ(fast->v01.size(), slow.v01.size());
    for (size_t i = 0; i < slow.v10.size(); ++i) EXPECT_NEAR(fast->v10[i], slow.v10[i], 1e-12);
    for (size_t j = 0; j < slow.v01.size(); ++j) EXPECT_NEAR(fast->v01[j], slow.v01[j], 1e-12);
    auto e = EstimateAuc(c.truth, c.a);
    ASSERT_TRUE(e.ok());
    EXPECT_NEAR(*e->variance, testing::BruteForceCovariance(slow, slow), 1e-12) << "seed " << seed;
  }
}

TEST(DeLongTest, PairedTestAgreesWithBruteForce) {
  for (uint64_t seed = 100; seed < 110; ++seed) {
    RandomCase c = MakeRandomCase(seed, 400);
    auto test = PairedDeLongTest(c.truth, c.a, c.b);
    ASSERT_TRUE(test.ok()) << test.status();
    testing::BruteForceDeLong sa = testing::BruteForceComponents(c.truth, c.a);
    testing::BruteForceDeLong sb = testing::BruteForceComponents(c.truth, c.b);
    const double var = testing::BruteForceCovariance(sa, sa) + testing::BruteForceCovariance(sb, sb) -
                       2 * testing::BruteForceCovariance(sa, sb);
    EXPECT_NEAR(test->auc_a, sa.auc, 1e-12);
    EXPECT_NEAR(test->auc_b, sb.auc, 1e-12);
    EXPECT_NEAR(test->difference, sa.auc - sb.auc, 1e-12);
    EXPECT_NEAR(*test->variance, var, 1e-12);
    const double z = (sa.auc - sb.auc) / std::sqrt(var);
    EXPECT_NEAR(*test->z, z, 1e-9);
    EXPECT_NEAR(*test->p_value, std::erfc(std::fabs(z) / std::sqrt(2.0)), 1e-12);
    EXPECT_NEAR(test->ci95->first, sa.auc - sb.auc - 1.959963984540054 * std::sqrt(var), 1e-12);
    EXPECT_NEAR(test->ci95->second, sa.auc - sb.auc + 1.959963984540054 * std::sqrt(var), 1e-12);
  }
}

TEST(DeLongTest, PairedTestOfIdenticalScoresIsZeroAndOne) {
  RandomCase c = MakeRandomCase(7, 200);
  auto test = PairedDeLongTest(c.truth, c.a, c.a);
  ASSERT_TRUE(test.ok());
  EXPECT_EQ(test->difference, 0.0);
  EXPECT_EQ(*test->z, 0.0);
  EXPECT_EQ(*test->p_value, 1.0);
  EXPECT_EQ(*test->variance, 0.0);
}

TEST(DeLongTest, PairedTestWithZeroStandardErrorButADifference) {
  // a separates perfectly (all components 1), b is constant (all components
  // 1/2): se = 0, difference 0.5.
  std::vector<int> truth = {1, 1, 0, 0};
  auto test = PairedDeLongTest(truth, std::vector<double>{0.9, 0.8, 0.2, 0.1}, std::vector<double>(4, 0.5));
  ASSERT_TRUE(test.ok());
  EXPECT_EQ(test->difference, 0.5);
  EXPECT_FALSE(test->z.has_value());
  EXPECT_EQ(*test->p_value, 0.0);
  EXPECT_FALSE(test->note.empty());
}

TEST(DeLongTest, PairedTestWithTooFewCasesReportsOnlyTheDifference) {
  auto test = PairedDeLongTest({1, 0, 0}, std::vector<double>{0.9, 0.1, 0.2}, std::vector<double>{0.1, 0.9, 0.2});
  ASSERT_TRUE(test.ok());
  EXPECT_EQ(test->difference, 1.0);
  EXPECT_FALSE(test->variance.has_value());
  EXPECT_FALSE(test->p_value.has_value());
}

TEST(DeLongTest, ResultsAreIdenticalWhateverTheRowOrder) {
  RandomCase c = MakeRandomCase(42, 1000);
  auto base = PairedDeLongTest(c.truth, c.a, c.b);
  ASSERT_TRUE(base.ok());
  std::vector<size_t> perm(c.truth.size());
  std::iota(perm.begin(), perm.end(), 0);
  std::mt19937_64 rng(9);
  for (int round = 0; round < 5; ++round) {
    std::shuffle(perm.begin(), perm.end(), rng);
    RandomCase s;
    for (size_t i : perm) {
      s.truth.push_back(c.truth[i]);
      s.a.push_back(c.a[i]);
      s.b.push_back(c.b[i]);
    }
    auto shuffled = PairedDeLongTest(s.truth, s.a, s.b);
    ASSERT_TRUE(shuffled.ok());
    // Bitwise equality, not closeness.
    EXPECT_EQ(shuffled->auc_a, base->auc_a);
    EXPECT_EQ(shuffled->auc_b, base->auc_b);
    EXPECT_EQ(*shuffled->variance, *base->variance);
    EXPECT_EQ(*shuffled->p_value, *base->p_value);
    auto ea = EstimateAuc(s.truth, s.a);
    auto eb = EstimateAuc(c.truth, c.a);
    EXPECT_EQ(*ea->variance, *eb->variance);
  }
}

TEST(DeLongTest, LargeInputKeepsExactCounts) {
  // 2 million cases with heavy ties; the AUC from 64-bit counts equals the
  // closed form for this construction.
  const int n = 1'000'000;
  std::vector<int> truth(2 * n);
  std::vector<double> scores(2 * n);
  for (int i = 0; i < n; ++i) {
    truth[i] = 1;
    scores[i] = 1.0;  // Every positive ties with the negatives at 1.0 and beats
                      // those at 0.0.
    truth[n + i] = 0;
    scores[n + i] = i % 2 == 0 ? 1.0 : 0.0;
  }
  auto e = EstimateAuc(truth, scores);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->auc, 0.75);
  // V10 constant (.75): variance = var(V01)/n with V01 alternating .5 / 1
  // (sample var .0625 * n/(n-1)).
  EXPECT_NEAR(*e->variance, 0.0625 * n / (n - 1.0) / n, 1e-18);
}

}  // namespace
}  // namespace fedtune::stats
