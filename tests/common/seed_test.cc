// Tests of common/seed.h: SplitMix64 against its published reference outputs, and the identities its three entry
// points promise (the values are stored in cache keys and synthetic datasets, so they must never change).
#include "common/seed.h"

#include <cstdint>

#include "gtest/gtest.h"

namespace fedtune {
namespace {

TEST(SplitMix64Test, GeneratorMatchesTheReferenceSequence) {
  // splitmix64.c (Vigna) seeded with 1234567.
  uint64_t state = 1234567;
  EXPECT_EQ(SplitMix64Next(&state), 6457827717110365317ULL);
  EXPECT_EQ(SplitMix64Next(&state), 3203168211198807973ULL);
  EXPECT_EQ(SplitMix64Next(&state), 9817491932198370423ULL);
  EXPECT_EQ(state, 1234567 + 3 * kSplitMix64Gamma);
}

TEST(SplitMix64Test, MixSeedIsTheFinalizerAfterOneIncrement) {
  for (uint64_t x : {uint64_t{0}, uint64_t{1}, uint64_t{1234567}, ~uint64_t{0}}) {
    EXPECT_EQ(MixSeed(x), SplitMix64Finalize(x + kSplitMix64Gamma)) << x;
    uint64_t state = x;
    EXPECT_EQ(MixSeed(x), SplitMix64Next(&state)) << x;
  }
  EXPECT_EQ(SplitMix64Finalize(0), 0u);
  EXPECT_EQ(SplitMix64Finalize(1), 6238072747940578789ULL);
  // Nearby seeds give unrelated values.
  EXPECT_NE(MixSeed(1) >> 32, MixSeed(2) >> 32);
}

static_assert(MixSeed(1234567) == 6457827717110365317ULL, "usable in constant expressions");

}  // namespace
}  // namespace fedtune
