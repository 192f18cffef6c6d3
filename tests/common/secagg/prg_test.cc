#include "common/secagg/prg.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace fedtune::secagg {
namespace {

TEST(PrgTest, MatchesAesKnownAnswer) {
  // AES-128 of the zero block under the zero key is 66e94bd4ef8a2c3b884cfa59ca342b2e (FIPS-197 style KAT); with a zero
  // IV that is the first keystream block, read as little-endian words.
  Seed zero{};
  auto out = ExpandSeed(zero, 4);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ((*out)[0], 0xd44be966u);
  EXPECT_EQ((*out)[1], 0x3b2c8aefu);
  EXPECT_EQ((*out)[2], 0x59fa4c88u);
  EXPECT_EQ((*out)[3], 0x2e2b34cau);
}

TEST(PrgTest, DeterministicAndPrefixConsistent) {
  Seed s{};
  for (int i = 0; i < 16; ++i) s[i] = static_cast<uint8_t>(i * 7 + 1);
  auto a = ExpandSeed(s, 1000);
  auto b = ExpandSeed(s, 1000);
  auto c = ExpandSeed(s, 37);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_TRUE(std::equal(c->begin(), c->end(), a->begin()));
  EXPECT_TRUE(ExpandSeed(s, 0)->empty());
}

TEST(PrgTest, DifferentSeedsDiffer) {
  Seed s{}, t{};
  t[15] = 1;
  auto a = ExpandSeed(s, 256);
  auto b = ExpandSeed(t, 256);
  ASSERT_TRUE(a.ok() && b.ok());
  int equal = 0;
  for (size_t i = 0; i < a->size(); ++i) equal += (*a)[i] == (*b)[i];
  EXPECT_LT(equal, 4);
}

TEST(PrgTest, RefusesOutOfBoundLength) {
  Seed s{};
  EXPECT_EQ(ExpandSeed(s, -1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ExpandSeed(s, kMaxPrgLength + 1).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtune::secagg

namespace fedtune::secagg {
namespace {

// Secure normals: standard normal moments over 200,000 draws (mean within 5 standard errors of 0, variance of 1,
// fourth moment of 3), no two calls alike (a fresh secret key each), and the bounds.
TEST(SecureStandardNormalsTest, StandardNormalMomentsAndFreshKeys) {
  constexpr int64_t n = 200001;  // Odd: the last pair's second sample is dropped.
  absl::StatusOr<std::vector<double>> a = SecureStandardNormals(n);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(a->size(), static_cast<size_t>(n));
  double sum = 0, sum2 = 0, sum4 = 0;
  for (double x : *a) {
    ASSERT_TRUE(std::isfinite(x));
    sum += x, sum2 += x * x, sum4 += x * x * x * x;
  }
  const double mean = sum / n, var = sum2 / n - mean * mean;
  EXPECT_LT(std::fabs(mean), 5.0 / std::sqrt(static_cast<double>(n)));
  EXPECT_NEAR(var, 1.0, 0.02);
  EXPECT_NEAR(sum4 / n, 3.0, 0.1);
  absl::StatusOr<std::vector<double>> b = SecureStandardNormals(16);
  absl::StatusOr<std::vector<double>> c = SecureStandardNormals(16);
  ASSERT_TRUE(b.ok() && c.ok());
  EXPECT_NE(*b, *c);
  EXPECT_TRUE(SecureStandardNormals(0)->empty());
  EXPECT_EQ(SecureStandardNormals(-1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SecureStandardNormals(kMaxSecureNormals + 1).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtune::secagg
