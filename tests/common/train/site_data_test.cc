#include "common/train/site_data.h"

#include <filesystem>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/data/chexpert_labels.h"
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

TEST(SiteDataTest, RasterBitsStoredAutoIsEstimatedFromTheManifestsImages) {
  fedtune::testing::TempDir dir;
  std::string csv = "Path,Sex,Age,Frontal/Lateral,AP/PA";
  for (const char* label : data::kChexpertLabels) absl::StrAppend(&csv, ",", label);
  csv += "\n";
  for (int i = 0; i < 3; ++i) {
    cv::Mat twelve(16, 16, CV_16UC1, cv::Scalar(1000));
    twelve.at<uint16_t>(2, 2) = static_cast<uint16_t>(4000 + i * 40);  // Max 4080: 12 bits.
    const std::string name = absl::StrCat("patient", i, "/study1/view1_frontal.png");
    std::filesystem::create_directories(dir.Join(absl::StrCat("patient", i, "/study1")));
    ASSERT_TRUE(cv::imwrite(dir.Join(name), twelve));
    absl::StrAppend(&csv, name, ",Male,50,Frontal,PA,1.0", std::string(data::kNumChexpertLabels - 1, ','), "\n");
  }
  v1::FinetuneConfig config;
  config.set_data_root(dir.path());
  absl::StatusOr<io::CsvTable> table = io::ParseCsv(csv, "m.csv");
  ASSERT_TRUE(table.ok()) << table.status();
  absl::StatusOr<data::Manifest> manifest = data::Manifest::FromTable(*table);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  EXPECT_EQ(RasterBitsStoredFor(config, *manifest).value(), 0);  // The default: the container's 16 bits.
  config.set_raster_bits_stored(-1);
  EXPECT_EQ(RasterBitsStoredFor(config, *manifest).value(), 12);
  config.set_raster_bits_stored(14);
  EXPECT_EQ(RasterBitsStoredFor(config, *manifest).value(), 14);
  config.set_raster_bits_stored(5);
  EXPECT_EQ(RasterBitsStoredFor(config, *manifest).status().code(), absl::StatusCode::kInvalidArgument);
  // What evaluation calls: the same estimate for the same manifest and root; other images, another value.
  EXPECT_EQ(ResolveRasterBitsStoredOver(-1, *manifest, dir.path(), config.max_image_pixels()).value(), 12);
  EXPECT_EQ(ResolveRasterBitsStoredOver(-1, *manifest, dir.Join("elsewhere"), config.max_image_pixels()).value(), 0);
}

}  // namespace
}  // namespace fedtune::train
