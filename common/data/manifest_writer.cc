#include "common/data/manifest_writer.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/data/chexpert_labels.h"
#include "common/io/csv.h"
#include "common/io/file_util.h"

namespace fedtune::data {
namespace {

const char* LabelCell(RawLabel label) {
  switch (label) {
    case RawLabel::kPositive:
      return "1.0";
    case RawLabel::kNegative:
      return "0.0";
    case RawLabel::kUncertain:
      return "-1.0";
    case RawLabel::kBlank:
      break;
  }
  return "";
}

const char* SexCell(Sex sex) {
  switch (sex) {
    case Sex::kMale:
      return "Male";
    case Sex::kFemale:
      return "Female";
    case Sex::kUnknown:
      break;
  }
  return "";
}

}  // namespace

std::string FormatManifestCsv(const std::vector<ManifestRow>& rows) {
  std::string out = "Path,Sex,Age,Frontal/Lateral,AP/PA";
  for (const char* label : kChexpertLabels) absl::StrAppend(&out, ",", io::CsvEscape(label));
  absl::StrAppend(&out, ",Patient,Study\n");
  for (const ManifestRow& row : rows) {
    absl::StrAppend(&out, io::CsvEscape(row.path), ",", SexCell(row.sex), ",",
                    row.age ? absl::StrFormat("%g", *row.age) : std::string(), ",",
                    row.view == View::kLateral ? "Lateral" : "Frontal", ",", io::CsvEscape(row.projection));
    for (RawLabel label : row.labels) absl::StrAppend(&out, ",", LabelCell(label));
    absl::StrAppend(&out, ",", io::CsvEscape(row.patient), ",", io::CsvEscape(row.study), "\n");
  }
  return out;
}

absl::Status WriteManifestCsv(const std::string& path, const std::vector<ManifestRow>& rows, int mode) {
  io::AtomicWriteOptions options;
  options.mode = mode;
  return io::WriteFileAtomically(path, FormatManifestCsv(rows), options);
}

}  // namespace fedtune::data
