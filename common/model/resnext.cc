#include "common/model/resnext.h"

#include <torch/nn/functional/activation.h>
#include <torch/nn/init.h>

#include "common/logging.h"

namespace fedtune::model {

namespace nn = torch::nn;

BottleneckImpl::BottleneckImpl(int64_t inplanes, int64_t planes, int64_t stride, bool downsample, int64_t groups,
                               int64_t base_width) {
  const int64_t width = static_cast<int64_t>(planes * (base_width / 64.0)) * groups;
  conv1_ = register_module("conv1", nn::Conv2d(nn::Conv2dOptions(inplanes, width, 1).stride(1).bias(false)));
  bn1_ = register_module("bn1", nn::BatchNorm2d(width));
  conv2_ = register_module(
      "conv2", nn::Conv2d(nn::Conv2dOptions(width, width, 3).stride(stride).padding(1).groups(groups).bias(false)));
  bn2_ = register_module("bn2", nn::BatchNorm2d(width));
  conv3_ = register_module("conv3", nn::Conv2d(nn::Conv2dOptions(width, planes * kExpansion, 1).stride(1).bias(false)));
  bn3_ = register_module("bn3", nn::BatchNorm2d(planes * kExpansion));
  if (downsample) {
    downsample_ = register_module(
        "downsample",
        NestedSequential(nn::Conv2d(nn::Conv2dOptions(inplanes, planes * kExpansion, 1).stride(stride).bias(false)),
                         nn::BatchNorm2d(planes * kExpansion)));
  }
}

torch::Tensor BottleneckImpl::forward(const torch::Tensor& x) {
  torch::Tensor out = torch::relu(bn1_->forward(conv1_->forward(x)));
  out = torch::relu(bn2_->forward(conv2_->forward(out)));
  out = bn3_->forward(conv3_->forward(out));
  out += downsample_ ? downsample_->forward(x) : x;
  return torch::relu(out);
}

ResNeXtImpl::ResNeXtImpl(const ModelConfig& config) : ClassifierImpl(config) {
  CHECK(config.arch == Architecture::kResNeXt);
  const ResNeXtOptions& o = config.resnext;
  CHECK_EQ(o.layers.size(), 4u);
  int64_t inplanes = o.base_planes;
  conv1_ = register_module(
      "conv1", nn::Conv2d(nn::Conv2dOptions(config.in_channels, inplanes, 7).stride(2).padding(3).bias(false)));
  bn1_ = register_module("bn1", nn::BatchNorm2d(inplanes));
  maxpool_ = register_module("maxpool", nn::MaxPool2d(nn::MaxPool2dOptions(3).stride(2).padding(1)));
  for (int i = 0; i < 4; ++i) {
    const int64_t planes = static_cast<int64_t>(o.base_planes) << i;
    const int64_t stride = i == 0 ? 1 : 2;
    nn::Sequential layer;
    for (int b = 0; b < o.layers[i]; ++b) {
      const bool first = b == 0;
      layer->push_back(Bottleneck(inplanes, planes, first ? stride : 1,
                                  first && (stride != 1 || inplanes != planes * BottleneckImpl::kExpansion), o.groups,
                                  o.width_per_group));
      inplanes = planes * BottleneckImpl::kExpansion;
    }
    layers_[i] = register_module("layer" + std::to_string(i + 1), layer);
  }
  num_features_ = inplanes;
  dropout_ = register_module("dropout", nn::Dropout(config.head_dropout));
  fc_ = register_module("fc", nn::Linear(num_features_, config.num_outputs));

  // torchvision's initialization (the Linear keeps PyTorch's default, as in torchvision).
  torch::NoGradGuard no_grad;
  for (auto& module : modules(/*include_self=*/false)) {
    if (auto* conv = module->as<nn::Conv2d>()) {
      nn::init::kaiming_normal_(conv->weight, 0.0, torch::kFanOut, torch::kReLU);
    } else if (auto* bn = module->as<nn::BatchNorm2d>()) {
      nn::init::constant_(bn->weight, 1);
      nn::init::constant_(bn->bias, 0);
    }
  }
}

torch::Tensor ResNeXtImpl::Features(const torch::Tensor& x) {
  torch::Tensor out = maxpool_->forward(torch::relu(bn1_->forward(conv1_->forward(x))));
  for (auto& layer : layers_) out = layer->forward(out);
  return out;
}

torch::Tensor ResNeXtImpl::Head(const torch::Tensor& pooled) { return fc_->forward(dropout_->forward(pooled)); }

}  // namespace fedtune::model
