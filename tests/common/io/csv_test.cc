#include "common/io/csv.h"

#include <sys/stat.h>

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/imaging/hostile_images.h"
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

// ---- Limits on untrusted input (csv.h): each exceeded limit is an
// InvalidArgument naming the source, the line and, for a field, its column.

TEST(CsvLimitsTest, HugeFieldIsRefusedNamingLineAndColumn) {
  const std::string text = "Path,Label\na.png,1\nb.png," + std::string(100 * 1024, 'x') + "\n";
  auto t = ParseCsv(text, "f.csv");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("f.csv:3: field 2 (column 'Label')"));
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("65536 bytes"));
  // Quoted fields too.
  t = ParseCsv("Path\n\"" + std::string(100 * 1024, 'y') + "\"\n", "q.csv");
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("q.csv:2: field 1 (column 'Path')"));
}

TEST(CsvLimitsTest, TooManyFieldsInARecordIsRefused) {
  std::string header;
  for (int i = 0; i < 2000; ++i) header += "c" + std::to_string(i) + ",";
  auto t = ParseCsv(header + "last\n", "f.csv");
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("f.csv:1: more than 1024 fields"));
  t = ParseCsv("a\n" + std::string(5000, ',') + "\n", "f.csv");
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("f.csv:2: more than 1024 fields"));
}

TEST(CsvLimitsTest, LongRecordIsRefused) {
  // 20 fields of 60 KiB: each within the field limit, 1.2 MiB together.
  std::string row;
  for (int i = 0; i < 20; ++i) row += std::string(60 * 1024, 'z') + ",";
  auto t = ParseCsv("a\n" + row + "\n", "f.csv");
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("f.csv:2: record longer than 1048576 bytes"));
}

TEST(CsvLimitsTest, DevicesAndFifosAreRefusedNotRead) {
  testing::TempDir dir;
  const std::string fifo = dir.Join("m.csv");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  for (const std::string& path : {std::string("/dev/zero"), fifo}) {
    const imaging::hostile::ChildOutcome outcome =
        imaging::hostile::RunInChildWithMemoryLimit([&] { return ReadCsvFile(path).status(); });
    ASSERT_TRUE(outcome.returned) << path << ": " << outcome.how;
    EXPECT_EQ(outcome.code, absl::StatusCode::kInvalidArgument) << path;
    EXPECT_THAT(outcome.message, HasSubstr(path + ": not a regular file"));
  }
}

TEST(CsvLimitsTest, ConfigurableLimits) {
  CsvParseOptions options;
  options.max_records = 3;
  auto t = ParseCsv("a\n1\n2\n", "f.csv", options);
  EXPECT_TRUE(t.ok()) << t.status();
  t = ParseCsv("a\n1\n2\n3\n", "f.csv", options);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("f.csv:4: more than 3 records"));

  options = CsvParseOptions();
  options.max_cells = 5;
  t = ParseCsv("a,b\n1,2\n3,4\n", "f.csv", options);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("f.csv:3: more than 5 fields in the file"));

  options = CsvParseOptions();
  options.max_field_bytes = 3;
  EXPECT_TRUE(ParseCsv("abc\n123\n", "f.csv", options).ok());
  t = ParseCsv("abc\n1234\n", "f.csv", options);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("f.csv:2: field 1 (column 'abc') is longer than 3 bytes"));

  testing::TempDir dir;
  options = CsvParseOptions();
  options.max_file_bytes = 8;
  EXPECT_TRUE(ReadCsvFile(dir.WriteFile("small.csv", "a\n1\n2\n3\n"), options).ok());
  auto big = ReadCsvFile(dir.WriteFile("big.csv", "a\n1\n2\n3\n4\n"), options);
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(big.status().message()),
              HasSubstr(dir.Join("big.csv") + ": file of 10 bytes, above the limit of 8 bytes"));
}

}  // namespace
}  // namespace fedtune::io
