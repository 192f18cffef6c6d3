// Architectures and their options: the light, torch-free description of a model. Everything that names or
// configures a model (checkpoints, configs, the CLI) uses this header; only code that builds modules includes the
// LibTorch headers (classifier.h, model_factory.h).
//
// The three architectures follow torchvision 0.14 layer for layer. The full-size defaults below ARE the torchvision
// models (densenet121, resnext50_32x4d, mobilenet_v2); scaled variants come from the same code with other options
// (see ModelConfigForName for the named presets).
#ifndef FEDTUNE_COMMON_MODEL_MODEL_CONFIG_H_
#define FEDTUNE_COMMON_MODEL_MODEL_CONFIG_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fedtune::model {

enum class Architecture { kDenseNet, kResNeXt, kMobileNetV2 };

// "densenet", "resnext", "mobilenet_v2".
const char* ArchitectureName(Architecture arch);
// Inverse of ArchitectureName. InvalidArgument naming the value otherwise.
absl::StatusOr<Architecture> ParseArchitecture(absl::string_view name);

// torchvision.models.DenseNet. Defaults: DenseNet-121.
struct DenseNetOptions {
  int growth_rate = 32;                             // Channels added by each dense layer.
  std::vector<int> block_config = {6, 12, 24, 16};  // Dense layers per block.
  int num_init_features = 64;                       // Channels of the stem convolution.
  int bn_size = 4;                                  // Bottleneck width = bn_size * growth_rate.
  double drop_rate = 0.0;                           // Dropout after each dense layer (torchvision's drop_rate).
};

// torchvision.models.ResNet with Bottleneck blocks (ResNeXt when groups > 1). Defaults: ResNeXt50-32x4d.
struct ResNeXtOptions {
  std::vector<int> layers = {3, 4, 6, 3};  // Bottleneck blocks in layer1..layer4 (exactly four entries).
  int groups = 32;                         // Cardinality of the 3x3 convolutions.
  int width_per_group = 4;                 // torchvision's width_per_group.
  // Stem channels and planes of layer1 (torchvision fixes 64; layer i has base_planes * 2^(i-1) planes).
  // Smaller values give narrow test variants; 64 is torchvision's model.
  int base_planes = 64;
};

// torchvision.models.MobileNetV2. Defaults: mobilenet_v2.
struct MobileNetV2Options {
  double width_mult = 1.0;  // Channel multiplier (e.g. 0.25 for a tiny model).
  int round_nearest = 8;    // Channels are rounded to multiples of this.
};

// A complete single-backbone model: architecture, its options, input channels, outputs and head dropout.
struct ModelConfig {
  Architecture arch = Architecture::kDenseNet;
  DenseNetOptions densenet;      // Used when arch == kDenseNet.
  ResNeXtOptions resnext;        // Used when arch == kResNeXt.
  MobileNetV2Options mobilenet;  // Used when arch == kMobileNetV2.
  int in_channels = 1;           // Grayscale radiographs.
  int num_outputs = 14;          // The CheXpert labels.
  // Dropout probability applied to the pooled features right before the final linear layer (the study used 0.8).
  // It has no parameters, so state-dict keys are unaffected.
  double head_dropout = 0.8;
};

// Named presets (ImageNet-size torchvision architectures and tiny variants for tests and demos):
//   "densenet121"        torchvision densenet121
//   "resnext50_32x4d"    torchvision resnext50_32x4d
//   "mobilenet_v2"       torchvision mobilenet_v2
//   "densenet_tiny"      growth 8, blocks (2,2,2,2), 16 stem channels, bn_size 2
//   "resnext_tiny"       layers (1,1,1,1), groups 4, width_per_group 4, base_planes 16
//   "mobilenet_v2_tiny"  width_mult 0.25
// All with 1 input channel, 14 outputs and head dropout 0.8. InvalidArgument (listing the names) otherwise.
absl::StatusOr<ModelConfig> ModelConfigForName(absl::string_view name);

// Checks option ranges (positive widths, four ResNeXt stages, dropout in [0, 1), ...). InvalidArgument naming the
// field otherwise.
absl::Status ValidateModelConfig(const ModelConfig& config);

// JSON form used in checkpoints: {"arch": "densenet", "in_channels": 1, "num_outputs": 14, "head_dropout": 0.8,
// "densenet": {"growth_rate": 32, ...}} (only the options of `arch` are written). Parsing fills missing fields with
// the defaults above and validates; InvalidArgument naming the field on a bad value.
std::string ModelConfigToJson(const ModelConfig& config);
absl::StatusOr<ModelConfig> ModelConfigFromJson(absl::string_view json);

}  // namespace fedtune::model

#endif  // FEDTUNE_COMMON_MODEL_MODEL_CONFIG_H_
