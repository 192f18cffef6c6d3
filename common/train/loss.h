// The training loss of the study: binary cross-entropy on logits with soft targets, per-label positive weights
// (negatives / positives on the training split) and a per-element mask (U-Ignore, or labels the site does not use).
#ifndef FEDTUNE_COMMON_TRAIN_LOSS_H_
#define FEDTUNE_COMMON_TRAIN_LOSS_H_

#include <ATen/core/Tensor.h>

namespace fedtune::train {

// logits, targets, mask: [B, L] float; pos_weight: [L] float (or undefined for all ones).
// Per element: l = -mask * (pos_weight * t * log(sigmoid(x)) + (1 - t) * log(1 - sigmoid(x))), computed stably from
// the logits. Returns the sum of l over the elements divided by the sum of the mask (the mean over the elements that
// enter the loss); 0 (with a gradient of 0) when the mask is all zero. Shapes must agree (CHECK: a caller bug).
at::Tensor MaskedBceWithLogits(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& mask,
                               const at::Tensor& pos_weight);

}  // namespace fedtune::train

#endif  // FEDTUNE_COMMON_TRAIN_LOSS_H_
