// Estimating how many bits the samples of 16-bit raster files (PNG, TIFF) really use, for
// DecodeOptions::raster_bits_stored = "auto" (FinetuneConfig.raster_bits_stored = -1): a 12-bit detector's images
// exported as 16-bit PNG hold values up to 4095 and decode dark when scaled by the container's 1/65535.
//
// The estimate: over a deterministic sample of the 16-bit raster images among `paths`, the largest sample value M,
// and bits = max(8, ceil(log2(M + 1))) (4095 -> 12, 4096 -> 13, 65535 -> 16). The sample: the headers of up to
// kRasterBitsHeaderProbes files spread evenly over `paths` are read (a few KiB each, or a whole TIFF whose first IFD
// lies further; DICOM, 8-bit files and anything but a regular file are passed over), then up to `max_images` of the
// 16-bit PNG/TIFF files found, again spread evenly, are decoded at their container depth. The same paths give the same
// estimate. Unreadable files are counted, not errors (`data check` reports them; training's on_image_error decides).
// Thread-safe (no shared state).
#ifndef FEDTUNE_COMMON_IMAGING_RASTER_BITS_H_
#define FEDTUNE_COMMON_IMAGING_RASTER_BITS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/imaging/decode.h"

namespace fedtune::imaging {

// FinetuneConfig.raster_bits_stored's value for "estimate from the data".
inline constexpr int kRasterBitsStoredAuto = -1;
// The most file headers the estimate reads, and the default number of images it decodes.
inline constexpr int kRasterBitsHeaderProbes = 4096;
inline constexpr int kRasterBitsSampleImages = 64;

struct RasterBitsEstimate {
  int64_t headers_read = 0;    // Files whose first bytes were read.
  int64_t candidates = 0;      // Of those, 16-bit PNG/TIFF (or TIFF whose depth the first bytes do not tell).
  int64_t images_sampled = 0;  // 16-bit PNG/TIFF images decoded.
  int64_t unreadable = 0;      // Files that could not be read or decoded (skipped).
  int max_sample = 0;          // Largest sample value over the sampled images, 0..65535.
  // max(8, ceil(log2(max_sample + 1))), or 0 (the container's depth: nothing to rescale) when no 16-bit raster image
  // was sampled.
  int bits_stored = 0;
};

// The estimate over `paths` (files to read, e.g. manifest entries resolved against the data root), decoding with
// `decode` (its raster_bits_stored is ignored: samples are read at the container's depth). InvalidArgument when
// `decode` is invalid or max_images < 1.
absl::StatusOr<RasterBitsEstimate> EstimateRasterBitsStored(const std::vector<std::string>& paths,
                                                            const DecodeOptions& decode,
                                                            int max_images = kRasterBitsSampleImages);

// One line for logs and `data check`: "16-bit PNG/TIFF images: maximum sample 4095 over 12 images -> 12 bits
// stored" (or why there is nothing to estimate).
std::string FormatRasterBitsEstimate(const RasterBitsEstimate& estimate);

// The effective DecodeOptions::raster_bits_stored for a configured value: `configured` itself when it is 0 or in
// [8, 16]; for kRasterBitsStoredAuto, the estimate's bits_stored over `paths` (logged with
// FormatRasterBitsEstimate); FailedPrecondition when 16-bit PNG/TIFF files were found but none could be decoded.
// InvalidArgument naming the value for anything else.
absl::StatusOr<int> ResolveRasterBitsStored(int configured, const std::vector<std::string>& paths,
                                            const DecodeOptions& decode);

// The value of a `--raster-bits-stored` flag: "auto" (or "-1") -> kRasterBitsStoredAuto, "0" or "8" to "16" -> that
// number. InvalidArgument naming the flag and the accepted values otherwise.
absl::StatusOr<int> ParseRasterBitsStoredFlag(absl::string_view value);

}  // namespace fedtune::imaging

#endif  // FEDTUNE_COMMON_IMAGING_RASTER_BITS_H_
