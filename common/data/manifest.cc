#include "common/data/manifest.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"

namespace fedtune::data {
namespace {

constexpr const char* kPathColumn = "Path";
constexpr const char* kSexColumn = "Sex";
constexpr const char* kAgeColumn = "Age";
constexpr const char* kViewColumn = "Frontal/Lateral";
constexpr const char* kProjectionColumn = "AP/PA";
constexpr const char* kPatientColumn = "Patient";
constexpr const char* kStudyColumn = "Study";

constexpr int kMaxProblemsInStatus = 20;
constexpr double kMaxAgeYears = 130.0;

// Text from the file as shown in a message: at most 64 bytes of it, C-escaped
// (no control characters reach a terminal or log), with its size when
// shortened; in single quotes when `quote`.
std::string Shown(absl::string_view text, bool quote) {
  constexpr size_t kShown = 64;
  const absl::string_view q = quote ? "'" : "";
  if (text.size() <= kShown) return absl::StrCat(q, absl::CHexEscape(text), q);
  return absl::StrCat(q, absl::CHexEscape(text.substr(0, kShown)), "...", q, " (", text.size(), " bytes)");
}

std::string Quoted(absl::string_view cell) { return Shown(cell, true); }

bool IsDigits(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

// Column positions of one table; nullopt for a column the header lacks.
struct Columns {
  std::optional<size_t> path, sex, age, view, projection, patient, study;
  std::array<std::optional<size_t>, kNumChexpertLabels> labels;
};

Columns FindColumns(const io::CsvTable& table, std::vector<ManifestProblem>* problems,
                    std::vector<ManifestProblem>* warnings) {
  Columns c;
  auto required = [&](const char* name) {
    std::optional<size_t> index = table.ColumnIndex(name);
    if (!index) problems->push_back({1, name, "missing required column"});
    return index;
  };
  c.path = required(kPathColumn);
  c.sex = required(kSexColumn);
  c.age = required(kAgeColumn);
  c.view = required(kViewColumn);
  c.projection = required(kProjectionColumn);
  c.patient = table.ColumnIndex(kPatientColumn);
  c.study = table.ColumnIndex(kStudyColumn);
  for (int l = 0; l < kNumChexpertLabels; ++l) {
    c.labels[l] = required(kChexpertLabels[l]);
  }

  std::set<std::string> known(kChexpertMetadataColumns.begin(), kChexpertMetadataColumns.end());
  known.insert(kChexpertLabels.begin(), kChexpertLabels.end());
  for (const std::string& name : table.header) {
    if (!known.count(name)) {
      warnings->push_back({1, name, "unknown column, ignored"});
    }
  }
  return c;
}

std::string Cell(const io::CsvRecord& row, std::optional<size_t> column) {
  if (!column) return "";
  return std::string(absl::StripAsciiWhitespace(row.fields[*column]));
}

std::string NormalizedPath(const std::string& path) {
  // Most paths are already normal; std::filesystem is slow on 200k rows.
  const bool normal = !absl::StrContains(path, "//") && !absl::StrContains(path, "/./") &&
                      !absl::StartsWith(path, "./") && !absl::StrContains(path, "/../") &&
                      !absl::EndsWith(path, "/.") && !absl::EndsWith(path, "/");
  if (normal) return path;
  return std::filesystem::path(path).lexically_normal().generic_string();
}

// Parses the cells of one row into `entry`, appending every problem found.
// Returns true if the row is clean.
bool ParseRow(const io::CsvRecord& row, const Columns& c, ManifestEntry* entry,
              std::vector<ManifestProblem>* problems) {
  const size_t before = problems->size();
  auto problem = [&](const char* column, std::string message) {
    problems->push_back({row.line, column, std::move(message)});
  };
  entry->line = row.line;

  if (c.path) {
    entry->path = Cell(row, c.path);
    if (absl::Status s = ValidateManifestPath(entry->path); !s.ok()) {
      problem(kPathColumn, std::string(s.message()));
    }
  }
  if (c.sex) {
    const std::string sex = absl::AsciiStrToLower(Cell(row, c.sex));
    if (sex == "male" || sex == "m") {
      entry->sex = Sex::kMale;
    } else if (sex == "female" || sex == "f") {
      entry->sex = Sex::kFemale;
    } else if (sex.empty() || sex == "unknown" || sex == "u") {
      entry->sex = Sex::kUnknown;
    } else {
      problem(kSexColumn, absl::StrCat(Quoted(Cell(row, c.sex)), " is not Male, Female, Unknown or blank"));
    }
  }
  if (c.age) {
    const std::string age = Cell(row, c.age);
    double years = 0;
    if (!age.empty()) {
      if (!absl::SimpleAtod(age, &years) || !std::isfinite(years) || years < 0 || years > kMaxAgeYears) {
        problem(kAgeColumn, absl::StrCat(Quoted(age), " is not an age in years (0 to ", kMaxAgeYears, ") or blank"));
      } else {
        entry->age = years;
      }
    }
  }
  if (c.view) {
    const std::string view = absl::AsciiStrToLower(Cell(row, c.view));
    if (view == "frontal") {
      entry->view = View::kFrontal;
    } else if (view == "lateral") {
      entry->view = View::kLateral;
    } else {
      problem(kViewColumn, absl::StrCat(Quoted(Cell(row, c.view)), " is not Frontal or Lateral"));
    }
  }
  if (c.projection) {
    entry->projection = absl::AsciiStrToUpper(Cell(row, c.projection));
    const std::string& p = entry->projection;
    if (!(p.empty() || p == "AP" || p == "PA" || p == "LL" || p == "RL")) {
      problem(kProjectionColumn, absl::StrCat(Quoted(Cell(row, c.projection)), " is not AP, PA, LL, RL or blank"));
    }
  }
  for (int l = 0; l < kNumChexpertLabels; ++l) {
    if (!c.labels[l]) continue;
    absl::StatusOr<RawLabel> label = ParseRawLabel(row.fields[*c.labels[l]]);
    if (label.ok()) {
      entry->labels[l] = *label;
    } else {
      problem(kChexpertLabels[l], std::string(label.status().message()));
    }
  }

  // Ids: explicit columns win; otherwise CheXpert's path layout.
  std::string patient = Cell(row, c.patient);
  std::string study = Cell(row, c.study);
  if (patient.empty() || study.empty()) {
    std::optional<PathIds> ids = IdsFromChexpertPath(entry->path);
    if (ids) {
      if (patient.empty()) patient = ids->patient;
      if (study.empty()) study = ids->study;
    } else if (!entry->path.empty()) {
      problem(patient.empty() ? kPatientColumn : kStudyColumn,
              "no id: the path does not follow .../patientNNNNN/studyN/... and "
              "the Patient/Study cell is blank");
    }
  }
  entry->patient_id = patient;
  entry->study_id = absl::StrCat(patient, "/", study);
  return problems->size() == before;
}

}  // namespace

std::string FormatProblem(absl::string_view source, const ManifestProblem& problem) {
  std::string out = absl::StrCat(source, ":", problem.line, ": ");
  // Column names come from the file's header: escaped and shortened as cells are.
  if (!problem.column.empty()) absl::StrAppend(&out, "[", Shown(problem.column, false), "] ");
  absl::StrAppend(&out, problem.message);
  return out;
}

absl::StatusOr<RawLabel> ParseRawLabel(absl::string_view cell) {
  absl::string_view v = absl::StripAsciiWhitespace(cell);
  if (v.empty()) return RawLabel::kBlank;
  double value = 0;
  if (absl::SimpleAtod(v, &value)) {
    if (value == 1.0) return RawLabel::kPositive;
    if (value == 0.0) return RawLabel::kNegative;
    if (value == -1.0) return RawLabel::kUncertain;
  }
  return absl::InvalidArgumentError(absl::StrCat(Quoted(v), " is not 1.0, 0.0, -1.0 or blank"));
}

absl::Status ValidateManifestPath(absl::string_view path) {
  if (path.empty()) return absl::InvalidArgumentError("empty path");
  if (path.size() > kMaxManifestPathBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("path of ", path.size(), " bytes, longer than ", kMaxManifestPathBytes));
  }
  for (size_t i = 0; i < path.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(path[i]);
    if (c < 0x20 || c == 0x7F) {
      return absl::InvalidArgumentError(absl::StrCat("path contains a control character (byte ",
                                                     absl::StrFormat("0x%02x", c), " at offset ", i, ")"));
    }
  }
  if (path.front() == ' ' || path.back() == ' ') {
    // Manifest cells are read trimmed: such a path would name another file when read back.
    return absl::InvalidArgumentError("path starts or ends with a space (manifest cells are read trimmed)");
  }
  if (absl::StrContains(path, '\\')) {
    return absl::InvalidArgumentError("path contains '\\'; separate with '/'");
  }
  if (path.front() == '/') {
    return absl::InvalidArgumentError("absolute path; paths are relative to the data root");
  }
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part == "..") {
      return absl::InvalidArgumentError("path leaves the data root ('..')");
    }
  }
  return absl::OkStatus();
}

std::optional<PathIds> IdsFromChexpertPath(absl::string_view path) {
  std::vector<absl::string_view> parts = absl::StrSplit(path, '/', absl::SkipEmpty());
  for (size_t i = parts.size(); i-- > 0;) {
    absl::string_view part = parts[i];
    if (absl::StartsWith(part, "patient") && IsDigits(part.substr(7))) {
      if (i + 1 >= parts.size()) return std::nullopt;
      absl::string_view study = parts[i + 1];
      if (!absl::StartsWith(study, "study") || !IsDigits(study.substr(5))) {
        return std::nullopt;
      }
      return PathIds{std::string(part), std::string(study)};
    }
  }
  return std::nullopt;
}

Manifest::Manifest(std::string source, std::vector<ManifestEntry> entries)
    : source_(std::move(source)), entries_(std::move(entries)) {
  absl::flat_hash_map<std::string, size_t> study_index;
  absl::flat_hash_map<std::string, size_t> patient_index;
  study_of_entry_.reserve(entries_.size());
  for (size_t i = 0; i < entries_.size(); ++i) {
    const ManifestEntry& e = entries_[i];
    auto [pit, new_patient] = patient_index.emplace(e.patient_id, patients_.size());
    if (new_patient) patients_.push_back(Patient{e.patient_id, {}});
    auto [sit, new_study] = study_index.emplace(e.study_id, studies_.size());
    if (new_study) {
      studies_.push_back(Study{e.study_id, e.patient_id, {}, {}});
      patient_of_study_.push_back(pit->second);
      patients_[pit->second].studies.push_back(sit->second);
    }
    Study& study = studies_[sit->second];
    (e.view == View::kFrontal ? study.frontal : study.lateral).push_back(i);
    study_of_entry_.push_back(sit->second);
  }
}

ManifestParse ParseManifest(const io::CsvTable& table) {
  std::vector<ManifestProblem> problems;
  std::vector<ManifestProblem> warnings;
  const Columns columns = FindColumns(table, &problems, &warnings);

  std::vector<ManifestEntry> entries;
  std::vector<ManifestEntry> rejected;
  entries.reserve(table.rows.size());
  absl::flat_hash_map<std::string, int64_t> first_line_of_path;
  int64_t unlisted = 0;
  std::vector<ManifestProblem> row_problems;
  for (const io::CsvRecord& row : table.rows) {
    ManifestEntry entry;
    row_problems.clear();
    bool clean = ParseRow(row, columns, &entry, &row_problems);
    if (!entry.path.empty()) {
      auto [it, inserted] = first_line_of_path.emplace(NormalizedPath(entry.path), row.line);
      if (!inserted) {
        row_problems.push_back(
            {row.line, kPathColumn,
             absl::StrCat("duplicate path ", Quoted(entry.path), " (first on line ", it->second, ")")});
        clean = false;
      }
    }
    // Rows come in line order: the problems kept are the first ones.
    for (ManifestProblem& p : row_problems) {
      if (problems.size() < static_cast<size_t>(kMaxListedManifestProblems)) {
        problems.push_back(std::move(p));
      } else {
        ++unlisted;
      }
    }
    (clean ? entries : rejected).push_back(std::move(entry));
  }
  // A row reported twice keeps its problems together and in column order; rows
  // stay in line order.
  std::stable_sort(problems.begin(), problems.end(),
                   [](const ManifestProblem& a, const ManifestProblem& b) { return a.line < b.line; });
  return ManifestParse{Manifest(table.source, std::move(entries)), std::move(problems), unlisted, std::move(warnings),
                       std::move(rejected)};
}

absl::StatusOr<Manifest> Manifest::FromTable(const io::CsvTable& table) {
  ManifestParse parse = ParseManifest(table);
  if (parse.problems.empty()) return std::move(parse.manifest);
  const int64_t total = static_cast<int64_t>(parse.problems.size()) + parse.unlisted_problems;
  std::string message = absl::StrCat(total, " problem(s) in manifest ", table.source, ":");
  const int shown = std::min<int>(parse.problems.size(), kMaxProblemsInStatus);
  for (int i = 0; i < shown; ++i) {
    absl::StrAppend(&message, "\n  ", FormatProblem(table.source, parse.problems[i]));
  }
  if (shown < total) {
    absl::StrAppend(&message, "\n  ... and ", total - shown, " more (run `fedtune-site data check`)");
  }
  return absl::InvalidArgumentError(message);
}

absl::StatusOr<Manifest> Manifest::ReadCsv(const std::string& path) {
  ASSIGN_OR_RETURN(io::CsvTable table, io::ReadCsvFile(path));
  return FromTable(table);
}

std::array<LabelValueCounts, kNumChexpertLabels> CountLabelValues(const std::vector<ManifestEntry>& entries) {
  std::array<LabelValueCounts, kNumChexpertLabels> counts{};
  for (const ManifestEntry& e : entries) {
    for (int l = 0; l < kNumChexpertLabels; ++l) {
      switch (e.labels[l]) {
        case RawLabel::kPositive:
          ++counts[l].positive;
          break;
        case RawLabel::kNegative:
          ++counts[l].negative;
          break;
        case RawLabel::kUncertain:
          ++counts[l].uncertain;
          break;
        case RawLabel::kBlank:
          ++counts[l].blank;
          break;
      }
    }
  }
  return counts;
}

std::string ResolveImagePath(absl::string_view root, absl::string_view entry_path) {
  if (root.empty()) return std::string(entry_path);
  while (root.size() > 1 && root.back() == '/') root.remove_suffix(1);
  if (root == "/") return absl::StrCat("/", entry_path);
  return absl::StrCat(root, "/", entry_path);
}

}  // namespace fedtune::data
