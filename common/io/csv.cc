#include "common/io/csv.h"

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
  bool record_has_content = false;
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
            continue;
          }
          ++i;
          closed = true;
          break;
        }
        if (q == '\n') ++line;
        field.push_back(q);
        ++i;
      }
      if (!closed) return Error(source, quote_line, "unterminated quoted field");
      record_has_content = true;
      if (i < n && text[i] != ',' && text[i] != '\n' && text[i] != '\r') {
        return Error(source, line, "unexpected text after a closing quote");
      }
      continue;
    }
    if (c == ',') {
      current.fields.push_back(std::move(field));
      field.clear();
      record_has_content = true;
      ++i;
      continue;
    }
    if (c == '\r' || c == '\n') {
      if (c == '\r' && i + 1 < n && text[i + 1] == '\n') ++i;
      ++i;
      current.fields.push_back(std::move(field));
      field.clear();
      if (record_has_content || !IsBlank(current.fields)) records.push_back(std::move(current));
      current = CsvRecord();
      ++line;
      current.line = line;
      record_has_content = false;
      continue;
    }
    if (c == '"') return Error(source, line, "quote character inside an unquoted field");
    field.push_back(c);
    ++i;
  }
  if (record_has_content || !field.empty()) {
    current.fields.push_back(std::move(field));
    if (record_has_content || !IsBlank(current.fields)) records.push_back(std::move(current));
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
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
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
