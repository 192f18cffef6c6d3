#include "common/model/mobilenet_v2.h"

#include <torch/nn/init.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>

#include <algorithm>
#include <cmath>

#include "common/logging.h"
#include "common/model/nested_sequential.h"

namespace fedtune::model {

namespace nn = torch::nn;

namespace {

// torchvision.ops.Conv2dNormActivation with BatchNorm2d and ReLU6: Sequential(conv, bn, relu6).
NestedSequential ConvBnRelu6(int64_t in, int64_t out, int64_t kernel, int64_t stride = 1, int64_t groups = 1) {
  return NestedSequential(
      nn::Conv2d(
          nn::Conv2dOptions(in, out, kernel).stride(stride).padding((kernel - 1) / 2).groups(groups).bias(false)),
      nn::BatchNorm2d(out), nn::ReLU6());
}

}  // namespace

int64_t MakeDivisible(double v, int64_t divisor) {
  int64_t new_v = std::max<int64_t>(divisor, static_cast<int64_t>(v + divisor / 2.0) / divisor * divisor);
  if (new_v < 0.9 * v) new_v += divisor;
  return new_v;
}

InvertedResidualImpl::InvertedResidualImpl(int64_t inp, int64_t oup, int64_t stride, int64_t expand_ratio)
    : use_res_connect_(stride == 1 && inp == oup) {
  const int64_t hidden = static_cast<int64_t>(std::nearbyint(inp * static_cast<double>(expand_ratio)));
  NestedSequential layers;
  if (expand_ratio != 1) layers->push_back(ConvBnRelu6(inp, hidden, 1));
  layers->push_back(ConvBnRelu6(hidden, hidden, 3, stride, hidden));
  layers->push_back(nn::Conv2d(nn::Conv2dOptions(hidden, oup, 1).stride(1).padding(0).bias(false)));
  layers->push_back(nn::BatchNorm2d(oup));
  conv_ = register_module("conv", layers);
}

torch::Tensor InvertedResidualImpl::forward(const torch::Tensor& x) {
  return use_res_connect_ ? x + conv_->forward(x) : conv_->forward(x);
}

MobileNetV2Impl::MobileNetV2Impl(const ModelConfig& config) : ClassifierImpl(config) {
  CHECK(config.arch == Architecture::kMobileNetV2);
  const double width_mult = config.mobilenet.width_mult;
  const int64_t round = config.mobilenet.round_nearest;
  // t (expansion), c (channels), n (repeats), s (first stride).
  static constexpr int64_t kSetting[7][4] = {{1, 16, 1, 1}, {6, 24, 2, 2},  {6, 32, 3, 2}, {6, 64, 4, 2},
                                             {6, 96, 3, 1}, {6, 160, 3, 2}, {6, 320, 1, 1}};
  int64_t input_channel = MakeDivisible(32 * width_mult, round);
  const int64_t last_channel = MakeDivisible(1280 * std::max(1.0, width_mult), round);
  features_ = register_module("features", nn::Sequential());
  features_->push_back(ConvBnRelu6(config.in_channels, input_channel, 3, 2));
  for (const auto& row : kSetting) {
    const int64_t output_channel = MakeDivisible(row[1] * width_mult, round);
    for (int64_t i = 0; i < row[2]; ++i) {
      features_->push_back(InvertedResidual(input_channel, output_channel, i == 0 ? row[3] : 1, row[0]));
      input_channel = output_channel;
    }
  }
  features_->push_back(ConvBnRelu6(input_channel, last_channel, 1));
  num_features_ = last_channel;
  classifier_ = register_module(
      "classifier", nn::Sequential(nn::Dropout(config.head_dropout), nn::Linear(last_channel, config.num_outputs)));

  // torchvision's initialization.
  torch::NoGradGuard no_grad;
  for (auto& module : modules(/*include_self=*/false)) {
    if (auto* conv = module->as<nn::Conv2d>()) {
      nn::init::kaiming_normal_(conv->weight, 0.0, torch::kFanOut, torch::kLeakyReLU);
    } else if (auto* bn = module->as<nn::BatchNorm2d>()) {
      nn::init::ones_(bn->weight);
      nn::init::zeros_(bn->bias);
    } else if (auto* linear = module->as<nn::Linear>()) {
      nn::init::normal_(linear->weight, 0, 0.01);
      nn::init::zeros_(linear->bias);
    }
  }
}

torch::Tensor MobileNetV2Impl::Features(const torch::Tensor& x) { return features_->forward(x); }

torch::Tensor MobileNetV2Impl::Head(const torch::Tensor& pooled) { return classifier_->forward(pooled); }

}  // namespace fedtune::model
