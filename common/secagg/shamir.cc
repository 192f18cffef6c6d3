#include "common/secagg/shamir.h"

#include <openssl/rand.h>

#include <set>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace fedtune::secagg {
namespace {

__extension__ typedef unsigned __int128 Uint128;

constexpr uint64_t kP = kShamirPrime;
constexpr int kChunkStart[3] = {0, 7, 14};
constexpr int kChunkLen[3] = {7, 7, 2};

uint64_t AddMod(uint64_t a, uint64_t b) {
  const uint64_t s = a + b;  // < 2^62, no overflow
  return s >= kP ? s - kP : s;
}
uint64_t SubMod(uint64_t a, uint64_t b) { return a >= b ? a - b : a + kP - b; }
uint64_t MulMod(uint64_t a, uint64_t b) { return static_cast<uint64_t>((static_cast<Uint128>(a) * b) % kP); }
uint64_t PowMod(uint64_t a, uint64_t e) {
  uint64_t r = 1;
  while (e > 0) {
    if (e & 1) r = MulMod(r, a);
    a = MulMod(a, a);
    e >>= 1;
  }
  return r;
}
uint64_t InvMod(uint64_t a) { return PowMod(a, kP - 2); }  // a != 0

absl::StatusOr<uint64_t> RandomFieldElement() {
  for (;;) {
    unsigned char b[8];
    if (RAND_bytes(b, sizeof(b)) != 1) return absl::InternalError("shamir: RAND_bytes failed");
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= uint64_t{b[i]} << (8 * i);
    v &= kP;               // 61 uniform bits
    if (v < kP) return v;  // rejects only 2^61 - 1 itself
  }
}

absl::Status CheckThreshold(int threshold, int n) {
  if (n < 1 || n > kMaxShareholders || threshold < 1 || threshold > n) {
    return absl::InvalidArgumentError(
        absl::StrCat("shamir: need 1 <= threshold (", threshold, ") <= n (", n, ") <= ", kMaxShareholders));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<Share>> SplitSecret(const Seed& secret, int threshold, int n) {
  if (absl::Status s = CheckThreshold(threshold, n); !s.ok()) return s;
  std::vector<Share> shares(n);
  for (int i = 0; i < n; ++i) shares[i].x = i + 1;
  std::vector<uint64_t> coeffs(threshold);
  for (int c = 0; c < 3; ++c) {
    uint64_t chunk = 0;
    for (int b = 0; b < kChunkLen[c]; ++b) chunk |= uint64_t{secret[kChunkStart[c] + b]} << (8 * b);
    coeffs[0] = chunk;
    for (int k = 1; k < threshold; ++k) {
      absl::StatusOr<uint64_t> r = RandomFieldElement();
      if (!r.ok()) return r.status();
      coeffs[k] = *r;
    }
    for (Share& share : shares) {
      uint64_t acc = 0;  // Horner
      for (int k = threshold - 1; k >= 0; --k) acc = AddMod(MulMod(acc, static_cast<uint64_t>(share.x)), coeffs[k]);
      share.y[c] = acc;
    }
  }
  for (uint64_t& c : coeffs) c = 0;
  return shares;
}

absl::StatusOr<Seed> ReconstructSecret(absl::Span<const Share> shares, int threshold) {
  if (threshold < 1 || threshold > kMaxShareholders) {
    return absl::InvalidArgumentError(
        absl::StrCat("shamir: threshold ", threshold, " must be in [1, ", kMaxShareholders, "]"));
  }
  if (static_cast<int64_t>(shares.size()) < threshold) {
    return absl::InvalidArgumentError(
        absl::StrCat("shamir: ", shares.size(), " shares are fewer than the threshold ", threshold));
  }
  if (shares.size() > static_cast<size_t>(kMaxShareholders)) {
    return absl::InvalidArgumentError(absl::StrCat("shamir: more than ", kMaxShareholders, " shares"));
  }
  std::set<int32_t> seen;
  for (size_t i = 0; i < shares.size(); ++i) {
    const Share& s = shares[i];
    if (s.x < 1 || s.x > kMaxShareholders) {
      return absl::InvalidArgumentError(
          absl::StrCat("shamir: share ", i, " has x = ", s.x, " outside [1, ", kMaxShareholders, "]"));
    }
    if (!seen.insert(s.x).second) {
      return absl::InvalidArgumentError(absl::StrCat("shamir: share ", i, " repeats x = ", s.x));
    }
    for (uint64_t y : s.y) {
      if (y >= kP) return absl::InvalidArgumentError(absl::StrCat("shamir: share ", i, " has a value >= p"));
    }
  }
  // Lagrange basis at 0: l_i = prod_{j != i} x_j / (x_j - x_i).
  std::vector<uint64_t> basis(shares.size());
  for (size_t i = 0; i < shares.size(); ++i) {
    uint64_t num = 1, den = 1;
    const uint64_t xi = static_cast<uint64_t>(shares[i].x);
    for (size_t j = 0; j < shares.size(); ++j) {
      if (j == i) continue;
      const uint64_t xj = static_cast<uint64_t>(shares[j].x);
      num = MulMod(num, xj);
      den = MulMod(den, SubMod(xj, xi));
    }
    basis[i] = MulMod(num, InvMod(den));
  }
  Seed secret{};
  for (int c = 0; c < 3; ++c) {
    uint64_t v = 0;
    for (size_t i = 0; i < shares.size(); ++i) v = AddMod(v, MulMod(basis[i], shares[i].y[c]));
    if (v >> (8 * kChunkLen[c]) != 0) {
      return absl::DataLossError(
          "shamir: the shares do not interpolate to a secret (too few, or from different splits)");
    }
    for (int b = 0; b < kChunkLen[c]; ++b) secret[kChunkStart[c] + b] = static_cast<uint8_t>(v >> (8 * b));
  }
  return secret;
}

}  // namespace fedtune::secagg
