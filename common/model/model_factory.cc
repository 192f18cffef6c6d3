#include "common/model/model_factory.h"

#include <torch/nn/functional/pooling.h>

#include "absl/strings/str_cat.h"
#include "common/model/densenet.h"
#include "common/model/mobilenet_v2.h"
#include "common/model/resnext.h"
#include "common/status_macros.h"

namespace fedtune::model {

torch::Tensor ClassifierImpl::Pool(const torch::Tensor& features) {
  return torch::adaptive_avg_pool2d(features, {1, 1}).flatten(1);
}

absl::StatusOr<Classifier> CreateModel(const ModelConfig& config) {
  RETURN_IF_ERROR(ValidateModelConfig(config));
  try {
    switch (config.arch) {
      case Architecture::kDenseNet:
        return Classifier(std::make_shared<DenseNetImpl>(config));
      case Architecture::kResNeXt:
        return Classifier(std::make_shared<ResNeXtImpl>(config));
      case Architecture::kMobileNetV2:
        return Classifier(std::make_shared<MobileNetV2Impl>(config));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("building ", ArchitectureName(config.arch), ": ", e.what_without_backtrace()));
  }
  return absl::InternalError("unhandled architecture");
}

int64_t CountParameters(const torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters(/*recurse=*/true)) n += p.numel();
  return n;
}

}  // namespace fedtune::model
