// Fuzzes raster decoding (imaging::DecodeImageFromMemory on PNG, JPEG, TIFF and BMP bytes: the header reader of
// raster_header.h, then OpenCV) and the header reader alone. Besides crashes, sanitizer reports and allocations past
// libFuzzer's limit, it checks that the header reader agrees with OpenCV: a decoded image has at most the pixels its
// header declares, so that the size checked before decoding bounds what OpenCV allocates for.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/string_view.h"
#include "common/imaging/decode.h"
#include "common/imaging/raster_header.h"

namespace {

constexpr int64_t kMaxPixels = int64_t{1} << 22;

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "image_fuzz: %s\n", what.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  const absl::StatusOr<fedtune::imaging::RasterHeader> header = fedtune::imaging::ReadRasterHeader(bytes);
  fedtune::imaging::DecodeOptions options;
  options.max_pixels = kMaxPixels;
  // Not a .dcm name: only bytes with the DICM preamble go to DCMTK (the dicom harness covers those).
  const absl::StatusOr<fedtune::imaging::Image> image =
      fedtune::imaging::DecodeImageFromMemory(bytes, "fuzz.img", options);
  if (!image.ok()) {
    if (image.status().code() == absl::StatusCode::kInternal) Fail(image.status().ToString());
    return 0;
  }
  if (image->format == "dicom") return 0;
  if (!header.ok()) Fail("decoded an image whose header the reader refuses: " + header.status().ToString());
  // The reader reports the larger of duplicated TIFF tags: what OpenCV decodes is at most what was checked.
  if (static_cast<int64_t>(image->width) * image->height > header->width * header->height) {
    Fail("decoded more pixels than the header declares");
  }
  if (static_cast<int64_t>(image->width) * image->height > kMaxPixels) Fail("image above the limit");
  if (image->pixels.size() != static_cast<size_t>(image->width) * image->height) Fail("pixel count");
  return 0;
}
