// Reading the size that a PNG, JPEG, TIFF or BMP file declares, from its
// header alone, so that the decoder (decode.h) can refuse an image too large to
// decode before OpenCV allocates a pixel buffer for it. (OpenCV 4.6 has no
// public header-only reader; its own guard, OPENCV_IO_MAX_IMAGE_PIXELS, is a
// process-wide setting of 2^30 pixels, far above what fedtune wants.)
//
// Each reader walks the header the way the library that OpenCV uses for that
// format does (libpng: IHDR must be the first chunk; libjpeg-turbo: markers up
// to the first SOFn, skipping fill bytes and junk between markers; libtiff: the
// first IFD; OpenCV's BMP reader: the BITMAPCOREHEADER or a >= 36-byte info
// header), so that the size read here is the size OpenCV would allocate for.
// Where the two could still differ (a TIFF tag given twice), the larger value
// is reported. Pure functions; thread-safe.
#ifndef FEDTUNE_COMMON_IMAGING_RASTER_HEADER_H_
#define FEDTUNE_COMMON_IMAGING_RASTER_HEADER_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fedtune::imaging {

struct RasterHeader {
  // "png", "jpeg", "tiff" or "bmp".
  std::string format;
  // The declared size in pixels; both > 0.
  int64_t width = 0;
  int64_t height = 0;
  // Tiled TIFF only: the declared tile size (OpenCV allocates one tile buffer
  // per tile row); 0 otherwise.
  int64_t tile_width = 0;
  int64_t tile_height = 0;
  // Bits per sample when the header states it (PNG bit depth, JPEG precision,
  // TIFF BitsPerSample (the largest, if several), BMP bits per pixel); 0 when
  // absent (TIFF default: 1).
  int bits_per_sample = 0;
};

// "png", "jpeg", "tiff" (classic or BigTIFF), "bmp" by the file's magic bytes,
// else "unknown".
std::string RasterFormat(absl::string_view bytes);

// The declared size of the PNG, JPEG, TIFF or BMP image in `bytes`.
// InvalidArgument (message without the file name; the caller adds it) when the
// format is none of these or the header is truncated, malformed, or declares a
// zero or negative size.
absl::StatusOr<RasterHeader> ReadRasterHeader(absl::string_view bytes);

}  // namespace fedtune::imaging

#endif  // FEDTUNE_COMMON_IMAGING_RASTER_HEADER_H_
