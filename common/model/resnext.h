// ResNeXt (Xie et al. 2017) exactly as torchvision 0.14's torchvision.models.ResNet with Bottleneck blocks, with a
// configurable input channel count, head and widths. State-dict keys equal torchvision's: "conv1.weight", "bn1.*",
// "layer1.0.conv1.weight", "layer1.0.bn1.*", ..., "layer1.0.downsample.0.weight", "layer1.0.downsample.1.*", ...,
// "fc.weight", "fc.bias". The head dropout (a parameter-free "dropout" module) sits between the pooled features and
// "fc", so it adds no keys.
#ifndef FEDTUNE_COMMON_MODEL_RESNEXT_H_
#define FEDTUNE_COMMON_MODEL_RESNEXT_H_

#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/pooling.h>

#include "common/model/classifier.h"
#include "common/model/nested_sequential.h"

namespace fedtune::model {

// torchvision's Bottleneck (expansion 4): 1x1 -> grouped 3x3 (stride) -> 1x1, plus the identity or a downsample.
class BottleneckImpl : public torch::nn::Module {
 public:
  static constexpr int64_t kExpansion = 4;
  BottleneckImpl(int64_t inplanes, int64_t planes, int64_t stride, bool downsample, int64_t groups, int64_t base_width);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::Conv2d conv1_{nullptr}, conv2_{nullptr}, conv3_{nullptr};
  torch::nn::BatchNorm2d bn1_{nullptr}, bn2_{nullptr}, bn3_{nullptr};
  NestedSequential downsample_{nullptr};
};
TORCH_MODULE(Bottleneck);

class ResNeXtImpl : public ClassifierImpl {
 public:
  // `config.arch` must be kResNeXt and the config valid (CHECK-fails otherwise; use CreateModel for a Status).
  explicit ResNeXtImpl(const ModelConfig& config);

  torch::Tensor Features(const torch::Tensor& x) override;
  torch::Tensor Head(const torch::Tensor& pooled) override;
  int64_t num_features() const override { return num_features_; }
  std::string stem_weight_key() const override { return "conv1.weight"; }
  std::string head_prefix() const override { return "fc."; }

 private:
  torch::nn::Conv2d conv1_{nullptr};
  torch::nn::BatchNorm2d bn1_{nullptr};
  torch::nn::MaxPool2d maxpool_{nullptr};
  torch::nn::Sequential layers_[4] = {nullptr, nullptr, nullptr, nullptr};
  torch::nn::Dropout dropout_{nullptr};
  torch::nn::Linear fc_{nullptr};
  int64_t num_features_ = 0;
};
TORCH_MODULE(ResNeXt);

}  // namespace fedtune::model

#endif  // FEDTUNE_COMMON_MODEL_RESNEXT_H_
