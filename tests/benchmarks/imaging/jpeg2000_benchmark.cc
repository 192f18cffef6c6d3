// JPEG 2000 lossless DICOM decode speed for a CheXpert-sized radiograph: one 2000x2500 image, 12 bits stored in 16
// (radiograph-like: borders, body, ribs, mild texture; dicom_fixtures.h), encoded by OpenJPEG (reversible 5/3).
//   BM_FedtuneDecodeImage: fedtune's DecodeImage end to end (DCMTK parse, OpenJPEG decode, DicomImage's modality
//                          and VOI rendering, float image);
//   BM_OpenJpegDecodeOnly: OpenJPEG alone on the codestream in memory (DecodeJpeg2000), the floor for the above;
//   BM_GdcmImageReader:    GDCM's gdcm::ImageReader + gdcm::Image::GetBuffer (raw samples, no rendering), built when
//                          GDCM is found. GDCM decodes through the same OpenJPEG library.
// Run: build/benchmarks/jpeg2000_benchmark (deploy/bench.sh jpeg2000). items_per_second is images/s. OpenJPEG runs
// on the calling thread (OPJ_NUM_THREADS unset); GDCM asks OpenJPEG for threads of its own: pin with
// `taskset -c 0` to compare one core with one core.
#include <benchmark/benchmark.h>

#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "common/imaging/decode.h"
#include "common/imaging/jpeg2000.h"
#include "common/logging.h"
#include "tests/common/imaging/dicom_fixtures.h"
#include "tests/testing/temp_dir.h"

#ifdef FEDTUNE_HAVE_GDCM
#include "gdcmImage.h"
#include "gdcmImageReader.h"
#endif

namespace fedtune::imaging {
namespace {

constexpr int kWidth = 2000;
constexpr int kHeight = 2500;

struct Fixture {
  std::string path;        // The JPEG 2000 lossless DICOM file.
  std::string codestream;  // Its codestream.
};

const Fixture& Subject() {
  static testing::TempDir dir;  // Removed at exit.
  static const Fixture fixture = [] {
    const fixtures::Samples samples = fixtures::RadiographLikeImage(kWidth, kHeight);
    Fixture f;
    f.codestream = fixtures::EncodeJpeg2000(samples, /*lossless=*/true);
    f.path = dir.Join("chest_2000x2500_12bit_j2k.dcm");
    fixtures::WriteJpeg2000Dicom(f.path, samples, /*lossless=*/true, /*fragments=*/1, 10.0, f.codestream);
    std::ifstream in(f.path, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    LOG(INFO) << "JPEG 2000 lossless DICOM: " << bytes.size() << " bytes (" << kWidth << " x " << kHeight
              << " x 2 bytes = " << 2.0 * kWidth * kHeight / bytes.size() << ":1)";
    return f;
  }();
  return fixture;
}

void BM_FedtuneDecodeImage(benchmark::State& state) {
  const std::string& path = Subject().path;
  for (auto _ : state) {
    absl::StatusOr<Image> image = DecodeImage(path);
    CHECK(image.ok()) << image.status();
    benchmark::DoNotOptimize(image->pixels.data());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_FedtuneDecodeImage)->Unit(benchmark::kMillisecond)->MinTime(3.0)->UseRealTime();

void BM_OpenJpegDecodeOnly(benchmark::State& state) {
  const std::string& codestream = Subject().codestream;
  for (auto _ : state) {
    absl::StatusOr<Jpeg2000Image> image =
        DecodeJpeg2000(codestream, "benchmark", [](const Jpeg2000Header&) { return absl::OkStatus(); });
    CHECK(image.ok()) << image.status();
    benchmark::DoNotOptimize(image->samples.data());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_OpenJpegDecodeOnly)->Unit(benchmark::kMillisecond)->MinTime(3.0)->UseRealTime();

#ifdef FEDTUNE_HAVE_GDCM
void BM_GdcmImageReader(benchmark::State& state) {
  const std::string& path = Subject().path;
  std::vector<char> buffer;
  for (auto _ : state) {
    gdcm::ImageReader reader;
    reader.SetFileName(path.c_str());
    CHECK(reader.Read()) << "GDCM cannot read " << path;
    const gdcm::Image& image = reader.GetImage();
    buffer.resize(image.GetBufferLength());
    CHECK(image.GetBuffer(buffer.data())) << "GDCM cannot decode " << path;
    benchmark::DoNotOptimize(buffer.data());
  }
  CHECK_EQ(buffer.size(), size_t{2} * kWidth * kHeight);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_GdcmImageReader)->Unit(benchmark::kMillisecond)->MinTime(3.0)->UseRealTime();
#endif

}  // namespace
}  // namespace fedtune::imaging

BENCHMARK_MAIN();
