#include "common/html/html.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace fedtune::html {

std::string Escape(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string ReportStyle(int max_width_em) {
  return absl::StrFormat(R"css(
body { font-family: "Helvetica Neue", Arial, sans-serif; color: #222; margin: 2em auto; max-width: %dem;
       padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
.summary { font-size: 1.15em; background: #f3f6fa; border-left: 4px solid #0072b2; padding: 0.6em 1em; }
table { border-collapse: collapse; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; text-align: center; }
td.label { text-align: left; font-weight: bold; }
td.na { color: #888; text-align: center; }
tr.better td { background: #e6f4ea; }
tr.worse td { background: #fbe9e7; }
.ci { color: #666; font-size: 0.9em; }
.note { color: #555; font-size: 0.9em; }
)css",
                         max_width_em);
}

std::string PageStart(absl::string_view title_html, absl::string_view style) {
  return absl::StrCat("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>", title_html,
                      "</title>\n<style>", style, "</style>\n</head>\n<body>\n<h1>", title_html, "</h1>\n");
}

std::string PageEnd() { return "</body>\n</html>\n"; }

}  // namespace fedtune::html
