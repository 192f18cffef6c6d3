#include "common/stats/score_table.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/data/chexpert_labels.h"
#include "common/io/csv.h"
#include "common/status_macros.h"

namespace fedtune::stats {
namespace {

absl::Status Bad(const std::string& file, int64_t line, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(file, ":", line, ": ", what));
}

// A CSV table indexed by its Path column.
struct IndexedTable {
  io::CsvTable table;
  absl::flat_hash_map<std::string, size_t> row_of_path;
};

absl::StatusOr<IndexedTable> ReadIndexed(const std::string& path) {
  IndexedTable out;
  ASSIGN_OR_RETURN(out.table, io::ReadCsvFile(path));
  if (out.table.header.empty() || out.table.header[0] != "Path") {
    return Bad(path, 1,
               absl::StrCat("the first column must be 'Path', found '",
                            out.table.header.empty() ? "" : out.table.header[0], "'"));
  }
  for (size_t r = 0; r < out.table.rows.size(); ++r) {
    const io::CsvRecord& row = out.table.rows[r];
    std::string id(absl::StripAsciiWhitespace(row.fields[0]));
    if (id.empty()) return Bad(path, row.line, "empty Path");
    auto [it, inserted] = out.row_of_path.emplace(id, r);
    if (!inserted) {
      return Bad(path, row.line,
                 absl::StrCat("duplicate Path '", id, "' (first on line ", out.table.rows[it->second].line, ")"));
    }
  }
  return out;
}

bool IsMetadataColumn(const std::string& name) {
  for (const char* meta : data::kChexpertMetadataColumns) {
    if (name == meta) return true;
  }
  return false;
}

// Truth cell: 1 or 0, or nullopt when the case is excluded (blank or -1).
absl::StatusOr<std::optional<int>> ParseTruth(const std::string& raw, const std::string& file, int64_t line,
                                              const std::string& column) {
  absl::string_view v = absl::StripAsciiWhitespace(raw);
  if (v.empty() || v == "-1" || v == "-1.0") return std::optional<int>();
  if (v == "1" || v == "1.0") return std::optional<int>(1);
  if (v == "0" || v == "0.0") return std::optional<int>(0);
  return Bad(file, line,
             absl::StrCat("column '", column, "': truth value '", v, "' is not one of 1, 0, 1.0, 0.0, -1, blank"));
}

absl::StatusOr<double> ParseScore(const std::string& raw, const std::string& file, int64_t line,
                                  const std::string& column) {
  absl::string_view v = absl::StripAsciiWhitespace(raw);
  double out;
  if (v.empty() || !absl::SimpleAtod(v, &out) || !std::isfinite(out)) {
    return Bad(file, line, absl::StrCat("column '", column, "': score '", v, "' is not a finite number"));
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<LabelScores>> LoadScoreTables(const ScoreTablePaths& paths,
                                                         const std::vector<std::string>& labels) {
  ASSIGN_OR_RETURN(IndexedTable truth, ReadIndexed(paths.truth));
  ASSIGN_OR_RETURN(IndexedTable a, ReadIndexed(paths.scores_a));
  ASSIGN_OR_RETURN(IndexedTable b, ReadIndexed(paths.scores_b));

  std::vector<std::string> label_columns;
  for (const std::string& name : truth.table.header) {
    if (!IsMetadataColumn(name)) label_columns.push_back(name);
  }
  if (label_columns.empty()) return Bad(paths.truth, 1, "no label columns besides Path and metadata columns");
  if (!labels.empty()) {
    for (const std::string& wanted : labels) {
      if (std::find(label_columns.begin(), label_columns.end(), wanted) == label_columns.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--labels: '", wanted, "' is not a label column of ", paths.truth));
      }
    }
    label_columns = labels;
  }

  std::vector<LabelScores> out;
  for (const std::string& label : label_columns) {
    const size_t truth_col = *truth.table.ColumnIndex(label);
    std::optional<size_t> a_col = a.table.ColumnIndex(label);
    std::optional<size_t> b_col = b.table.ColumnIndex(label);
    if (!a_col) return Bad(paths.scores_a, 1, absl::StrCat("no column '", label, "' (a label of ", paths.truth, ")"));
    if (!b_col) return Bad(paths.scores_b, 1, absl::StrCat("no column '", label, "' (a label of ", paths.truth, ")"));
    LabelScores scores;
    scores.name = label;
    for (const io::CsvRecord& row : truth.table.rows) {
      const std::string id(absl::StripAsciiWhitespace(row.fields[0]));
      ASSIGN_OR_RETURN(std::optional<int> t, ParseTruth(row.fields[truth_col], paths.truth, row.line, label));
      // Every truth row must have scores in both files, even where this label
      // excludes it.
      const IndexedTable* tables[2] = {&a, &b};
      const std::string* files[2] = {&paths.scores_a, &paths.scores_b};
      const size_t cols[2] = {*a_col, *b_col};
      double values[2];
      for (int k = 0; k < 2; ++k) {
        auto it = tables[k]->row_of_path.find(id);
        if (it == tables[k]->row_of_path.end()) {
          return absl::InvalidArgumentError(
              absl::StrCat(*files[k], ": no row for Path '", id, "' (", paths.truth, " line ", row.line, ")"));
        }
        const io::CsvRecord& srow = tables[k]->table.rows[it->second];
        ASSIGN_OR_RETURN(values[k], ParseScore(srow.fields[cols[k]], *files[k], srow.line, label));
      }
      if (!t) continue;
      scores.truth.push_back(*t);
      scores.a.push_back(values[0]);
      scores.b.push_back(values[1]);
    }
    out.push_back(std::move(scores));
  }
  return out;
}

}  // namespace fedtune::stats
