#include "common/data/public_collections.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/data/manifest.h"
#include "common/io/csv.h"
#include "common/io/file_util.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace fedtune::data {
namespace {

constexpr int64_t kMaxTableBytes = int64_t{256} << 20;
constexpr int64_t kMaxListBytes = int64_t{64} << 20;
constexpr int64_t kMaxListLines = 4'000'000;
constexpr size_t kMaxIdBytes = 64;
constexpr size_t kMaxNumericIdDigits = 18;
constexpr size_t kMaxImageNameBytes = 255;
constexpr size_t kMaxAgeDigits = 4;
constexpr double kMaxAgeYears = 130.0;

// The name given to the empty last header cell of some copies of Data_Entry_2017.csv, so that the CSV parser (which
// refuses empty column names) accepts the table. No real column has this name.
constexpr char kTrailingColumnName[] = "(trailing empty column)";

// Text from a file as shown in a message: at most 64 bytes, C-escaped, in single quotes.
std::string Quoted(absl::string_view text) {
  constexpr size_t kShown = 64;
  if (text.size() <= kShown) return absl::StrCat("'", absl::CHexEscape(text), "'");
  return absl::StrCat("'", absl::CHexEscape(text.substr(0, kShown)), "...' (", text.size(), " bytes)");
}

bool IsDigits(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

// A whole file of at most `max_bytes`, measured before it is read (a FIFO or device would never end). Errors name
// the path: io::ErrnoToStatus's codes when it cannot be opened, InvalidArgument when it is not a regular file, is
// too large or is gzip-compressed (PhysioNet distributes the MIMIC-CXR tables as .csv.gz).
absl::StatusOr<std::string> ReadBounded(const std::string& path, int64_t max_bytes, absl::string_view what) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return io::ErrnoToStatus(errno, absl::StrCat("cannot open ", what), path);
  if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat(path, ": ", what, " is not a regular file"));
  auto too_large = [&](int64_t size) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", what, " of ", size, " bytes, above the limit of ", max_bytes, " bytes"));
  };
  if (st.st_size > max_bytes) return too_large(st.st_size);
  ASSIGN_OR_RETURN(std::string text, io::ReadFile(path));
  if (static_cast<int64_t>(text.size()) > max_bytes) return too_large(text.size());  // Grown since measured.
  if (text.size() >= 2 && text[0] == '\x1f' && text[1] == '\x8b') {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", what, " is gzip-compressed; decompress it first (gunzip -k ", path, ")"));
  }
  return text;
}

// Reads a CSV table (io::CsvParseOptions' default limits). With `name_trailing_empty_column`, a header line ending
// in ',' (an empty last column name) gets kTrailingColumnName for that column.
absl::StatusOr<io::CsvTable> ReadTable(const std::string& path, absl::string_view what,
                                       bool name_trailing_empty_column = false) {
  ASSIGN_OR_RETURN(std::string text, ReadBounded(path, kMaxTableBytes, what));
  if (name_trailing_empty_column) {
    size_t end = text.find('\n');
    if (end == std::string::npos) end = text.size();
    size_t last = end;
    if (last > 0 && text[last - 1] == '\r') --last;
    if (last > 0 && text[last - 1] == ',') text.insert(last, kTrailingColumnName);
  }
  return io::ParseCsv(text, path);
}

// Column positions by name.
class Columns {
 public:
  // InvalidArgument naming the table and every missing column.
  static absl::StatusOr<Columns> Find(const io::CsvTable& table, const std::vector<std::string>& names,
                                      absl::string_view what) {
    Columns columns;
    std::vector<std::string> missing;
    for (const std::string& name : names) {
      std::optional<size_t> index = table.ColumnIndex(name);
      if (index) {
        columns.index_[name] = *index;
      } else {
        missing.push_back(absl::StrCat("'", name, "'"));
      }
    }
    if (!missing.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(table.source, ":1: the header lacks column(s) ", absl::StrJoin(missing, ", "), " of a ", what));
    }
    return columns;
  }

  // The cell of `record` in column `name` (one passed to Find), trimmed of surrounding spaces.
  absl::string_view Cell(const io::CsvRecord& record, absl::string_view name) const {
    auto it = index_.find(name);
    CHECK(it != index_.end()) << "column " << name << " was not looked up";
    return absl::StripAsciiWhitespace(record.fields[it->second]);
  }

 private:
  std::map<std::string, size_t, std::less<>> index_;
};

// "SOURCE:LINE: [COLUMN] MESSAGE" as InvalidArgument.
absl::Status CellError(const io::CsvTable& table, const io::CsvRecord& record, absl::string_view column,
                       absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(table.source, ":", record.line, ": [", column, "] ", message));
}

// A numeric id (MIMIC's subject_id and study_id, NIH's Patient ID and Follow-up #): digits only, at most
// kMaxNumericIdDigits.
absl::StatusOr<std::string> NumericId(const io::CsvTable& table, const io::CsvRecord& record, const Columns& columns,
                                      absl::string_view column) {
  absl::string_view cell = columns.Cell(record, column);
  if (!IsDigits(cell) || cell.size() > kMaxNumericIdDigits) {
    return CellError(
        table, record, column,
        absl::StrCat(Quoted(cell), " is not a numeric id (digits only, at most ", kMaxNumericIdDigits, ")"));
  }
  return std::string(cell);
}

// MIMIC-CXR's dicom_id ("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"): 1 to kMaxIdBytes of letters, digits, '-',
// '_' and '.', not "." or "..", so that it is one safe path component.
absl::StatusOr<std::string> DicomId(const io::CsvTable& table, const io::CsvRecord& record, const Columns& columns,
                                    absl::string_view column) {
  absl::string_view cell = columns.Cell(record, column);
  bool ok = !cell.empty() && cell.size() <= kMaxIdBytes && cell != "." && cell != "..";
  for (char c : cell) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') ok = false;
  }
  if (!ok) {
    return CellError(
        table, record, column,
        absl::StrCat(Quoted(cell), " is not a DICOM id (1 to ", kMaxIdBytes, " letters, digits, '-', '_' or '.')"));
  }
  return std::string(cell);
}

// Normalizes and checks options.path_prefix: "" or a valid relative path ending in '/'.
absl::StatusOr<std::string> PathPrefix(const PublicCollectionOptions& options) {
  std::string prefix = options.path_prefix;
  if (prefix.empty()) return prefix;
  if (prefix.back() != '/') prefix.push_back('/');
  absl::Status valid = ValidateManifestPath(absl::StrCat(prefix, "x"));
  if (!valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("path prefix ", Quoted(options.path_prefix), ": ", valid.message()));
  }
  return prefix;
}

// The path of a row, checked as ParseManifest will check it.
absl::StatusOr<std::string> RowPath(const io::CsvTable& table, const io::CsvRecord& record, std::string path) {
  absl::Status valid = ValidateManifestPath(path);
  if (!valid.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(table.source, ":", record.line, ": image path ", Quoted(path), ": ", valid.message()));
  }
  return path;
}

// "3 'LAO', 2 blank" from counts by value, most frequent first (ties by value).
std::string CountsByValue(const std::map<std::string, int64_t>& counts) {
  std::vector<std::pair<int64_t, std::string>> sorted;
  for (const auto& [value, count] : counts) sorted.emplace_back(-count, value);
  std::sort(sorted.begin(), sorted.end());
  std::vector<std::string> parts;
  for (const auto& [negative_count, value] : sorted) {
    parts.push_back(absl::StrCat(-negative_count, " ", value.empty() ? std::string("blank") : Quoted(value)));
  }
  return absl::StrJoin(parts, ", ");
}

// The kept rows' totals: "kept N images (F frontal, L lateral) of S studies of P patients".
std::string KeptNote(const std::vector<ManifestRow>& rows) {
  std::set<std::pair<std::string, std::string>> studies;
  std::set<std::string> patients;
  int64_t lateral = 0;
  for (const ManifestRow& row : rows) {
    studies.emplace(row.patient, row.study);
    patients.insert(row.patient);
    if (row.view == View::kLateral) ++lateral;
  }
  return absl::StrCat("kept ", rows.size(), " images (", rows.size() - lateral, " frontal, ", lateral, " lateral) of ",
                      studies.size(), " studies of ", patients.size(), " patients");
}

// ---- MIMIC-CXR ----

constexpr char kSubjectId[] = "subject_id";
constexpr char kStudyId[] = "study_id";
constexpr char kDicomId[] = "dicom_id";
constexpr char kViewPosition[] = "ViewPosition";
constexpr char kSplit[] = "split";

struct MimicLabelRow {
  int64_t line = 0;
  std::string subject;
  RawLabels labels{};
  bool used = false;
};

struct MimicSplitRow {
  int64_t line = 0;
  std::string study;
  std::string subject;
  std::string split;
};

absl::StatusOr<absl::flat_hash_map<std::string, MimicLabelRow>> ReadMimicLabels(const std::string& path) {
  ASSIGN_OR_RETURN(io::CsvTable table, ReadTable(path, "labels table"));
  std::vector<std::string> names = {kSubjectId, kStudyId};
  for (const char* label : kChexpertLabels) names.push_back(label);
  ASSIGN_OR_RETURN(Columns columns,
                   Columns::Find(table, names, "MIMIC-CXR labels table (mimic-cxr-2.0.0-chexpert.csv or -negbio.csv)"));
  absl::flat_hash_map<std::string, MimicLabelRow> by_study;
  by_study.reserve(table.rows.size());
  for (const io::CsvRecord& record : table.rows) {
    MimicLabelRow row;
    row.line = record.line;
    ASSIGN_OR_RETURN(row.subject, NumericId(table, record, columns, kSubjectId));
    ASSIGN_OR_RETURN(std::string study, NumericId(table, record, columns, kStudyId));
    for (int l = 0; l < kNumChexpertLabels; ++l) {
      absl::StatusOr<RawLabel> label = ParseRawLabel(columns.Cell(record, kChexpertLabels[l]));
      if (!label.ok()) return CellError(table, record, kChexpertLabels[l], label.status().message());
      row.labels[l] = *label;
    }
    auto [it, inserted] = by_study.try_emplace(study, std::move(row));
    if (!inserted) {
      return CellError(table, record, kStudyId,
                       absl::StrCat("study ", study, " already has a row on line ", it->second.line,
                                    " (the labels table has one row per study)"));
    }
  }
  return by_study;
}

absl::StatusOr<absl::flat_hash_map<std::string, MimicSplitRow>> ReadMimicSplit(const std::string& path) {
  ASSIGN_OR_RETURN(io::CsvTable table, ReadTable(path, "split table"));
  ASSIGN_OR_RETURN(Columns columns, Columns::Find(table, {kDicomId, kStudyId, kSubjectId, kSplit},
                                                  "MIMIC-CXR split table (mimic-cxr-2.0.0-split.csv)"));
  absl::flat_hash_map<std::string, MimicSplitRow> by_image;
  by_image.reserve(table.rows.size());
  for (const io::CsvRecord& record : table.rows) {
    MimicSplitRow row;
    row.line = record.line;
    ASSIGN_OR_RETURN(std::string dicom, DicomId(table, record, columns, kDicomId));
    ASSIGN_OR_RETURN(row.study, NumericId(table, record, columns, kStudyId));
    ASSIGN_OR_RETURN(row.subject, NumericId(table, record, columns, kSubjectId));
    row.split = std::string(columns.Cell(record, kSplit));
    if (row.split != "train" && row.split != "validate" && row.split != "test") {
      return CellError(table, record, kSplit, absl::StrCat(Quoted(row.split), " is not train, validate or test"));
    }
    auto [it, inserted] = by_image.try_emplace(dicom, std::move(row));
    if (!inserted) {
      return CellError(table, record, kDicomId, absl::StrCat("image ", dicom, " already on line ", it->second.line));
    }
  }
  return by_image;
}

absl::StatusOr<PublicCollectionIndex> IndexMimic(const PublicCollectionOptions& options) {
  if (options.metadata_csv.empty()) {
    return absl::InvalidArgumentError("MIMIC-CXR needs its metadata table (mimic-cxr-2.0.0-metadata.csv)");
  }
  std::string extension;
  if (options.image_kind == "dicom") {
    extension = ".dcm";
  } else if (options.image_kind == "jpg") {
    extension = ".jpg";
  } else {
    return absl::InvalidArgumentError(absl::StrCat("image kind ", Quoted(options.image_kind),
                                                   " is not 'dicom' (MIMIC-CXR) or 'jpg' (MIMIC-CXR-JPG)"));
  }
  if (!options.split.empty()) {
    if (options.split != "train" && options.split != "validate" && options.split != "test") {
      return absl::InvalidArgumentError(
          absl::StrCat("split ", Quoted(options.split), " is not 'train', 'validate' or 'test'"));
    }
    if (options.split_file.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("split '", options.split, "' needs the split table (mimic-cxr-2.0.0-split.csv)"));
    }
  }
  ASSIGN_OR_RETURN(const std::string prefix, PathPrefix(options));

  PublicCollectionIndex index;
  ASSIGN_OR_RETURN(auto labels, ReadMimicLabels(options.labels_csv));
  index.notes.push_back(absl::StrCat("labels: ", labels.size(), " studies in ", options.labels_csv));
  std::optional<absl::flat_hash_map<std::string, MimicSplitRow>> split;
  if (!options.split.empty()) {
    ASSIGN_OR_RETURN(split, ReadMimicSplit(options.split_file));
  } else if (!options.split_file.empty()) {
    index.notes.push_back(
        absl::StrCat("split table ", options.split_file, " not read: no split chosen, all splits kept"));
  }

  ASSIGN_OR_RETURN(io::CsvTable metadata, ReadTable(options.metadata_csv, "metadata table"));
  ASSIGN_OR_RETURN(Columns columns, Columns::Find(metadata, {kDicomId, kSubjectId, kStudyId, kViewPosition},
                                                  "MIMIC-CXR metadata table (mimic-cxr-2.0.0-metadata.csv)"));
  index.notes.push_back(absl::StrCat("metadata: ", metadata.rows.size(), " images in ", options.metadata_csv));

  absl::flat_hash_map<std::string, int64_t> line_of_image;
  line_of_image.reserve(metadata.rows.size());
  int64_t not_in_split = 0, other_split = 0, unlabelled_images = 0;
  std::set<std::string> unlabelled_studies;
  std::map<std::string, int64_t> skipped_views;
  for (const io::CsvRecord& record : metadata.rows) {
    ASSIGN_OR_RETURN(std::string dicom, DicomId(metadata, record, columns, kDicomId));
    ASSIGN_OR_RETURN(std::string subject, NumericId(metadata, record, columns, kSubjectId));
    ASSIGN_OR_RETURN(std::string study, NumericId(metadata, record, columns, kStudyId));
    if (subject.size() < 2) {
      return CellError(metadata, record, kSubjectId,
                       absl::StrCat(Quoted(subject), " has fewer than 2 digits (the image folders are p<first 2>)"));
    }
    auto [seen, inserted] = line_of_image.try_emplace(dicom, record.line);
    if (!inserted) {
      return CellError(metadata, record, kDicomId, absl::StrCat("image ", dicom, " already on line ", seen->second));
    }
    auto label = labels.find(study);
    if (label != labels.end() && label->second.subject != subject) {
      return CellError(metadata, record, kSubjectId,
                       absl::StrCat("study ", study, " is of subject ", subject, " here but of subject ",
                                    label->second.subject, " in ", options.labels_csv, ":", label->second.line));
    }
    if (split) {
      auto it = split->find(dicom);
      if (it == split->end()) {
        ++not_in_split;
        continue;
      }
      if (it->second.study != study || it->second.subject != subject) {
        return CellError(metadata, record, kDicomId,
                         absl::StrCat("image ", dicom, " is of subject ", subject, ", study ", study,
                                      " here but of subject ", it->second.subject, ", study ", it->second.study, " in ",
                                      options.split_file, ":", it->second.line));
      }
      if (it->second.split != options.split) {
        ++other_split;
        continue;
      }
    }
    const std::string position = absl::AsciiStrToUpper(columns.Cell(record, kViewPosition));
    ManifestRow row;
    if (position == "PA" || position == "AP") {
      row.view = View::kFrontal;
      row.projection = position;
    } else if (position == "LATERAL" || position == "LL") {
      row.view = View::kLateral;
      row.projection = position == "LL" ? "LL" : "";
    } else {
      ++skipped_views[std::string(columns.Cell(record, kViewPosition))];
      continue;
    }
    if (label == labels.end()) {
      ++unlabelled_images;
      unlabelled_studies.insert(study);
      continue;
    }
    label->second.used = true;
    ASSIGN_OR_RETURN(row.path, RowPath(metadata, record,
                                       absl::StrCat(prefix, "files/p", subject.substr(0, 2), "/p", subject, "/s", study,
                                                    "/", dicom, extension)));
    row.patient = std::move(subject);
    row.study = std::move(study);
    row.labels = label->second.labels;
    index.rows.push_back(std::move(row));
  }

  if (split) {
    if (not_in_split > 0) {
      index.notes.push_back(
          absl::StrCat("skipped ", not_in_split, " images with no row in the split table ", options.split_file));
    }
    index.notes.push_back(absl::StrCat("skipped ", other_split, " images of splits other than '", options.split, "'"));
  }
  if (!skipped_views.empty()) {
    int64_t total = 0;
    for (const auto& [value, count] : skipped_views) total += count;
    index.notes.push_back(absl::StrCat(
        "skipped ", total, " images whose ViewPosition is not PA, AP, LATERAL or LL: ", CountsByValue(skipped_views)));
  }
  if (unlabelled_images > 0) {
    index.notes.push_back(absl::StrCat("skipped ", unlabelled_images, " images of ", unlabelled_studies.size(),
                                       " studies with no row in the labels table"));
  }
  int64_t unused = 0;
  for (const auto& [study, row] : labels) unused += row.used ? 0 : 1;
  if (unused > 0) {
    index.notes.push_back(absl::StrCat(
        unused, " studies of the labels table have no image kept",
        split ? " (other splits, other views, or not in the metadata)" : " (other views, or not in the metadata)"));
  }
  index.notes.push_back(KeptNote(index.rows));
  return index;
}

// ---- NIH ChestX-ray14 ----

constexpr char kImageIndex[] = "Image Index";
constexpr char kFindingLabels[] = "Finding Labels";
constexpr char kFollowUp[] = "Follow-up #";
constexpr char kPatientId[] = "Patient ID";
constexpr char kPatientAge[] = "Patient Age";
constexpr char kPatientGender[] = "Patient Gender";  // Data_Entry_2017.csv.
constexpr char kPatientSex[] = "Patient Sex";        // Data_Entry_2017_v2020.csv, the table the NIH serves now.
constexpr char kViewPositionNih[] = "View Position";
constexpr char kNoFindingNih[] = "No Finding";

// The image list (train_val_list.txt / test_list.txt): one name per line, blank lines skipped.
absl::StatusOr<absl::flat_hash_map<std::string, bool>> ReadImageList(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadBounded(path, kMaxListBytes, "image list"));
  absl::flat_hash_map<std::string, bool> names;  // name -> found in the table.
  int64_t line = 0;
  for (absl::string_view raw : absl::StrSplit(text, '\n')) {
    if (++line > kMaxListLines) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": more than ", kMaxListLines, " lines"));
    }
    absl::string_view name = absl::StripAsciiWhitespace(raw);
    if (name.empty()) continue;
    if (name.size() > kMaxImageNameBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", line, ": ", Quoted(name), " is longer than ", kMaxImageNameBytes, " bytes"));
    }
    names.try_emplace(std::string(name), false);
  }
  return names;
}

// "058Y" / "58" -> 58 years; "011M", "020W", "005D" -> months, weeks, days in years (DICOM's Age String units).
// nullopt for a blank cell; InvalidArgument (message without a location) for anything else.
absl::StatusOr<std::optional<double>> ParseNihAge(absl::string_view cell) {
  if (cell.empty()) return std::optional<double>();
  double years_per_unit = 1.0;
  absl::string_view digits = cell;
  switch (absl::ascii_toupper(static_cast<unsigned char>(cell.back()))) {
    case 'Y':
      digits.remove_suffix(1);
      break;
    case 'M':
      years_per_unit = 1.0 / 12.0;
      digits.remove_suffix(1);
      break;
    case 'W':
      years_per_unit = 7.0 / 365.25;
      digits.remove_suffix(1);
      break;
    case 'D':
      years_per_unit = 1.0 / 365.25;
      digits.remove_suffix(1);
      break;
    default:
      break;
  }
  int value = 0;
  if (!IsDigits(digits) || digits.size() > kMaxAgeDigits || !absl::SimpleAtoi(digits, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat(Quoted(cell), " is not an age (digits, optionally followed by Y, M, W or D)"));
  }
  return std::optional<double>(value * years_per_unit);
}

// The NIH finding -> kNihToChexpert entry.
const NihFindingMapping* FindNihFinding(absl::string_view name) {
  for (const NihFindingMapping& mapping : kNihToChexpert) {
    if (name == mapping.nih) return &mapping;
  }
  return nullptr;
}

absl::StatusOr<PublicCollectionIndex> IndexNih(const PublicCollectionOptions& options) {
  if (!options.metadata_csv.empty()) {
    return absl::InvalidArgumentError(
        "NIH ChestX-ray14 has no metadata table (Data_Entry_2017.csv is the labels table); leave it out");
  }
  if (!options.split.empty()) {
    return absl::InvalidArgumentError(
        "NIH ChestX-ray14 has no named splits: give the image list (train_val_list.txt or test_list.txt) as the "
        "split file and no split");
  }
  ASSIGN_OR_RETURN(const std::string prefix, PathPrefix(options));

  PublicCollectionIndex index;
  ASSIGN_OR_RETURN(io::CsvTable table, ReadTable(options.labels_csv, "labels table", true));
  // The 2017 table calls the sex column "Patient Gender", the v2020 one "Patient Sex".
  const char* const sex_column = table.ColumnIndex(kPatientSex) ? kPatientSex : kPatientGender;
  ASSIGN_OR_RETURN(Columns columns, Columns::Find(table,
                                                  {kImageIndex, kFindingLabels, kFollowUp, kPatientId, kPatientAge,
                                                   sex_column, kViewPositionNih},
                                                  "NIH ChestX-ray14 table (Data_Entry_2017.csv or _v2020.csv)"));
  index.notes.push_back(absl::StrCat("labels: ", table.rows.size(), " images in ", options.labels_csv));
  std::optional<absl::flat_hash_map<std::string, bool>> list;
  if (!options.split_file.empty()) {
    ASSIGN_OR_RETURN(list, ReadImageList(options.split_file));
    index.notes.push_back(absl::StrCat("image list: ", list->size(), " names in ", options.split_file));
  }

  absl::flat_hash_map<std::string, int64_t> line_of_image;
  line_of_image.reserve(table.rows.size());
  int64_t not_listed = 0, old_ages = 0, other_sex = 0;
  std::string old_age_example;
  std::map<std::string, int64_t> skipped_views;
  std::map<std::string, int64_t> dropped_findings;
  for (const io::CsvRecord& record : table.rows) {
    const std::string image(columns.Cell(record, kImageIndex));
    if (image.empty() || image.size() > kMaxImageNameBytes || image == "." || image == ".." ||
        image.find('/') != std::string::npos) {
      return CellError(
          table, record, kImageIndex,
          absl::StrCat(Quoted(image), " is not a file name (1 to ", kMaxImageNameBytes, " bytes, no '/')"));
    }
    auto [seen, inserted] = line_of_image.try_emplace(image, record.line);
    if (!inserted) {
      return CellError(table, record, kImageIndex, absl::StrCat("image ", image, " already on line ", seen->second));
    }
    ManifestRow row;
    ASSIGN_OR_RETURN(row.patient, NumericId(table, record, columns, kPatientId));
    ASSIGN_OR_RETURN(row.study, NumericId(table, record, columns, kFollowUp));

    // Findings first, so that a malformed cell is reported whatever the filters below keep.
    const absl::string_view findings = columns.Cell(record, kFindingLabels);
    std::vector<const NihFindingMapping*> mapped;
    bool no_finding = false;
    for (absl::string_view part : absl::StrSplit(findings, '|')) {
      part = absl::StripAsciiWhitespace(part);
      const NihFindingMapping* mapping = FindNihFinding(part);
      if (mapping == nullptr) {
        return CellError(table, record, kFindingLabels,
                         absl::StrCat(Quoted(part), " in ", Quoted(findings),
                                      " is not one of ChestX-ray14's 14 findings or 'No Finding'"));
      }
      if (part == kNoFindingNih) no_finding = true;
      mapped.push_back(mapping);
    }
    if (no_finding && mapped.size() > 1) {
      return CellError(table, record, kFindingLabels,
                       absl::StrCat(Quoted(findings), " lists 'No Finding' together with findings"));
    }

    absl::StatusOr<std::optional<double>> age = ParseNihAge(columns.Cell(record, kPatientAge));
    if (!age.ok()) return CellError(table, record, kPatientAge, age.status().message());
    const absl::string_view sex = columns.Cell(record, sex_column);
    const std::string position = absl::AsciiStrToUpper(columns.Cell(record, kViewPositionNih));

    if (list) {
      auto it = list->find(image);
      if (it == list->end()) {
        ++not_listed;
        continue;
      }
      it->second = true;
    }
    if (position != "PA" && position != "AP") {
      ++skipped_views[std::string(columns.Cell(record, kViewPositionNih))];
      continue;
    }
    row.view = View::kFrontal;
    row.projection = position;
    if (age->has_value() && **age > kMaxAgeYears) {
      if (old_ages++ == 0) {
        old_age_example = absl::StrCat(Quoted(columns.Cell(record, kPatientAge)), " on line ", record.line);
      }
    } else {
      row.age = *age;
    }
    if (sex == "M") {
      row.sex = Sex::kMale;
    } else if (sex == "F") {
      row.sex = Sex::kFemale;
    } else if (!sex.empty()) {
      ++other_sex;
    }
    for (const NihFindingMapping& mapping : kNihToChexpert) {
      if (mapping.chexpert >= 0 && !mapping.positive_only) row.labels[mapping.chexpert] = RawLabel::kNegative;
    }
    for (const NihFindingMapping* mapping : mapped) {
      if (mapping->chexpert >= 0) {
        row.labels[mapping->chexpert] = RawLabel::kPositive;
      } else {
        ++dropped_findings[mapping->nih];
      }
    }
    ASSIGN_OR_RETURN(row.path, RowPath(table, record, absl::StrCat(prefix, image)));
    index.rows.push_back(std::move(row));
  }

  if (list) {
    index.notes.push_back(absl::StrCat("skipped ", not_listed, " images not in the image list ", options.split_file));
    int64_t unmatched = 0;
    std::string example;
    for (const auto& [name, found] : *list) {
      if (found) continue;
      if (++unmatched == 1 || name < example) example = name;
    }
    if (unmatched > 0) {
      index.notes.push_back(absl::StrCat(unmatched, " names of the image list have no row in ", options.labels_csv,
                                         " (e.g. ", Quoted(example), ")"));
    }
  }
  if (!skipped_views.empty()) {
    int64_t total = 0;
    for (const auto& [value, count] : skipped_views) total += count;
    index.notes.push_back(
        absl::StrCat("skipped ", total, " images whose View Position is not PA or AP: ", CountsByValue(skipped_views)));
  }
  if (old_ages > 0) {
    index.notes.push_back(absl::StrCat(old_ages, " images with an age above ", kMaxAgeYears,
                                       " years (a data error; first ", old_age_example, "): age left blank"));
  }
  if (other_sex > 0) {
    index.notes.push_back(absl::StrCat(other_sex, " images with a ", sex_column, " other than M or F: sex left blank"));
  }
  if (!dropped_findings.empty()) {
    std::vector<std::string> parts;
    for (const auto& [finding, count] : dropped_findings) parts.push_back(absl::StrCat(finding, " on ", count));
    index.notes.push_back(absl::StrCat(
        "findings with no CheXpert counterpart, not in the manifest: ", absl::StrJoin(parts, ", "), " images"));
  }
  index.notes.push_back(
      "CheXpert labels with no NIH counterpart left blank: Enlarged Cardiomediastinum, Lung Opacity, Fracture, "
      "Support Devices");
  index.notes.push_back(KeptNote(index.rows));
  return index;
}

}  // namespace

absl::StatusOr<PublicCollectionIndex> IndexPublicCollection(const PublicCollectionOptions& options) {
  if (options.labels_csv.empty()) return absl::InvalidArgumentError("the labels table is required");
  switch (options.collection) {
    case PublicCollection::kMimicCxr:
      return IndexMimic(options);
    case PublicCollection::kNihCxr14:
      return IndexNih(options);
  }
  return absl::InvalidArgumentError("unknown public collection");
}

}  // namespace fedtune::data
