// The checks behind `fedtune-site data check`: validates a manifest and the images it names all at once, so that
// hospital IT can fix everything in one pass: columns, cell values, ids, duplicate paths, studies without a frontal
// view, and missing or unreadable images. Reports every problem with its line, plus per-label value counts.
// Decoding an image is injected (ImageProbe), so that this library links no image library: the command
// (data_check_command.h) probes with common/imaging's decoder.
#ifndef FEDTUNE_COMMON_DATA_DATA_CHECK_H_
#define FEDTUNE_COMMON_DATA_DATA_CHECK_H_

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/data/chexpert_labels.h"
#include "common/data/manifest.h"

namespace fedtune::data {

// OK when `file` exists and is a regular file; NotFound "image not found: FILE" or InvalidArgument "not a regular
// file: FILE" otherwise. Thread-safe.
absl::Status CheckImageFileExists(const std::string& file);

// Decides whether one image file (which exists and is a regular file) is usable: OK, or an error whose message names
// the file and the reason. Must be thread-safe.
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
  // Decides whether an existing image is readable; called for each distinct
  // image when decode_images is true, and then required. Default: empty.
  ImageProbe probe;
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
// options.threads < 1, or decode_images without a probe.
absl::StatusOr<DataCheckReport> CheckDataset(const DataCheckOptions& options);

// The human-readable report: summary, problems ("FILE:LINE: [COLUMN] message"),
// warnings, the label table (positive / negative / uncertain / blank per label)
// and a final verdict line.
std::string FormatDataCheckReport(const DataCheckReport& report);

}  // namespace fedtune::data

#endif  // FEDTUNE_COMMON_DATA_DATA_CHECK_H_
