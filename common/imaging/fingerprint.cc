#include "common/imaging/fingerprint.h"

#include <cstring>

#include "common/seed.h"

namespace fedtune::imaging {

uint64_t Fingerprint64(const void* data, size_t size, uint64_t seed) {
  // Four independent lanes keep the multiplier pipeline busy (about 4 bytes per
  // cycle); the lanes and the length are combined at the end.
  constexpr uint64_t kMul = kSplitMix64Gamma;
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t lane[4] = {seed ^ 0x243f6a8885a308d3ULL, seed ^ 0x13198a2e03707344ULL, seed ^ 0xa4093822299f31d0ULL,
                      seed ^ 0x082efa98ec4e6c89ULL};
  size_t i = 0;
  for (; i + 32 <= size; i += 32) {
    for (int k = 0; k < 4; ++k) {
      uint64_t w;
      std::memcpy(&w, p + i + 8 * k, 8);
      lane[k] = (lane[k] ^ w) * kMul;
      lane[k] ^= lane[k] >> 29;
    }
  }
  uint64_t h = SplitMix64Finalize(size ^ seed);
  for (int k = 0; k < 4; ++k) h = SplitMix64Finalize(h ^ SplitMix64Finalize(lane[k]));
  for (; i < size; ++i) h = SplitMix64Finalize(h ^ (static_cast<uint64_t>(p[i]) + 0x100 * (i & 0xff)));
  return h;
}

}  // namespace fedtune::imaging
