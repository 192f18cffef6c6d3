// DenseNet (Huang et al. 2017) exactly as torchvision 0.14's torchvision.models.DenseNet, with a configurable input
// channel count and head. State-dict keys equal torchvision's: "features.conv0.weight", "features.norm0.*",
// "features.denseblock1.denselayer1.norm1.*", ".conv1.weight", ".norm2.*", ".conv2.weight",
// "features.transition1.norm.*", "features.transition1.conv.weight", ..., "features.norm5.*", "classifier.weight",
// "classifier.bias". The head dropout (a parameter-free "dropout" module) sits between the pooled features and
// "classifier", so it adds no keys.
#ifndef FEDTUNE_COMMON_MODEL_DENSENET_H_
#define FEDTUNE_COMMON_MODEL_DENSENET_H_

#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>

#include "common/model/classifier.h"

namespace fedtune::model {

// torchvision's _DenseLayer: BN-ReLU-Conv1x1 (bottleneck) then BN-ReLU-Conv3x3 producing growth_rate channels.
class DenseLayerImpl : public torch::nn::Module {
 public:
  DenseLayerImpl(int64_t num_input_features, int64_t growth_rate, int64_t bn_size, double drop_rate);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::BatchNorm2d norm1_{nullptr}, norm2_{nullptr};
  torch::nn::Conv2d conv1_{nullptr}, conv2_{nullptr};
  double drop_rate_;
};
TORCH_MODULE(DenseLayer);

// torchvision's _DenseBlock: layers "denselayer1".."denselayerN", each fed the concatenation of all earlier outputs.
class DenseBlockImpl : public torch::nn::Module {
 public:
  DenseBlockImpl(int num_layers, int64_t num_input_features, int64_t bn_size, int64_t growth_rate, double drop_rate);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  std::vector<DenseLayer> layers_;
};
TORCH_MODULE(DenseBlock);

class DenseNetImpl : public ClassifierImpl {
 public:
  // `config.arch` must be kDenseNet and the config valid (CHECK-fails otherwise; use CreateModel for a Status).
  explicit DenseNetImpl(const ModelConfig& config);

  torch::Tensor Features(const torch::Tensor& x) override;
  torch::Tensor Head(const torch::Tensor& pooled) override;
  int64_t num_features() const override { return num_features_; }
  std::string stem_weight_key() const override { return "features.conv0.weight"; }
  std::string head_prefix() const override { return "classifier."; }

 private:
  torch::nn::Sequential features_{nullptr};
  torch::nn::Dropout dropout_{nullptr};
  torch::nn::Linear classifier_{nullptr};
  int64_t num_features_ = 0;
};
TORCH_MODULE(DenseNet);

}  // namespace fedtune::model

#endif  // FEDTUNE_COMMON_MODEL_DENSENET_H_
