#include "common/fl/validate.h"

#include <ATen/ATen.h>

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace fedtune::fl {

UpdateValidator::UpdateValidator(const TensorMap& global, ValidationOptions options, std::string what)
    : global_(global), options_(std::move(options)), what_(std::move(what)) {}

absl::Status UpdateValidator::Add(const std::string& name, const at::Tensor& tensor) {
  auto it = global_.find(name);
  if (it == global_.end()) {
    return absl::InvalidArgumentError(absl::StrCat(what_, ": tensor '", name, "' is not a tensor of the model"));
  }
  if (seen_.count(name) > 0) {
    return absl::InvalidArgumentError(absl::StrCat(what_, ": tensor '", name, "' occurs twice"));
  }
  // One-tensor maps: CheckSameSchema's messages for a shape or dtype that differs.
  if (absl::Status schema = CheckSameSchema({{name, it->second}}, {{name, tensor}}, what_); !schema.ok()) {
    return schema;
  }
  if (IsFloating(tensor) && tensor.numel() > 0) {
    RETURN_IF_ERROR(CheckFloating(name, tensor));
  }
  seen_.insert(name);
  num_elements_ += tensor.numel();
  return absl::OkStatus();
}

namespace {

struct FloatScan {
  int64_t non_finite = 0;
  double squares = 0.0;
};

// One pass over float32 values: the non-finite ones counted (x - x is 0 only for a finite x), the squares summed in
// float64. Four partial sums, so the compiler keeps independent chains (and may vectorize); the result differs from
// ATen's pairwise sum only in float64 rounding.
FloatScan ScanFloats(const float* x, int64_t n) {
  double s[4] = {0, 0, 0, 0};
  int64_t bad[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int k = 0; k < 4; ++k) {
      const float v = x[i + k];
      const bool finite = (v - v) == 0.0f;
      bad[k] += finite ? 0 : 1;
      const double d = finite ? static_cast<double>(v) : 0.0;
      s[k] += d * d;
    }
  }
  for (; i < n; ++i) {
    const float v = x[i];
    const bool finite = (v - v) == 0.0f;
    bad[0] += finite ? 0 : 1;
    const double d = finite ? static_cast<double>(v) : 0.0;
    s[0] += d * d;
  }
  return FloatScan{bad[0] + bad[1] + bad[2] + bad[3], (s[0] + s[1]) + (s[2] + s[3])};
}

}  // namespace

absl::Status UpdateValidator::CheckFloating(const std::string& name, const at::Tensor& tensor) {
  if (tensor.device().is_cpu() && tensor.scalar_type() == at::kFloat && tensor.is_contiguous()) {
    // The common case (fp32, fp16-decoded-to-fp32 and int8 deltas all arrive as float32): one pass, no copies.
    const FloatScan scan = ScanFloats(tensor.data_ptr<float>(), tensor.numel());
    if (scan.non_finite > 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(what_, ": tensor '", name, "' has ", scan.non_finite, " non-finite value(s) (NaN or infinity)"));
    }
    if (CountsInNorm(name, tensor, options_.norm)) squares_[name] = scan.squares;
    return absl::OkStatus();
  }
  try {
    at::Tensor t = tensor.to(at::kCPU, at::kDouble);
    const int64_t non_finite = t.numel() - at::isfinite(t).sum().item<int64_t>();
    if (non_finite > 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(what_, ": tensor '", name, "' has ", non_finite, " non-finite value(s) (NaN or infinity)"));
    }
    if (CountsInNorm(name, tensor, options_.norm)) squares_[name] = t.mul(t).sum().item<double>();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(what_, ": tensor '", name, "': ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::StatusOr<UpdateSummary> UpdateValidator::Finish() {
  if (seen_.size() != global_.size()) {
    // The seen tensors matched their namesakes: CheckSameSchema then lists exactly the missing ones.
    TensorMap seen;
    for (const std::string& name : seen_) seen.emplace(name, global_.at(name));
    return CheckSameSchema(global_, seen, what_);
  }
  UpdateSummary summary;
  summary.num_elements = num_elements_;
  double sum_squares = 0.0;
  for (const auto& [name, squares] : squares_) {  // Name order, as ValidateUpdate over a TensorMap.
    sum_squares += squares;
    if (summary.largest_tensor.empty() || squares > summary.largest_tensor_norm * summary.largest_tensor_norm) {
      summary.largest_tensor = name;
      summary.largest_tensor_norm = std::sqrt(squares);
    }
  }
  summary.l2_norm = std::sqrt(sum_squares);
  if (!std::isfinite(summary.l2_norm)) {
    // Finite values whose squares overflow float64: far beyond any bound.
    return absl::FailedPreconditionError(
        absl::StrCat(what_, ": L2 norm overflows (largest tensor '", summary.largest_tensor, "')"));
  }
  if (options_.max_l2_norm > 0.0 && summary.l2_norm > options_.max_l2_norm) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s: L2 norm %.6g exceeds the bound %.6g (largest tensor '%s', norm %.6g)", what_,
                        summary.l2_norm, options_.max_l2_norm, summary.largest_tensor, summary.largest_tensor_norm));
  }
  return summary;
}

absl::StatusOr<UpdateSummary> ValidateUpdate(const TensorMap& global, const TensorMap& delta,
                                             const ValidationOptions& options, absl::string_view what) {
  absl::Status schema = CheckSameSchema(global, delta, what);
  if (!schema.ok()) return schema;
  UpdateValidator validator(global, options, std::string(what));
  for (const auto& [name, tensor] : delta) {
    absl::Status added = validator.Add(name, tensor);
    if (!added.ok()) return added;
  }
  return validator.Finish();
}

}  // namespace fedtune::fl
