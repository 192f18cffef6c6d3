// Tests of common/html/html.h.
#include "common/html/html.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fedtune::html {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

TEST(EscapeTest, EscapesMarkupCharacters) {
  EXPECT_EQ(Escape("<b>&\"x'"), "&lt;b&gt;&amp;&quot;x&#39;");
  EXPECT_EQ(Escape("Pleural Effusion \u2192 ok"), "Pleural Effusion \u2192 ok");
  EXPECT_EQ(Escape(""), "");
  EXPECT_EQ(Escape("&amp;"), "&amp;amp;");  // Not idempotent: escape once, at output.
}

TEST(PageTest, StartHoldsTitleStyleAndHeadingAndEndClosesIt) {
  const std::string start = PageStart("a &amp; b", "p { color: red; }");
  EXPECT_THAT(start, StartsWith("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"));
  EXPECT_THAT(start, HasSubstr("<title>a &amp; b</title>\n<style>p { color: red; }</style>\n</head>\n<body>\n"));
  EXPECT_THAT(start, testing::EndsWith("<h1>a &amp; b</h1>\n"));
  EXPECT_EQ(PageEnd(), "</body>\n</html>\n");
}

TEST(ReportStyleTest, SetsTheWidthAndTheSharedRules) {
  const std::string style = ReportStyle(72);
  EXPECT_THAT(style, HasSubstr("max-width: 72em;"));
  EXPECT_THAT(ReportStyle(80), HasSubstr("max-width: 80em;"));
  for (const char* rule : {"h1 {", "h2 {", ".summary {", "table {", "th, td {", "td.label {", "td.na {",
                           "tr.better td {", "tr.worse td {", ".ci {", ".note {"}) {
    EXPECT_THAT(style, HasSubstr(rule)) << rule;
  }
  EXPECT_THAT(style, ::testing::Not(HasSubstr("<"))) << "a style sheet holds no markup";
}

}  // namespace
}  // namespace fedtune::html
