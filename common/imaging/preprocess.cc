#include "common/imaging/preprocess.h"

#include <algorithm>
#include <cmath>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/imaging/decode.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace fedtune::imaging {
namespace {

// Bump when decoding or resizing changes the pixels it produces, so that caches
// keyed by CropAndResizeKey rebuild. 2: DICOM overlays are no longer burnt in,
// and files that decoding now refuses (short Pixel Data) must not be served
// from entries made before. (Deflated DICOM, refused for a while in version 2,
// decodes again to the same pixels as before: no bump.)
constexpr int kPipelineVersion = 2;

}  // namespace

absl::Status ValidatePreprocessOptions(const PreprocessOptions& options) {
  if (options.size < 8 || options.size > 8192) {
    return absl::InvalidArgumentError(absl::StrCat("preprocess size must be in [8, 8192], got ", options.size));
  }
  if (!(options.border_threshold >= 0.0f && options.border_threshold <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("preprocess border_threshold must be in [0, 1], got ", options.border_threshold));
  }
  if (!(options.std > 0.0f) || !std::isfinite(options.mean)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "preprocess normalization needs a finite mean and std > 0, got mean ", options.mean, " std ", options.std));
  }
  return ValidateDecodeOptions(options.decode);
}

CropBox FindContentBox(const Image& image, float threshold) {
  const int w = image.width;
  const int h = image.height;
  // One pass computes every row's and column's maximum.
  std::vector<float> row_max(h, 0.0f);
  std::vector<float> col_max(w, 0.0f);
  for (int y = 0; y < h; ++y) {
    const float* row = image.pixels.data() + static_cast<size_t>(y) * w;
    float rm = 0.0f;
    for (int x = 0; x < w; ++x) {
      rm = std::max(rm, row[x]);
      col_max[x] = std::max(col_max[x], row[x]);
    }
    row_max[y] = rm;
  }
  int top = 0;
  while (top < h && row_max[top] < threshold) ++top;
  if (top == h) return CropBox{0, 0, w, h};  // Blank image: keep it whole.
  int bottom = h - 1;
  while (row_max[bottom] < threshold) --bottom;
  int left = 0;
  while (col_max[left] < threshold) ++left;
  int right = w - 1;
  while (col_max[right] < threshold) --right;
  return CropBox{left, top, right - left + 1, bottom - top + 1};
}

absl::StatusOr<PreprocessedImage> CropAndResize(const Image& image, const PreprocessOptions& options) {
  RETURN_IF_ERROR(ValidatePreprocessOptions(options));
  if (image.width <= 0 || image.height <= 0 || image.pixels.size() != static_cast<size_t>(image.width) * image.height) {
    return absl::InvalidArgumentError(absl::StrCat(image.path, ": empty or inconsistent image (", image.width, "x",
                                                   image.height, ", ", image.pixels.size(), " values)"));
  }
  PreprocessedImage out;
  out.size = options.size;
  out.source_width = image.width;
  out.source_height = image.height;
  out.crop =
      options.crop_borders ? FindContentBox(image, options.border_threshold) : CropBox{0, 0, image.width, image.height};
  out.pixels.resize(static_cast<size_t>(options.size) * options.size);
  try {
    // cv::Mat headers over our buffers: no copies besides the resize itself.
    const cv::Mat src(image.height, image.width, CV_32FC1, const_cast<float*>(image.pixels.data()));
    const cv::Mat roi = src(cv::Rect(out.crop.x, out.crop.y, out.crop.width, out.crop.height));
    cv::Mat dst(options.size, options.size, CV_32FC1, out.pixels.data());
    cv::resize(roi, dst, dst.size(), 0, 0, cv::INTER_AREA);
    CHECK(dst.data == reinterpret_cast<uchar*>(out.pixels.data())) << "cv::resize reallocated its output";
  } catch (const cv::Exception& e) {
    return absl::InternalError(absl::StrCat(image.path, ": resize failed: ", e.what()));
  }
  // Area and (for upscaling) bilinear interpolation stay within the input range
  // up to rounding; clamp the rounding.
  for (float& v : out.pixels) v = std::clamp(v, 0.0f, 1.0f);
  return out;
}

void Normalize(const PreprocessOptions& options, std::vector<float>* pixels) {
  const float inv_std = 1.0f / options.std;
  for (float& v : *pixels) v = (v - options.mean) * inv_std;
}

absl::StatusOr<PreprocessedImage> LoadAndPreprocess(const std::string& path, const PreprocessOptions& options) {
  RETURN_IF_ERROR(ValidatePreprocessOptions(options));
  ASSIGN_OR_RETURN(Image image, DecodeImage(path, options.decode));
  return CropAndResize(image, options);
}

std::string CropAndResizeKey(const PreprocessOptions& options) {
  std::string key = absl::StrFormat("pipeline=%d;size=%d;crop=%d;threshold=%.9g;interp=area", kPipelineVersion,
                                    options.size, options.crop_borders ? 1 : 0, options.border_threshold);
  // Rescaled 16-bit raster samples change the pixels. Appended only when set, so that the keys (and the caches) of
  // the default decoding stay as they were.
  if (options.decode.raster_bits_stored != 0) {
    absl::StrAppendFormat(&key, ";raster_bits=%d", options.decode.raster_bits_stored);
  }
  return key;
}

}  // namespace fedtune::imaging
