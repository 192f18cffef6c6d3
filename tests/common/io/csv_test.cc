#include "common/io/csv.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::io {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(CsvTest, ParsesQuotesCrlfBomAndLineNumbers) {
  auto t = ParseCsv(
      "\xEF\xBB\xBFPath, Label \r\na,\"x, "
      "\"\"y\"\"\"\r\n\r\n\"multi\nline\",2\nlast,3",
      "f.csv");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(t->header, ElementsAre("Path", "Label"));
  ASSERT_EQ(t->rows.size(), 3u);
  EXPECT_THAT(t->rows[0].fields, ElementsAre("a", "x, \"y\""));
  EXPECT_EQ(t->rows[0].line, 2);
  EXPECT_THAT(t->rows[1].fields, ElementsAre("multi\nline", "2"));
  EXPECT_EQ(t->rows[1].line, 4);
  EXPECT_EQ(t->rows[2].line, 6);
  EXPECT_EQ(t->ColumnIndex("Label"), 1u);
  EXPECT_FALSE(t->ColumnIndex("Nope").has_value());
}

TEST(CsvTest, EmptyTrailingFieldsAreKept) {
  auto t = ParseCsv("a,b,c\n1,,\n");
  ASSERT_TRUE(t.ok());
  EXPECT_THAT(t->rows[0].fields, ElementsAre("1", "", ""));
}

TEST(CsvTest, MalformedInputNamesTheLine) {
  struct Case {
    const char* text;
    const char* expected;
  } cases[] = {
      {"", "f.csv:1: no header line"},
      {"a,b\n1,2,3\n", "f.csv:2: expected 2 fields as in the header, found 3"},
      {"a,b\n1\n", "f.csv:2: expected 2 fields"},
      {"a,b\n1,\"open\n", "f.csv:2: unterminated quoted field"},
      {"a,b\n1,x\"y\n", "f.csv:2: quote character inside an unquoted field"},
      {"a,b\n1,\"x\"y\n", "f.csv:2: unexpected text after a closing quote"},
      {"a,a\n", "f.csv:1: duplicate column name 'a'"},
      {"a,,c\n", "f.csv:1: empty column name"},
  };
  for (const Case& c : cases) {
    auto t = ParseCsv(c.text, "f.csv");
    ASSERT_FALSE(t.ok()) << c.text;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(t.status().message()), HasSubstr(c.expected)) << c.text;
  }
}

TEST(CsvTest, RaggedRecordsCanBeKeptAside) {
  CsvParseOptions options;
  options.keep_ragged_records = true;
  auto t = ParseCsv("a,b\n1,2\n3\n4,5\n6,7,8\n", "f.csv", options);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->rows.size(), 2u);
  ASSERT_EQ(t->ragged.size(), 2u);
  EXPECT_EQ(t->ragged[0].line, 3);
  EXPECT_EQ(t->ragged[1].line, 5);
}

TEST(CsvTest, ReadFileErrors) {
  testing::TempDir dir;
  EXPECT_EQ(ReadCsvFile(dir.Join("missing.csv")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ReadCsvFile(dir.path()).status().code(), absl::StatusCode::kInvalidArgument);
  auto t = ReadCsvFile(dir.WriteFile("ok.csv", "x\n1\n"));
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->source, dir.Join("ok.csv"));
}

TEST(CsvTest, EscapeRoundTrips) {
  EXPECT_EQ(CsvEscape("plain"), "plain");
  EXPECT_EQ(CsvEscape("a,b"), "\"a,b\"");
  EXPECT_EQ(CsvEscape("say \"hi\""), "\"say \"\"hi\"\"\"");
  auto t = ParseCsv("h\n" + CsvEscape("x,\"y\"\nz") + "\n");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->rows[0].fields[0], "x,\"y\"\nz");
}

}  // namespace
}  // namespace fedtune::io
