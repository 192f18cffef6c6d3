#include "common/secagg/fixed_point.h"

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fedtune::secagg {
namespace {

using ::testing::HasSubstr;

// Sums n random vectors in [-R, R] through the codec and checks every entry against the exact double sum.
void CheckSumWithinBound(int64_t n, int length, uint32_t seed) {
  constexpr double kClip = 2.5;
  auto codec = FixedPointCodec::Create(kClip, n);
  ASSERT_TRUE(codec.ok()) << codec.status();
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-2.5f, 2.5f);
  std::vector<uint32_t> acc(length, 0);
  std::vector<double> truth(length, 0.0);
  for (int64_t s = 0; s < n; ++s) {
    std::vector<float> x(length);
    for (int i = 0; i < length; ++i) {
      x[i] = dist(rng);
      truth[i] += x[i];
    }
    auto enc = codec->Encode(x);
    ASSERT_TRUE(enc.ok()) << enc.status();
    AddInto(acc, *enc);
  }
  const std::vector<double> decoded = codec->DecodeSum(acc);
  ASSERT_EQ(decoded.size(), truth.size());
  const double bound = codec->SumErrorBound() * (1 + 1e-9);
  for (int i = 0; i < length; ++i) EXPECT_LE(std::abs(decoded[i] - truth[i]), bound) << "n=" << n << " i=" << i;
}

TEST(FixedPointTest, SumsWithinStatedBound) {
  CheckSumWithinBound(1, 1000, 1);
  CheckSumWithinBound(4, 1000, 2);
  CheckSumWithinBound(1000, 50, 3);
}

TEST(FixedPointTest, ExtremesOfNSummandsDoNotWrap) {
  auto codec = FixedPointCodec::Create(1.0, 1000);
  ASSERT_TRUE(codec.ok());
  std::vector<uint32_t> hi(1, 0), lo(1, 0);
  for (int s = 0; s < 1000; ++s) {
    AddInto(hi, *codec->Encode(std::vector<float>{1.0f}));
    AddInto(lo, *codec->Encode(std::vector<float>{-1.0f}));
  }
  EXPECT_NEAR(codec->DecodeSum(hi)[0], 1000.0, 1e-6);
  EXPECT_NEAR(codec->DecodeSum(lo)[0], -1000.0, 1e-6);
  EXPECT_LE(2 * 1000 * codec->max_level() + 1, int64_t{1} << 32);
}

TEST(FixedPointTest, ClipsToRange) {
  auto codec = FixedPointCodec::Create(1.0, 4);
  ASSERT_TRUE(codec.ok());
  auto enc = codec->Encode(std::vector<float>{5.0f, -7.0f, 0.5f});
  ASSERT_TRUE(enc.ok());
  const std::vector<double> d = codec->DecodeSum(*enc);
  EXPECT_NEAR(d[0], 1.0, 1e-9);
  EXPECT_NEAR(d[1], -1.0, 1e-9);
  EXPECT_NEAR(d[2], 0.5, codec->quantum());
}

TEST(FixedPointTest, RefusesBadParameters) {
  EXPECT_EQ(FixedPointCodec::Create(1.0, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FixedPointCodec::Create(1.0, kMaxSummands + 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(FixedPointCodec::Create(1.0, kMaxSummands + 1).status().message()), HasSubstr("summands"));
  EXPECT_EQ(FixedPointCodec::Create(0.0, 4).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FixedPointCodec::Create(-1.0, 4).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FixedPointCodec::Create(std::numeric_limits<double>::infinity(), 4).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FixedPointCodec::Create(std::nan(""), 4).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(FixedPointCodec::Create(1.0, kMaxSummands).ok());
}

TEST(FixedPointTest, RefusesNonFiniteValuesNamingIndex) {
  auto codec = FixedPointCodec::Create(1.0, 4);
  ASSERT_TRUE(codec.ok());
  auto nan = codec->Encode(std::vector<float>{0.0f, 0.1f, std::numeric_limits<float>::quiet_NaN()});
  EXPECT_EQ(nan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(nan.status().message()), HasSubstr("index 2"));
  auto inf = codec->Encode(std::vector<float>{-std::numeric_limits<float>::infinity()});
  EXPECT_EQ(inf.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(inf.status().message()), HasSubstr("index 0"));
}

}  // namespace
}  // namespace fedtune::secagg
