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

  // Limits on untrusted input. A CSV file is an untrusted input (a manifest is a hospital's export), and parsing
  // keeps every field as a string: about 32 bytes of memory per field even when the field is empty, so without
  // limits a file of commas would take 32 times its size. The defaults are ten times or more what the largest public
  // chest X-ray manifests need (CheXpert: 224k rows x 19 columns = 4.3M fields; MIMIC-CXR: 377k rows) and bound
  // the parse to about 1 GiB. Exceeding one is InvalidArgument "SOURCE:LINE: ..." naming the limit.
  //
  // Records (the header included). Default 4,000,000.
  int64_t max_records = 4'000'000;
  // Fields of one record. Default 1024.
  int64_t max_fields_per_record = 1024;
  // Fields of the whole file. Default 16,000,000 (512 MB of empty strings).
  int64_t max_cells = 16'000'000;
  // Bytes of one field after unquoting. Default 65,536 (paths are at most 4,096).
  int64_t max_field_bytes = 64 * 1024;
  // Bytes of one record as written (quotes, separators and embedded newlines included). Default 1 MiB.
  int64_t max_record_bytes = 1 << 20;
  // ReadCsvFile only: larger files are refused unread. Default 256 MiB.
  int64_t max_file_bytes = int64_t{256} << 20;
};

// Parses CSV text. Accepts LF and CRLF line ends, quoted fields with embedded commas, quotes ("") and newlines,
// a UTF-8 byte-order mark, and a missing final newline. Header names are trimmed of surrounding spaces. Entirely
// blank lines are skipped.
// Errors (InvalidArgument, message "SOURCE:LINE: ..."): empty input (no header), duplicate or empty header names,
// an unterminated quoted field, a quote inside an unquoted field, text after a closing quote, a record whose
// field count differs from the header's (unless options.keep_ragged_records), and any of the options' limits
// exceeded (a field is named by its 1-based position and, when the header has it, its column name).
absl::StatusOr<CsvTable> ParseCsv(absl::string_view text, absl::string_view source = "<string>",
                                  const CsvParseOptions& options = {});

// Reads and parses a CSV file. NotFound if the file does not exist, PermissionDenied/Internal if it cannot be read,
// InvalidArgument (naming the path) if it is not a regular file (a FIFO or device would never end) or is larger than
// options.max_file_bytes, otherwise as ParseCsv with the path as source.
absl::StatusOr<CsvTable> ReadCsvFile(const std::string& path, const CsvParseOptions& options = {});

// Quotes a field for writing when it contains a comma, quote, CR or LF; otherwise returns it unchanged.
std::string CsvEscape(absl::string_view field);

}  // namespace fedtune::io

#endif  // FEDTUNE_COMMON_IO_CSV_H_
