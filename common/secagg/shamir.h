// Shamir secret sharing (Shamir 1979) of a 16-byte secret (a PRG seed or a key), as secure aggregation uses it to
// recover a dropped site's pairwise seeds or a survivor's self seed from t of n peers.
//
// Field: GF(p), p = 2^61 - 1. The secret is cut into 3 chunks of 7, 7 and 2 bytes (little-endian, each < 2^56 < p);
// each chunk is the constant term of its own random polynomial of degree t - 1 (coefficients uniform in GF(p), drawn
// with OpenSSL's RAND_bytes). Party i (x = i, 1 <= i <= n) gets the three polynomials' values at x. Any t distinct
// shares reconstruct (Lagrange interpolation at 0 through all the shares given); t - 1 shares reveal nothing.
//
// Bounds: 1 <= t <= n <= kMaxShareholders. Split: bad t or n InvalidArgument; RAND failure Internal. Reconstruct:
// fewer than `threshold` shares, threshold out of bounds, x out of [1, kMaxShareholders], duplicate x or a value >= p:
// InvalidArgument naming the share; a result whose chunks do not fit their byte widths (shares from different
// secrets, or too few of them): DataLoss. Thread-safe.
#ifndef FEDTUNE_COMMON_SECAGG_SHAMIR_H_
#define FEDTUNE_COMMON_SECAGG_SHAMIR_H_

#include <array>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/secagg/prg.h"

namespace fedtune::secagg {

inline constexpr int kMaxShareholders = 10000;
inline constexpr uint64_t kShamirPrime = (uint64_t{1} << 61) - 1;

struct Share {
  int32_t x = 0;                   // the party's index, 1..n
  std::array<uint64_t, 3> y = {};  // the three chunk polynomials at x, each < kShamirPrime
};

// n shares of `secret`, any `threshold` of which reconstruct it.
absl::StatusOr<std::vector<Share>> SplitSecret(const Seed& secret, int threshold, int n);

// The secret from at least `threshold` distinct shares of one split.
absl::StatusOr<Seed> ReconstructSecret(absl::Span<const Share> shares, int threshold);

}  // namespace fedtune::secagg

#endif  // FEDTUNE_COMMON_SECAGG_SHAMIR_H_
