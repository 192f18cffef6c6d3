// Seed derivation shared by everything that must be reproducible from (seed, epoch, ...): shuffling, dropout.
#ifndef FEDTUNE_COMMON_SEED_H_
#define FEDTUNE_COMMON_SEED_H_

#include <cstdint>

namespace fedtune {

// splitmix64's finalizer: decorrelates nearby inputs (seed, seed + 1, epoch numbers) into generator seeds. Pure.
inline uint64_t MixSeed(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace fedtune

#endif  // FEDTUNE_COMMON_SEED_H_
