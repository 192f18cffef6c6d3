#include "common/io/csv.h"

#include <sys/stat.h>

#include <cerrno>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/status_macros.h"

namespace fedtune::io {
namespace {

absl::Status Error(absl::string_view source, int64_t line, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ":", line, ": ", what));
}

bool IsBlank(const std::vector<std::string>& fields) {
  return fields.size() == 1 && absl::StripAsciiWhitespace(fields[0]).empty();
}

}  // namespace

std::optional<size_t> CsvTable::ColumnIndex(absl::string_view name) const {
  for (size_t i = 0; i < header.size(); ++i) {
    if (header[i] == name) return i;
  }
  return std::nullopt;
}

absl::StatusOr<CsvTable> ParseCsv(absl::string_view text, absl::string_view source, const CsvParseOptions& options) {
  if (text.size() >= 3 && text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);
  CsvTable table;
  table.source = std::string(source);

  std::vector<CsvRecord> records;
  CsvRecord current;
  std::string field;
  int64_t line = 1;
  current.line = 1;
  size_t i = 0;
  const size_t n = text.size();
  size_t record_start = 0;  // Offset of the current record's first byte.
  int64_t cells = 0;
  bool record_has_content = false;

  // The limits, checked as bytes and fields arrive so that nothing grows past them.
  auto field_too_long = [&]() {
    const size_t index = current.fields.size();
    std::string column;
    if (!records.empty() && index < records[0].fields.size()) {
      column = absl::StrCat(" (column '", absl::StripAsciiWhitespace(records[0].fields[index]), "')");
    }
    return Error(source, current.line,
                 absl::StrCat("field ", index + 1, column, " is longer than ", options.max_field_bytes, " bytes"));
  };
  auto record_too_long = [&]() {
    return Error(source, current.line, absl::StrCat("record longer than ", options.max_record_bytes, " bytes"));
  };
  auto end_field = [&]() -> absl::Status {
    if (static_cast<int64_t>(current.fields.size()) >= options.max_fields_per_record) {
      return Error(source, current.line, absl::StrCat("more than ", options.max_fields_per_record, " fields"));
    }
    if (++cells > options.max_cells) {
      return Error(source, current.line, absl::StrCat("more than ", options.max_cells, " fields in the file"));
    }
    current.fields.push_back(std::move(field));
    field.clear();
    return absl::OkStatus();
  };
  auto end_record = [&]() -> absl::Status {
    if (record_has_content || !IsBlank(current.fields)) {
      if (static_cast<int64_t>(records.size()) >= options.max_records) {
        return Error(source, current.line, absl::StrCat("more than ", options.max_records, " records"));
      }
      records.push_back(std::move(current));
    }
    return absl::OkStatus();
  };

  // A small state machine over bytes: fields are either quoted ("...") or plain.
  while (i < n) {
    char c = text[i];
    if (c == '"' && field.empty()) {
      const int64_t quote_line = line;
      ++i;
      bool closed = false;
      while (i < n) {
        char q = text[i];
        if (q == '"') {
          if (i + 1 < n && text[i + 1] == '"') {
            field.push_back('"');
            i += 2;
          } else {
            ++i;
            closed = true;
            break;
          }
        } else {
          if (q == '\n') ++line;
          field.push_back(q);
          ++i;
        }
        if (static_cast<int64_t>(field.size()) > options.max_field_bytes) return field_too_long();
        if (static_cast<int64_t>(i - record_start) > options.max_record_bytes) return record_too_long();
      }
      if (!closed) return Error(source, quote_line, "unterminated quoted field");
      record_has_content = true;
      if (i < n && text[i] != ',' && text[i] != '\n' && text[i] != '\r') {
        return Error(source, line, "unexpected text after a closing quote");
      }
      continue;
    }
    if (c == ',') {
      RETURN_IF_ERROR(end_field());
      record_has_content = true;
      ++i;
      continue;
    }
    if (c == '\r' || c == '\n') {
      if (c == '\r' && i + 1 < n && text[i + 1] == '\n') ++i;
      ++i;
      RETURN_IF_ERROR(end_field());
      RETURN_IF_ERROR(end_record());
      current = CsvRecord();
      ++line;
      current.line = line;
      record_start = i;
      record_has_content = false;
      continue;
    }
    if (c == '"') return Error(source, line, "quote character inside an unquoted field");
    field.push_back(c);
    ++i;
    if (static_cast<int64_t>(field.size()) > options.max_field_bytes) return field_too_long();
    if (static_cast<int64_t>(i - record_start) > options.max_record_bytes) return record_too_long();
  }
  if (record_has_content || !field.empty()) {
    RETURN_IF_ERROR(end_field());
    RETURN_IF_ERROR(end_record());
  }

  if (records.empty()) return Error(source, 1, "no header line (empty file)");
  std::set<std::string> seen;
  for (const std::string& raw : records[0].fields) {
    std::string name(absl::StripAsciiWhitespace(raw));
    if (name.empty()) return Error(source, records[0].line, "empty column name in header");
    if (!seen.insert(name).second) {
      return Error(source, records[0].line, absl::StrCat("duplicate column name '", name, "'"));
    }
    table.header.push_back(std::move(name));
  }
  table.rows.reserve(records.size() - 1);
  for (size_t r = 1; r < records.size(); ++r) {
    if (records[r].fields.size() != table.header.size()) {
      if (options.keep_ragged_records) {
        table.ragged.push_back(std::move(records[r]));
        continue;
      }
      return Error(
          source, records[r].line,
          absl::StrCat("expected ", table.header.size(), " fields as in the header, found ", records[r].fields.size()));
    }
    table.rows.push_back(std::move(records[r]));
  }
  return table;
}

absl::StatusOr<CsvTable> ReadCsvFile(const std::string& path, const CsvParseOptions& options) {
  // Measure first: a device or FIFO would never end, and a huge file is refused before it is read.
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return ErrnoToStatus(errno, "cannot open", path);
  if (!S_ISDIR(st.st_mode)) {
    if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
    if (st.st_size > options.max_file_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": file of ", st.st_size, " bytes, above the limit of ",
                                                     options.max_file_bytes, " bytes for a CSV file"));
    }
  }
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));                // Directories: ReadFile's error.
  if (static_cast<int64_t>(text.size()) > options.max_file_bytes) {  // Grown since measured.
    return absl::InvalidArgumentError(absl::StrCat(path, ": file of ", text.size(), " bytes, above the limit of ",
                                                   options.max_file_bytes, " bytes for a CSV file"));
  }
  return ParseCsv(text, path, options);
}

std::string CsvEscape(absl::string_view field) {
  if (field.find_first_of(",\"\r\n") == absl::string_view::npos) return std::string(field);
  std::string out = "\"";
  for (char c : field) {
    if (c == '"') out.push_back('"');
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

}  // namespace fedtune::io
