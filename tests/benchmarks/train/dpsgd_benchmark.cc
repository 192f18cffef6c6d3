// Training throughput of DP-SGD (common/train/dp_sgd.h: per-sample gradients by micro-batching, clipping, noise,
// frozen BatchNorm) against an ordinary training step (batched forward and backward, BatchNorm in training mode) on
// the same model, input size and batch size: one SGD step per iteration, images/s as a counter. The data loader is
// left out of both (random images in memory). dpsgd_benchmark.sh runs both side by side and prints the ratio. Run by
// deploy/bench.sh, not ctest.
// (Each benchmark's CPU clock also covers its warm-up iterations.) Thread count: LibTorch's default unless
// FEDTUNE_BENCH_THREADS is set.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <string>

#include "common/logging.h"
#include "common/model/model_factory.h"
#include "common/train/dp_sgd.h"
#include "common/train/loss.h"

namespace fedtune::train {
namespace {

void SetThreads() {
  if (const char* n = std::getenv("FEDTUNE_BENCH_THREADS")) torch::set_num_threads(std::atoi(n));
}

// Arguments: preset index, image size, batch size.
const char* const kPresets[] = {"mobilenet_v2", "densenet121", "mobilenet_v2_tiny", "densenet_tiny"};

struct Setup {
  model::Classifier model;
  torch::Tensor x, y, mask;
};

Setup MakeSetup(const benchmark::State& state) {
  SetThreads();
  torch::manual_seed(0);
  Setup s;
  s.model = *model::CreateModel(*model::ModelConfigForName(kPresets[state.range(0)]));
  const int64_t size = state.range(1), batch = state.range(2);
  s.x = torch::randn({batch, 1, size, size});
  s.y = torch::rand({batch, 14});
  s.mask = torch::ones({batch, 14});
  return s;
}

// Images per second of wall time, and per second of the process's CPU time (all threads; std::clock() since
// `cpu_start`), which depends less on what else the machine runs.
void Report(benchmark::State& state, std::clock_t cpu_start) {
  const double images = static_cast<double>(state.range(2) * state.iterations());
  const double cpu_seconds = static_cast<double>(std::clock() - cpu_start) / CLOCKS_PER_SEC;
  state.SetLabel(kPresets[state.range(0)]);
  state.counters["images/s"] = benchmark::Counter(images, benchmark::Counter::kIsRate);
  state.counters["images/cpu_s"] = images / std::max(cpu_seconds, 1e-9);
}

void BM_NonPrivateStep(benchmark::State& state) {
  Setup s = MakeSetup(state);
  s.model->train();
  torch::optim::SGD sgd(s.model->parameters(), torch::optim::SGDOptions(1e-3).momentum(0.9));
  const std::clock_t cpu_start = std::clock();
  for (auto _ : state) {
    sgd.zero_grad();
    MaskedBceWithLogits(s.model->forward(s.x), s.y, s.mask, torch::Tensor()).backward();
    sgd.step();
  }
  Report(state, cpu_start);
}

void BM_DpSgdStep(benchmark::State& state) {
  Setup s = MakeSetup(state);
  torch::optim::SGD sgd(s.model->parameters(), torch::optim::SGDOptions(1e-3).momentum(0.9));
  DpRandom random = *DpRandom::FromSystemEntropy();
  DpSgdOptions o;
  o.noise_multiplier = 1.0;
  o.clip_norm = 1.0;
  o.expected_batch_size = static_cast<double>(state.range(2));
  std::vector<torch::Tensor> params = s.model->parameters();
  const std::clock_t cpu_start = std::clock();
  for (auto _ : state) {
    absl::StatusOr<ClippedSum> sum = ClippedNoisedGradient(s.model, s.x, s.y, s.mask, torch::Tensor(), o, &random);
    CHECK(sum.ok()) << sum.status();
    for (size_t k = 0; k < params.size(); ++k) params[k].mutable_grad() = sum->noised[k];
    sgd.step();
  }
  Report(state, cpu_start);
}

// The part of DP-SGD's cost that micro-batching alone brings: each image's forward and backward on its own (BatchNorm
// frozen), without clipping, summing, noise or the optimizer step.
void BM_PerImageBackwardOnly(benchmark::State& state) {
  Setup s = MakeSetup(state);
  CHECK(SetDpTrainingMode(*s.model).ok());
  std::vector<torch::Tensor> params = s.model->parameters();
  const std::clock_t cpu_start = std::clock();
  for (auto _ : state) {
    for (int64_t i = 0; i < s.x.size(0); ++i) {
      torch::Tensor loss = MaskedBceWithLogits(s.model->forward(s.x.narrow(0, i, 1)), s.y.narrow(0, i, 1),
                                               s.mask.narrow(0, i, 1), torch::Tensor());
      benchmark::DoNotOptimize(torch::autograd::grad({loss}, params));
    }
  }
  Report(state, cpu_start);
}

// Ordinary training and DP-SGD alternating, step by step, on two copies of the same model: a paired measurement that
// other load on the machine (which comes and goes) affects alike. Counters: each one's images per second of wall
// time and the slowdown (DP-SGD's time / ordinary time), of wall time and of process CPU time.
void BM_OrdinaryVsDpSgd(benchmark::State& state) {
  Setup plain = MakeSetup(state);
  Setup dp = MakeSetup(state);  // Same seed: the same initial weights and data.
  plain.model->train();
  torch::optim::SGD plain_sgd(plain.model->parameters(), torch::optim::SGDOptions(1e-3).momentum(0.9));
  torch::optim::SGD dp_sgd(dp.model->parameters(), torch::optim::SGDOptions(1e-3).momentum(0.9));
  DpRandom random = *DpRandom::FromSystemEntropy();
  DpSgdOptions o;
  o.noise_multiplier = 1.0;
  o.clip_norm = 1.0;
  o.expected_batch_size = static_cast<double>(state.range(2));
  std::vector<torch::Tensor> params = dp.model->parameters();
  double plain_wall = 0, dp_wall = 0, plain_cpu = 0, dp_cpu = 0;
  for (auto _ : state) {
    auto wall = std::chrono::steady_clock::now();
    std::clock_t cpu = std::clock();
    plain_sgd.zero_grad();
    MaskedBceWithLogits(plain.model->forward(plain.x), plain.y, plain.mask, torch::Tensor()).backward();
    plain_sgd.step();
    plain_wall += std::chrono::duration<double>(std::chrono::steady_clock::now() - wall).count();
    plain_cpu += static_cast<double>(std::clock() - cpu) / CLOCKS_PER_SEC;
    wall = std::chrono::steady_clock::now();
    cpu = std::clock();
    absl::StatusOr<ClippedSum> sum = ClippedNoisedGradient(dp.model, dp.x, dp.y, dp.mask, torch::Tensor(), o, &random);
    CHECK(sum.ok()) << sum.status();
    for (size_t k = 0; k < params.size(); ++k) params[k].mutable_grad() = sum->noised[k];
    dp_sgd.step();
    dp_wall += std::chrono::duration<double>(std::chrono::steady_clock::now() - wall).count();
    dp_cpu += static_cast<double>(std::clock() - cpu) / CLOCKS_PER_SEC;
  }
  const double images = static_cast<double>(state.range(2) * state.iterations());
  state.SetLabel(kPresets[state.range(0)]);
  state.counters["ordinary_images/s"] = images / plain_wall;
  state.counters["dpsgd_images/s"] = images / dp_wall;
  state.counters["slowdown_wall"] = dp_wall / plain_wall;
  state.counters["slowdown_cpu"] = dp_cpu / plain_cpu;
}

#define FEDTUNE_DP_ARGS               \
  ->Args({0, 224, 16})                \
      ->Args({1, 224, 16})            \
      ->Args({2, 64, 32})             \
      ->Args({3, 64, 32})             \
      ->Unit(benchmark::kMillisecond) \
      ->UseRealTime()
BENCHMARK(BM_NonPrivateStep) FEDTUNE_DP_ARGS;
BENCHMARK(BM_DpSgdStep) FEDTUNE_DP_ARGS;
BENCHMARK(BM_PerImageBackwardOnly) FEDTUNE_DP_ARGS;
BENCHMARK(BM_OrdinaryVsDpSgd) FEDTUNE_DP_ARGS;

}  // namespace
}  // namespace fedtune::train

BENCHMARK_MAIN();
