// fedtune's model checkpoint: the weights of an ensemble (SoloNet members and an optional DuoNet) plus metadata
// (architectures and options, label names, image size, normalization, provenance) and a SHA-256 of the weights.
//
// File format: a torch.save-compatible zip archive (see torch_archive.h) whose pickle is a plain dict
//   {"format": "fedtune.checkpoint", "version": 1,
//    "metadata": <JSON string, see below>,
//    "members": [<state dict of member 0>, <state dict of member 1>, ...],   # dicts of tensors
//    "duo": <state dict of the DuoNet>}                                      # only when there is one
// so that a researcher loads member 0's weights in Python with ONE call:
//     state_dict = torch.load("model.ckpt")["members"][0]
// and then `model.load_state_dict(state_dict)` on the torchvision architecture built with a 1-channel stem and
// 14 outputs (the JSON metadata names the architecture and options: json.loads(torch.load(f)["metadata"])).
//
// The metadata JSON: {"labels": [...], "image_size": 224, "normalization": {"mean": [...], "std": [...]},
//   "provenance": {"parent_digest", "source", "data_summary", "epochs", "created_at"},
//   "members": [<ModelConfig JSON>, ...], "duo": {"frontal": <ModelConfig>, "lateral": <ModelConfig>,
//   "num_outputs": 14, "head_dropout": 0.8} (or absent), "weights_sha256": "<64 hex digits>"}.
//
// The digest is SHA-256 over, for each member i in order then the DuoNet ("duo"), and each key in byte order:
//   "<section>\n<key>\n<dtype>\n<d0,d1,...>\n" followed by the tensor's raw little-endian bytes (contiguous),
// where section is "member<i>" or "duo" and dtype a safetensors name (F32, F16, BF16, F64, I64, I32, I16, I8, U8,
// BOOL). tests/common/model/checkpoint_reader.py recomputes it in Python.
//
// Thread safety: the functions are reentrant.
#ifndef FEDTUNE_COMMON_MODEL_CHECKPOINT_H_
#define FEDTUNE_COMMON_MODEL_CHECKPOINT_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/model/model_config.h"
#include "common/model/state_dict.h"

namespace fedtune::model {

struct Provenance {
  std::string parent_digest;  // weights_sha256 of the checkpoint this one was trained from; empty for an import.
  std::string source;         // Where the weights came from, e.g. "import densenet121.pt" or "finetune site-a".
  std::string data_summary;   // Free text (or JSON) describing the training data, e.g. counts per split.
  int epochs = 0;             // Training epochs behind these weights (0 for an import).
  std::string created_at;     // ISO 8601 UTC time, set by the writer's caller.
};

struct CheckpointMetadata {
  std::vector<std::string> labels;  // Output names in order; default: the 14 CheXpert labels.
  int image_size = 224;             // Square input side in pixels.
  // Per-channel normalization after scaling 8-bit pixels by 1/255: (x - mean) / std. Default: ImageNet's mean and
  // std averaged over RGB, which suits a stem folded from an RGB model.
  std::vector<double> mean = {0.449};
  std::vector<double> std = {0.226};
  Provenance provenance;
  CheckpointMetadata();
};

// Weights of one single-backbone member.
struct MemberWeights {
  ModelConfig config;
  StateDict weights;  // Keys as the model's (torchvision's) state dict.
};

// Weights of a DuoNet (see ensemble.h): keys "frontal.*", "lateral.*", "fc.weight", "fc.bias".
struct DuoWeights {
  ModelConfig frontal;
  ModelConfig lateral;
  int num_outputs = 14;
  double head_dropout = 0.8;
  StateDict weights;
};

struct Checkpoint {
  CheckpointMetadata metadata;
  std::vector<MemberWeights> members;  // At least one.
  std::optional<DuoWeights> duo;
  std::string weights_sha256;  // Set by LoadCheckpoint / SaveCheckpoint.
};

// The weights digest described above (64 lowercase hex digits).
std::string WeightsDigest(const Checkpoint& checkpoint);

// Writes the checkpoint atomically (temporary file, fsync, rename) and returns the weights digest, which it also
// stores in `checkpoint->weights_sha256`. InvalidArgument when there are no members, a member config is invalid,
// or a tensor dtype cannot be stored; NotFound when the directory does not exist; Internal on I/O errors.
absl::StatusOr<std::string> SaveCheckpoint(Checkpoint* checkpoint, const std::string& path);

// Reads and verifies a checkpoint. NotFound/PermissionDenied when unreadable; InvalidArgument when the file is not
// a fedtune checkpoint (wrong format/version, malformed metadata naming the field, member count mismatch);
// DataLoss when the archive is corrupt, exceeds a bound of torch_archive.h, or the weights do not match the stored
// digest; ResourceExhausted when memory runs out. Messages name the file.
absl::StatusOr<Checkpoint> LoadCheckpoint(const std::string& path);

// A human-readable description (architectures, parameter counts, labels, image size, normalization,
// provenance, digest) for `fedtune-site model info`.
std::string CheckpointSummary(const Checkpoint& checkpoint);

}  // namespace fedtune::model

#endif  // FEDTUNE_COMMON_MODEL_CHECKPOINT_H_
