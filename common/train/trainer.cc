#include "common/train/trainer.h"

#include <ATen/autocast_mode.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/io/file_util.h"
#include "common/logging.h"
#include "common/privacy/dp_plan.h"
#include "common/seed.h"
#include "common/status_macros.h"
#include "common/train/dp_sgd.h"
#include "common/train/early_stopping.h"
#include "common/train/loss.h"

namespace fedtune::train {
namespace {

using Clock = std::chrono::steady_clock;

absl::Status ValidateOptions(const TrainerOptions& o) {
  if (!(o.learning_rate > 0)) return absl::InvalidArgumentError("learning_rate must be > 0");
  if (!(o.momentum >= 0 && o.momentum < 1)) return absl::InvalidArgumentError("momentum must be in [0, 1)");
  if (!(o.weight_decay >= 0)) return absl::InvalidArgumentError("weight_decay must be >= 0");
  if (o.max_epochs < 1) return absl::InvalidArgumentError("max_epochs must be >= 1");
  if (o.patience < 1) return absl::InvalidArgumentError("patience must be >= 1");
  if (!(o.proximal_mu >= 0)) return absl::InvalidArgumentError("proximal_mu must be >= 0");
  if (!std::isfinite(o.dp_noise_multiplier) || o.dp_noise_multiplier < 0) {
    return absl::InvalidArgumentError(absl::StrCat("dp_noise_multiplier must be 0 (no DP) or in [",
                                                   kMinDpNoiseMultiplier, ", ", kMaxDpNoiseMultiplier, "], got ",
                                                   o.dp_noise_multiplier));
  }
  if (o.dp_noise_multiplier > 0) {
    DpSgdOptions dp;
    dp.noise_multiplier = o.dp_noise_multiplier;
    dp.clip_norm = o.dp_clip_norm;
    RETURN_IF_ERROR(ValidateDpSgdOptions(dp));
    if (o.mixed_precision) {
      return absl::InvalidArgumentError("mixed_precision cannot be combined with DP-SGD (dp_noise_multiplier > 0)");
    }
  }
  return absl::OkStatus();
}

absl::Status FromTorchError(const c10::Error& e, absl::string_view context) {
  const std::string what = e.what_without_backtrace();
  if (what.find("out of memory") != std::string::npos) {
    return absl::ResourceExhaustedError(absl::StrCat(context, ": ", what));
  }
  return absl::InternalError(absl::StrCat(context, ": ", what));
}

// Named copies of every parameter and buffer, on the CPU.
using Snapshot = std::map<std::string, torch::Tensor>;

Snapshot TakeSnapshot(torch::nn::Module& module) {
  Snapshot out;
  for (const auto& p : module.named_parameters()) out[p.key()] = p.value().detach().to(torch::kCPU).clone();
  for (const auto& b : module.named_buffers()) out[b.key()] = b.value().detach().to(torch::kCPU).clone();
  return out;
}

void RestoreSnapshot(torch::nn::Module& module, const Snapshot& snapshot) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.named_parameters()) p.value().copy_(snapshot.at(p.key()));
  for (auto& b : module.named_buffers()) b.value().copy_(snapshot.at(b.key()));
}

// What must match for a state file to be resumed: parameter shapes and the options that change the trajectory.
std::string Fingerprint(torch::nn::Module& module, const TrainerOptions& o, int64_t samples, int64_t batch_size) {
  std::string out = absl::StrCat("lr=", o.learning_rate, ";m=", o.momentum, ";wd=", o.weight_decay, ";seed=", o.seed,
                                 ";mu=", o.proximal_mu, ";patience=", o.patience, ";samples=", samples, ";");
  // An anchored proximal term trains toward other weights: its state must not resume an unanchored run (nor the
  // reverse). Only anchored runs carry the mark, so the fingerprints of earlier state files are unchanged.
  if (o.proximal_mu > 0 && !o.proximal_anchor.empty()) absl::StrAppend(&out, "anchored;");
  // Likewise DP-SGD (its batch size sets the sample rate, hence the steps per epoch the accountant counts).
  if (o.dp_noise_multiplier > 0) {
    absl::StrAppend(&out, "dp=", o.dp_noise_multiplier, ",", o.dp_clip_norm, ",", batch_size, ";");
  }
  for (const auto& p : module.named_parameters()) {
    absl::StrAppend(&out, p.key(), ":");
    for (int64_t s : p.value().sizes()) absl::StrAppend(&out, s, "x");
    absl::StrAppend(&out, ";");
  }
  return out;
}

struct TrainState {
  int64_t last_epoch = -1;
  Snapshot weights;
  Snapshot best;
  double best_loss = 0;
  int64_t best_epoch = -1;
  int no_improvement = 0;
  std::vector<EpochRecord> history;
};

absl::Status SaveState(const std::string& path, const std::string& fingerprint, const TrainState& state,
                       torch::optim::SGD& optimizer) {
  try {
    torch::serialize::OutputArchive archive;
    archive.write("fingerprint", c10::IValue(fingerprint));
    archive.write("last_epoch", c10::IValue(state.last_epoch));
    archive.write("best_loss", c10::IValue(state.best_loss));
    archive.write("best_epoch", c10::IValue(state.best_epoch));
    archive.write("no_improvement", c10::IValue(static_cast<int64_t>(state.no_improvement)));
    torch::Tensor history = torch::zeros({static_cast<int64_t>(state.history.size()), 6}, torch::kFloat64);
    for (size_t i = 0; i < state.history.size(); ++i) {
      const EpochRecord& r = state.history[i];
      const double row[6] = {static_cast<double>(r.epoch), r.train_loss, r.validation_loss,
                             r.images_per_second,          r.seconds,    r.improved ? 1.0 : 0.0};
      for (int k = 0; k < 6; ++k) history[i][k] = row[k];
    }
    archive.write("history", history);
    torch::serialize::OutputArchive weights;
    for (const auto& [name, t] : state.weights) weights.write(name, t);
    archive.write("weights", weights);
    torch::serialize::OutputArchive best;
    for (const auto& [name, t] : state.best) best.write(name, t);
    archive.write("best", best);
    torch::serialize::OutputArchive opt;
    optimizer.save(opt);
    archive.write("optimizer", opt);
    std::ostringstream bytes;
    archive.save_to(bytes);
    return io::WriteFileAtomically(path, bytes.str());
  } catch (const c10::Error& e) {
    return FromTorchError(e, absl::StrCat("saving training state ", path));
  }
}

absl::StatusOr<bool> LoadState(const std::string& path, const std::string& fingerprint, torch::nn::Module& module,
                               torch::optim::SGD& optimizer, const c10::Device& device, TrainState* state) {
  if (!std::filesystem::exists(path)) return false;
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path, torch::kCPU);
    c10::IValue v;
    archive.read("fingerprint", v);
    if (v.toStringRef() != fingerprint) {
      return absl::FailedPreconditionError(
          absl::StrCat("training state ", path,
                       " was written for another model or other training options; remove it to start afresh"));
    }
    archive.read("last_epoch", v);
    state->last_epoch = v.toInt();
    archive.read("best_loss", v);
    state->best_loss = v.toDouble();
    archive.read("best_epoch", v);
    state->best_epoch = v.toInt();
    archive.read("no_improvement", v);
    state->no_improvement = static_cast<int>(v.toInt());
    torch::Tensor history;
    archive.read("history", history);
    state->history.clear();
    for (int64_t i = 0; i < history.size(0); ++i) {
      EpochRecord r;
      r.epoch = static_cast<int64_t>(history[i][0].item<double>());
      r.train_loss = history[i][1].item<double>();
      r.validation_loss = history[i][2].item<double>();
      r.images_per_second = history[i][3].item<double>();
      r.seconds = history[i][4].item<double>();
      r.improved = history[i][5].item<double>() != 0;
      state->history.push_back(r);
    }
    torch::serialize::InputArchive weights;
    archive.read("weights", weights);
    torch::serialize::InputArchive best;
    archive.read("best", best);
    Snapshot current = TakeSnapshot(module);
    for (auto& [name, t] : current) {
      torch::Tensor w;
      torch::Tensor b;
      weights.read(name, w);
      best.read(name, b);
      state->weights[name] = w;
      state->best[name] = b;
    }
    RestoreSnapshot(module, state->weights);
    torch::serialize::InputArchive opt;
    archive.read("optimizer", opt);
    optimizer.load(opt);
    // Momentum buffers were loaded on the CPU; move them next to the parameters.
    for (auto& group : optimizer.param_groups()) {
      for (auto& p : group.params()) {
        auto it = optimizer.state().find(c10::guts::to_string(p.unsafeGetTensorImpl()));
        if (it == optimizer.state().end()) continue;
        auto& s = static_cast<torch::optim::SGDParamState&>(*it->second);
        if (s.momentum_buffer().defined()) s.momentum_buffer(s.momentum_buffer().to(device));
      }
    }
    return true;
  } catch (const c10::Error& e) {
    return absl::DataLossError(
        absl::StrCat("training state ", path, " cannot be read (corrupt or truncated?): ", e.what_without_backtrace()));
  }
}

// Accumulates the masked BCE of many batches into one exact mean over all masked elements.
struct LossMean {
  double weighted_sum = 0;
  double weight = 0;
  void Add(const torch::Tensor& loss, const torch::Tensor& mask) {
    const double w = mask.sum().item<double>();
    weighted_sum += loss.item<double>() * std::max(w, 1.0);
    weight += std::max(w, 1.0);
  }
  double Mean() const { return weight > 0 ? weighted_sum / weight : 0.0; }
};

std::string FormatDuration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  return absl::StrFormat("%d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60);
}

}  // namespace

absl::StatusOr<c10::Device> ResolveDevice(const std::string& spec) {
  if (spec == "cpu") return c10::Device(c10::kCPU);
  if (spec == "auto") return torch::cuda::is_available() ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  int index = 0;
  if (spec == "cuda" || (spec.rfind("cuda:", 0) == 0 && absl::SimpleAtoi(spec.substr(5), &index) && index >= 0)) {
    if (!torch::cuda::is_available()) {
      return absl::FailedPreconditionError(
          absl::StrCat("device '", spec, "' asked for, but LibTorch sees no CUDA device (CPU build or no GPU)"));
    }
    if (index >= static_cast<int>(torch::cuda::device_count())) {
      return absl::FailedPreconditionError(
          absl::StrCat("device '", spec, "' asked for, but only ", torch::cuda::device_count(), " CUDA devices"));
    }
    return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  return absl::InvalidArgumentError(absl::StrCat("device must be auto, cpu, cuda or cuda:N; got '", spec, "'"));
}

namespace {

// Logits of a batch on a device: the one place where single-view and two-view models differ.
using ForwardFn = std::function<torch::Tensor(const loader::Batch&, const c10::Device&)>;

absl::StatusOr<double> EvaluateLossImpl(torch::nn::Module& model, const ForwardFn& forward, loader::BatchLoader& data,
                                        const at::Tensor& pos_weight, const c10::Device& device) {
  try {
    torch::NoGradGuard no_grad;
    model.eval();
    data.StartEpoch(0);
    LossMean mean;
    torch::Tensor pw = pos_weight.defined() ? pos_weight.to(device) : torch::Tensor();
    while (true) {
      ASSIGN_OR_RETURN(std::optional<loader::Batch> batch, data.Next());
      if (!batch) break;
      torch::Tensor logits = forward(*batch, device).to(torch::kFloat32);
      torch::Tensor mask = batch->mask.to(device);
      mean.Add(MaskedBceWithLogits(logits, batch->targets.to(device), mask, pw), mask);
    }
    return mean.Mean();
  } catch (const c10::Error& e) {
    return FromTorchError(e, "evaluating the validation loss");
  }
}

// One DP-SGD epoch (dp_sgd.h): plan.steps_per_epoch steps on Poisson batches drawn with fresh secret randomness;
// steps whose batch came out empty (or whose images were all skipped) apply noise only. `start`: the proximal
// term's anchor per parameter (empty without one). Adds each sample's loss to `train_loss` and counts `images`.
absl::Status DpEpoch(torch::nn::Module& model, const ForwardFn& forward, loader::BatchLoader& train,
                     const torch::Tensor& pw, const TrainerOptions& options, const privacy::DpSgdPlan& plan,
                     const std::vector<torch::Tensor>& start, torch::optim::SGD& optimizer, const c10::Device& device,
                     int64_t epoch, LossMean* train_loss, int64_t* images) {
  ASSIGN_OR_RETURN(DpRandom random, DpRandom::FromSystemEntropy());
  const int64_t n = train.NumSamples();
  RETURN_IF_ERROR(train.StartEpochWithBatches(epoch, random.PoissonBatches(n, plan.sample_rate, plan.steps_per_epoch)));
  DpSgdOptions dp;
  dp.noise_multiplier = options.dp_noise_multiplier;
  dp.clip_norm = options.dp_clip_norm;
  dp.expected_batch_size = plan.sample_rate * static_cast<double>(n);
  std::vector<torch::Tensor> params = model.parameters();
  std::optional<loader::Batch> pending;
  bool loader_done = false;
  std::vector<double> norms;  // Every sampled image's gradient norm before clipping: how to choose C (logged).
  for (int64_t step = 0; step < plan.steps_per_epoch; ++step) {
    if (!pending && !loader_done) {
      ASSIGN_OR_RETURN(pending, train.Next());
      loader_done = !pending.has_value();
    }
    loader::Batch batch;
    if (pending && pending->index == step) {
      batch = *std::move(pending);
      pending.reset();
    } else {  // An empty Poisson batch: the step is noise only.
      batch.targets = torch::zeros({0, data::kNumChexpertLabels}, torch::kFloat32);
      batch.mask = torch::zeros({0, data::kNumChexpertLabels}, torch::kFloat32);
    }
    auto forward_one = [&](int64_t i) {
      loader::Batch one;
      one.images = batch.images.narrow(0, i, 1);
      if (batch.lateral.defined()) one.lateral = batch.lateral.narrow(0, i, 1);
      return forward(one, device);
    };
    const int64_t count = batch.targets.size(0);
    absl::StatusOr<ClippedSum> sum =
        ClippedNoisedGradientFor(model, forward_one, count, batch.targets, batch.mask, pw, dp, &random);
    if (sum.status().code() == absl::StatusCode::kFailedPrecondition) {
      return absl::FailedPreconditionError(
          absl::StrFormat("%s: epoch %d, DP-SGD step %d: %s; lower learning_rate (now %g)", options.name, epoch + 1,
                          step + 1, sum.status().message(), options.learning_rate));
    }
    RETURN_IF_ERROR(sum.status());
    size_t k = 0;
    for (size_t i = 0; i < params.size(); ++i) {
      if (!params[i].requires_grad()) continue;
      torch::Tensor g = sum->noised[k++];
      // FedProx's proximal gradient mu * (w - anchor) does not depend on the data: added after the noise, unclipped.
      if (options.proximal_mu > 0) g = g + options.proximal_mu * (params[i].detach() - start[i]);
      params[i].mutable_grad() = g.detach();
    }
    optimizer.step();
    const torch::Tensor mask_sums = batch.mask.sum(1).to(torch::kCPU, torch::kFloat64);
    for (int64_t i = 0; i < count; ++i) {
      const double w = std::max(mask_sums[i].item<double>(), 1.0);
      train_loss->weighted_sum += sum->sample_losses[i] * w;
      train_loss->weight += w;
    }
    *images += count;
    norms.insert(norms.end(), sum->sample_norms.begin(), sum->sample_norms.end());
  }
  if (!norms.empty()) {
    const int64_t clipped = std::count_if(norms.begin(), norms.end(), [&](double n) { return n > dp.clip_norm; });
    std::nth_element(norms.begin(), norms.begin() + norms.size() / 2, norms.end());
    LOG(INFO) << absl::StrFormat("%s epoch %d: DP-SGD clipped %d of %d per-image gradients (median norm %.4g, C %g)",
                                 options.name, epoch + 1, clipped, norms.size(), norms[norms.size() / 2], dp.clip_norm);
  }
  return absl::OkStatus();
}

absl::StatusOr<TrainResult> FitImpl(torch::nn::Module& model, const ForwardFn& forward, loader::BatchLoader& train,
                                    loader::BatchLoader& validation, const at::Tensor& pos_weight,
                                    const TrainerOptions& options, EpochObserver* observer) {
  RETURN_IF_ERROR(ValidateOptions(options));
  ASSIGN_OR_RETURN(c10::Device device, ResolveDevice(options.device));
  std::optional<privacy::DpSgdPlan> dp_plan;
  if (options.dp_noise_multiplier > 0) {
    ASSIGN_OR_RETURN(dp_plan, privacy::PlanDpSgd(train.NumSamples(), train.batch_size(), options.max_epochs));
    LOG(INFO) << absl::StrFormat("%s: DP-SGD, sample rate %.6g, %d steps per epoch, noise multiplier %g, clip norm %g",
                                 options.name, dp_plan->sample_rate, dp_plan->steps_per_epoch,
                                 options.dp_noise_multiplier, options.dp_clip_norm);
  }
  TrainResult result;
  result.train_samples = train.NumSamples();
  result.device = device.str();
  const bool autocast = options.mixed_precision && device.is_cuda();
  if (options.mixed_precision && !device.is_cuda()) {
    LOG(INFO) << options.name << ": mixed precision applies to CUDA only; training in float32 on " << device;
  }
  // The progress line rewrites itself with '\r': only on a terminal, and never among JSON log lines.
  const bool on_terminal = options.progress && ::isatty(STDERR_FILENO) && CurrentLogFormat() == LogFormat::kText;
  try {
    model.to(device);
    torch::Tensor pw = pos_weight.defined() ? pos_weight.to(device) : torch::Tensor();
    torch::optim::SGD optimizer(
        model.parameters(),
        torch::optim::SGDOptions(options.learning_rate).momentum(options.momentum).weight_decay(options.weight_decay));
    std::vector<torch::Tensor> start;  // The proximal term's anchor: the start weights (FedProx) or the given ones.
    if (options.proximal_mu > 0) {
      if (options.proximal_anchor.empty()) {
        for (const torch::Tensor& p : model.parameters()) start.push_back(p.detach().clone());
      } else {
        for (const auto& p : model.named_parameters()) {
          auto it = options.proximal_anchor.find(p.key());
          if (it == options.proximal_anchor.end() || !it->second.defined() || it->second.sizes() != p.value().sizes()) {
            return absl::InvalidArgumentError(
                absl::StrCat(options.name, ": the proximal anchor ",
                             it == options.proximal_anchor.end() ? "lacks" : "has another shape for",
                             " the parameter '", p.key(), "'"));
          }
          start.push_back(it->second.detach().to(device, p.value().scalar_type()).clone());
        }
      }
    }
    const std::string fingerprint = Fingerprint(model, options, train.NumSamples(), train.batch_size());
    TrainState state;
    EarlyStopping stopper(options.patience);
    if (!options.state_path.empty()) {
      ASSIGN_OR_RETURN(bool resumed, LoadState(options.state_path, fingerprint, model, optimizer, device, &state));
      if (resumed) {
        stopper.Restore(state.best_loss, state.best_epoch, state.no_improvement);
        result.resumed_after_epoch = state.last_epoch;
        result.history = state.history;
        LOG(INFO) << options.name << ": resuming after epoch " << state.last_epoch << " from " << options.state_path;
        if (observer != nullptr && !result.history.empty()) RETURN_IF_ERROR(observer->OnResume(result.history));
      }
    }
    if (state.best.empty()) state.best = TakeSnapshot(model);

    for (int64_t epoch = state.last_epoch + 1; epoch < options.max_epochs && !stopper.ShouldStop(); ++epoch) {
      const auto epoch_start = Clock::now();
      torch::manual_seed(MixSeed(options.seed ^ MixSeed(static_cast<uint64_t>(epoch) + 1)));
      LossMean train_loss;
      int64_t images = 0;
      if (dp_plan) {
        RETURN_IF_ERROR(SetDpTrainingMode(model));
        RETURN_IF_ERROR(DpEpoch(model, forward, train, pw, options, *dp_plan, start, optimizer, device, epoch,
                                &train_loss, &images));
      } else {
        model.train();
        train.StartEpoch(epoch);
      }
      const int64_t batches = train.NumBatches();
      int64_t batch_index = 0;
      while (!dp_plan) {
        ASSIGN_OR_RETURN(std::optional<loader::Batch> batch, train.Next());
        if (!batch) break;
        if (batch->targets.size(0) < 2) {
          // BatchNorm in training mode needs more than one value per channel: a last batch of one sample (e.g. 33
          // images in batches of 32) is skipped, as PyTorch's DataLoader(drop_last) would.
          LOG(INFO) << options.name << ": skipped a training batch of one sample (epoch " << epoch + 1 << ")";
          continue;
        }
        torch::Tensor y = batch->targets.to(device);
        torch::Tensor mask = batch->mask.to(device);
        optimizer.zero_grad();
        torch::Tensor logits;
        if (autocast) {
          at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
          at::autocast::set_enabled(true);
          logits = forward(*batch, device);
          at::autocast::set_enabled(false);
          at::autocast::clear_cache();
        } else {
          logits = forward(*batch, device);
        }
        torch::Tensor loss = MaskedBceWithLogits(logits.to(torch::kFloat32), y, mask, pw);
        torch::Tensor total = loss;
        if (options.proximal_mu > 0) {
          torch::Tensor prox = torch::zeros({}, loss.options());
          auto params = model.parameters();
          for (size_t i = 0; i < params.size(); ++i) prox = prox + (params[i] - start[i]).pow(2).sum();
          total = loss + 0.5 * options.proximal_mu * prox;
        }
        if (!std::isfinite(loss.item<double>())) {
          return absl::FailedPreconditionError(absl::StrFormat(
              "%s: training diverged (loss is not finite) in epoch %d, batch %d; lower learning_rate (now %g)",
              options.name, epoch + 1, batch_index + 1, options.learning_rate));
        }
        total.backward();
        optimizer.step();
        train_loss.Add(loss.detach(), mask);
        images += batch->images.size(0);
        ++batch_index;
        if (on_terminal) {
          const double elapsed = std::chrono::duration<double>(Clock::now() - epoch_start).count();
          const double rate = images / std::max(elapsed, 1e-9);
          const double eta = (batches - batch_index) * elapsed / std::max<int64_t>(batch_index, 1);
          std::fprintf(stderr, "\r%s epoch %lld/%d batch %lld/%lld loss %.4f %.1f img/s ETA %s   ",
                       options.name.c_str(), static_cast<long long>(epoch + 1), options.max_epochs,
                       static_cast<long long>(batch_index), static_cast<long long>(batches), train_loss.Mean(), rate,
                       FormatDuration(eta).c_str());
          std::fflush(stderr);
        }
      }
      const double train_seconds = std::chrono::duration<double>(Clock::now() - epoch_start).count();
      ASSIGN_OR_RETURN(double val_loss, EvaluateLossImpl(model, forward, validation, pw, device));
      if (!std::isfinite(val_loss)) {
        return absl::FailedPreconditionError(absl::StrFormat(
            "%s: training diverged (validation loss is not finite) after epoch %d; lower learning_rate (now %g)",
            options.name, epoch + 1, options.learning_rate));
      }
      EpochRecord record;
      record.epoch = epoch;
      record.train_loss = train_loss.Mean();
      record.validation_loss = val_loss;
      record.images_per_second = images / std::max(train_seconds, 1e-9);
      record.seconds = std::chrono::duration<double>(Clock::now() - epoch_start).count();
      record.improved = stopper.Update(epoch, val_loss);
      if (record.improved) state.best = TakeSnapshot(model);
      if (on_terminal) std::fprintf(stderr, "\n");
      LOG(INFO) << absl::StrFormat("%s epoch %d: train BCE %.4f, validation BCE %.4f%s, %.1f img/s, %.1f s",
                                   options.name, epoch + 1, record.train_loss, record.validation_loss,
                                   record.improved ? " (best)" : "", record.images_per_second, record.seconds);
      result.history.push_back(record);
      if (observer != nullptr) RETURN_IF_ERROR(observer->OnEpoch(record));
      if (!options.state_path.empty()) {
        state.last_epoch = epoch;
        state.weights = TakeSnapshot(model);
        state.best_loss = stopper.best_loss();
        state.best_epoch = stopper.best_epoch();
        state.no_improvement = stopper.epochs_without_improvement();
        state.history = result.history;
        RETURN_IF_ERROR(SaveState(options.state_path, fingerprint, state, optimizer));
      }
    }
    RestoreSnapshot(model, state.best);
    model.eval();
    if (dp_plan) {
      result.dp.enabled = true;
      result.dp.sample_rate = dp_plan->sample_rate;
      result.dp.noise_multiplier = options.dp_noise_multiplier;
      result.dp.clip_norm = options.dp_clip_norm;
      result.dp.steps_per_epoch = dp_plan->steps_per_epoch;
      result.dp.steps = static_cast<int64_t>(result.history.size()) * dp_plan->steps_per_epoch;
    }
    result.best_epoch = stopper.best_epoch();
    result.best_validation_loss = stopper.best_loss();
    result.stopped_early = stopper.ShouldStop();
    return result;
  } catch (const c10::Error& e) {
    return FromTorchError(e, absl::StrCat("training ", options.name));
  } catch (const std::exception& e) {  // LibTorch's backends (oneDNN's dnnl::error) throw their own types.
    return absl::InternalError(absl::StrCat("training ", options.name, ": ", e.what()));
  }
}

}  // namespace

absl::StatusOr<double> EvaluateLoss(model::Classifier model, loader::BatchLoader& data, const at::Tensor& pos_weight,
                                    const c10::Device& device) {
  return EvaluateLossImpl(
      *model, [model](const loader::Batch& b, const c10::Device& d) { return model->forward(b.images.to(d)); }, data,
      pos_weight, device);
}

absl::StatusOr<TrainResult> Fit(model::Classifier model, loader::BatchLoader& train, loader::BatchLoader& validation,
                                const at::Tensor& pos_weight, const TrainerOptions& options, EpochObserver* observer) {
  return FitImpl(
      *model, [model](const loader::Batch& b, const c10::Device& d) { return model->forward(b.images.to(d)); }, train,
      validation, pos_weight, options, observer);
}

absl::StatusOr<TrainResult> FitDuo(model::DuoNet duo, loader::BatchLoader& train, loader::BatchLoader& validation,
                                   const at::Tensor& pos_weight, const TrainerOptions& options,
                                   EpochObserver* observer) {
  if (!train.IsTwoView() || !validation.IsTwoView()) {
    return absl::InvalidArgumentError("a DuoNet needs two-view loaders (loader::PairedSamplesFromManifest)");
  }
  std::shared_ptr<model::DuoNetImpl> impl = duo.ptr();
  auto forward = [impl](const loader::Batch& b, const c10::Device& d) {
    return impl->forward(b.images.to(d), b.lateral.to(d));
  };
  // The backbones' own heads are not part of a DuoNet's forward pass. Ordinary SGD leaves them alone (no gradient);
  // DP-SGD would add noise to them like to every trainable coordinate, so they sit out its training.
  std::vector<torch::Tensor> heads;
  if (options.dp_noise_multiplier > 0) {
    const std::string frontal_head = absl::StrCat("frontal.", impl->frontal()->head_prefix());
    const std::string lateral_head = absl::StrCat("lateral.", impl->lateral()->head_prefix());
    for (auto& p : duo->named_parameters()) {
      if ((absl::StartsWith(p.key(), frontal_head) || absl::StartsWith(p.key(), lateral_head)) &&
          p.value().requires_grad()) {
        p.value().set_requires_grad(false);
        heads.push_back(p.value());
      }
    }
  }
  absl::StatusOr<TrainResult> result = FitImpl(*duo, forward, train, validation, pos_weight, options, observer);
  for (torch::Tensor& p : heads) p.set_requires_grad(true);
  return result;
}

}  // namespace fedtune::train
