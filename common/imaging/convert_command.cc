#include "common/imaging/convert_command.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <ostream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/imaging/decode.h"
#include "common/imaging/preprocess.h"
#include "common/imaging/raster_bits.h"
#include "common/io/file_util.h"
#include "common/status_macros.h"

namespace fedtune::imaging {

absl::Status WriteGray16Png(const std::string& path, int width, int height, const std::vector<float>& pixels) {
  if (width <= 0 || height <= 0 || pixels.size() != static_cast<size_t>(width) * height) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": cannot write a ", width, "x", height, " image from ", pixels.size(), " values"));
  }
  cv::Mat mat(height, width, CV_16UC1);
  for (int y = 0; y < height; ++y) {
    auto* row = mat.ptr<uint16_t>(y);
    for (int x = 0; x < width; ++x) {
      const float v = std::clamp(pixels[static_cast<size_t>(y) * width + x], 0.0f, 1.0f);
      row[x] = static_cast<uint16_t>(std::lround(v * 65535.0f));
    }
  }
  std::vector<uchar> png;
  try {
    if (!cv::imencode(".png", mat, png)) return absl::InternalError(absl::StrCat(path, ": PNG encoding failed"));
  } catch (const cv::Exception& e) {
    return absl::InternalError(absl::StrCat(path, ": PNG encoding failed: ", e.what()));
  }
  return io::WriteFileAtomically(path, absl::string_view(reinterpret_cast<const char*>(png.data()), png.size()));
}

cli::Command MakeDataConvertCommand(std::ostream& out) {
  cli::Command command;
  command.path = {"data", "convert"};
  command.summary =
      "Write an image as fedtune sees it: decoded (or cropped and resized with "
      "--preprocess) as a 16-bit PNG.";
  command.flags = {
      {"in", "image to convert (PNG, JPEG, TIFF or DICOM)", false, true, std::nullopt, "FILE"},
      {"out", "output 16-bit grayscale PNG", false, true, std::nullopt, "OUT.png"},
      {"preprocess", "crop black borders and resize to N x N (before normalization)", true, false, std::nullopt},
      {"size", "N, the side of the preprocessed image (with --preprocess)", false, false, "512", "N"},
      {"border-threshold",
       "edge rows/columns with max below T (of 1) are cropped (with "
       "--preprocess)",
       false, false, "0.05", "T"},
      {"max-image-pixels",
       "refuse an image whose header declares more pixels than N (width x height; DICOM: x frames x samples)", false,
       false, absl::StrCat(kDefaultMaxImagePixels), "N"},
      {"raster-bits-stored",
       "bits stored in 16-bit PNG/TIFF samples: 0 = all 16 (scale 1/65535), 8 to 16 = scale 1/(2^N - 1), auto = "
       "from this image's maximum sample",
       false, false, "0", "N|auto"},
  };
  command.run = [&out](const cli::ParsedFlags& flags) -> absl::Status {
    const std::string in = flags.GetOrDie("in");
    const std::string out_path = flags.GetOrDie("out");
    if (out_path.size() < 4 || absl::AsciiStrToLower(out_path.substr(out_path.size() - 4)) != ".png") {
      return absl::InvalidArgumentError(absl::StrCat("--out must name a .png file, got '", out_path, "'"));
    }
    PreprocessOptions options;
    ASSIGN_OR_RETURN(int64_t size, flags.GetInt("size", options.size));
    ASSIGN_OR_RETURN(double threshold, flags.GetDouble("border-threshold", options.border_threshold));
    if (size < 8 || size > 8192) return absl::InvalidArgumentError(absl::StrCat("--size must be in [8, 8192]"));
    if (threshold < 0 || threshold > 1) return absl::InvalidArgumentError("--border-threshold must be in [0, 1]");
    options.size = static_cast<int>(size);
    options.border_threshold = static_cast<float>(threshold);
    ASSIGN_OR_RETURN(options.decode.max_pixels, flags.GetInt("max-image-pixels", kDefaultMaxImagePixels));
    if (options.decode.max_pixels < 1 || options.decode.max_pixels > kMaxImagePixelsLimit) {
      return absl::InvalidArgumentError(absl::StrCat("--max-image-pixels must be in [1, ", kMaxImagePixelsLimit,
                                                     "], got ", options.decode.max_pixels));
    }
    ASSIGN_OR_RETURN(const int raster_bits, ParseRasterBitsStoredFlag(flags.GetOrDie("raster-bits-stored")));
    ASSIGN_OR_RETURN(options.decode.raster_bits_stored, ResolveRasterBitsStored(raster_bits, {in}, options.decode));

    ASSIGN_OR_RETURN(Image image, DecodeImage(in, options.decode));
    if (!flags.GetBool("preprocess")) {
      RETURN_IF_ERROR(WriteGray16Png(out_path, image.width, image.height, image.pixels));
      out << "wrote " << out_path << ": " << image.width << "x" << image.height << " from " << in << " ("
          << image.description << ")\n";
      return absl::OkStatus();
    }
    ASSIGN_OR_RETURN(PreprocessedImage pre, CropAndResize(image, options));
    RETURN_IF_ERROR(WriteGray16Png(out_path, pre.size, pre.size, pre.pixels));
    out << "wrote " << out_path << ": " << pre.size << "x" << pre.size << " from " << in << " (" << image.description
        << "; kept " << pre.crop.width << "x" << pre.crop.height << " at (" << pre.crop.x << "," << pre.crop.y
        << ") of " << image.width << "x" << image.height << ")\n";
    return absl::OkStatus();
  };
  return command;
}

}  // namespace fedtune::imaging
