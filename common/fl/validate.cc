#include "common/fl/validate.h"

#include <ATen/ATen.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace fedtune::fl {

absl::StatusOr<UpdateSummary> ValidateUpdate(const TensorMap& global, const TensorMap& delta,
                                             const ValidationOptions& options, absl::string_view what) {
  absl::Status schema = CheckSameSchema(global, delta, what);
  if (!schema.ok()) return schema;
  UpdateSummary summary;
  double sum_squares = 0.0;
  try {
    for (const auto& [name, tensor] : delta) {
      summary.num_elements += tensor.numel();
      if (!IsFloating(tensor) || tensor.numel() == 0) continue;
      at::Tensor t = tensor.to(at::kCPU, at::kDouble);
      const int64_t non_finite = t.numel() - at::isfinite(t).sum().item<int64_t>();
      if (non_finite > 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, ": tensor '", name, "' has ", non_finite, " non-finite value(s) (NaN or infinity)"));
      }
      if (!CountsInNorm(name, tensor, options.norm)) continue;
      const double squares = t.mul(t).sum().item<double>();
      sum_squares += squares;
      if (summary.largest_tensor.empty() || squares > summary.largest_tensor_norm * summary.largest_tensor_norm) {
        summary.largest_tensor = name;
        summary.largest_tensor_norm = std::sqrt(squares);
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what_without_backtrace()));
  }
  summary.l2_norm = std::sqrt(sum_squares);
  if (!std::isfinite(summary.l2_norm)) {
    // Finite values whose squares overflow float64: far beyond any bound.
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": L2 norm overflows (largest tensor '", summary.largest_tensor, "')"));
  }
  if (options.max_l2_norm > 0.0 && summary.l2_norm > options.max_l2_norm) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s: L2 norm %.6g exceeds the bound %.6g (largest tensor '%s', norm %.6g)", std::string(what),
                        summary.l2_norm, options.max_l2_norm, summary.largest_tensor, summary.largest_tensor_norm));
  }
  return summary;
}

}  // namespace fedtune::fl
