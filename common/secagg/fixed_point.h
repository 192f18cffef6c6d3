// Fixed-point encoding of float vectors into Z_2^32 for secure aggregation (Bonawitz et al., CCS 2017): sums of
// encodings are taken mod 2^32 (masks cancel only in a ring), so each value becomes an integer level small enough that
// the sum of `summands` encodings cannot wrap.
//
// A codec for clip R and n summands: every value is clipped to [-R, R] and encoded as the nearest level k in [-K, K]
// (k * quantum, quantum = R / K), stored as k mod 2^32. K = floor((2^32 / n - 1) / 2), so the per-value range 2K + 1 is
// at most 2^32 / n and a sum of n levels lies in [-nK, nK] with 2nK < 2^32: DecodeSum reads it back exactly as a signed
// integer. Error bound: for n encodings of values already in [-R, R], |DecodeSum - true sum| <= n * quantum / 2 per
// entry (plus double rounding, negligible). Values beyond R are clipped first (their error is the clipping).
//
// Bounds: R finite, > 0 and <= kMaxClip; 1 <= n <= kMaxSummands (K >= 2047); vectors at most kMaxFixedPointLength
// entries; every value finite. Violations: InvalidArgument naming the parameter or the index. Thread-safe (immutable).
#ifndef FEDTUNE_COMMON_SECAGG_FIXED_POINT_H_
#define FEDTUNE_COMMON_SECAGG_FIXED_POINT_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace fedtune::secagg {

inline constexpr int64_t kMaxSummands = int64_t{1} << 20;
inline constexpr double kMaxClip = 1e30;
inline constexpr int64_t kMaxFixedPointLength = int64_t{1} << 28;

class FixedPointCodec {
 public:
  // clip = R, summands = n (the number of encodings that will be added). InvalidArgument outside the bounds above.
  static absl::StatusOr<FixedPointCodec> Create(double clip, int64_t summands);

  double clip() const { return clip_; }
  int64_t summands() const { return summands_; }
  int64_t max_level() const { return max_level_; }  // K
  double quantum() const { return quantum_; }       // R / K
  // n * quantum / 2: the bound on |DecodeSum(sum of n encodings) - sum of the n (clipped) inputs| per entry.
  double SumErrorBound() const { return static_cast<double>(summands_) * quantum_ / 2; }

  // Clips and rounds every value. Non-finite value: InvalidArgument naming its index; too long: InvalidArgument.
  absl::StatusOr<std::vector<uint32_t>> Encode(absl::Span<const float> values) const;
  // The float sum of at most `summands` encodings added mod 2^32 (as doubles). Any input decodes (no errors): a sum of
  // more than n encodings may have wrapped and decodes to garbage, which the caller must rule out.
  std::vector<double> DecodeSum(absl::Span<const uint32_t> sum) const;

 private:
  FixedPointCodec(double clip, int64_t summands, int64_t max_level)
      : clip_(clip), summands_(summands), max_level_(max_level), quantum_(clip / static_cast<double>(max_level)) {}
  double clip_;
  int64_t summands_;
  int64_t max_level_;
  double quantum_;
};

// Entrywise sum mod 2^32 (into `acc`, which must have the same length as `x`; the caller ensures it).
void AddInto(std::vector<uint32_t>& acc, absl::Span<const uint32_t> x);

}  // namespace fedtune::secagg

#endif  // FEDTUNE_COMMON_SECAGG_FIXED_POINT_H_
