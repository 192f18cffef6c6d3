// The federation's view of a model checkpoint: one flat TensorMap over all its networks, so that a delta, its
// validation and its aggregation treat the whole ensemble as one set of named tensors.
//
// Names: "member<i>/<state-dict key>" for SoloNet member i, "duo/<key>" for the DuoNet, e.g.
// "member0/features.conv0.weight", "duo/fc.bias".
//
// Thread safety: reentrant.
#ifndef FEDTUNE_COMMON_FL_MODEL_TENSORS_H_
#define FEDTUNE_COMMON_FL_MODEL_TENSORS_H_

#include "absl/status/statusor.h"
#include "common/fl/tensor_map.h"
#include "common/model/checkpoint.h"

namespace fedtune::fl {

// The checkpoint's tensors under the names above (sharing storage with the checkpoint).
TensorMap CheckpointTensors(const model::Checkpoint& checkpoint);

// A copy of `like` (metadata, configs) whose weights are `tensors` (e.g. the global model plus an aggregated delta).
// weights_sha256 is cleared (SaveCheckpoint sets it). InvalidArgument when the names, shapes or dtypes differ from
// CheckpointTensors(like) (naming the first difference).
absl::StatusOr<model::Checkpoint> CheckpointWithTensors(const model::Checkpoint& like, const TensorMap& tensors);

}  // namespace fedtune::fl

#endif  // FEDTUNE_COMMON_FL_MODEL_TENSORS_H_
