// `fedtune-site data check`: validates a manifest and the images it names all
// at once, so that hospital IT can fix everything in one pass: columns, cell
// values, ids, duplicate paths, studies without a frontal view, and missing or
// unreadable images. Prints every problem with its line, plus per-label value
// counts.
#ifndef FEDTUNE_COMMON_DATA_DATA_CHECK_H_
#define FEDTUNE_COMMON_DATA_DATA_CHECK_H_

#include <array>
#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/cli/command.h"
#include "common/data/chexpert_labels.h"
#include "common/data/manifest.h"
#include "common/imaging/decode.h"

namespace fedtune::data {

// Checks that `file` is an image fedtune can decode, by decoding it exactly as
// training will (imaging::DecodeImage with `options`: DICOM through DCMTK, PNG,
// JPEG, TIFF and BMP through OpenCV, within the size limits). NotFound when the
// file does not exist; InvalidArgument, naming the file and the reason, when it
// is not a regular file, cannot be decoded, or declares more pixels than
// options.max_pixels. Thread-safe.
absl::Status ProbeImageFile(const std::string& file, const imaging::DecodeOptions& options);
// As above with the default options (imaging::kDefaultMaxImagePixels).
absl::Status ProbeImageFile(const std::string& file);

// Decodes one image file, OK when fedtune can use it (see ProbeImageFile). Must
// be thread-safe.
using ImageProbe = std::function<absl::Status(const std::string& file)>;

struct DataCheckOptions {
  // The CheXpert-format CSV to check. Required.
  std::string manifest_path;
  // Data root that manifest paths are relative to. Default "" (paths are used
  // as given).
  std::string root;
  // False: only check that each image exists and is a regular file.
  // Default true.
  bool decode_images = true;
  // Images probed in parallel; >= 1. Default 1.
  int threads = 1;
  // Decides whether an image is readable. Default (empty): ProbeImageFile
  // with `decode`.
  ImageProbe probe;
  // Decoding limits for the default probe (a custom probe applies its own).
  // Default: max_pixels = imaging::kDefaultMaxImagePixels.
  imaging::DecodeOptions decode;
};

struct DataCheckReport {
  // The manifest path.
  std::string source;
  // Data rows in the CSV.
  int64_t rows = 0;
  // Rows without a manifest problem (their images may still be bad).
  int64_t valid_rows = 0;
  // Patients and studies over the valid rows.
  int64_t patients = 0;
  int64_t studies = 0;
  // Distinct image files looked at (valid and rejected rows).
  int64_t images_checked = 0;
  // Everything wrong, sorted by line: the first kMaxListedManifestProblems
  // (manifest.h) by line; the others are only counted in unlisted_problems.
  std::vector<ManifestProblem> problems;
  int64_t unlisted_problems = 0;
  // What does not stop training (unknown columns).
  std::vector<ManifestProblem> warnings;
  // Raw label values over the valid rows.
  std::array<LabelValueCounts, kNumChexpertLabels> label_counts{};

  int64_t problem_count() const { return static_cast<int64_t>(problems.size()) + unlisted_problems; }
  bool ok() const { return problem_count() == 0; }
};

// Runs every check. The status is an error only when the manifest cannot be
// read or is not well-formed CSV (the CSV reader's error, e.g. NotFound, or
// InvalidArgument "FILE:LINE: record has 18 fields, header has 19"); every
// other problem is listed in the report. InvalidArgument also for
// options.threads < 1 or options.decode out of range.
absl::StatusOr<DataCheckReport> CheckDataset(const DataCheckOptions& options);

// The human-readable report: summary, problems ("FILE:LINE: [COLUMN] message"),
// warnings, the label table (positive / negative / uncertain / blank per label)
// and a final verdict line.
std::string FormatDataCheckReport(const DataCheckReport& report);

// `data check --manifest M.csv --root DIR [--no-decode] [--threads N]
// [--max-image-pixels N]`: prints the report to `out` (which must outlive the
// command) and fails with InvalidArgument (exit code 2) when any problem was
// found. `probe` decides whether an image is readable; empty = ProbeImageFile
// with --max-image-pixels (a custom probe does not see that flag).
cli::Command MakeDataCheckCommand(std::ostream* out, ImageProbe probe = nullptr);
// As above, printing to std::cout.
cli::Command MakeDataCheckCommand();

}  // namespace fedtune::data

#endif  // FEDTUNE_COMMON_DATA_DATA_CHECK_H_
