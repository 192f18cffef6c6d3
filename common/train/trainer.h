// Local fine-tuning of one classifier, as in the study: SGD (lr 0.001, momentum configurable), masked and
// positive-weighted BCE on soft targets, augmentation on the training split only (the loader's job), early stopping
// after `patience` epochs without validation-BCE improvement, best weights kept. Runs on CPU or CUDA; optional bf16
// autocast on CUDA. Resumable: after every epoch the full state (weights, best weights, optimizer momentum, early
// stopping counters, history) is written atomically, and a restarted Fit continues from the last completed epoch with
// the same result as an uninterrupted run for a fixed seed (dropout is reseeded from (seed, epoch); the loader's order
// and augmentation are functions of (seed, epoch)).
//
// With dp_noise_multiplier > 0 training is DP-SGD (common/train/dp_sgd.h): Poisson-sampled batches of expected size
// train.batch_size(), privacy::PlanDpSgd's steps per epoch, per-sample clipping, Gaussian noise, frozen BatchNorm.
// Its noise and sampling are secret (not functions of the seed), so a resumed DP run continues from the last completed
// epoch but is not bit-identical to an uninterrupted one. TrainResult::dp says what the site's accountant must add.
#ifndef FEDTUNE_COMMON_TRAIN_TRAINER_H_
#define FEDTUNE_COMMON_TRAIN_TRAINER_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/loader/batch_loader.h"
#include "common/model/classifier.h"
#include "common/model/ensemble.h"

namespace fedtune::train {

struct TrainerOptions {
  double learning_rate = 0.001;  // The study's SGD learning rate.
  double momentum = 0.9;         // SGD momentum. Must be in [0, 1).
  double weight_decay = 0.0;     // L2 penalty of torch.optim.SGD. Must be >= 0.
  int max_epochs = 100;          // Upper bound on epochs. Must be >= 1.
  int patience = 10;             // The study's early-stopping patience. Must be >= 1.
  std::string device = "auto";   // "auto" (CUDA when LibTorch sees one, else CPU), "cpu", "cuda" or "cuda:N".
  bool mixed_precision = false;  // bf16 autocast on CUDA; ignored (with a log line) on CPU.
  uint64_t seed = 0;             // Seeds dropout per epoch (the loaders are seeded separately).
  // FedProx proximal term mu/2 * ||w - w_start||^2 (0 = plain local training). Must be >= 0.
  double proximal_mu = 0.0;
  // The point the proximal term pulls toward, by parameter name (the module's named_parameters() keys, i.e. its
  // state-dict keys): mu/2 * ||w - anchor||^2. Empty (default): the weights training starts from (FedProx). Ditto
  // sets it to the round's global model while training a site's personal model from that model's previous weights.
  // When not empty (and proximal_mu > 0) it must hold every parameter with its shape: InvalidArgument naming the
  // first one missing or different. Tensors may be on any device (copied to the training device).
  std::map<std::string, at::Tensor> proximal_anchor;
  // Resume file: when set, the state after each epoch is written here, and an existing file is resumed from (it must
  // come from the same model shape and options, FailedPrecondition otherwise). Empty: no resume.
  std::string state_path;
  std::string name = "model";  // Used in progress and log lines.
  // DP-SGD's noise multiplier sigma (dp_sgd.h). 0 (default): ordinary training. Otherwise finite and in
  // [kMinDpNoiseMultiplier, kMaxDpNoiseMultiplier] = [0.1, 1e4]; mixed_precision must then be false.
  double dp_noise_multiplier = 0.0;
  double dp_clip_norm = 1.0;  // DP-SGD's per-sample clipping norm C; finite, in (0, 1e6]. Used only with DP.
  bool progress = true;       // A live progress line on a terminal (stderr); plain log lines otherwise.
};

struct EpochRecord {
  int64_t epoch = 0;             // 0-based.
  double train_loss = 0;         // Mean masked BCE over the epoch's training elements.
  double validation_loss = 0;    // Mean masked BCE on the validation loader (eval mode, no augmentation).
  double images_per_second = 0;  // Training throughput of the epoch.
  double seconds = 0;            // Wall time of the epoch, validation included.
  bool improved = false;         // New best validation loss (these weights kept).
};

// Receives each completed epoch (for example to store it in the site's SQLite database, or to report progress).
// Called on Fit's thread; an error stops training and is returned by Fit.
class EpochObserver {
 public:
  virtual ~EpochObserver() = default;
  // Once, before any new epoch, when Fit resumes from a state file: the epochs completed before (not passed to
  // OnEpoch again). Not called when nothing was resumed. Default: nothing.
  virtual absl::Status OnResume(const std::vector<EpochRecord>& history) { return absl::OkStatus(); }
  virtual absl::Status OnEpoch(const EpochRecord& record) = 0;
};

// The DP-SGD mechanism one Fit ran on its training images: what the site's RDP accountant adds
// (privacy::RdpAccountant::AddSteps(sample_rate, noise_multiplier, steps)).
struct DpSgdSummary {
  bool enabled = false;         // False: ordinary training (the other fields are 0).
  double sample_rate = 0;       // q = min(1, batch size / training images) (privacy::PlanDpSgd).
  double noise_multiplier = 0;  // sigma.
  double clip_norm = 0;         // C.
  int64_t steps_per_epoch = 0;  // privacy::PlanDpSgd's max(1, round(1 / q)).
  // Steps taken: completed epochs (resumed ones included) * steps_per_epoch; fewer than the plan's max_steps when
  // early stopping ended training. Steps of an epoch that did not complete (an error, a crash) are not counted:
  // nothing trained in them is kept (a resumed run redoes the epoch from the last saved state with fresh noise).
  int64_t steps = 0;
};

struct TrainResult {
  std::vector<EpochRecord> history;  // Every epoch, resumed ones included.
  int64_t best_epoch = -1;
  double best_validation_loss = 0;
  bool stopped_early = false;
  int64_t resumed_after_epoch = -1;  // Last epoch found in the state file, or -1.
  int64_t train_samples = 0;
  std::string device;  // Where training ran, e.g. "cpu", "cuda:0".
  DpSgdSummary dp;     // DP-SGD's parameters and steps (enabled false without DP).
};

// "auto" | "cpu" | "cuda" | "cuda:N". InvalidArgument for another spelling, FailedPrecondition for CUDA when
// LibTorch has no CUDA device (a CPU build, or no GPU).
absl::StatusOr<c10::Device> ResolveDevice(const std::string& spec);

// Fine-tunes `model` in place; on return it holds the best epoch's weights and is on the training device in eval
// mode. pos_weight: [14] (or undefined for ones). InvalidArgument for bad options (with DP: also those
// privacy::PlanDpSgd refuses); FailedPrecondition when the loss or, with DP, a sample's gradient norm stops being
// finite (divergence: the message suggests a lower learning rate); errors of the loaders (an unreadable image under
// ErrorPolicy::kFail) and of the observer stop training and are returned; a c10::Error (for example CUDA out of memory)
// becomes Internal/ResourceExhausted with its message.
absl::StatusOr<TrainResult> Fit(model::Classifier model, loader::BatchLoader& train, loader::BatchLoader& validation,
                                const at::Tensor& pos_weight, const TrainerOptions& options,
                                EpochObserver* observer = nullptr);

// Fine-tunes a DuoNet the same way, on two-view loaders (loader::PairedSamplesFromManifest): the frontal and lateral
// backbones and the new final layer are all trained. Same contract as Fit; under DP-SGD one sample is one pair, and
// the backbones' own heads (unused by the DuoNet's forward pass) are left unchanged instead of receiving noise.
absl::StatusOr<TrainResult> FitDuo(model::DuoNet duo, loader::BatchLoader& train, loader::BatchLoader& validation,
                                   const at::Tensor& pos_weight, const TrainerOptions& options,
                                   EpochObserver* observer = nullptr);

// Mean masked BCE of `model` over one pass of `data` (eval mode, no gradients, epoch 0 of the loader).
absl::StatusOr<double> EvaluateLoss(model::Classifier model, loader::BatchLoader& data, const at::Tensor& pos_weight,
                                    const c10::Device& device);

}  // namespace fedtune::train

#endif  // FEDTUNE_COMMON_TRAIN_TRAINER_H_
