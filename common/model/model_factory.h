// Builds classifiers from a ModelConfig, and counts their parameters.
#ifndef FEDTUNE_COMMON_MODEL_MODEL_FACTORY_H_
#define FEDTUNE_COMMON_MODEL_MODEL_FACTORY_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "common/model/classifier.h"
#include "common/model/model_config.h"

namespace fedtune::model {

// Builds a freshly initialized model (torchvision's initialization for the architecture) on the CPU in train()
// mode. Initialization draws from LibTorch's global generator: seed it (torch::manual_seed) for reproducibility.
// InvalidArgument when the config does not validate (see ValidateModelConfig).
absl::StatusOr<Classifier> CreateModel(const ModelConfig& config);

// Number of scalar parameters (not buffers) of a module.
int64_t CountParameters(const torch::nn::Module& module);

}  // namespace fedtune::model

#endif  // FEDTUNE_COMMON_MODEL_MODEL_FACTORY_H_
