// `fedtune-site model init`: a freshly initialized SoloNet checkpoint (for training an open-source model from scratch,
// or for tests and demos with tiny architectures).
#ifndef FEDTUNE_SITE_AGENT_COMMANDS_MODEL_INIT_H_
#define FEDTUNE_SITE_AGENT_COMMANDS_MODEL_INIT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/cli/command.h"
#include "common/model/checkpoint.h"

namespace fedtune::agent {

// Builds a checkpoint whose SoloNet members are the named presets (model::ModelConfigForName; "solonet" expands to
// the study's densenet121, resnext50_32x4d, mobilenet_v2), each initialized as torchvision does from seed + index.
// `duo`, when not empty, adds a DuoNet: one preset for both views, or two ("frontal,lateral"), with a new final layer.
// InvalidArgument for an unknown name, an empty list, more than two DuoNet presets or a bad image size / dropout.
absl::StatusOr<model::Checkpoint> InitCheckpoint(const std::vector<std::string>& architectures, int image_size,
                                                 double head_dropout, uint64_t seed,
                                                 const std::vector<std::string>& duo = {});

// model init --arch A[,B,...] --out M.ckpt [--duo F[,L]] [--image-size 224] [--dropout 0.8] [--seed 0]
cli::Command MakeModelInitCommand();

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_COMMANDS_MODEL_INIT_H_
