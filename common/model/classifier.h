// The common interface of fedtune's image classifiers (DenseNet, ResNeXt, MobileNetV2): a LibTorch module whose
// forward() maps [N, in_channels, H, W] images to [N, num_outputs] logits, split into the stages that ensembles
// (DuoNet: pooled features) and Grad-CAM (last convolutional feature map) need.
//
// Thread safety: like any torch::nn::Module, a classifier may be used for inference from several threads at once
// only in eval() mode under torch::NoGradGuard; training and loading need exclusive access.
#ifndef FEDTUNE_COMMON_MODEL_CLASSIFIER_H_
#define FEDTUNE_COMMON_MODEL_CLASSIFIER_H_

#include <torch/nn/module.h>

#include <cstdint>
#include <memory>
#include <string>

#include "common/model/model_config.h"

namespace fedtune::model {

class ClassifierImpl : public torch::nn::Module {
 public:
  explicit ClassifierImpl(ModelConfig config) : config_(std::move(config)) {}

  // Logits [N, num_outputs] = Head(Pool(Features(x))).
  torch::Tensor forward(const torch::Tensor& x) { return Head(Pool(Features(x))); }

  // The last convolutional feature map after its activation, [N, num_features, h, w] (Grad-CAM's target layer).
  virtual torch::Tensor Features(const torch::Tensor& x) = 0;
  // Global average pooling and flattening: [N, C, h, w] -> [N, C].
  static torch::Tensor Pool(const torch::Tensor& features);
  // Head dropout (config().head_dropout, active in train() mode only) followed by the final linear layer.
  virtual torch::Tensor Head(const torch::Tensor& pooled) = 0;

  // Channels of Features() and width of Pool(): the final linear layer's input size.
  virtual int64_t num_features() const = 0;
  // State-dict key of the first convolution's weight ("features.conv0.weight", "conv1.weight",
  // "features.0.0.weight"), whose input channels are folded on import.
  virtual std::string stem_weight_key() const = 0;
  // State-dict key prefix of the final linear layer ("classifier.", "fc.", "classifier.1."), which import replaces
  // when its shape differs.
  virtual std::string head_prefix() const = 0;

  const ModelConfig& config() const { return config_; }

 private:
  ModelConfig config_;
};

// Shared ownership, as LibTorch's module holders use.
using Classifier = std::shared_ptr<ClassifierImpl>;

}  // namespace fedtune::model

#endif  // FEDTUNE_COMMON_MODEL_CLASSIFIER_H_
