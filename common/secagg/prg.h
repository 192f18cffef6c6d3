// The pseudorandom generator of secure aggregation's masks: a 16-byte seed expanded with AES-128-CTR (the seed is the
// key, the IV is zero); the keystream's bytes, read 4 at a time as little-endian uint32, are the mask. Deterministic
// (same seed, same vector on every machine); a prefix of a longer expansion equals the shorter one.
// Bound: length at most kMaxPrgLength (2^28 words, 1 GiB); beyond it InvalidArgument. Thread-safe.
#ifndef FEDTUNE_COMMON_SECAGG_PRG_H_
#define FEDTUNE_COMMON_SECAGG_PRG_H_

#include <array>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace fedtune::secagg {

using Seed = std::array<uint8_t, 16>;

inline constexpr int64_t kMaxPrgLength = int64_t{1} << 28;

// `length` uint32 words of AES-128-CTR(seed, IV 0) keystream. length < 0 or > kMaxPrgLength: InvalidArgument; an
// OpenSSL failure: Internal.
absl::StatusOr<std::vector<uint32_t>> ExpandSeed(const Seed& seed, int64_t length);

// n independent standard normal samples that nobody can predict: a fresh 16-byte key from OpenSSL's RAND_bytes,
// expanded with ExpandSeed (AES-128-CTR), two 53-bit uniforms per pair of samples (Box-Muller). The noise of
// differential privacy (DP-SGD's steps, DP-FedAvg's sum) comes from here, never from a seeded generator: a seed a
// config or a 32-bit generator state could reveal would let anyone subtract the noise. n in [0, kMaxSecureNormals],
// else InvalidArgument; RAND_bytes or OpenSSL failure: Internal.
inline constexpr int64_t kMaxSecureNormals = kMaxPrgLength / 2;
absl::StatusOr<std::vector<double>> SecureStandardNormals(int64_t n);

}  // namespace fedtune::secagg

#endif  // FEDTUNE_COMMON_SECAGG_PRG_H_
