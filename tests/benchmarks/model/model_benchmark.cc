// Benchmarks of common/model: a training step (forward, BCE loss, backward) per architecture and input size, and
// reading a full-size DenseNet-121 state dict through the restricted unpickler. Run by deploy/bench.sh, not ctest.
// Thread count: LibTorch's default unless FEDTUNE_BENCH_THREADS is set.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cstdlib>
#include <string>

#include "common/model/model_factory.h"
#include "common/model/state_dict.h"
#include "common/model/torch_archive.h"

namespace fedtune::model {
namespace {

void SetThreads() {
  if (const char* n = std::getenv("FEDTUNE_BENCH_THREADS")) torch::set_num_threads(std::atoi(n));
}

// Arguments: preset index, image size, batch size.
const char* const kPresets[] = {"mobilenet_v2",      "densenet121",   "resnext50_32x4d",
                                "mobilenet_v2_tiny", "densenet_tiny", "resnext_tiny"};

void BM_TrainStep(benchmark::State& state) {
  SetThreads();
  const std::string name = kPresets[state.range(0)];
  const int64_t size = state.range(1), batch = state.range(2);
  torch::manual_seed(0);
  Classifier model = *CreateModel(*ModelConfigForName(name));
  model->train();
  torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(1e-3).momentum(0.9));
  torch::Tensor x = torch::rand({batch, 1, size, size});
  torch::Tensor y = torch::rand({batch, 14});
  for (auto _ : state) {
    sgd.zero_grad();
    torch::Tensor loss = torch::binary_cross_entropy_with_logits(model->forward(x), y);
    loss.backward();
    sgd.step();
  }
  state.SetLabel(name);
  state.counters["images/s"] =
      benchmark::Counter(static_cast<double>(batch * state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_TrainStep)
    ->Args({0, 224, 8})
    ->Args({1, 224, 8})
    ->Args({0, 64, 32})
    ->Args({3, 64, 32})
    ->Args({4, 64, 32})
    ->Args({5, 64, 32})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_ReadDenseNet121StateDict(benchmark::State& state) {
  torch::manual_seed(0);
  ModelConfig rgb = *ModelConfigForName("densenet121");
  rgb.in_channels = 3;
  rgb.num_outputs = 1000;
  PickleValue dict;
  dict.kind = PickleValue::Kind::kDict;
  for (const auto& [key, t] : ModuleStateDict(**CreateModel(rgb))) dict.AddEntry(key, PickleValue::Tensor(t));
  const std::string archive = *WriteTorchArchive(dict);
  for (auto _ : state) {
    auto sd = ParseTorchStateDict(archive);
    benchmark::DoNotOptimize(sd);
  }
  state.SetBytesProcessed(static_cast<int64_t>(archive.size()) * state.iterations());
}
BENCHMARK(BM_ReadDenseNet121StateDict)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace fedtune::model

BENCHMARK_MAIN();
