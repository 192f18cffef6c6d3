// Local fine-tuning at one site, as in the study (`fedtune-site finetune --config F.textproto`): split the site's
// manifest by patient (iterative stratification), fine-tune every SoloNet member of the base checkpoint with the
// resumable trainer (and the DuoNet, when the checkpoint has one, on the studies with both views), and write the
// fine-tuned checkpoint with its provenance, the split manifests (for `fedtune-site evaluate`), and per-epoch metrics
// in the site's SQLite database.
//
// Output directory layout:
//   <out_dir>/model.ckpt                the fine-tuned checkpoint (best validation epoch of every member)
//   <out_dir>/splits/{train,validation,test}.csv   the patient-level split, as CheXpert manifests
//   <out_dir>/state/member<i>.pt        resume state of member i (an interrupted run continues from here)
//   <out_dir>/state/duo.pt              resume state of the DuoNet
//   <out_dir>/site.db                   SQLite: finetune_runs, finetune_epochs
//   <out_dir>/cache/                    preprocessed images (unless cache_dir says otherwise)
#ifndef FEDTUNE_SITE_AGENT_FINETUNE_H_
#define FEDTUNE_SITE_AGENT_FINETUNE_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/cli/command.h"
#include "common/train/trainer.h"
#include "fedtune/v1/finetune.pb.h"

namespace fedtune::agent {

struct FinetuneResult {
  std::string checkpoint_path;
  std::string weights_sha256;
  std::string parent_sha256;
  std::vector<train::TrainResult> members;  // One per SoloNet member, in order.
  std::optional<train::TrainResult> duo;    // When the checkpoint has a DuoNet and two-view studies exist.
  int64_t train_images = 0;
  int64_t validation_images = 0;
  int64_t test_images = 0;
  std::string test_manifest;  // <out_dir>/splits/test.csv
};

// Runs the whole fine-tuning described by a validated config. Errors: those of the checkpoint, manifest, split,
// loaders and trainer, each naming its file; FailedPrecondition when a resume state does not match the config.
// A DuoNet is carried over unchanged (logged) when no split has studies with both views.
absl::StatusOr<FinetuneResult> RunFinetune(const v1::FinetuneConfig& config);

// fedtune-site finetune --config F.textproto [--device D] [--max-epochs N]
cli::Command MakeFinetuneCommand();

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_FINETUNE_H_
