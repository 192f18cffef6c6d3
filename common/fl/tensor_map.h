// Named tensor sets (a model's state dict, or a weight delta to add to one) and the conventions the federation
// applies to them: which tensors are BatchNorm running statistics, how a delta is formed and applied, and the L2
// norm that validation and clipping share.
//
// Conventions:
//  - Floating tensors (float32, float16, bfloat16, float64) are weights or running statistics; integer tensors
//    (int64, int32) are counters such as BatchNorm's num_batches_tracked.
//  - BatchNorm running statistics are the tensors whose name ends in "running_mean", "running_var" or
//    "num_batches_tracked". They are always sent dense (see codec.h) and bypass server optimizers (aggregate.h).
//  - A delta is local - global, tensor by tensor, in the global tensor's dtype; integer tensors too.
//
// Thread safety: the functions are reentrant; they do not modify their arguments.
#ifndef FEDTUNE_COMMON_FL_TENSOR_MAP_H_
#define FEDTUNE_COMMON_FL_TENSOR_MAP_H_

#include <ATen/core/Tensor.h>

#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fedtune::fl {

// Tensors by state-dict key, on the CPU. The same type as model::StateDict.
using TensorMap = std::map<std::string, at::Tensor>;

// True when `name` ends in "running_mean", "running_var" or "num_batches_tracked".
bool IsBatchNormStatistic(absl::string_view name);

// True for float32, float16, bfloat16 and float64 tensors.
bool IsFloating(const at::Tensor& tensor);

// "float32", "int64", ... for messages.
std::string DTypeName(const at::Tensor& tensor);

// "[3, 4]" for messages.
std::string ShapeString(const at::Tensor& tensor);

// OK when `actual` has exactly the names of `expected`, each with the same shape and dtype. Otherwise
// InvalidArgument listing up to 10 missing and 10 unexpected names, or naming the first tensor whose shape or dtype
// differs. `what` names `actual` in messages (e.g. "update from site-a").
absl::Status CheckSameSchema(const TensorMap& expected, const TensorMap& actual, absl::string_view what);

// local - global for every tensor (contiguous CPU results in global's dtype). InvalidArgument as CheckSameSchema.
absl::StatusOr<TensorMap> ComputeDelta(const TensorMap& local, const TensorMap& global);

// global + delta for every tensor (contiguous CPU results in global's dtype). InvalidArgument as CheckSameSchema.
absl::StatusOr<TensorMap> ApplyDelta(const TensorMap& global, const TensorMap& delta);

// ApplyDelta without a third model in memory: each tensor of `delta` becomes global + delta, in place where it is a
// contiguous CPU tensor of global's dtype (the same bits as ApplyDelta), otherwise replaced by ApplyDelta's result
// for that tensor. InvalidArgument as CheckSameSchema (then `delta` is unchanged); Internal for a LibTorch error
// (then `delta` may be partly applied).
absl::Status ApplyDeltaInPlace(const TensorMap& global, TensorMap& delta);

struct NormOptions {
  // Count BatchNorm running_mean / running_var in the norm. Default true: a poisoned running statistic is caught
  // by the same bound as a poisoned weight. Integer tensors never count.
  bool include_batchnorm_statistics = true;
};

// True when `name`/`tensor` counts in the L2 norm under `options` (floating, and not a BatchNorm statistic unless
// options.include_batchnorm_statistics).
bool CountsInNorm(absl::string_view name, const at::Tensor& tensor, const NormOptions& options);

// sqrt(sum of squares) over the tensors that count, accumulated in float64. Non-finite values give a non-finite
// norm.
double L2Norm(const TensorMap& tensors, const NormOptions& options = {});

}  // namespace fedtune::fl

#endif  // FEDTUNE_COMMON_FL_TENSOR_MAP_H_
