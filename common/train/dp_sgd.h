// DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy") for the local trainer: the clipped and noised
// gradient of one Poisson-sampled batch, the Poisson sampling itself, and the secret randomness both draw from.
// Fit (trainer.h) runs it when TrainerOptions::dp_noise_multiplier > 0; the number of steps and the sample rate come
// from privacy::PlanDpSgd (common/privacy/dp_plan.h), the same plan the site's privacy budget accounts.
//
// One step, as Opacus does it:
//   - Poisson sampling: each training image enters the step's batch independently with probability q, so batches
//     have q*N images on average and may be empty (the step is then noise only).
//   - Per-sample gradients by MICRO-BATCHING: each sample's forward and backward run on their own (a batch of one),
//     which is exact for any architecture and costs no extra memory. (LibTorch 1.13's C++ modules have no forward
//     hooks, so Opacus's per-layer gradient samplers cannot be attached; with frozen BatchNorm a sample's gradient
//     does not depend on the other samples of its batch, so a batch of one gives exactly that sample's gradient.)
//     A sample's loss is its own masked BCE (train::MaskedBceWithLogits on its row: the mean over its masked labels).
//     On the CPU, with LibTorch's intra-op thread count T > 1, T worker threads each take whole images (every T-th)
//     with one intra-op thread of their own: operations on one image parallelize poorly and stall when the machine
//     is busy. Dropout masks then depend on thread timing (DP training is not reproducible anyway, see below).
//   - Each sample's gradient over ALL trainable parameters together (every parameter with requires_grad, as one
//     vector) is clipped to L2 norm C: g * min(1, C / (||g|| + 1e-6)) (Opacus's factor), so that its contribution
//     to the sum is below C whatever its loss.
//   - The clipped gradients are summed, Gaussian noise N(0, (sigma * C)^2) is added to every coordinate, and the
//     result is divided by the EXPECTED batch size q*N (not by the drawn batch size, which would depend on the data).
//   - The optimizer's step follows (Fit): SGD with momentum and weight decay as usual; the FedProx proximal gradient
//     mu * (w - anchor) is added to the noised gradient, not clipped (it does not depend on the data).
//
// BatchNorm is FROZEN: every BatchNorm module runs in eval mode with the running statistics of the model training
// starts from, which are never updated (batch statistics would mix the samples of a batch, and running statistics
// updated from the data would leak it without noise); dropout stays in training mode. BatchNorm's affine weight and
// bias are trained like every other parameter. A BatchNorm without running statistics (track_running_stats false)
// cannot be frozen and is refused (FailedPrecondition); there is no option to train BatchNorm statistics under DP.
//
// Randomness: the noise and the Poisson sampling must not be reproducible by anyone who knows the run's config (its
// `seed`, which the coordinator's plan sets): with a known seed the noise could be subtracted and the sampled images
// named. DpRandom therefore seeds from OpenSSL's RAND_bytes (Fit: once per epoch), never from the config. Nothing of
// it is written to the resume state: a resumed run redraws the noise of the epochs it redoes, so DP training is
// resumable at epoch boundaries but, unlike ordinary training, not bit-identical to an uninterrupted run. Dropout and
// augmentation stay seeded from the config (the guarantee holds for any fixed dropout mask or augmentation). The
// Gaussian draws are LibTorch's (Box-Muller on a Mersenne Twister seeded with 64 secret bits), like Opacus outside
// its secure_mode: not hardened against floating-point attacks on the noise's low bits.
//
// The unit of privacy is one training image (one frontal-lateral study pair for a DuoNet), not one patient.
#ifndef FEDTUNE_COMMON_TRAIN_DP_SGD_H_
#define FEDTUNE_COMMON_TRAIN_DP_SGD_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/model/classifier.h"

namespace fedtune::train {

// Bounds of the options (the same as the RDP accountant's, privacy::kMin/kMaxNoiseMultiplier).
inline constexpr double kMinDpNoiseMultiplier = 0.1;
inline constexpr double kMaxDpNoiseMultiplier = 1e4;
inline constexpr double kMaxDpClipNorm = 1e6;

struct DpSgdOptions {
  // sigma: the noise's standard deviation is sigma * clip_norm. 0 (default) adds no noise (tests, and the clipped sum
  // alone); otherwise finite and in [kMinDpNoiseMultiplier, kMaxDpNoiseMultiplier].
  double noise_multiplier = 0;
  double clip_norm = 1.0;            // C: each sample's gradient norm bound. Finite, in (0, kMaxDpClipNorm].
  double expected_batch_size = 1.0;  // q * N, the divisor of the noised sum. Finite, > 0.
};

// InvalidArgument naming the option out of its bounds.
absl::Status ValidateDpSgdOptions(const DpSgdOptions& options);

// The secret randomness of DP-SGD: Poisson sampling and Gaussian noise. Not thread-safe (one owner); movable.
class DpRandom {
 public:
  // Secret: the noise comes from secagg::SecureStandardNormals (a fresh RAND_bytes key, AES-128-CTR, per call), the
  // Poisson sampling from a generator seeded with 256 bits of RAND_bytes. Internal when OpenSSL's generator fails.
  static absl::StatusOr<DpRandom> FromSystemEntropy();
  // A reproducible generator FOR TESTS ONLY: anyone who knows `seed` can remove the noise.
  static DpRandom ForTestingOnly(uint64_t seed);

  // `steps` batches of Poisson sampling over `num_samples` samples: each sample independently with probability
  // `sample_rate` (in [0, 1]; CHECK otherwise: a caller bug), each batch in increasing index order, possibly empty.
  // Costs O(expected batch size) per batch (geometric skips), not O(num_samples).
  std::vector<std::vector<size_t>> PoissonBatches(int64_t num_samples, double sample_rate, int64_t steps);

  // Standard normal noise of `sizes` (float32, CPU). Internal when OpenSSL's generator fails (secret generators).
  absl::StatusOr<at::Tensor> StandardNormal(at::IntArrayRef sizes);

 private:
  struct State;
  DpRandom(uint64_t seed, bool secure, const std::vector<uint32_t>& sampling_seed);
  std::shared_ptr<State> state_;
};

// The gradient of one DP-SGD step.
struct ClippedSum {
  // Per trainable parameter (the module's parameters() with requires_grad, in that order; same shapes and device):
  // sum over samples of each sample's gradient clipped to clip_norm, before noise.
  std::vector<at::Tensor> clipped_sum;
  // (clipped_sum + N(0, (noise_multiplier * clip_norm)^2)) / expected_batch_size: the gradient the step applies.
  std::vector<at::Tensor> noised;
  std::vector<double> sample_norms;   // Each sample's gradient L2 norm before clipping, in batch order.
  std::vector<double> sample_losses;  // Each sample's loss (its masked BCE), in batch order.
};

// The DP-SGD gradient of a batch for `model`. inputs [B, C, H, W], targets and masks [B, L] (B may be 0: then the
// sums are zero and `noised` is noise only); pos_weight [L] or undefined. Puts the model in DP training mode
// (SetDpTrainingMode) and leaves it there; parameters' .grad is not touched. `random` draws the noise (may be
// nullptr when options.noise_multiplier is 0). With T = at::get_num_threads() > 1 on the CPU, runs min(T, B)
// worker threads (see the top of this file) and leaves the calling thread's count at T; not safe to call from several
// threads at once (the workers change LibTorch's default thread count for threads started meanwhile). InvalidArgument
// for bad options or shapes; FailedPrecondition for a BatchNorm without running statistics, or when a sample's loss or
// gradient norm is not finite (divergence); a c10::Error becomes Internal. Tensors go to the model's device.
absl::StatusOr<ClippedSum> ClippedNoisedGradient(model::Classifier model, const at::Tensor& inputs,
                                                 const at::Tensor& targets, const at::Tensor& masks,
                                                 const at::Tensor& pos_weight, const DpSgdOptions& options,
                                                 DpRandom* random);

// The same for any module whose logits for sample i (a batch of one, on the module's device) `forward_one(i)`
// returns (a DuoNet: both views of pair i), for `count` samples with targets/masks [count, L] on that device.
absl::StatusOr<ClippedSum> ClippedNoisedGradientFor(torch::nn::Module& module,
                                                    const std::function<at::Tensor(int64_t)>& forward_one,
                                                    int64_t count, const at::Tensor& targets, const at::Tensor& masks,
                                                    const at::Tensor& pos_weight, const DpSgdOptions& options,
                                                    DpRandom* random);

// train() mode with every BatchNorm in eval mode (frozen statistics). FailedPrecondition, naming the module, for a
// BatchNorm that has no running statistics.
absl::Status SetDpTrainingMode(torch::nn::Module& module);

}  // namespace fedtune::train

#endif  // FEDTUNE_COMMON_TRAIN_DP_SGD_H_
