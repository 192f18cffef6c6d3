// SplitMix64 (Steele, Lea and Flood, 2014), the one 64-bit mixer of fedtune: seed derivation for everything that
// must be reproducible from (seed, epoch, ...) (shuffling, dropout, augmentation, label sampling, synthetic data),
// the stable hashes built on it, and the jitter of retry back-off. Values derived here may be stored (cache keys,
// synthetic datasets), so these functions must never change. Pure, header-only, thread-safe.
#ifndef FEDTUNE_COMMON_SEED_H_
#define FEDTUNE_COMMON_SEED_H_

#include <cstdint>

namespace fedtune {

// SplitMix64's increment (the golden-ratio "gamma").
inline constexpr uint64_t kSplitMix64Gamma = 0x9e3779b97f4a7c15ULL;

// SplitMix64's output finalizer: a bijective 64-bit mix (no increment). Pure.
constexpr uint64_t SplitMix64Finalize(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// The finalizer after one increment, SplitMix64Finalize(x + kSplitMix64Gamma): decorrelates nearby inputs (seed,
// seed + 1, epoch numbers) into generator seeds. MixSeed(s) is the first output of a SplitMix64 generator seeded
// with s. Pure.
constexpr uint64_t MixSeed(uint64_t x) { return SplitMix64Finalize(x + kSplitMix64Gamma); }

// One step of the SplitMix64 generator whose state is *state: advances it by kSplitMix64Gamma and returns the
// finalized new state. Not thread-safe for one state.
inline uint64_t SplitMix64Next(uint64_t* state) { return SplitMix64Finalize(*state += kSplitMix64Gamma); }

}  // namespace fedtune

#endif  // FEDTUNE_COMMON_SEED_H_
