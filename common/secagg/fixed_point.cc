#include "common/secagg/fixed_point.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace fedtune::secagg {

absl::StatusOr<FixedPointCodec> FixedPointCodec::Create(double clip, int64_t summands) {
  if (!std::isfinite(clip) || clip <= 0 || clip > kMaxClip) {
    return absl::InvalidArgumentError(
        absl::StrCat("fixed point: clip ", clip, " must be finite, in (0, ", kMaxClip, "]"));
  }
  if (summands < 1 || summands > kMaxSummands) {
    return absl::InvalidArgumentError(
        absl::StrCat("fixed point: summands ", summands, " must be in [1, ", kMaxSummands, "] for 32-bit precision"));
  }
  const int64_t range = (int64_t{1} << 32) / summands;  // per-value range allowed: 2K + 1 <= 2^32 / n
  const int64_t max_level = (range - 1) / 2;
  return FixedPointCodec(clip, summands, max_level);
}

absl::StatusOr<std::vector<uint32_t>> FixedPointCodec::Encode(absl::Span<const float> values) const {
  if (static_cast<int64_t>(values.size()) > kMaxFixedPointLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("fixed point: ", values.size(), " values exceed the bound of ", kMaxFixedPointLength));
  }
  std::vector<uint32_t> out(values.size());
  const double k = static_cast<double>(max_level_);
  for (size_t i = 0; i < values.size(); ++i) {
    const double v = values[i];
    if (!std::isfinite(v)) {
      return absl::InvalidArgumentError(absl::StrCat("fixed point: value at index ", i, " is not finite (", v, ")"));
    }
    const double clipped = std::clamp(v, -clip_, clip_);
    const double level = std::clamp(std::nearbyint(clipped / quantum_), -k, k);
    out[i] = static_cast<uint32_t>(static_cast<int64_t>(level));  // mod 2^32 (two's complement)
  }
  return out;
}

std::vector<double> FixedPointCodec::DecodeSum(absl::Span<const uint32_t> sum) const {
  std::vector<double> out(sum.size());
  for (size_t i = 0; i < sum.size(); ++i) {
    const int64_t u = sum[i];
    const int64_t signed_level = u >= (int64_t{1} << 31) ? u - (int64_t{1} << 32) : u;
    out[i] = static_cast<double>(signed_level) * quantum_;
  }
  return out;
}

void AddInto(std::vector<uint32_t>& acc, absl::Span<const uint32_t> x) {
  for (size_t i = 0; i < acc.size() && i < x.size(); ++i) acc[i] += x[i];
}

}  // namespace fedtune::secagg
