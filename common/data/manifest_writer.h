// Writing CheXpert-format manifests (the format manifest.h reads): for the commands that build a manifest from
// other sources (`data index` from a PACS export folder or a public collection's own tables).
#ifndef FEDTUNE_COMMON_DATA_MANIFEST_WRITER_H_
#define FEDTUNE_COMMON_DATA_MANIFEST_WRITER_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/data/manifest.h"

namespace fedtune::data {

// One row to write. `patient` and `study` go to the explicit Patient and Study columns (the study only needs to be
// unique within its patient).
struct ManifestRow {
  std::string path;  // Relative to the data root, '/'-separated (ValidateManifestPath).
  std::string patient;
  std::string study;
  Sex sex = Sex::kUnknown;
  std::optional<double> age;  // Years.
  View view = View::kFrontal;
  std::string projection;  // "AP", "PA", "LL", "RL" or "".
  RawLabels labels{};      // kBlank everywhere by default.
};

// The CSV text of a manifest: the header `Path,Sex,Age,Frontal/Lateral,AP/PA,<the 14 labels>,Patient,Study`, then
// one line per row in the given order. Labels are written 1.0 / 0.0 / -1.0 / blank, sex Male / Female / blank, age
// with up to 6 significant digits or blank. Fields are quoted as RFC 4180 needs. Rows are not validated here:
// ParseManifest of the result reports what is wrong, by line (row i is on line i + 2).
std::string FormatManifestCsv(const std::vector<ManifestRow>& rows);

// FormatManifestCsv written to `path` atomically (io::WriteFileAtomically) with permission bits `mode` (0600 for a
// manifest that names studies by accession number); errors name the path.
absl::Status WriteManifestCsv(const std::string& path, const std::vector<ManifestRow>& rows, int mode = 0644);

}  // namespace fedtune::data

#endif  // FEDTUNE_COMMON_DATA_MANIFEST_WRITER_H_
