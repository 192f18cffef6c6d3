#include "site_agent/agent/dataset_summary.h"

#include <string>

#include "common/data/chexpert_labels.h"
#include "gtest/gtest.h"
#include "tests/testing/site_manifest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::agent {
namespace {

TEST(DatasetSummaryTest, CountsPerLabelAndSplitSizesNoImages) {
  fedtune::testing::TempDir dir;
  const v1::FinetuneConfig config =
      fedtune::testing::TwentyPatientConfig(dir.WriteFile("manifest.csv", fedtune::testing::TwentyPatientManifest()));
  absl::StatusOr<train::SiteData> site = train::LoadSiteData(config);
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
}

}  // namespace
}  // namespace fedtune::agent
