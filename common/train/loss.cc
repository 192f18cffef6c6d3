#include "common/train/loss.h"

#include <torch/torch.h>

#include "common/logging.h"

namespace fedtune::train {

at::Tensor MaskedBceWithLogits(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& mask,
                               const at::Tensor& pos_weight) {
  CHECK(logits.sizes() == targets.sizes() && logits.sizes() == mask.sizes())
      << "loss shapes differ: logits " << logits.sizes() << ", targets " << targets.sizes() << ", mask "
      << mask.sizes();
  namespace F = torch::nn::functional;
  auto options = F::BinaryCrossEntropyWithLogitsFuncOptions().reduction(torch::kNone);
  if (pos_weight.defined()) options.pos_weight(pos_weight.to(logits.device(), logits.scalar_type()));
  at::Tensor per_element = F::binary_cross_entropy_with_logits(logits, targets, options);
  const at::Tensor m = mask.to(per_element.scalar_type());
  return (per_element * m).sum() / m.sum().clamp_min(1.0);
}

}  // namespace fedtune::train
