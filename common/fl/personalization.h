// Which tensors of a model a personalization strategy (federation.proto, Personalization) keeps at the sites and
// which it shares: the BatchNorm tensors of a checkpoint, found from the networks' own modules (every
// torch::nn::BatchNorm{1,2,3}d of the SoloNet members and the DuoNet the checkpoint's configs build), not from their
// names. Names are model_tensors.h's: "member<i>/<key>", "duo/<key>".
//
//   personalization   kept at the site (never in a delta)                  shared (deltas, aggregation)
//   NONE, DITTO       nothing                                              every tensor
//   FEDBN             every BatchNorm tensor (weight, bias, running_mean,   the others
//                     running_var, num_batches_tracked)
//   SILOBN            BatchNorm statistics (running_mean, running_var,     the others (BatchNorm weight, bias
//                     num_batches_tracked)                                 included)
// PERSONALIZATION_UNSPECIFIED reads as NONE.
//
// Thread safety: reentrant. Building the networks draws their initialization from LibTorch's global CPU generator;
// its state is saved and restored, so a caller's seeded sequence is not disturbed (but do not run this while another
// thread draws from that generator).
#ifndef FEDTUNE_COMMON_FL_PERSONALIZATION_H_
#define FEDTUNE_COMMON_FL_PERSONALIZATION_H_

#include <map>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "common/fl/tensor_map.h"
#include "common/model/checkpoint.h"
#include "fedtune/v1/federation.pb.h"

namespace fedtune::fl {

enum class BatchNormRole {
  kAffine,      // weight, bias (parameters of the BatchNorm module).
  kStatistics,  // running_mean, running_var, num_batches_tracked (its buffers).
};

// Every BatchNorm tensor of the checkpoint's networks, by name, with its role. InvalidArgument when a member or DuoNet
// config does not build (naming it), or when the checkpoint lacks a BatchNorm tensor its networks have (naming it).
absl::StatusOr<std::map<std::string, BatchNormRole>> BatchNormTensors(const model::Checkpoint& checkpoint);

// The tensors `personalization` keeps at the site (table above). InvalidArgument for an unknown personalization
// value, and BatchNormTensors' errors.
absl::StatusOr<std::set<std::string>> LocalTensorNames(const model::Checkpoint& checkpoint,
                                                       v1::Personalization personalization);

// Every tensor of the checkpoint (CheckpointTensors' names) minus LocalTensorNames. Same errors.
absl::StatusOr<std::set<std::string>> SharedTensorNames(const model::Checkpoint& checkpoint,
                                                        v1::Personalization personalization);

// True when `personalization` keeps some tensors at the site (FEDBN, SILOBN): then deltas are partial bundles.
bool KeepsTensorsLocal(v1::Personalization personalization);

// The entries of `tensors` whose names are in `names` (sharing storage); names absent from `tensors` are ignored.
TensorMap SelectTensors(const TensorMap& tensors, const std::set<std::string>& names);

// The entries of `tensors` whose names are NOT in `names` (sharing storage).
TensorMap DropTensors(const TensorMap& tensors, const std::set<std::string>& names);

// A copy of `checkpoint` with the tensors of `replacement` put in place of its namesakes (e.g. a global model with a
// site's own BatchNorm tensors). weights_sha256 is cleared. InvalidArgument when a name of `replacement` is not a
// tensor of the checkpoint, or its shape or dtype differs (naming it); `what` names `replacement` in messages.
absl::StatusOr<model::Checkpoint> ReplaceTensors(const model::Checkpoint& checkpoint, const TensorMap& replacement,
                                                 absl::string_view what);

}  // namespace fedtune::fl

#endif  // FEDTUNE_COMMON_FL_PERSONALIZATION_H_
