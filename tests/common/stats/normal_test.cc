#include "common/stats/normal.h"

#include "gtest/gtest.h"

namespace fedtune::stats {
namespace {

TEST(NormalTest, KnownValues) {
  EXPECT_EQ(NormalCdf(0), 0.5);
  EXPECT_NEAR(NormalCdf(kZ975), 0.975, 1e-15);
  EXPECT_NEAR(TwoSidedNormalPValue(kZ975), 0.05, 1e-15);
  EXPECT_NEAR(TwoSidedNormalPValue(-1.0), 0.31731050786291415, 1e-15);
}

TEST(NormalTest, FarTailKeepsRelativePrecision) {
  // 2 * Phi(-10) = 1.5239706e-23; 1 - Phi(10) computed naively would be 0.
  EXPECT_NEAR(TwoSidedNormalPValue(10) / 1.523970604832105e-23, 1.0, 1e-12);
  EXPECT_GT(NormalCdf(-30), 0.0);
}

}  // namespace
}  // namespace fedtune::stats
