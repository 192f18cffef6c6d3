// Preprocessing a decoded radiograph into the fixed-size network input, as in
// the study:
//   1. Crop black borders: rows and columns at the image edges whose maximum
//      is below a threshold are removed.
//   2. Resize the remaining region to N x N (area interpolation; the aspect
//      ratio is not kept, as in CheXpert work).
//   3. Scale to [0, 1]: already done by decoding (decode.h: 8-bit / 255,
//      16-bit / 65535, DICOM: the VOI output range).
//   4. Normalize: (x - mean) / std with mean 0.449, std 0.226.
// Steps 1-2 (CropAndResize) are what the cache (cache.h) stores; step 4
// (Normalize) comes after augmentation (augment.h), in the loader.
// All functions here are pure and thread-safe.
#ifndef FEDTUNE_COMMON_IMAGING_PREPROCESS_H_
#define FEDTUNE_COMMON_IMAGING_PREPROCESS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/imaging/decode.h"
#include "common/imaging/image.h"

namespace fedtune::imaging {

struct PreprocessOptions {
  // Output side N: images become N x N. Default 512. Must be in [8, 8192].
  int size = 512;
  // Remove black borders before resizing. Default true.
  bool crop_borders = true;
  // An edge row/column is a border when its maximum value (in [0, 1]) is below
  // this. Default 0.05 (about 13/255: above JPEG ringing in black margins, far
  // below any row that crosses the body). Must be in [0, 1].
  float border_threshold = 0.05f;
  // Normalization applied by Normalize(). Defaults 0.449 and 0.226; std > 0.
  float mean = 0.449f;
  float std = 0.226f;
  // Decoding options (decode.h; defaults: max_pixels = kDefaultMaxImagePixels,
  // raster_bits_stored = 0). max_pixels decides which files are refused, not
  // the pixels of the others: not part of CropAndResizeKey; raster_bits_stored
  // changes the pixels of 16-bit raster files: part of it when not 0.
  DecodeOptions decode;
};

// InvalidArgument naming the field when an option is out of range (decode
// included).
absl::Status ValidatePreprocessOptions(const PreprocessOptions& options);

// A rectangle in source pixels.
struct CropBox {
  int x = 0;
  int y = 0;
  int width = 0;
  int height = 0;
};

// The result of CropAndResize: an N x N image in [0, 1], not yet normalized.
struct PreprocessedImage {
  int size = 0;               // N.
  std::vector<float> pixels;  // Row-major, N * N values in [0, 1].
  int source_width = 0;       // Of the decoded image.
  int source_height = 0;
  // The region kept by border cropping (the whole image if nothing was).
  CropBox crop;
};

// The largest box obtained by removing, from each edge, the rows/columns whose
// maximum is below `threshold`. When every pixel is below the threshold (a
// blank image) the whole image is returned: cropping never yields an empty
// image. Requires a non-empty image.
CropBox FindContentBox(const Image& image, float threshold);

// Crops borders (when enabled) and resizes to options.size x options.size with
// area interpolation. InvalidArgument for bad options or an empty image
// (message names image.path). Thread-safe.
absl::StatusOr<PreprocessedImage> CropAndResize(const Image& image, const PreprocessOptions& options);

// In place: x -> (x - options.mean) / options.std.
void Normalize(const PreprocessOptions& options, std::vector<float>* pixels);

// DecodeImage(path, options.decode) then CropAndResize. Errors as those two
// functions.
// Thread-safe.
absl::StatusOr<PreprocessedImage> LoadAndPreprocess(const std::string& path, const PreprocessOptions& options);

// The settings that determine CropAndResize's output (size, cropping,
// threshold, decode.raster_bits_stored when not 0, and the decoder and resizer
// versions), as a canonical string. Two
// option values with equal keys give equal images; mean/std are not part of it.
std::string CropAndResizeKey(const PreprocessOptions& options);

}  // namespace fedtune::imaging

#endif  // FEDTUNE_COMMON_IMAGING_PREPROCESS_H_
