#include "common/model/densenet.h"

#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/dropout.h>
#include <torch/nn/init.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/pooling.h>

#include "common/logging.h"
#include "common/model/nested_sequential.h"

namespace fedtune::model {

namespace nn = torch::nn;

DenseLayerImpl::DenseLayerImpl(int64_t num_input_features, int64_t growth_rate, int64_t bn_size, double drop_rate)
    : drop_rate_(drop_rate) {
  norm1_ = register_module("norm1", nn::BatchNorm2d(num_input_features));
  conv1_ = register_module(
      "conv1", nn::Conv2d(nn::Conv2dOptions(num_input_features, bn_size * growth_rate, 1).stride(1).bias(false)));
  norm2_ = register_module("norm2", nn::BatchNorm2d(bn_size * growth_rate));
  conv2_ = register_module(
      "conv2", nn::Conv2d(nn::Conv2dOptions(bn_size * growth_rate, growth_rate, 3).stride(1).padding(1).bias(false)));
}

torch::Tensor DenseLayerImpl::forward(const torch::Tensor& x) {
  torch::Tensor out = conv1_->forward(torch::relu(norm1_->forward(x)));
  out = conv2_->forward(torch::relu(norm2_->forward(out)));
  if (drop_rate_ > 0) out = torch::dropout(out, drop_rate_, is_training());
  return out;
}

DenseBlockImpl::DenseBlockImpl(int num_layers, int64_t num_input_features, int64_t bn_size, int64_t growth_rate,
                               double drop_rate) {
  for (int i = 0; i < num_layers; ++i) {
    layers_.push_back(
        register_module("denselayer" + std::to_string(i + 1),
                        DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate)));
  }
}

torch::Tensor DenseBlockImpl::forward(const torch::Tensor& x) {
  std::vector<torch::Tensor> features = {x};
  features.reserve(layers_.size() + 1);
  for (auto& layer : layers_) features.push_back(layer->forward(torch::cat(features, 1)));
  return torch::cat(features, 1);
}

DenseNetImpl::DenseNetImpl(const ModelConfig& config) : ClassifierImpl(config) {
  CHECK(config.arch == Architecture::kDenseNet);
  const DenseNetOptions& o = config.densenet;
  features_ = register_module("features", nn::Sequential());
  features_->push_back(
      "conv0",
      nn::Conv2d(nn::Conv2dOptions(config.in_channels, o.num_init_features, 7).stride(2).padding(3).bias(false)));
  features_->push_back("norm0", nn::BatchNorm2d(o.num_init_features));
  features_->push_back("relu0", nn::ReLU());
  features_->push_back("pool0", nn::MaxPool2d(nn::MaxPool2dOptions(3).stride(2).padding(1)));
  int64_t num_features = o.num_init_features;
  for (size_t i = 0; i < o.block_config.size(); ++i) {
    const int num_layers = o.block_config[i];
    features_->push_back("denseblock" + std::to_string(i + 1),
                         DenseBlock(num_layers, num_features, o.bn_size, o.growth_rate, o.drop_rate));
    num_features += num_layers * o.growth_rate;
    if (i + 1 != o.block_config.size()) {
      NestedSequential transition;
      transition->push_back("norm", nn::BatchNorm2d(num_features));
      transition->push_back("relu", nn::ReLU());
      transition->push_back("conv",
                            nn::Conv2d(nn::Conv2dOptions(num_features, num_features / 2, 1).stride(1).bias(false)));
      transition->push_back("pool", nn::AvgPool2d(nn::AvgPool2dOptions(2).stride(2)));
      features_->push_back("transition" + std::to_string(i + 1), transition);
      num_features /= 2;
    }
  }
  features_->push_back("norm5", nn::BatchNorm2d(num_features));
  num_features_ = num_features;
  dropout_ = register_module("dropout", nn::Dropout(config.head_dropout));
  classifier_ = register_module("classifier", nn::Linear(num_features, config.num_outputs));

  // torchvision's initialization.
  torch::NoGradGuard no_grad;
  for (auto& module : modules(/*include_self=*/false)) {
    if (auto* conv = module->as<nn::Conv2d>()) {
      nn::init::kaiming_normal_(conv->weight, 0.0, torch::kFanIn, torch::kLeakyReLU);
    } else if (auto* bn = module->as<nn::BatchNorm2d>()) {
      nn::init::constant_(bn->weight, 1);
      nn::init::constant_(bn->bias, 0);
    } else if (auto* linear = module->as<nn::Linear>()) {
      nn::init::constant_(linear->bias, 0);
    }
  }
}

torch::Tensor DenseNetImpl::Features(const torch::Tensor& x) { return torch::relu(features_->forward(x)); }

torch::Tensor DenseNetImpl::Head(const torch::Tensor& pooled) {
  return classifier_->forward(dropout_->forward(pooled));
}

}  // namespace fedtune::model
