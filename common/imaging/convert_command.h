// `fedtune-site data convert`: shows hospital IT an image as fedtune sees it.
//
//   fedtune-site data convert --in FILE --out OUT.png
//       [--preprocess] [--size N] [--border-threshold T] [--max-image-pixels N]
//       [--raster-bits-stored N|auto]
//
// Without --preprocess, OUT.png is the decoded image (decode.h: Modality LUT,
// VOI LUT/window, MONOCHROME1 inversion, or 8/16-bit raster scaling, 16-bit
// samples by 1/(2^N - 1) with --raster-bits-stored N, N estimated from the
// image's own maximum with auto; raster_bits.h) as a
// 16-bit grayscale PNG whose 0..65535 is fedtune's [0, 1] (brighter = more
// attenuating). With --preprocess it is the border-cropped, N x N resized
// image before normalization (preprocess.h), on the same scale. Prints one
// line describing the conversion.
#ifndef FEDTUNE_COMMON_IMAGING_CONVERT_COMMAND_H_
#define FEDTUNE_COMMON_IMAGING_CONVERT_COMMAND_H_

#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/cli/command.h"

namespace fedtune::imaging {

// The command, path {"data", "convert"}. Its run returns InvalidArgument for
// bad flags (OUT not ending in .png, --size, --max-image-pixels or
// --raster-bits-stored out of range),
// an undecodable input or one declaring more pixels than --max-image-pixels
// (default kDefaultMaxImagePixels; decode.h), NotFound for a missing input, and
// the WriteFileAtomically error when OUT cannot be written. The line describing
// the conversion goes to `out`, which must outlive the command.
cli::Command MakeDataConvertCommand(std::ostream& out);

// Writes a row-major width x height image of [0, 1] values as a 16-bit
// grayscale PNG (value * 65535, rounded), atomically. InvalidArgument for an
// inconsistent buffer; Internal if encoding fails.
absl::Status WriteGray16Png(const std::string& path, int width, int height, const std::vector<float>& pixels);

}  // namespace fedtune::imaging

#endif  // FEDTUNE_COMMON_IMAGING_CONVERT_COMMAND_H_
