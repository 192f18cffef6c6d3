// Reading RFC 4180 CSV files (CheXpert manifests, prediction and truth tables) with the line number of every
// record, so that every error can name the file, the line and the column.
#ifndef FEDTUNE_COMMON_IO_CSV_H_
#define FEDTUNE_COMMON_IO_CSV_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fedtune::io {

// One record: its fields (unquoted, "" unescaped) and the 1-based physical line on which it starts.
struct CsvRecord {
  int64_t line = 0;
  std::vector<std::string> fields;
};

// A whole table: the header record, then the data records. Every data record has exactly header.size() fields.
struct CsvTable {
  std::string source;  // The file name (or "<string>"), used in error messages.
  std::vector<std::string> header;
  std::vector<CsvRecord> rows;
  // Records whose field count differs from the header's, kept aside only with CsvParseOptions::keep_ragged_records.
  std::vector<CsvRecord> ragged;

  // Index of the column named `name` (exact match after trimming spaces), or nullopt.
  std::optional<size_t> ColumnIndex(absl::string_view name) const;
};

struct CsvParseOptions {
  // false (default): a record whose field count differs from the header's is an error. true: such records go to
  // CsvTable::ragged and parsing goes on, so that a validator can report every bad row at once.
  bool keep_ragged_records = false;
};

// Parses CSV text. Accepts LF and CRLF line ends, quoted fields with embedded commas, quotes ("") and newlines,
// a UTF-8 byte-order mark, and a missing final newline. Header names are trimmed of surrounding spaces. Entirely
// blank lines are skipped.
// Errors (InvalidArgument, message "SOURCE:LINE: ..."): empty input (no header), duplicate or empty header names,
// an unterminated quoted field, a quote inside an unquoted field, text after a closing quote, and a record whose
// field count differs from the header's (unless options.keep_ragged_records).
absl::StatusOr<CsvTable> ParseCsv(absl::string_view text, absl::string_view source = "<string>",
                                  const CsvParseOptions& options = {});

// Reads and parses a CSV file. NotFound if the file does not exist, PermissionDenied/Internal if it cannot be read,
// otherwise as ParseCsv with the path as source.
absl::StatusOr<CsvTable> ReadCsvFile(const std::string& path, const CsvParseOptions& options = {});

// Quotes a field for writing when it contains a comma, quote, CR or LF; otherwise returns it unchanged.
std::string CsvEscape(absl::string_view field);

}  // namespace fedtune::io

#endif  // FEDTUNE_COMMON_IO_CSV_H_
