// The fine-tuning pipeline of one site, as in the study: split the site's manifest by patient (train::LoadSiteData),
// fine-tune every SoloNet member of the base checkpoint with the resumable trainer (and the DuoNet, when the
// checkpoint has one, on the studies with both views), and write the fine-tuned checkpoint with its provenance and
// the split manifests. `fedtune-site finetune` and the federated agent's TRAIN task both run it; what they record
// on the side (the site database, heartbeat progress) they attach as FinetuneObservers.
//
// Output directory layout (config.out_dir):
//   <out_dir>/model.ckpt                the fine-tuned checkpoint (best validation epoch of every member)
//   <out_dir>/splits/{train,validation,test}.csv   the patient-level split, as CheXpert manifests
//   <out_dir>/state/member<i>.pt        resume state of member i (an interrupted run continues from here)
//   <out_dir>/state/duo.pt              resume state of the DuoNet
//   <config.cache_dir>/                 preprocessed images
//
// LibTorch's intra-op thread count is process-wide and is not set here (config.threads is for the program to apply
// with train::SetIntraOpThreads). Thread safety: one call at a time per out_dir; observers are called on the
// caller's thread.
#ifndef FEDTUNE_COMMON_TRAIN_FINETUNE_PIPELINE_H_
#define FEDTUNE_COMMON_TRAIN_FINETUNE_PIPELINE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/train/trainer.h"
#include "fedtune/v1/finetune.pb.h"

namespace fedtune::train {

struct FinetuneResult {
  std::string checkpoint_path;  // <out_dir>/model.ckpt
  std::string weights_sha256;
  std::string parent_sha256;         // The base checkpoint's weights_sha256.
  std::vector<TrainResult> members;  // One per SoloNet member, in order.
  std::optional<TrainResult> duo;    // When the checkpoint has a DuoNet and two-view studies exist.
  int64_t train_images = 0;
  int64_t validation_images = 0;
  int64_t test_images = 0;
  std::string test_manifest;  // <out_dir>/splits/test.csv
  // The effective bits stored of 16-bit PNG/TIFF samples (config.raster_bits_stored, with -1 (auto) resolved from the
  // site's images before training): 0 = the container's 16 bits.
  int raster_bits_stored = 0;
  // DP-SGD (config.dp_noise_multiplier > 0): the steps of all SoloNet members together. Every member trains on the same
  // images, one after the other, each a separate DP-SGD mechanism at the same sample rate and noise multiplier
  // (members[i].dp), so the site's accountant adds this many steps at (members[0].dp.sample_rate,
  // config.dp_noise_multiplier). 0 without DP. The DuoNet is another mechanism at its own sample rate (duo->dp, its
  // samples are study pairs): DpSgdPhases lists everything to account.
  int64_t dp_member_steps = 0;
};

// One DP-SGD mechanism of a fine-tuning, to add to the site's RDP accountant as
// privacy::RdpAccountant::AddSteps(sample_rate, noise_multiplier, steps).
struct DpSgdPhase {
  std::string network;  // "member<i>" or "duonet".
  double sample_rate = 0;
  double noise_multiplier = 0;
  int64_t steps = 0;
};

// Every DP-SGD mechanism `result` ran on the site's data, members in order then the DuoNet: one entry per trained
// network with dp.enabled and at least one step. Empty without DP. Composing all of them (RDP adds) accounts the
// whole fine-tuning, per training image. Pure.
std::vector<DpSgdPhase> DpSgdPhases(const FinetuneResult& result);

// What the pipeline tells those who watch it. Networks are named "member<i>-<architecture>" and "duonet" and train
// one after the other, members first. Every method is called on the pipeline's thread; an error stops the pipeline
// and is returned by RunFinetune. Defaults do nothing.
class FinetuneObserver {
 public:
  virtual ~FinetuneObserver() = default;
  // Once, after the split and the loaders are ready and before the first network trains. `base_digest`: the base
  // checkpoint's weights_sha256.
  virtual absl::Status OnStart(const std::string& base_digest) { return absl::OkStatus(); }
  // When `network` resumes from its state file: the epochs it completed before (EpochObserver::OnResume).
  virtual absl::Status OnResume(const std::string& network, const std::vector<EpochRecord>& history) {
    return absl::OkStatus();
  }
  // Each new completed epoch of `network`.
  virtual absl::Status OnEpoch(const std::string& network, const EpochRecord& record) { return absl::OkStatus(); }
  // Once, after the fine-tuned checkpoint is written.
  virtual absl::Status OnFinish(const FinetuneResult& result) { return absl::OkStatus(); }
};

// Runs the whole fine-tuning a config describes. `config` must be valid (ValidateFinetuneConfig: InvalidArgument
// naming the field otherwise). Errors: those of the checkpoint, manifest, split, loaders and trainer, each naming its
// file; FailedPrecondition when the split leaves no training or validation image, or when a resume state does not
// match the config; those of the observers. config.resume = false removes earlier resume states first. A DuoNet is
// carried over unchanged (logged) when no split has studies with both views. `observers` (not owned) must outlive
// the call. With config.dp_noise_multiplier > 0 every network trains with DP-SGD (common/train/dp_sgd.h); the result
// says what was spent (FinetuneResult::dp_member_steps, DpSgdPhases), and the loss's positive weights are 1 (the
// training split's label counts would otherwise reach the model without noise). `proximal_anchor`, when not empty (and
// config.proximal_mu > 0), is a checkpoint with the base model's architectures that the proximal term pulls toward
// instead of the base model: mu/2 * ||w - w_anchor||^2 (Ditto's personal model trains from its previous weights toward
// the round's global model); its loader's errors, and InvalidArgument when its networks differ from the base model's.
absl::StatusOr<FinetuneResult> RunFinetune(const v1::FinetuneConfig& config,
                                           absl::Span<FinetuneObserver* const> observers = {},
                                           const std::string& proximal_anchor = "");

}  // namespace fedtune::train

#endif  // FEDTUNE_COMMON_TRAIN_FINETUNE_PIPELINE_H_
