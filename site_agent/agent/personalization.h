// The site's side of a run's personalization (federation.proto, Personalization; common/fl/personalization.h says
// which tensors each strategy keeps local): the state a site keeps between rounds, the model a TRAIN round starts
// from, what its update carries, and the adapted model.
//
// Files, under the run dir <work_dir>/runs/<run>:
//   local_bn.bin                     FEDBN/SILOBN: the site's own tensors (FEDBN: every BatchNorm tensor; SILOBN: the
//                                    BatchNorm statistics) after its last fine-tuning, a fp32 TensorBundle written
//                                    atomically. Never uploaded.
//   round-<n>-<a>/local_bn.before.bin  the kept tensors round n started from (written once, before its fine-tuning),
//   round-<n>-<a>/start.ckpt           and the model it fine-tuned: the global model with those tensors put back.
//                                    A restarted agent (or a later attempt of the same round) starts from the same
//                                    tensors, so its fine-tuning resumes and its update is the same bytes.
//   personal.ckpt                    DITTO: the site's personal model after its last round (atomic).
//   round-<n>-<a>/personal.start.ckpt  DITTO: the personal model round n trains from (copied once).
//   round-<n>-<a>/personal/          DITTO: that round's personal fine-tuning (train::RunFinetune's out_dir).
//
// Thread safety: reentrant (one task at a time uses a run's files: the agent's task thread).
#ifndef FEDTUNE_SITE_AGENT_AGENT_PERSONALIZATION_H_
#define FEDTUNE_SITE_AGENT_AGENT_PERSONALIZATION_H_

#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/fl/tensor_map.h"
#include "common/model/checkpoint.h"
#include "fedtune/v1/federation.pb.h"

namespace fedtune::agent {

// The run dir's files above.
struct PersonalFiles {
  std::string local_tensors;   // <run_dir>/local_bn.bin
  std::string personal_model;  // <run_dir>/personal.ckpt
};
PersonalFiles PersonalFilesOf(const std::string& run_dir);

// Where one TRAIN round (attempt) keeps its files: its round dir, and the round dirs of the same round's earlier
// attempts (latest first), whose start a later attempt reuses.
struct RoundDirs {
  std::string run_dir;
  std::string round_dir;
  std::vector<std::string> earlier_attempts;
};

// The model a TRAIN round fine-tunes and what of it is shared.
struct RoundStart {
  v1::Personalization personalization = v1::PERSONALIZATION_NONE;
  std::string path;              // The checkpoint to fine-tune (the global model's file for NONE and DITTO).
  model::Checkpoint checkpoint;  // Its contents.
  std::set<std::string> local;   // The tensors that stay at the site (empty for NONE and DITTO).
  int64_t shared_tensors = 0;    // Counts for the log line.
  int64_t local_values = 0;
};

// The start of a TRAIN round under `personalization` (already read with federation::ReadPersonalization):
//  - NONE, DITTO: the global model itself;
//  - FEDBN, SILOBN: the global model with the site's kept tensors put back: those this round (or an earlier attempt
//    of it) started from when recorded (local_bn.before.bin), else local_bn.bin, else (the site's first round of the
//    run) the global's own. The tensors are recorded in <round_dir>/local_bn.before.bin and the model written to
//    <round_dir>/start.ckpt, both atomically.
// Errors: InvalidArgument when `global` does not build (fl::LocalTensorNames); DataLoss naming the file when a kept
// bundle is unreadable or does not fit the global model (other names, shapes or dtypes); io errors naming the path.
absl::StatusOr<RoundStart> PrepareRoundStart(v1::Personalization personalization, const model::Checkpoint& global,
                                             const std::string& global_path, const RoundDirs& dirs);

// FEDBN, SILOBN: after the round's fine-tuning, keeps the fine-tuned model's local tensors (start.local) in
// local_bn.bin (atomic). Nothing for NONE and DITTO. Errors: InvalidArgument when `tuned` lacks one, io errors.
absl::Status KeepLocalTensors(const RoundStart& start, const model::Checkpoint& tuned, const std::string& run_dir);

// The round's delta: tuned - start over the shared tensors only (every tensor for NONE and DITTO). InvalidArgument
// as fl::ComputeDelta when the models differ in schema.
absl::StatusOr<fl::TensorMap> SharedDelta(const RoundStart& start, const model::Checkpoint& tuned);

// FEDBN, SILOBN: the adapted model of the final evaluation, written atomically to `adapted_path`: the final global
// model (`global_path`) with the site's kept tensors (local_bn.bin). Returns its weights digest, or nullopt when the
// site kept none (it never trained in the run) or for NONE and DITTO (nothing written). Errors: those of the
// checkpoint reader and writer; DataLoss naming local_bn.bin when it does not fit the global model.
absl::StatusOr<std::optional<std::string>> WriteFinalAdapted(v1::Personalization personalization,
                                                             const std::string& global_path, const std::string& run_dir,
                                                             const std::string& adapted_path);

// DITTO: the personal model a round trains from, as a file that stays the same for every attempt and restart of the
// round: an earlier attempt's or this round dir's personal.start.ckpt when there is one; otherwise personal.ckpt (or,
// before the site's first round of the run, the global model) copied to <round_dir>/personal.start.ckpt. io errors.
absl::StatusOr<std::string> PersonalStart(const RoundDirs& dirs, const std::string& global_path);

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_AGENT_PERSONALIZATION_H_
