#include "common/data/manifest_writer.h"

#include <filesystem>
#include <string>
#include <vector>

#include "common/data/chexpert_labels.h"
#include "common/io/csv.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::data {
namespace {

using ::testing::IsEmpty;

TEST(ManifestWriterTest, WhatIsWrittenParsesBackToTheSameRows) {
  ManifestRow a;
  a.path = "export/a, \"odd\" name.dcm";  // Needs quoting.
  a.patient = "p1";
  a.study = "s1";
  a.sex = Sex::kFemale;
  a.age = 61.5;
  a.projection = "PA";
  a.labels[kCardiomegaly] = RawLabel::kPositive;
  a.labels[kEdema] = RawLabel::kUncertain;
  a.labels[kNoFinding] = RawLabel::kNegative;
  ManifestRow b;
  b.path = "export/b.dcm";
  b.patient = "p1";
  b.study = "s1";
  b.view = View::kLateral;
  b.projection = "LL";
  absl::StatusOr<io::CsvTable> table = io::ParseCsv(FormatManifestCsv({a, b}), "m.csv");
  ASSERT_TRUE(table.ok()) << table.status();
  ManifestParse parse = ParseManifest(*table);
  EXPECT_THAT(parse.problems, IsEmpty());
  EXPECT_THAT(parse.warnings, IsEmpty());
  ASSERT_EQ(parse.manifest.entries().size(), 2u);
  const ManifestEntry& ea = parse.manifest.entries()[0];
  EXPECT_EQ(ea.path, a.path);
  EXPECT_EQ(ea.patient_id, "p1");
  EXPECT_EQ(ea.sex, Sex::kFemale);
  EXPECT_EQ(ea.age, 61.5);
  EXPECT_EQ(ea.projection, "PA");
  EXPECT_EQ(ea.labels, a.labels);
  const ManifestEntry& eb = parse.manifest.entries()[1];
  EXPECT_EQ(eb.view, View::kLateral);
  EXPECT_EQ(eb.sex, Sex::kUnknown);
  EXPECT_FALSE(eb.age.has_value());
  EXPECT_EQ(eb.labels, RawLabels{});
  ASSERT_EQ(parse.manifest.studies().size(), 1u);  // Same patient and study: one study with both views.
  EXPECT_EQ(parse.manifest.studies()[0].frontal.size(), 1u);
  EXPECT_EQ(parse.manifest.studies()[0].lateral.size(), 1u);
}

TEST(ManifestWriterTest, WritesTheFileAndNamesAMissingFolder) {
  fedtune::testing::TempDir dir;
  ManifestRow row;
  row.path = "x.png";
  row.patient = "p";
  row.study = "s";
  const std::string path = dir.Join("manifest.csv");
  ASSERT_TRUE(WriteManifestCsv(path, {row}).ok());
  EXPECT_TRUE(std::filesystem::exists(path));
  absl::Status missing = WriteManifestCsv(dir.Join("no/such/manifest.csv"), {row});
  EXPECT_FALSE(missing.ok());
  EXPECT_THAT(std::string(missing.message()), ::testing::HasSubstr("no/such/manifest.csv"));
}

}  // namespace
}  // namespace fedtune::data
