// `fedtune-site data check`: the command over CheckDataset (data_check.h) that probes each image with the decoder
// training uses (common/imaging), so that it accepts exactly what training reads.
#ifndef FEDTUNE_COMMON_DATA_DATA_CHECK_COMMAND_H_
#define FEDTUNE_COMMON_DATA_DATA_CHECK_COMMAND_H_

#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "common/cli/command.h"
#include "common/data/data_check.h"
#include "common/imaging/decode.h"

namespace fedtune::data {

// Checks that `file` is an image fedtune can decode, by decoding it exactly as training will (imaging::DecodeImage
// with `options`: DICOM through DCMTK, PNG, JPEG, TIFF and BMP through OpenCV, within the size limits). NotFound when
// the file does not exist; InvalidArgument, naming the file and the reason, when it is not a regular file, cannot be
// decoded, or declares more pixels than options.max_pixels. Thread-safe.
absl::Status ProbeImageFile(const std::string& file, const imaging::DecodeOptions& options);
// As above with the default options (imaging::kDefaultMaxImagePixels).
absl::Status ProbeImageFile(const std::string& file);

// `data check --manifest M.csv --root DIR [--no-decode] [--threads N] [--max-image-pixels N]
// [--raster-bits-stored N|auto]`: prints the report (FormatDataCheckReport) to `out`, which must outlive the
// command, and fails with InvalidArgument (exit code 2) when any problem was found. `probe` decides whether an image
// is readable; empty = ProbeImageFile with --max-image-pixels and --raster-bits-stored (a custom probe does not see
// those flags). With the default probe and decoding, a last line gives the estimate of the bits stored in the 16-bit
// PNG/TIFF images (imaging/raster_bits.h, the sample that raster_bits_stored: -1 uses), e.g. "16-bit PNG/TIFF
// images: maximum sample 4095 over 12 images -> 12 bits stored ...", and says when --raster-bits-stored N is too few
// for it.
cli::Command MakeDataCheckCommand(std::ostream& out, ImageProbe probe = nullptr);

}  // namespace fedtune::data

#endif  // FEDTUNE_COMMON_DATA_DATA_CHECK_COMMAND_H_
