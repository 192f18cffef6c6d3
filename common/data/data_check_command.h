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

// `data check --manifest M.csv --root DIR [--no-decode] [--threads N] [--max-image-pixels N]`: prints the report
// (FormatDataCheckReport) to `out`, which must outlive the command, and fails with InvalidArgument (exit code 2)
// when any problem was found. `probe` decides whether an image is readable; empty = ProbeImageFile with
// --max-image-pixels (a custom probe does not see that flag).
cli::Command MakeDataCheckCommand(std::ostream& out, ImageProbe probe = nullptr);

}  // namespace fedtune::data

#endif  // FEDTUNE_COMMON_DATA_DATA_CHECK_COMMAND_H_
