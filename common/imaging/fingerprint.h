// A stable, fast, non-cryptographic 64-bit hash for cache keys and checksums.
// Unlike absl::Hash it is the same in every process and on every run (on
// little-endian machines, which is all fedtune targets), so values may be
// stored. Not for security: it detects accidents (torn writes, bit rot, edits),
// not adversaries.
#ifndef FEDTUNE_COMMON_IMAGING_FINGERPRINT_H_
#define FEDTUNE_COMMON_IMAGING_FINGERPRINT_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace fedtune::imaging {

// Hash of `size` bytes at `data`, seeded. Pure; thread-safe.
uint64_t Fingerprint64(const void* data, size_t size, uint64_t seed = 0);
inline uint64_t Fingerprint64(const std::string& s, uint64_t seed = 0) {
  return Fingerprint64(s.data(), s.size(), seed);
}

}  // namespace fedtune::imaging

#endif  // FEDTUNE_COMMON_IMAGING_FINGERPRINT_H_
