// Decode + preprocess throughput for a CheXpert-sized radiograph: a 2000x2500
// 16-bit PNG -> 512x512, on one core (OpenCV's own threads are disabled), cold
// (decode every time) and from the preprocessed-image cache. Run:
// build/benchmarks/imaging_benchmark. items_per_second is images/s per core.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <cmath>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <string>

#include "common/imaging/cache.h"
#include "common/imaging/decode.h"
#include "common/imaging/preprocess.h"
#include "common/logging.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::imaging {
namespace {

// A radiograph-like 16-bit image: black collimation borders, a smooth body,
// rib-like stripes and detector noise (noise matters: PNG compresses a clean
// gradient far better than a real image).
const std::string& SourcePng() {
  static testing::TempDir dir;  // Removed at exit.
  static const std::string path = [] {
    const int w = 2000, h = 2500;
    cv::Mat m(h, w, CV_16UC1, cv::Scalar(0));
    cv::Mat noise(h, w, CV_32FC1);
    cv::RNG rng(1234);
    rng.fill(noise, cv::RNG::NORMAL, 0.0, 300.0);
    for (int y = 60; y < h - 80; ++y) {
      for (int x = 40; x < w - 50; ++x) {
        const double dx = (x - w / 2.0) / (w / 2.0), dy = (y - h / 2.0) / (h / 2.0);
        const double body = 30000 * std::exp(-(dx * dx * 1.5 + dy * dy));
        const double ribs = 4000 * (0.5 + 0.5 * std::sin(y / 37.0 + 3 * dx * dx));
        const double v = body + ribs + 6000 + noise.at<float>(y, x);
        m.at<uint16_t>(y, x) = static_cast<uint16_t>(std::clamp(v, 0.0, 65535.0));
      }
    }
    const std::string p = dir.Join("chest_2000x2500_16bit.png");
    CHECK(cv::imwrite(p, m));
    return p;
  }();
  return path;
}

void SingleCore() { cv::setNumThreads(1); }

void BM_DecodeOnly(benchmark::State& state) {
  SingleCore();
  const std::string& path = SourcePng();
  for (auto _ : state) {
    absl::StatusOr<Image> image = DecodeImage(path);
    CHECK(image.ok()) << image.status();
    benchmark::DoNotOptimize(image->pixels.data());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_DecodeOnly)->Unit(benchmark::kMillisecond)->MinTime(3.0);

void BM_DecodePreprocessCold(benchmark::State& state) {
  SingleCore();
  const std::string& path = SourcePng();
  PreprocessOptions options;  // 512 x 512, cropping on.
  for (auto _ : state) {
    absl::StatusOr<PreprocessedImage> out = LoadAndPreprocess(path, options);
    CHECK(out.ok()) << out.status();
    benchmark::DoNotOptimize(out->pixels.data());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_DecodePreprocessCold)->Unit(benchmark::kMillisecond)->MinTime(3.0);

// A cache miss: decode, preprocess, quantize and store atomically (fsync
// included).
void BM_CacheMissAndStore(benchmark::State& state) {
  SingleCore();
  const std::string& path = SourcePng();
  testing::TempDir dir;
  auto cache = *ImageCache::Open(dir.Join("cache"), PreprocessOptions());
  const std::string entry = cache->EntryPath(path);
  for (auto _ : state) {
    state.PauseTiming();
    ::unlink(entry.c_str());
    state.ResumeTiming();
    absl::StatusOr<PreprocessedImage> out = cache->Get(path);
    CHECK(out.ok()) << out.status();
    benchmark::DoNotOptimize(out->pixels.data());
  }
  CHECK_EQ(cache->stats().hits, 0);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CacheMissAndStore)->Unit(benchmark::kMillisecond)->MinTime(3.0);

void BM_CacheHit(benchmark::State& state) {
  SingleCore();
  const std::string& path = SourcePng();
  testing::TempDir dir;
  auto cache = *ImageCache::Open(dir.Join("cache"), PreprocessOptions());
  CHECK(cache->Get(path).ok());
  for (auto _ : state) {
    absl::StatusOr<PreprocessedImage> out = cache->Get(path);
    CHECK(out.ok()) << out.status();
    benchmark::DoNotOptimize(out->pixels.data());
  }
  CHECK_EQ(cache->stats().misses, 1);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CacheHit)->Unit(benchmark::kMillisecond)->MinTime(2.0);

}  // namespace
}  // namespace fedtune::imaging

BENCHMARK_MAIN();
