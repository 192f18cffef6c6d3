// The coordinator's intake of one upload, as passes over its spool file (issue 12): the whole decode of before
// (DecodeTensorBundleFile + ValidateUpdate + Aggregator::Add, the whole delta in memory) against the streaming
// passes of now (a validation pass with UpdateValidator, then an add pass with Aggregator::AddFrom, one tensor at a
// time), and a decode-only pass, which is what a second pass costs beyond a single pass with rollback. The delta is
// a synthetic fp32 bundle of ResNeXt50's size (23 M parameters, ~92 MB) written once to a temporary file (in the
// page cache, as a just-received spool file is). Each benchmark prints MB/s of payload.
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/fl/aggregate.h"
#include "common/fl/bundle_file.h"
#include "common/fl/codec.h"
#include "common/fl/validate.h"
#include "common/io/file_util.h"

namespace fedtune::fl {
namespace {

struct Fixture {
  TensorMap global;
  std::string path;
  int64_t bytes = 0;
  ~Fixture() { std::filesystem::remove(path); }
};

// 160 tensors of assorted sizes adding up to ~23 M float32 parameters, and a delta for them in a bundle file.
Fixture& TheFixture() {
  static Fixture* fixture = [] {
    auto* f = new Fixture;
    at::manual_seed(1);
    int64_t total = 0;
    for (int i = 0; total < 23'000'000; ++i) {
      const int64_t rows = 16 << (i % 7);
      f->global[absl::StrCat("layer", i, ".weight")] = at::randn({rows, 1 + (i * 37) % 1200}, at::kFloat);
      f->global[absl::StrCat("layer", i, ".bias")] = at::randn({rows}, at::kFloat);
      total += f->global[absl::StrCat("layer", i, ".weight")].numel() + rows;
    }
    TensorMap delta;
    for (const auto& [name, t] : f->global) delta[name] = at::randn_like(t).mul(1e-3);
    const std::string bytes = EncodeTensors(delta)->bundle.SerializeAsString();
    f->bytes = static_cast<int64_t>(bytes.size());
    f->path = (std::filesystem::temp_directory_path() / "fedtune_intake_benchmark.bundle").string();
    if (!io::WriteFileAtomically(f->path, bytes).ok()) std::abort();
    return f;
  }();
  return *fixture;
}

void Report(benchmark::State& state) { state.SetBytesProcessed(state.iterations() * TheFixture().bytes); }

// Before: the whole delta decoded, validated and added.
void BM_WholeDecodeValidateAdd(benchmark::State& state) {
  Fixture& f = TheFixture();
  std::unique_ptr<Aggregator> agg = *MakeAggregator();
  for (auto _ : state) {
    TensorMap delta = *DecodeTensorBundleFile(f.path, &f.global);
    if (!ValidateUpdate(f.global, delta).ok() || !agg->Add(delta, 10).ok()) std::abort();
  }
  Report(state);
}
BENCHMARK(BM_WholeDecodeValidateAdd)->Unit(benchmark::kMillisecond)->UseRealTime();

// Now, pass 1: decode and validate tensor by tensor.
void BM_ValidatePass(benchmark::State& state) {
  Fixture& f = TheFixture();
  for (auto _ : state) {
    UpdateValidator validator(f.global, {}, "update");
    if (!ForEachDecodedTensorInFile(f.path, &f.global,
                                    [&](const std::string& name, at::Tensor t) { return validator.Add(name, t); })
             .ok() ||
        !validator.Finish().ok()) {
      std::abort();
    }
  }
  Report(state);
}
BENCHMARK(BM_ValidatePass)->Unit(benchmark::kMillisecond)->UseRealTime();

// Now, pass 2: decode again and add tensor by tensor.
void BM_AddPass(benchmark::State& state) {
  Fixture& f = TheFixture();
  std::unique_ptr<Aggregator> agg = *MakeAggregator();
  for (auto _ : state) {
    const TensorSource source = [&](const TensorVisitor& visit) {
      return ForEachDecodedTensorInFile(f.path, &f.global,
                                        [&](const std::string& name, at::Tensor t) { return visit(name, t); });
    };
    if (!agg->AddFrom(source, 10, 1.0).ok()) std::abort();
  }
  Report(state);
}
BENCHMARK(BM_AddPass)->Unit(benchmark::kMillisecond)->UseRealTime();

// What the second pass costs beyond a single pass that validates and adds: reading and decoding the file once more.
void BM_DecodeOnlyPass(benchmark::State& state) {
  Fixture& f = TheFixture();
  for (auto _ : state) {
    if (!ForEachDecodedTensorInFile(f.path, &f.global, [](const std::string&, at::Tensor) {
           return absl::OkStatus();
         }).ok()) {
      std::abort();
    }
  }
  Report(state);
}
BENCHMARK(BM_DecodeOnlyPass)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace fedtune::fl

BENCHMARK_MAIN();
