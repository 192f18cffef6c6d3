// MobileNetV2 (Sandler et al. 2018) exactly as torchvision 0.14's torchvision.models.MobileNetV2, with a
// configurable input channel count, head and width multiplier. State-dict keys equal torchvision's:
// "features.0.0.weight" (stem conv), "features.0.1.*" (its BN), "features.1.conv.0.0.weight", ...,
// "features.18.0.weight", "classifier.1.weight", "classifier.1.bias" ("classifier" is Sequential(Dropout, Linear),
// the dropout being the head dropout).
#ifndef FEDTUNE_COMMON_MODEL_MOBILENET_V2_H_
#define FEDTUNE_COMMON_MODEL_MOBILENET_V2_H_

#include <torch/nn/modules/container/sequential.h>

#include "common/model/classifier.h"
#include "common/model/nested_sequential.h"

namespace fedtune::model {

// torchvision's InvertedResidual: optional 1x1 expansion, depthwise 3x3, linear 1x1 projection, residual when the
// shape is kept. Its layers live in the Sequential "conv".
class InvertedResidualImpl : public torch::nn::Module {
 public:
  InvertedResidualImpl(int64_t inp, int64_t oup, int64_t stride, int64_t expand_ratio);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  NestedSequential conv_{nullptr};
  bool use_res_connect_;
};
TORCH_MODULE(InvertedResidual);

// torchvision's _make_divisible: rounds v to the nearest multiple of divisor, not going below 90% of v.
int64_t MakeDivisible(double v, int64_t divisor);

class MobileNetV2Impl : public ClassifierImpl {
 public:
  // `config.arch` must be kMobileNetV2 and the config valid (CHECK-fails otherwise; use CreateModel for a Status).
  explicit MobileNetV2Impl(const ModelConfig& config);

  torch::Tensor Features(const torch::Tensor& x) override;
  torch::Tensor Head(const torch::Tensor& pooled) override;
  int64_t num_features() const override { return num_features_; }
  std::string stem_weight_key() const override { return "features.0.0.weight"; }
  std::string head_prefix() const override { return "classifier.1."; }

 private:
  torch::nn::Sequential features_{nullptr};
  torch::nn::Sequential classifier_{nullptr};
  int64_t num_features_ = 0;
};
TORCH_MODULE(MobileNetV2);

}  // namespace fedtune::model

#endif  // FEDTUNE_COMMON_MODEL_MOBILENET_V2_H_
