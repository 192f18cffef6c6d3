#include "common/stats/wilcoxon.h"

#include <fstream>
#include <vector>

#include "gtest/gtest.h"

namespace fedtune::stats {
namespace {

TEST(WilcoxonTest, IssueExampleIsExact) {
  std::vector<double> d = {6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75};
  auto r = WilcoxonSignedRank(d);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->n, 15);
  EXPECT_EQ(r->r_plus, 96);
  EXPECT_EQ(r->r_minus, 24);
  EXPECT_EQ(r->statistic, 24);
  EXPECT_EQ(r->method, WilcoxonResult::Method::kExact);
  EXPECT_EQ(*r->p_value, 0.041259765625);  // Exact: 2 * 676 / 2^15.
}

TEST(WilcoxonTest, SignFlipGivesTheSameTwoSidedResult) {
  std::vector<double> d = {6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75};
  for (double& v : d) v = -v;
  auto r = WilcoxonSignedRank(d);
  EXPECT_EQ(r->r_plus, 24);
  EXPECT_EQ(*r->p_value, 0.041259765625);
}

TEST(WilcoxonTest, TiesUseTheNormalApproximationWithTieCorrection) {
  // Ranks 1, 2.5, 2.5, 4, 5, 6.5, 6.5, 8; R- = 5; var = 8*9*17/24 - (6 + 6)/48
  // = 50.75.
  auto r = WilcoxonSignedRank(std::vector<double>{1, 2, 2, 3, -4, 5, 5, 6});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->method, WilcoxonResult::Method::kNormal);
  EXPECT_EQ(r->statistic, 5);
  EXPECT_NEAR(*r->z, (5 - 18) / std::sqrt(50.75), 1e-14);
  // scipy.stats.wilcoxon(d, correction=False, mode='approx').pvalue =
  // 0.06802483707221696
  EXPECT_NEAR(*r->p_value, 0.06802483707221696, 1e-14);
}

TEST(WilcoxonTest, ZerosAreDroppedAndForceTheNormalApproximation) {
  auto r = WilcoxonSignedRank(std::vector<double>{0, 1, -2, 3, 4, 5, 6, 7});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->n, 7);
  EXPECT_EQ(r->zeros_dropped, 1);
  EXPECT_EQ(r->method, WilcoxonResult::Method::kNormal);
  EXPECT_EQ(r->statistic, 2);
  // scipy.stats.wilcoxon(d, correction=False, mode='approx',
  // zero_method='wilcox').pvalue
  EXPECT_NEAR(*r->p_value, 0.04252247799805163, 1e-14);
}

TEST(WilcoxonTest, MoreThanFiftyUsesTheNormalApproximation) {
  std::vector<double> d;
  for (int i = 1; i <= 60; ++i) d.push_back(i % 4 == 0 ? -i : i);
  auto r = WilcoxonSignedRank(d);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->method, WilcoxonResult::Method::kNormal);
  // R- = 4 + 8 + ... + 60 = 4 * (1 + ... + 15) = 480.
  EXPECT_EQ(r->r_minus, 480);
  const double mean = 60 * 61 / 4.0;
  const double sd = std::sqrt(60 * 61 * 121 / 24.0);
  EXPECT_NEAR(*r->z, (480 - mean) / sd, 1e-14);
}

TEST(WilcoxonTest, ExactDistributionSmallCases) {
  // n = 1: p = 2 * P(T <= 0) = 2 * 1/2 = 1.
  auto one = WilcoxonSignedRank(std::vector<double>{0.3});
  EXPECT_EQ(one->method, WilcoxonResult::Method::kExact);
  EXPECT_EQ(*one->p_value, 1.0);
  // n = 2, both positive: T- = 0, P(T <= 0) = 1/4, p = 1/2.
  auto two = WilcoxonSignedRank(std::vector<double>{0.3, 0.1});
  EXPECT_EQ(*two->p_value, 0.5);
  // n = 5 all positive: p = 2/32.
  auto five = WilcoxonSignedRank(std::vector<double>{1, 2, 3, 4, 5});
  EXPECT_EQ(*five->p_value, 0.0625);
}

TEST(WilcoxonTest, AllZeroOrEmptyHasNoPValue) {
  auto r = WilcoxonSignedRank(std::vector<double>{0, 0, 0});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->n, 0);
  EXPECT_FALSE(r->p_value.has_value());
  EXPECT_FALSE(r->note.empty());
  auto e = WilcoxonSignedRank(std::vector<double>{});
  ASSERT_TRUE(e.ok());
  EXPECT_FALSE(e->p_value.has_value());
}

TEST(WilcoxonTest, PairedFormAndErrors) {
  auto r = WilcoxonSignedRank(std::vector<double>{0.8, 0.7, 0.9}, std::vector<double>{0.7, 0.75, 0.6});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->n, 3);
  EXPECT_FALSE(WilcoxonSignedRank(std::vector<double>{1}, std::vector<double>{1, 2}).ok());
  EXPECT_FALSE(WilcoxonSignedRank(std::vector<double>{NAN}).ok());
}

}  // namespace
}  // namespace fedtune::stats
