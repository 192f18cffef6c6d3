// The pieces of fedtune's self-contained HTML reports (the evaluation report of `fedtune-site evaluate`, the
// consortium report of `fedtune report`): escaping, the page frame, and the house style sheet both pages share
// (body, headings, summary box, tables with better/worse rows, notes). The pages need no external asset, no network
// and no JavaScript. No LibTorch, no I/O.
//
// Thread safety: the functions are reentrant.
#ifndef FEDTUNE_COMMON_HTML_HTML_H_
#define FEDTUNE_COMMON_HTML_HTML_H_

#include <string>

#include "absl/strings/string_view.h"

namespace fedtune::html {

// Typographic characters of the reports' text (UTF-8).
inline constexpr char kArrow[] = "\u2192";   // →
inline constexpr char kEnDash[] = "\u2013";  // – (ranges: "0.650–0.750")
inline constexpr char kMinus[] = "\u2212";   // − (the minus sign)

// Escapes &, <, >, " and ' for HTML text and attribute values; every other byte is kept as is (callers that show
// untrusted text first make it valid UTF-8 without control characters).
std::string Escape(absl::string_view text);

// The house style sheet: body text at most `max_width_em` em wide, h1 and h2, the `.summary` box, tables (cells
// right-aligned, `td.label` and `td.na`, rows `tr.better` green and `tr.worse` red), `.ci` and `.note`. A page appends
// its own rules after it.
std::string ReportStyle(int max_width_em);

// The opening of a page up to and including its heading: doctype, <head> with charset, <title>title_html</title> and
// <style>style</style>, then <body> and <h1>title_html</h1>. `title_html` is HTML text (already escaped).
std::string PageStart(absl::string_view title_html, absl::string_view style);

// The end of a page opened with PageStart: "</body>\n</html>\n".
std::string PageEnd();

}  // namespace fedtune::html

#endif  // FEDTUNE_COMMON_HTML_HTML_H_
