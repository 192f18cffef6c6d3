// `fedtune-site model import` and `fedtune-site model info`: turning a PyTorch state dict into a fedtune checkpoint
// and describing a checkpoint.
#ifndef FEDTUNE_COMMON_MODEL_MODEL_COMMAND_H_
#define FEDTUNE_COMMON_MODEL_MODEL_COMMAND_H_

#include <ostream>

#include "common/cli/command.h"

namespace fedtune::model {

// model import --state-dict F.pt|F.safetensors --arch NAME --out M.ckpt [--head-dropout 0.8] [--image-size 224]
//              [--seed 0] [--allow-missing]
// NAME is a ModelConfigForName preset (densenet121, resnext50_32x4d, mobilenet_v2, or a *_tiny variant). The
// result is a one-member ensemble, 1 input channel and 14 outputs: an RGB stem is folded and a different head is
// replaced (freshly initialized from --seed); the import report and the weights digest are printed to `out` (which must
// outlive the command). Bad input (unknown arch, unreadable or refused file, shape mismatch, missing keys):
// InvalidArgument/NotFound (exit 2); failure to write: the write error.
cli::Command MakeModelImportCommand(std::ostream& out);

// model info M.ckpt: verifies the checkpoint and prints its architectures, labels, image size, normalization,
// provenance and digest to `out`. DataLoss (exit 1) for a damaged file, InvalidArgument for a non-checkpoint.
cli::Command MakeModelInfoCommand(std::ostream& out);

}  // namespace fedtune::model

#endif  // FEDTUNE_COMMON_MODEL_MODEL_COMMAND_H_
