// Fuzzes the CheXpert manifest parser: io::ParseCsv (default limits, ragged records kept as `data check` does), then
// data::ParseManifest, Manifest::FromTable and the label counts. Besides crashes and sanitizer reports, it checks
// the parser's contract: in a manifest without problems every entry has a valid path, listed problems are capped, and
// every problem formats.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/string_view.h"
#include "common/data/manifest.h"
#include "common/io/csv.h"

namespace {

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "manifest_fuzz: %s\n", what.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace fedtune;  // NOLINT: a harness.
  io::CsvParseOptions options;
  options.keep_ragged_records = true;
  const absl::StatusOr<io::CsvTable> table =
      io::ParseCsv(absl::string_view(reinterpret_cast<const char*>(data), size), "fuzz.csv", options);
  if (!table.ok()) {
    if (table.status().code() != absl::StatusCode::kInvalidArgument) Fail(table.status().ToString());
    return 0;
  }
  for (const io::CsvRecord& row : table->rows) {
    if (row.fields.size() != table->header.size()) Fail("a row with another field count than the header's");
  }
  const data::ManifestParse parse = data::ParseManifest(*table);
  if (parse.problems.size() > static_cast<size_t>(data::kMaxListedManifestProblems)) Fail("too many problems listed");
  for (const data::ManifestProblem& p : parse.problems) (void)data::FormatProblem(table->source, p);
  // Without a Path column, rows have no path problem of their own (the header has one).
  if (parse.problems.empty()) {
    for (const data::ManifestEntry& e : parse.manifest.entries()) {
      if (!data::ValidateManifestPath(e.path).ok()) Fail("an accepted entry with an invalid path: " + e.path);
    }
  }
  (void)data::CountLabelValues(parse.manifest.entries());
  const absl::StatusOr<data::Manifest> strict = data::Manifest::FromTable(*table);
  if (strict.ok() != (parse.problems.empty() && parse.unlisted_problems == 0)) Fail("strict and lenient disagree");
  return 0;
}
