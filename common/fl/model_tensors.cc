#include "common/fl/model_tensors.h"

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace fedtune::fl {

TensorMap CheckpointTensors(const model::Checkpoint& checkpoint) {
  TensorMap out;
  for (size_t i = 0; i < checkpoint.members.size(); ++i) {
    for (const auto& [key, tensor] : checkpoint.members[i].weights) out[absl::StrCat("member", i, "/", key)] = tensor;
  }
  if (checkpoint.duo.has_value()) {
    for (const auto& [key, tensor] : checkpoint.duo->weights) out[absl::StrCat("duo/", key)] = tensor;
  }
  return out;
}

absl::StatusOr<model::Checkpoint> CheckpointWithTensors(const model::Checkpoint& like, const TensorMap& tensors) {
  RETURN_IF_ERROR(CheckSameSchema(CheckpointTensors(like), tensors, "model tensors"));
  model::Checkpoint out = like;
  out.weights_sha256.clear();
  for (size_t i = 0; i < out.members.size(); ++i) {
    for (auto& [key, tensor] : out.members[i].weights) tensor = tensors.at(absl::StrCat("member", i, "/", key));
  }
  if (out.duo.has_value()) {
    for (auto& [key, tensor] : out.duo->weights) tensor = tensors.at(absl::StrCat("duo/", key));
  }
  return out;
}

}  // namespace fedtune::fl
