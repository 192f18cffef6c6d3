#include "common/train/dp_sgd.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <openssl/rand.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/secagg/prg.h"
#include "common/seed.h"
#include "common/status_macros.h"
#include "common/train/loss.h"

namespace fedtune::train {

absl::Status ValidateDpSgdOptions(const DpSgdOptions& o) {
  if (!std::isfinite(o.noise_multiplier) ||
      (o.noise_multiplier != 0 &&
       !(o.noise_multiplier >= kMinDpNoiseMultiplier && o.noise_multiplier <= kMaxDpNoiseMultiplier))) {
    return absl::InvalidArgumentError(absl::StrCat("DP-SGD noise multiplier must be 0 or in [", kMinDpNoiseMultiplier,
                                                   ", ", kMaxDpNoiseMultiplier, "], got ", o.noise_multiplier));
  }
  if (!std::isfinite(o.clip_norm) || !(o.clip_norm > 0 && o.clip_norm <= kMaxDpClipNorm)) {
    return absl::InvalidArgumentError(
        absl::StrCat("DP-SGD clip norm must be in (0, ", kMaxDpClipNorm, "], got ", o.clip_norm));
  }
  if (!std::isfinite(o.expected_batch_size) || !(o.expected_batch_size > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("DP-SGD expected batch size must be finite and > 0, got ", o.expected_batch_size));
  }
  return absl::OkStatus();
}

struct DpRandom::State {
  State(uint64_t seed, bool secure, const std::vector<uint32_t>& sampling_seed)
      : secure(secure), noise(at::make_generator<at::CPUGeneratorImpl>(MixSeed(seed ^ kSplitMix64Gamma))) {
    if (secure) {
      std::seed_seq seq(sampling_seed.begin(), sampling_seed.end());
      sampling.seed(seq);
    } else {
      sampling.seed(MixSeed(seed));
    }
  }
  bool secure;
  std::mt19937_64 sampling;
  at::Generator noise;  // Tests only (ForTestingOnly): a reproducible stream.
};

DpRandom::DpRandom(uint64_t seed, bool secure, const std::vector<uint32_t>& sampling_seed)
    : state_(std::make_shared<State>(seed, secure, sampling_seed)) {}

absl::StatusOr<DpRandom> DpRandom::FromSystemEntropy() {
  std::vector<uint32_t> words(8);  // 256 bits for the sampling generator's state.
  if (RAND_bytes(reinterpret_cast<unsigned char*>(words.data()), static_cast<int>(words.size() * sizeof(uint32_t))) !=
      1) {
    return absl::InternalError("OpenSSL's RAND_bytes failed: no secret seed for DP-SGD's sampling");
  }
  return DpRandom(0, /*secure=*/true, words);
}

DpRandom DpRandom::ForTestingOnly(uint64_t seed) { return DpRandom(seed, /*secure=*/false, {}); }

std::vector<std::vector<size_t>> DpRandom::PoissonBatches(int64_t num_samples, double sample_rate, int64_t steps) {
  CHECK(sample_rate >= 0 && sample_rate <= 1) << "Poisson sample rate " << sample_rate << " outside [0, 1]";
  CHECK(num_samples >= 0 && steps >= 0);
  std::vector<std::vector<size_t>> batches(static_cast<size_t>(steps));
  if (sample_rate == 0 || num_samples == 0) return batches;
  if (sample_rate >= 1) {  // Every sample in every batch (geometric_distribution needs p < 1).
    for (std::vector<size_t>& batch : batches) {
      batch.resize(static_cast<size_t>(num_samples));
      for (size_t i = 0; i < batch.size(); ++i) batch[i] = i;
    }
    return batches;
  }
  // The gap before the next included sample is geometric: the same law as one Bernoulli(q) draw per sample.
  std::geometric_distribution<int64_t> gap(sample_rate);
  for (std::vector<size_t>& batch : batches) {
    for (int64_t i = gap(state_->sampling); i < num_samples; i += 1 + gap(state_->sampling)) {
      batch.push_back(static_cast<size_t>(i));
    }
  }
  return batches;
}

absl::StatusOr<at::Tensor> DpRandom::StandardNormal(at::IntArrayRef sizes) {
  if (!state_->secure) return torch::randn(sizes, state_->noise, torch::TensorOptions().dtype(torch::kFloat32));
  int64_t n = 1;
  for (int64_t s : sizes) n *= s;
  absl::StatusOr<std::vector<double>> values = secagg::SecureStandardNormals(n);
  if (!values.ok()) return values.status();
  return torch::from_blob(values->data(), {n}, torch::TensorOptions().dtype(torch::kFloat64))
      .to(torch::kFloat32)
      .reshape(sizes);
}

absl::Status SetDpTrainingMode(torch::nn::Module& module) {
  module.train();
  for (const auto& item : module.named_modules(std::string(), /*include_self=*/true)) {
    torch::nn::Module& m = *item.value();
    bool tracks = true;
    bool is_batch_norm = true;
    if (auto* bn = m.as<torch::nn::BatchNorm1d>()) {
      tracks = bn->options.track_running_stats();
    } else if (auto* bn2 = m.as<torch::nn::BatchNorm2d>()) {
      tracks = bn2->options.track_running_stats();
    } else if (auto* bn3 = m.as<torch::nn::BatchNorm3d>()) {
      tracks = bn3->options.track_running_stats();
    } else {
      is_batch_norm = false;
    }
    if (!is_batch_norm) continue;
    if (!tracks) {
      return absl::FailedPreconditionError(
          absl::StrCat("DP-SGD freezes BatchNorm, but '", item.key(),
                       "' keeps no running statistics (track_running_stats false): it cannot run in eval mode"));
    }
    m.eval();
  }
  return absl::OkStatus();
}

absl::StatusOr<ClippedSum> ClippedNoisedGradientFor(torch::nn::Module& module,
                                                    const std::function<at::Tensor(int64_t)>& forward_one,
                                                    int64_t count, const at::Tensor& targets, const at::Tensor& masks,
                                                    const at::Tensor& pos_weight, const DpSgdOptions& options,
                                                    DpRandom* random) {
  RETURN_IF_ERROR(ValidateDpSgdOptions(options));
  if (options.noise_multiplier > 0 && random == nullptr) {
    return absl::InvalidArgumentError("DP-SGD with noise needs a DpRandom");
  }
  if (count < 0 || !targets.defined() || !masks.defined() || targets.dim() != 2 || targets.size(0) != count ||
      masks.sizes() != targets.sizes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DP-SGD batch: ", count, " samples but targets ", targets.defined() ? c10::str(targets.sizes()) : "undefined",
        ", masks ", masks.defined() ? c10::str(masks.sizes()) : "undefined"));
  }
  try {
    RETURN_IF_ERROR(SetDpTrainingMode(module));
    std::vector<torch::Tensor> params;
    for (const torch::Tensor& p : module.parameters()) {
      if (p.requires_grad()) params.push_back(p);
    }
    if (params.empty()) return absl::InvalidArgumentError("DP-SGD: the model has no trainable parameters");
    const c10::Device device = params.front().device();
    const torch::Tensor y = targets.to(device, torch::kFloat32);
    const torch::Tensor m = masks.to(device, torch::kFloat32);
    const torch::Tensor pw = pos_weight.defined() ? pos_weight.to(device) : torch::Tensor();
    const double clip = options.clip_norm;
    ClippedSum out;
    out.sample_norms.assign(static_cast<size_t>(count), 0.0);
    out.sample_losses.assign(static_cast<size_t>(count), 0.0);
    // Worker w takes samples w, w + workers, ... into its own partial sum.
    const int threads = device.is_cpu() ? std::max(1, at::get_num_threads()) : 1;
    const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, count)));
    std::vector<std::vector<torch::Tensor>> partial(workers);
    for (auto& sums : partial) {
      for (const torch::Tensor& p : params) sums.push_back(torch::zeros_like(p, torch::MemoryFormat::Contiguous));
    }
    auto process = [&](int w) -> absl::Status {
      for (int64_t i = w; i < count; i += workers) {
        torch::Tensor logits = forward_one(i).to(torch::kFloat32);
        torch::Tensor loss = MaskedBceWithLogits(logits, y.narrow(0, i, 1), m.narrow(0, i, 1), pw);
        const double loss_value = loss.item<double>();
        if (!std::isfinite(loss_value)) {
          return absl::FailedPreconditionError(
              absl::StrCat("DP-SGD: sample ", i, " of the batch has a loss of ", loss_value, " (training diverged)"));
        }
        std::vector<torch::Tensor> grads =
            torch::autograd::grad({loss}, params, /*grad_outputs=*/{}, /*retain_graph=*/false, /*create_graph=*/false,
                                  /*allow_unused=*/true);
        std::vector<torch::Tensor> norms;
        norms.reserve(grads.size());
        for (const torch::Tensor& g : grads) {
          if (g.defined()) norms.push_back(g.norm().to(torch::kFloat64));
        }
        const double norm = norms.empty() ? 0.0 : torch::stack(norms).norm().item<double>();
        if (!std::isfinite(norm)) {
          return absl::FailedPreconditionError(absl::StrCat(
              "DP-SGD: sample ", i, " of the batch has a gradient norm of ", norm, " (training diverged)"));
        }
        // Opacus's factor: the clipped gradient's norm is C * norm / (norm + 1e-6) < C.
        const double factor = std::min(1.0, clip / (norm + 1e-6));
        for (size_t k = 0; k < grads.size(); ++k) {
          if (grads[k].defined()) partial[w][k].add_(grads[k], factor);
        }
        out.sample_norms[i] = norm;
        out.sample_losses[i] = loss_value;
      }
      return absl::OkStatus();
    };
    if (workers == 1) {
      RETURN_IF_ERROR(process(0));
    } else {
      // Micro-batches of one image parallelize poorly inside each operation (and stall when the machine is busy), so
      // the workers run whole images at once, each with one intra-op thread. at::set_num_threads sets the calling
      // thread's OpenMP team size and a process-wide default for threads that start LibTorch work later, restored
      // below.
      std::vector<absl::Status> status(workers);
      std::vector<std::thread> pool;
      for (int w = 0; w < workers; ++w) {
        pool.emplace_back([&, w] {
          try {
            at::internal::lazy_init_num_threads();
            at::set_num_threads(1);
            status[w] = process(w);
          } catch (const c10::Error& e) {
            status[w] = absl::InternalError(absl::StrCat("DP-SGD gradient: ", e.what_without_backtrace()));
          } catch (const std::exception& e) {
            status[w] = absl::InternalError(absl::StrCat("DP-SGD gradient: ", e.what()));
          }
        });
      }
      for (std::thread& t : pool) t.join();
      at::set_num_threads(threads);
      for (const absl::Status& st : status) RETURN_IF_ERROR(st);
    }
    out.clipped_sum = std::move(partial[0]);
    for (int w = 1; w < workers; ++w) {
      for (size_t k = 0; k < params.size(); ++k) out.clipped_sum[k].add_(partial[w][k]);
    }
    const double noise_std = options.noise_multiplier * clip;
    for (size_t k = 0; k < params.size(); ++k) {
      torch::Tensor g = out.clipped_sum[k];
      if (noise_std > 0) {
        ASSIGN_OR_RETURN(at::Tensor noise, random->StandardNormal(params[k].sizes()));
        g = g + noise.to(device, params[k].scalar_type()) * noise_std;
      }
      out.noised.push_back(g / options.expected_batch_size);
    }
    return out;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("DP-SGD gradient: ", e.what_without_backtrace()));
  }
}

absl::StatusOr<ClippedSum> ClippedNoisedGradient(model::Classifier model, const at::Tensor& inputs,
                                                 const at::Tensor& targets, const at::Tensor& masks,
                                                 const at::Tensor& pos_weight, const DpSgdOptions& options,
                                                 DpRandom* random) {
  if (!inputs.defined() || inputs.dim() != 4 || !targets.defined() || inputs.size(0) != targets.size(0)) {
    return absl::InvalidArgumentError("DP-SGD batch: inputs must be [B, C, H, W] with one target row per image");
  }
  torch::Tensor x = inputs;
  auto forward_one = [&model, &x](int64_t i) {
    const c10::Device device = model->parameters().front().device();
    return model->forward(x.narrow(0, i, 1).to(device));
  };
  return ClippedNoisedGradientFor(*model, forward_one, inputs.size(0), targets, masks, pos_weight, options, random);
}

}  // namespace fedtune::train
