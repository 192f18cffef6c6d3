#include "common/train/site_data.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/site_manifest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::train {
namespace {

TEST(SiteDataTest, SplitsByPatientAndWritesEachSplitsRows) {
  fedtune::testing::TempDir dir;
  const v1::FinetuneConfig config =
      fedtune::testing::TwentyPatientConfig(dir.WriteFile("manifest.csv", fedtune::testing::TwentyPatientManifest()));
  absl::StatusOr<SiteData> site = LoadSiteData(config);
  ASSERT_TRUE(site.ok()) << site.status();
  EXPECT_EQ(site->manifest.entries().size(), 20u);
  size_t total = 0;
  for (data::Split split : {data::Split::kTrain, data::Split::kValidation, data::Split::kTest}) {
    const size_t count = site->split.EntriesIn(split).size();
    EXPECT_GT(count, 0u);
    total += count;
    // Each split manifest has exactly that split's images, with the original header.
    const std::string path = dir.Join(absl::StrCat("split", static_cast<int>(split), ".csv"));
    ASSERT_TRUE(WriteSplitManifest(*site, split, path).ok());
    absl::StatusOr<io::CsvTable> table = io::ReadCsvFile(path);
    ASSERT_TRUE(table.ok()) << table.status();
    EXPECT_EQ(table->rows.size(), count);
    EXPECT_EQ(table->header, site->table.header);
  }
  EXPECT_EQ(total, 20u);
}

TEST(SiteDataTest, MissingManifestIsNamed) {
  v1::FinetuneConfig config;
  config.set_manifest("/nonexistent/manifest.csv");
  absl::StatusOr<SiteData> site = LoadSiteData(config);
  EXPECT_EQ(site.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(site.status().message().find("/nonexistent/manifest.csv"), absl::string_view::npos);
}

}  // namespace
}  // namespace fedtune::train
