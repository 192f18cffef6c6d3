// Fuzzes DICOM decoding (imaging::DecodeImageFromMemory: DCMTK reading a DcmInputBufferStream, the size checks,
// DicomImage rendering) with inputs named "fuzz.dcm", so that bytes without the Part 10 preamble are read as DICOM
// too. Besides crashes, sanitizer reports and allocations past libFuzzer's limit, it checks the decoder's contract:
// an image is within the pixel limit and holds width x height values in [0, 1]; errors are never Internal.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/string_view.h"
#include "common/imaging/decode.h"

namespace {

// Smaller than the default, so that each input decodes in milliseconds; the checks are the same.
constexpr int64_t kMaxPixels = int64_t{1} << 22;

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "dicom_fuzz: %s\n", what.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fedtune::imaging::DecodeOptions options;
  options.max_pixels = kMaxPixels;
  const absl::StatusOr<fedtune::imaging::Image> image = fedtune::imaging::DecodeImageFromMemory(
      absl::string_view(reinterpret_cast<const char*>(data), size), "fuzz.dcm", options);
  if (!image.ok()) {
    if (image.status().code() == absl::StatusCode::kInternal) Fail(image.status().ToString());
    return 0;
  }
  const int64_t pixels = static_cast<int64_t>(image->width) * image->height;
  if (image->width <= 0 || image->height <= 0 || pixels > kMaxPixels) Fail("image size outside the limit");
  if (image->pixels.size() != static_cast<size_t>(pixels)) Fail("pixel count differs from width x height");
  for (float v : image->pixels) {
    if (!(v >= 0.0f && v <= 1.0f)) Fail("pixel value outside [0, 1]");
  }
  return 0;
}
