// CheXpert-format manifests: one row per image with `Path, Sex, Age,
// Frontal/Lateral, AP/PA`, the 14 observations (1.0 / 0.0 / -1.0 / blank) and
// optional explicit `Patient`, `Study` columns. A Manifest holds the parsed
// rows, grouped into studies (frontal and lateral images of one study together,
// for the two-view model) and patients (the unit of train/validation/test
// splits).
//
// Parsing collects every problem of every row (ParseManifest) so that
// `fedtune-site data check` can print them all; the strict entry points
// (Manifest::FromTable, Manifest::ReadCsv) fail on the first problems instead.
#ifndef FEDTUNE_COMMON_DATA_MANIFEST_H_
#define FEDTUNE_COMMON_DATA_MANIFEST_H_

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/data/chexpert_labels.h"
#include "common/io/csv.h"

namespace fedtune::data {

// One observation as written in the manifest.
enum class RawLabel : int8_t {
  kBlank = 0,      // Empty cell: not mentioned in the report.
  kNegative = 1,   // 0.0
  kPositive = 2,   // 1.0
  kUncertain = 3,  // -1.0
};

using RawLabels = std::array<RawLabel, kNumChexpertLabels>;

enum class Sex : int8_t { kUnknown = 0, kMale = 1, kFemale = 2 };

enum class View : int8_t { kFrontal = 0, kLateral = 1 };

// One manifest row (one image).
struct ManifestEntry {
  // 1-based line of the row in the CSV file, for messages.
  int64_t line = 0;
  // As written: relative to the data root, '/'-separated.
  std::string path;
  // From the `Patient` column, else the `patientNNNNN` path component.
  std::string patient_id;
  // Unique over the whole manifest: "<patient_id>/<study>".
  std::string study_id;
  Sex sex = Sex::kUnknown;
  // Years; nullopt when blank.
  std::optional<double> age;
  View view = View::kFrontal;
  // The AP/PA cell: "AP", "PA", "LL", "RL" or "" (typical for laterals).
  std::string projection;
  // All kBlank by default.
  RawLabels labels{};
};

// The images of one study, as indices into Manifest::entries(), each list in
// manifest order.
struct Study {
  std::string study_id;
  std::string patient_id;
  std::vector<size_t> frontal;
  std::vector<size_t> lateral;
};

// The studies of one patient, as indices into Manifest::studies(), in order of
// first appearance.
struct Patient {
  std::string patient_id;
  std::vector<size_t> studies;
};

// A problem found while parsing a manifest, located by line (1 = the header)
// and column ("" when not about one column).
struct ManifestProblem {
  int64_t line = 0;
  std::string column;
  std::string message;
};

// "SOURCE:LINE: [COLUMN] MESSAGE", the format `data check` prints.
std::string FormatProblem(absl::string_view source, const ManifestProblem& problem);

// Parses one label cell: "" (after trimming spaces) -> kBlank; a number equal
// to 1, 0 or -1 ("1", "1.0", "-1.00") -> kPositive, kNegative, kUncertain.
// InvalidArgument for anything else.
absl::StatusOr<RawLabel> ParseRawLabel(absl::string_view cell);

// The longest manifest path accepted, in bytes (Linux's PATH_MAX).
inline constexpr size_t kMaxManifestPathBytes = 4096;

// Checks a manifest path: non-empty, at most kMaxManifestPathBytes, free of
// control characters (a NUL would cut it short at open(); newlines and
// terminal escapes would end up in reports), not starting or ending with a
// space (cells are read trimmed), relative, '/'-separated, and not
// leaving the data root through a ".." component. InvalidArgument saying
// which.
absl::Status ValidateManifestPath(absl::string_view path);

// Derives (patient, study) from CheXpert's path layout
// `.../patientNNNNN/studyN/viewN_frontal.jpg`: the last path component of the
// form "patient<digits>" and the component right after it, which must be
// "study<digits>". Returns nullopt when the path does not follow the layout.
struct PathIds {
  std::string patient;
  std::string study;
};
std::optional<PathIds> IdsFromChexpertPath(absl::string_view path);

// Immutable after construction; safe to read from any number of threads.
class Manifest {
 public:
  Manifest() = default;  // Empty.
  // Builds a manifest from already-parsed entries: groups them into studies and
  // patients. Does not validate values.
  explicit Manifest(std::string source, std::vector<ManifestEntry> entries);

  // Parses a CSV table strictly: InvalidArgument listing the first problems
  // ("SOURCE:LINE: ...", at most 20, plus a count of the rest) if any row or
  // the header has a problem. Studies without a frontal view are not an error
  // here (they are reported by `data check` and skipped by single-view
  // training).
  static absl::StatusOr<Manifest> FromTable(const io::CsvTable& table);
  // Reads and parses a manifest file: errors of io::ReadCsvFile, then as
  // FromTable.
  static absl::StatusOr<Manifest> ReadCsv(const std::string& path);

  const std::string& source() const { return source_; }
  const std::vector<ManifestEntry>& entries() const { return entries_; }
  const std::vector<Study>& studies() const { return studies_; }
  const std::vector<Patient>& patients() const { return patients_; }
  // Index into studies() of each entry, parallel to entries().
  const std::vector<size_t>& study_of_entry() const { return study_of_entry_; }
  // Index into patients() of each study, parallel to studies().
  const std::vector<size_t>& patient_of_study() const { return patient_of_study_; }

 private:
  std::string source_;
  std::vector<ManifestEntry> entries_;
  std::vector<Study> studies_;
  std::vector<Patient> patients_;
  std::vector<size_t> study_of_entry_;
  std::vector<size_t> patient_of_study_;
};

// The most problems a parse lists (the first ones, by line); the others are
// only counted (ManifestParse::unlisted_problems), so that a manifest that is
// wrong everywhere cannot make the report take gigabytes. Cells quoted in
// messages are shortened to 64 bytes and C-escaped.
inline constexpr int kMaxListedManifestProblems = 10000;

// The lenient parse behind `data check`: every problem of the header and of
// every row, in line order (the first kMaxListedManifestProblems listed, the
// rest counted). A row with a problem is left out of `manifest`.
// Duplicate paths (compared after lexical normalization: "a/./b" == "a/b") are
// reported at the later row, naming the first one; the later row is left out.
// `warnings` collects what does not stop training: unknown extra columns.
struct ManifestParse {
  Manifest manifest;
  std::vector<ManifestProblem> problems;
  // Problems found beyond the first kMaxListedManifestProblems.
  int64_t unlisted_problems = 0;
  std::vector<ManifestProblem> warnings;
  // The rows left out, parsed as far as their cells allowed (a bad cell keeps
  // its default), so that a checker can still look at, e.g., the image of a row
  // whose Age is malformed.
  std::vector<ManifestEntry> rejected;
};
ManifestParse ParseManifest(const io::CsvTable& table);

// Per-label counts of raw values over a set of entries.
struct LabelValueCounts {
  int64_t positive = 0;
  int64_t negative = 0;
  int64_t uncertain = 0;
  int64_t blank = 0;
};
std::array<LabelValueCounts, kNumChexpertLabels> CountLabelValues(const std::vector<ManifestEntry>& entries);

// The file an entry refers to: `root`/`entry_path` (root may be empty: the path
// is used as is).
std::string ResolveImagePath(absl::string_view root, absl::string_view entry_path);

}  // namespace fedtune::data

#endif  // FEDTUNE_COMMON_DATA_MANIFEST_H_
