// Validation of a site's update (a decoded delta) against the global model's schema before it counts in a round,
// either whole (ValidateUpdate) or one tensor at a time as the delta is read from a file (UpdateValidator).
//
// Thread safety: ValidateUpdate is reentrant and does not modify its arguments. UpdateValidator is not thread-safe
// (one per update).
#ifndef FEDTUNE_COMMON_FL_VALIDATE_H_
#define FEDTUNE_COMMON_FL_VALIDATE_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/fl/tensor_map.h"

namespace fedtune::fl {

struct ValidationOptions {
  // Largest accepted L2 norm of the delta (see L2Norm in tensor_map.h); 0 (default) accepts any finite norm.
  double max_l2_norm = 0.0;
  // Which tensors the norm covers. Default: every floating tensor, BatchNorm running statistics included.
  NormOptions norm;
};

struct UpdateSummary {
  double l2_norm = 0.0;      // Norm of the delta under ValidationOptions::norm.
  int64_t num_elements = 0;  // Elements over all tensors.
  // The tensor with the largest norm (for logs; empty when there are no floating tensors).
  std::string largest_tensor;
  double largest_tensor_norm = 0.0;
};

// Checks `delta` against `global` (the model the round sent out):
//  - the same tensor names (InvalidArgument listing missing and unexpected names), shapes and dtypes
//    (InvalidArgument naming the first tensor that differs);
//  - every value finite (InvalidArgument naming the tensor and the count of non-finite values);
//  - the L2 norm at most options.max_l2_norm when that is > 0 (FailedPrecondition: a well-formed update that the
//    run's policy refuses; the message gives the norm, the bound and the largest tensor).
// `what` names the update in messages, e.g. "update from site-a for round 3".
// Returns the norm and sizes on success.
absl::StatusOr<UpdateSummary> ValidateUpdate(const TensorMap& global, const TensorMap& delta,
                                             const ValidationOptions& options = {}, absl::string_view what = "update");

// ValidateUpdate's checks one tensor at a time, for a delta that is never whole in memory (decoded tensor by tensor
// from a spool file, bundle_file.h): Add every tensor in any order, then Finish. Holds the names seen and one float64
// per tensor, nothing of the tensors themselves. The summary equals ValidateUpdate's on the same tensors, bit for
// bit (the per-tensor squares are summed in name order, whatever the order of Add).
//   UpdateValidator v(global, options, "update from site-a for round 3");
//   for each (name, tensor): RETURN_IF_ERROR(v.Add(name, tensor));
//   ASSIGN_OR_RETURN(UpdateSummary summary, v.Finish());
class UpdateValidator {
 public:
  // `global` must outlive the validator.
  UpdateValidator(const TensorMap& global, ValidationOptions options, std::string what);

  // Checks one tensor: InvalidArgument naming it when it is not a tensor of `global`, was added before, differs in
  // shape or dtype, or holds non-finite values (with their count); Internal for a LibTorch error. The tensor is read,
  // not kept.
  absl::Status Add(const std::string& name, const at::Tensor& tensor);

  // After every tensor: InvalidArgument listing the tensors of `global` never added; FailedPrecondition for a norm
  // above options.max_l2_norm or one that overflows float64 (as ValidateUpdate). Call once.
  absl::StatusOr<UpdateSummary> Finish();

 private:
  // Finite values, and the squares that count in the norm.
  absl::Status CheckFloating(const std::string& name, const at::Tensor& tensor);

  const TensorMap& global_;
  const ValidationOptions options_;
  const std::string what_;
  std::set<std::string> seen_;
  std::map<std::string, double> squares_;  // Of the tensors that count in the norm, by name.
  int64_t num_elements_ = 0;
};

}  // namespace fedtune::fl

#endif  // FEDTUNE_COMMON_FL_VALIDATE_H_
