// Tests of common/synth/synth_command.h: `fedtune synth` through the command and through the built binary.
#include "common/synth/synth_command.h"

#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/cli/command.h"
#include "common/io/csv.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::synth {
namespace {

using ::testing::HasSubstr;

io::CsvTable ReadCsv(const std::string& path) {
  auto t = io::ReadCsvFile(path);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *t : io::CsvTable{};
}

// Runs `synth`; what it prints goes to *printed when given.
absl::Status RunCommand(const std::vector<std::string>& args, std::string* printed = nullptr) {
  std::ostringstream out;
  const cli::Command command = MakeSynthCommand(out);
  auto flags = cli::ParseFlags(args, command.flags, command.max_positional);
  if (!flags.ok()) return flags.status();
  absl::Status status = command.run(*flags);
  if (printed != nullptr) *printed = out.str();
  return status;
}

TEST(SynthCommandTest, WritesDatasetAndReportsErrors) {
  testing::TempDir dir;
  const std::string out = dir.Join("site-c");
  std::string printed;
  ASSERT_TRUE(RunCommand({"--profile", "site-c", "--count", "12", "--size", "32", "--seed", "9", "--out", out,
                          "--threads", "2", "--dicom-fraction", "0.5"},
                         &printed)
                  .ok());
  EXPECT_THAT(printed, HasSubstr("synth: profile site-c: 12 images"));
  EXPECT_THAT(printed, HasSubstr(absl::StrCat("written to ", out)));
  EXPECT_EQ(ReadCsv(out + "/manifest.csv").rows.size(), 12u);
  const std::string custom =
      dir.WriteFile("custom.textproto", "name: \"custom\"\nlabels { label: \"Edema\" prevalence: 0.5 }\n");
  EXPECT_TRUE(RunCommand({"--profile", custom, "--count", "3", "--size", "32", "--out", dir.Join("custom")}).ok());
  EXPECT_EQ(RunCommand({"--profile", "site-z", "--out", out}).code(), absl::StatusCode::kNotFound);
  const std::string bad = dir.WriteFile("bad.textproto", "name: \"bad\"\ndetector { gamma { min: -1 max: 1 } }\n");
  const absl::Status status = RunCommand({"--profile", bad, "--out", out});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("detector.gamma.min"));
  EXPECT_EQ(RunCommand({"--profile", "public", "--out", out, "--count", "many"}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RunCommand({"--profile", "public"}).code(), absl::StatusCode::kInvalidArgument);  // --out missing.
}

TEST(SynthCommandTest, BuiltinProfilesWorkFromTheInstalledBinaryAnywhere) {
  testing::TempDir dir;
  std::string output;
  // Run from an unrelated working directory: the built-in profiles are embedded in the binary.
  const int rc = testing::RunCommand(absl::StrCat("cd ", dir.path(), " && ", testing::BinPath("fedtune"),
                                                  " synth --profile site-b --count 4 --size 32 --out ds"),
                                     &output);
  ASSERT_EQ(rc, 0) << output;
  EXPECT_THAT(output, HasSubstr("profile site-b: 4 images"));
  EXPECT_EQ(ReadCsv(dir.Join("ds/manifest.csv")).rows.size(), 4u);
  EXPECT_EQ(testing::RunCommand(
                absl::StrCat(testing::BinPath("fedtune"), " synth --profile nope --out ", dir.Join("x")), &output),
            2)
      << output;
}

TEST(SynthCommandTest, DicomWritesAPacsExport) {
  testing::TempDir dir;
  const std::string out = dir.Join("export");
  std::string printed;
  ASSERT_TRUE(
      RunCommand({"--profile", "site-b", "--count", "12", "--size", "16", "--out", out, "--dicom"}, &printed).ok())
      << printed;
  EXPECT_THAT(printed, HasSubstr("a PACS export of 12 DICOM images"));
  EXPECT_THAT(printed, HasSubstr("labels.csv"));
  const io::CsvTable labels = ReadCsv(out + "/labels.csv");
  EXPECT_TRUE(labels.ColumnIndex("AccessionNumber").has_value());
  EXPECT_TRUE(labels.ColumnIndex("StudyInstanceUID").has_value());
  EXPECT_TRUE(labels.ColumnIndex("Support Devices").has_value());
  EXPECT_FALSE(io::ReadCsvFile(out + "/manifest.csv").ok());
  const absl::Status both =
      RunCommand({"--profile", "site-b", "--count", "12", "--out", out, "--dicom", "--dicom-fraction", "0.5"});
  EXPECT_EQ(both.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(both.message(), HasSubstr("--dicom-fraction"));
}

}  // namespace
}  // namespace fedtune::synth
