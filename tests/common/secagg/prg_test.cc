#include "common/secagg/prg.h"

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
