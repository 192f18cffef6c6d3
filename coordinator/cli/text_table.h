// Plain-text tables for the operator commands' terminal output: columns padded to their widest cell (UTF-8 aware),
// numeric-looking columns right-aligned. Cells often hold text a site sent (heartbeat state, site ids as stored):
// every cell passes through TerminalSafe (terminal_text.h), so a table never carries a control character or invalid
// UTF-8 and no cell is longer than kMaxTerminalTextBytes (+ "...").
//
// Thread safety: thread-compatible.
#ifndef FEDTUNE_COORDINATOR_CLI_TEXT_TABLE_H_
#define FEDTUNE_COORDINATOR_CLI_TEXT_TABLE_H_

#include <string>
#include <vector>

namespace fedtune::admin {

class TextTable {
 public:
  // `right_aligned[i]` aligns column i to the right (default: left). Columns beyond the vector are left-aligned.
  explicit TextTable(std::vector<std::string> header, std::vector<bool> right_aligned = {});
  // A row with fewer cells than the header is padded with empty cells; extra cells are an error (CHECK). Each cell
  // is stored as TerminalSafe(cell).
  void AddRow(std::vector<std::string> cells);
  size_t rows() const { return rows_.size(); }
  // The table: header, a rule of dashes, then the rows; two spaces between columns; every line ends with '\n'
  // and carries no trailing spaces.
  std::string Render() const;

 private:
  std::vector<std::string> header_;
  std::vector<bool> right_;
  std::vector<std::vector<std::string>> rows_;
};

// Display width of UTF-8 text: the number of code points (the tables hold no wide characters).
size_t DisplayWidth(const std::string& text);

}  // namespace fedtune::admin

#endif  // FEDTUNE_COORDINATOR_CLI_TEXT_TABLE_H_
