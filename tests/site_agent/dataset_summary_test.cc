#include "site_agent/dataset_summary.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/data/chexpert_labels.h"
#include "common/io/csv.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::agent {
namespace {

// 20 patients, one frontal image each; label 0 (No Finding) positive for even patients, label 2 uncertain for
// patients divisible by 5, the other labels blank.
std::string Manifest() {
  std::string csv = "Path,Sex,Age,Frontal/Lateral,AP/PA";
  for (const char* label : data::kChexpertLabels) absl::StrAppend(&csv, ",", label);
  csv += "\n";
  for (int p = 1; p <= 20; ++p) {
    absl::StrAppend(&csv, "patient", 10000 + p, "/study1/view1_frontal.png,Male,50,Frontal,PA");
    for (int l = 0; l < data::kNumChexpertLabels; ++l) {
      std::string cell;
      if (l == 0) cell = p % 2 == 0 ? "1.0" : "0.0";
      if (l == 2 && p % 5 == 0) cell = "-1.0";
      absl::StrAppend(&csv, ",", cell);
    }
    csv += "\n";
  }
  return csv;
}

TEST(DatasetSummaryTest, CountsPerLabelAndSplitSizesNoImages) {
  fedtune::testing::TempDir dir;
  v1::FinetuneConfig config;
  config.set_manifest(dir.WriteFile("manifest.csv", Manifest()));
  config.mutable_split()->set_train(0.6);
  config.mutable_split()->set_validation(0.2);
  config.mutable_split()->set_test(0.2);
  absl::StatusOr<SiteData> site = LoadSiteData(config);
  ASSERT_TRUE(site.ok()) << site.status();
  const v1::DatasetSummary summary = SummarizeDataset(*site);
  EXPECT_EQ(summary.images(), 20);
  EXPECT_EQ(summary.studies(), 20);
  EXPECT_EQ(summary.patients(), 20);
  ASSERT_EQ(summary.labels_size(), data::kNumChexpertLabels);
  EXPECT_EQ(summary.labels(0).label(), data::kChexpertLabels[0]);
  EXPECT_EQ(summary.labels(0).positive(), 10);
  EXPECT_EQ(summary.labels(0).negative(), 10);
  EXPECT_EQ(summary.labels(0).blank(), 0);
  EXPECT_EQ(summary.labels(2).uncertain(), 4);
  EXPECT_EQ(summary.labels(2).blank(), 16);
  EXPECT_EQ(summary.labels(13).blank(), 20);
  EXPECT_EQ(summary.train_images() + summary.validation_images() + summary.test_images(), 20);
  EXPECT_GT(summary.test_images(), 0);
  EXPECT_GT(summary.validation_images(), 0);
  // Nothing in the summary names a file.
  EXPECT_EQ(summary.DebugString().find("patient1"), std::string::npos);
  EXPECT_EQ(summary.DebugString().find(".png"), std::string::npos);

  // The test split manifest has exactly the test images, with the original header.
  const std::string test = dir.Join("test.csv");
  ASSERT_TRUE(WriteSplitManifest(*site, data::Split::kTest, test).ok());
  absl::StatusOr<io::CsvTable> table = io::ReadCsvFile(test);
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ(static_cast<int64_t>(table->rows.size()), summary.test_images());
  EXPECT_EQ(table->header, site->table.header);
}

TEST(DatasetSummaryTest, MissingManifestIsNamed) {
  v1::FinetuneConfig config;
  config.set_manifest("/nonexistent/manifest.csv");
  absl::StatusOr<SiteData> site = LoadSiteData(config);
  EXPECT_EQ(site.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(site.status().message().find("/nonexistent/manifest.csv"), absl::string_view::npos);
}

}  // namespace
}  // namespace fedtune::agent
