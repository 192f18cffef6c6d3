// `data index` header-scan throughput (files/s): 10,000 synthetic DICOM files (`fedtune synth --dicom`'s PACS export
// at 32x32 px, about 2.6 KB each), read with 1 and 2 threads into a fresh state file each iteration (the first run on
// an export), and the rerun over an unchanged folder (walk + state file only). The files are written once into
// $TMPDIR/fedtune_data_index_benchmark and reused. The page cache is warm: this measures parsing and the state file,
// not the disk. Run by deploy/bench.sh; never by ctest.
#include <unistd.h>

#include <filesystem>
#include <string>

#include "benchmark/benchmark.h"
#include "common/data/dicom_index.h"
#include "common/logging.h"
#include "common/synth/generator.h"
#include "common/synth/profile.h"

namespace {

constexpr int64_t kImages = 10000;

const std::string& ExportDir() {
  static const std::string dir = [] {
    const std::string d = std::filesystem::temp_directory_path() / "fedtune_data_index_benchmark";
    if (!std::filesystem::exists(d + "/labels.csv")) {
      fedtune::synth::SynthOptions o;
      auto profile = fedtune::synth::LoadProfile("site-a");
      CHECK(profile.ok()) << profile.status();
      o.profile = *profile;
      o.count = kImages;
      o.size = 32;
      o.seed = 1;
      o.out_dir = d;
      o.pacs_export = true;
      o.threads = 2;
      auto summary = fedtune::synth::GenerateDataset(o);
      CHECK(summary.ok()) << summary.status();
    }
    return d;
  }();
  return dir;
}

fedtune::data::DicomIndexOptions Options(int threads) {
  fedtune::data::DicomIndexOptions o;
  o.dicom_dir = ExportDir() + "/dicom";
  o.secret = "benchmark-secret-0123456789";
  o.state_path = ExportDir() + "/bench.index-state";
  o.threads = threads;
  return o;
}

void RemoveState(const std::string& path) {
  for (const char* suffix : {"", "-wal", "-shm"}) ::unlink((path + suffix).c_str());
}

void BM_FirstScan(benchmark::State& state) {
  const fedtune::data::DicomIndexOptions o = Options(static_cast<int>(state.range(0)));
  int64_t files = 0;
  for (auto _ : state) {
    state.PauseTiming();
    RemoveState(o.state_path);
    state.ResumeTiming();
    auto scan = fedtune::data::ScanDicomFolder(o);
    CHECK(scan.ok()) << scan.status();
    CHECK_EQ(scan->files_read, kImages + 3);
    files += static_cast<int64_t>(scan->files.size());
  }
  state.counters["files/s"] = benchmark::Counter(static_cast<double>(files), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_FirstScan)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2);

void BM_UnchangedRescan(benchmark::State& state) {
  const fedtune::data::DicomIndexOptions o = Options(static_cast<int>(state.range(0)));
  RemoveState(o.state_path);
  CHECK(fedtune::data::ScanDicomFolder(o).ok());
  int64_t files = 0;
  for (auto _ : state) {
    auto scan = fedtune::data::ScanDicomFolder(o);
    CHECK(scan.ok()) << scan.status();
    CHECK_EQ(scan->files_read, 0);
    files += static_cast<int64_t>(scan->files.size());
  }
  state.counters["files/s"] = benchmark::Counter(static_cast<double>(files), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_UnchangedRescan)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2);

}  // namespace

BENCHMARK_MAIN();
