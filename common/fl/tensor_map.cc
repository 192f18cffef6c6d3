#include "common/fl/tensor_map.h"

#include <ATen/ATen.h>

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace fedtune::fl {
namespace {

std::string JoinFirst(const std::vector<std::string>& names, size_t limit) {
  std::vector<std::string> shown(names.begin(), names.begin() + std::min(limit, names.size()));
  std::string out = absl::StrJoin(shown, ", ");
  if (names.size() > limit) absl::StrAppend(&out, ", ... (", names.size(), " in all)");
  return out;
}

// Elementwise combination of two schema-checked maps, catching LibTorch errors.
template <typename Op>
absl::StatusOr<TensorMap> Combine(const TensorMap& a, const TensorMap& b, absl::string_view what, Op op) {
  TensorMap out;
  for (const auto& [name, ta] : a) {
    try {
      const at::Tensor& tb = b.at(name);
      out.emplace(name, op(ta.to(at::kCPU), tb.to(at::kCPU)).to(ta.scalar_type()).contiguous());
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat(what, ": tensor '", name, "': ", e.what_without_backtrace()));
    }
  }
  return out;
}

}  // namespace

bool IsBatchNormStatistic(absl::string_view name) {
  return absl::EndsWith(name, "running_mean") || absl::EndsWith(name, "running_var") ||
         absl::EndsWith(name, "num_batches_tracked");
}

bool IsFloating(const at::Tensor& tensor) {
  switch (tensor.scalar_type()) {
    case at::kFloat:
    case at::kHalf:
    case at::kBFloat16:
    case at::kDouble:
      return true;
    default:
      return false;
  }
}

std::string DTypeName(const at::Tensor& tensor) {
  switch (tensor.scalar_type()) {
    case at::kFloat:
      return "float32";
    case at::kHalf:
      return "float16";
    case at::kBFloat16:
      return "bfloat16";
    case at::kDouble:
      return "float64";
    case at::kLong:
      return "int64";
    case at::kInt:
      return "int32";
    default:
      return std::string(c10::toString(tensor.scalar_type()));
  }
}

std::string ShapeString(const at::Tensor& tensor) {
  return absl::StrCat("[", absl::StrJoin(tensor.sizes(), ", "), "]");
}

absl::Status CheckSameSchema(const TensorMap& expected, const TensorMap& actual, absl::string_view what) {
  std::vector<std::string> missing, unexpected;
  for (const auto& [name, tensor] : expected) {
    if (actual.count(name) == 0) missing.push_back(name);
  }
  for (const auto& [name, tensor] : actual) {
    if (expected.count(name) == 0) unexpected.push_back(name);
  }
  if (!missing.empty() || !unexpected.empty()) {
    std::string message = absl::StrCat(what, ": tensor names differ from the model's:");
    if (!missing.empty()) absl::StrAppend(&message, " missing ", JoinFirst(missing, 10), ";");
    if (!unexpected.empty()) absl::StrAppend(&message, " unexpected ", JoinFirst(unexpected, 10), ";");
    message.pop_back();
    return absl::InvalidArgumentError(message);
  }
  for (const auto& [name, want] : expected) {
    const at::Tensor& got = actual.at(name);
    if (!got.defined() || !want.defined()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": tensor '", name, "' is undefined"));
    }
    if (got.sizes() != want.sizes()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": tensor '", name, "' has shape ", ShapeString(got),
                                                     ", the model's is ", ShapeString(want)));
    }
    if (got.scalar_type() != want.scalar_type()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": tensor '", name, "' has dtype ", DTypeName(got), ", the model's is ", DTypeName(want)));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<TensorMap> ComputeDelta(const TensorMap& local, const TensorMap& global) {
  absl::Status schema = CheckSameSchema(global, local, "local model");
  if (!schema.ok()) return schema;
  // Iterate over global so results take the global's dtypes (identical by the check above).
  return Combine(global, local, "delta", [](const at::Tensor& g, const at::Tensor& l) { return l - g; });
}

absl::StatusOr<TensorMap> ApplyDelta(const TensorMap& global, const TensorMap& delta) {
  absl::Status schema = CheckSameSchema(global, delta, "delta");
  if (!schema.ok()) return schema;
  return Combine(global, delta, "apply delta", [](const at::Tensor& g, const at::Tensor& d) { return g + d; });
}

absl::Status ApplyDeltaInPlace(const TensorMap& global, TensorMap& delta) {
  absl::Status schema = CheckSameSchema(global, delta, "delta");
  if (!schema.ok()) return schema;
  for (auto& [name, d] : delta) {
    try {
      const at::Tensor& g = global.at(name);
      if (d.device().is_cpu() && d.is_contiguous() && d.scalar_type() == g.scalar_type()) {
        d.add_(g.to(at::kCPU));  // d + g: the same bits as g + d.
      } else {
        d = (g.to(at::kCPU) + d.to(at::kCPU)).to(g.scalar_type()).contiguous();
      }
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat("apply delta: tensor '", name, "': ", e.what_without_backtrace()));
    }
  }
  return absl::OkStatus();
}

bool CountsInNorm(absl::string_view name, const at::Tensor& tensor, const NormOptions& options) {
  if (!IsFloating(tensor)) return false;
  if (!options.include_batchnorm_statistics && IsBatchNormStatistic(name)) return false;
  return true;
}

double L2Norm(const TensorMap& tensors, const NormOptions& options) {
  double sum = 0.0;
  for (const auto& [name, tensor] : tensors) {
    if (!CountsInNorm(name, tensor, options)) continue;
    at::Tensor t = tensor.to(at::kCPU, at::kDouble);
    sum += t.mul(t).sum().item<double>();
  }
  return std::sqrt(sum);
}

}  // namespace fedtune::fl
