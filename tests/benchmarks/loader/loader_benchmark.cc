// Loader throughput (images/s into 512x512 batches) with 1 and 2 worker threads, decoding every epoch (no cache) and
// from a warm preprocessed-image cache. Sources: 48 synthetic 16-bit PNGs of 2000x2500 with black borders.
// Run by deploy/bench.sh; never by ctest.
#include <filesystem>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <random>

#include "benchmark/benchmark.h"
#include "common/loader/batch_loader.h"
#include "common/logging.h"

namespace {

constexpr int kImages = 48;

const std::string& SourceDir() {
  static const std::string dir = [] {
    std::string d = std::filesystem::temp_directory_path() / "fedtune_loader_benchmark";
    std::filesystem::create_directories(d);
    std::mt19937 rng(1);
    for (int i = 0; i < kImages; ++i) {
      const std::string path = d + "/img" + std::to_string(i) + ".png";
      if (std::filesystem::exists(path)) continue;
      cv::Mat img(2500, 2000, CV_16UC1, cv::Scalar(0));
      cv::Mat body(2300, 1800, CV_16UC1);
      cv::randu(body, cv::Scalar(8000 + 100 * i), cv::Scalar(40000));
      cv::GaussianBlur(body, body, cv::Size(0, 0), 3);
      body.copyTo(img(cv::Rect(100, 100, 1800, 2300)));
      cv::imwrite(path, img);
    }
    return d;
  }();
  return dir;
}

std::vector<fedtune::loader::LoaderSample> Samples() {
  std::vector<fedtune::loader::LoaderSample> out;
  for (int i = 0; i < kImages; ++i) {
    fedtune::loader::LoaderSample s;
    s.id = "img" + std::to_string(i);
    s.file = SourceDir() + "/img" + std::to_string(i) + ".png";
    s.mask.fill(1.0f);
    out.push_back(s);
  }
  return out;
}

void RunEpochs(benchmark::State& state, fedtune::imaging::ImageCache* cache) {
  fedtune::loader::LoaderOptions o;
  o.batch_size = 8;
  o.num_threads = static_cast<int>(state.range(0));
  o.augment = true;
  o.cache = cache;
  auto loader = fedtune::loader::BatchLoader::Create(Samples(), o);
  CHECK(loader.ok()) << loader.status();
  int64_t epoch = 0;
  int64_t images = 0;
  for (auto _ : state) {
    (*loader)->StartEpoch(epoch++);
    while (true) {
      auto batch = (*loader)->Next();
      CHECK(batch.ok()) << batch.status();
      if (!batch->has_value()) break;
      images += (*batch)->images.size(0);
    }
  }
  state.counters["images_per_s"] = benchmark::Counter(static_cast<double>(images), benchmark::Counter::kIsRate);
}

void BM_LoaderDecodingEveryEpoch(benchmark::State& state) { RunEpochs(state, nullptr); }
BENCHMARK(BM_LoaderDecodingEveryEpoch)->Arg(1)->Arg(2)->Unit(benchmark::kSecond)->UseRealTime()->Iterations(2);

void BM_LoaderFromWarmCache(benchmark::State& state) {
  static auto cache = [] {
    std::string dir = std::filesystem::temp_directory_path() / "fedtune_loader_benchmark_cache";
    auto c = fedtune::imaging::ImageCache::Open(dir, fedtune::imaging::PreprocessOptions{});
    CHECK(c.ok()) << c.status();
    for (const auto& s : Samples()) CHECK((*c)->Get(s.file).ok());
    return std::move(*c);
  }();
  RunEpochs(state, cache.get());
}
BENCHMARK(BM_LoaderFromWarmCache)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

}  // namespace

BENCHMARK_MAIN();
