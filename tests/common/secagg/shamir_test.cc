#include "common/secagg/shamir.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fedtune::secagg {
namespace {

Seed TestSecret() {
  Seed s{};
  for (int i = 0; i < 16; ++i) s[i] = static_cast<uint8_t>(0xF0 + i * 13);
  return s;
}

TEST(ShamirTest, EveryThreeOfFiveReconstruct) {
  const Seed secret = TestSecret();
  auto shares = SplitSecret(secret, 3, 5);
  ASSERT_TRUE(shares.ok()) << shares.status();
  ASSERT_EQ(shares->size(), 5u);
  int subsets = 0;
  for (int a = 0; a < 5; ++a) {
    for (int b = a + 1; b < 5; ++b) {
      for (int c = b + 1; c < 5; ++c) {
        std::vector<Share> pick = {(*shares)[c], (*shares)[a], (*shares)[b]};
        auto got = ReconstructSecret(pick, 3);
        ASSERT_TRUE(got.ok()) << got.status();
        EXPECT_EQ(*got, secret);
        ++subsets;
      }
    }
  }
  EXPECT_EQ(subsets, 10);
  auto all = ReconstructSecret(*shares, 3);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(*all, secret);
}

TEST(ShamirTest, TooFewSharesDoNotGiveTheSecret) {
  const Seed secret = TestSecret();
  for (int trial = 0; trial < 20; ++trial) {
    auto shares = SplitSecret(secret, 3, 5);
    ASSERT_TRUE(shares.ok());
    std::vector<Share> two = {(*shares)[0], (*shares)[3]};
    EXPECT_EQ(ReconstructSecret(two, 3).status().code(), absl::StatusCode::kInvalidArgument);
    auto forced = ReconstructSecret(two, 2);  // interpolating a line through 2 points of a parabola
    EXPECT_TRUE(!forced.ok() || *forced != secret);
  }
}

TEST(ShamirTest, ThresholdOneAndN) {
  const Seed secret = TestSecret();
  auto one = SplitSecret(secret, 1, 3);
  ASSERT_TRUE(one.ok());
  for (const Share& s : *one) EXPECT_EQ(*ReconstructSecret(std::vector<Share>{s}, 1), secret);
  auto full = SplitSecret(secret, 7, 7);
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(*ReconstructSecret(*full, 7), secret);
}

TEST(ShamirTest, RefusesBadInput) {
  const Seed secret = TestSecret();
  EXPECT_EQ(SplitSecret(secret, 0, 5).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SplitSecret(secret, 6, 5).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SplitSecret(secret, 1, kMaxShareholders + 1).status().code(), absl::StatusCode::kInvalidArgument);
  auto shares = SplitSecret(secret, 2, 4);
  ASSERT_TRUE(shares.ok());
  std::vector<Share> dup = {(*shares)[1], (*shares)[1]};
  auto d = ReconstructSecret(dup, 2);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(d.status().message()), ::testing::HasSubstr("share 1"));
  std::vector<Share> zero_x = {(*shares)[0], (*shares)[1]};
  zero_x[0].x = 0;
  EXPECT_EQ(ReconstructSecret(zero_x, 2).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<Share> big_y = {(*shares)[0], (*shares)[1]};
  big_y[1].y[2] = kShamirPrime;
  EXPECT_EQ(ReconstructSecret(big_y, 2).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReconstructSecret(*shares, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtune::secagg
