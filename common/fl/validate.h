// Validation of a site's update (a decoded delta) against the global model's schema before it counts in a round.
//
// Thread safety: reentrant; the arguments are not modified.
#ifndef FEDTUNE_COMMON_FL_VALIDATE_H_
#define FEDTUNE_COMMON_FL_VALIDATE_H_

#include <cstdint>
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

}  // namespace fedtune::fl

#endif  // FEDTUNE_COMMON_FL_VALIDATE_H_
