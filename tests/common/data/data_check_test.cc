// Tests of common/data/data_check.h with injected probes: no image is decoded here (the decoder-backed command is
// tested in data_check_command_test.cc).
#include "common/data/data_check.h"

#include <atomic>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::data {
namespace {

using ::testing::HasSubstr;

std::string Header() {
  std::vector<std::string> names = {"Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"};
  for (const char* label : kChexpertLabels) names.push_back(label);
  return absl::StrJoin(names, ",");
}

std::string Row(const std::string& path, const std::string& meta) {
  return absl::StrCat(path, ",", meta, std::string(kNumChexpertLabels, ','), "\n");
}

class CheckDatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The probe decides what is an image: the files only need to exist.
    dir_.WriteFile("data/train/patient1/study1/view1_frontal.png", "image");
    dir_.WriteFile("data/train/patient1/study1/view2_lateral.png", "image");
    dir_.WriteFile("data/train/patient2/study1/view1_frontal.png", "image");
    manifest_ = dir_.WriteFile("m.csv", Header() + "\n" +
                                            Row("train/patient1/study1/view1_frontal.png", "Female,60,Frontal,AP") +
                                            Row("train/patient1/study1/view2_lateral.png", "Female,60,Lateral,") +
                                            Row("train/patient2/study1/view1_frontal.png", "Male,30,Frontal,PA"));
    options_.manifest_path = manifest_;
    options_.root = dir_.Join("data");
  }

  testing::TempDir dir_;
  std::string manifest_;
  DataCheckOptions options_;
};

TEST_F(CheckDatasetTest, ProbeSeamIsUsed) {
  std::atomic<int> calls{0};
  options_.probe = [&](const std::string& file) -> absl::Status {
    ++calls;
    if (absl::StrContains(file, "lateral")) {
      return absl::DataLossError("bad lateral");
    }
    return absl::OkStatus();
  };
  absl::StatusOr<DataCheckReport> report = CheckDataset(options_);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(calls.load(), 3);
  ASSERT_EQ(report->problems.size(), 1u);
  EXPECT_EQ(report->problems[0].line, 3);
  EXPECT_EQ(report->problems[0].message, "bad lateral");
  EXPECT_EQ(report->images_checked, 3);
}

TEST_F(CheckDatasetTest, DecodingNeedsAProbeAndExistenceDoesNot) {
  const absl::StatusOr<DataCheckReport> no_probe = CheckDataset(options_);
  EXPECT_EQ(no_probe.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(no_probe.status().message(), HasSubstr("probe"));

  options_.decode_images = false;
  dir_.WriteFile("m2.csv", Header() + "\n" + Row("train/patient1/study1/view1_frontal.png", "Female,60,Frontal,AP") +
                               Row("train/patient3/study1/view1_frontal.png", "Male,40,Frontal,AP"));
  options_.manifest_path = dir_.Join("m2.csv");
  absl::StatusOr<DataCheckReport> report = CheckDataset(options_);
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->problems.size(), 1u);
  EXPECT_EQ(report->problems[0].line, 3);
  EXPECT_EQ(report->problems[0].message,
            absl::StrCat("image not found: ", dir_.Join("data"), "/train/patient3/study1/view1_frontal.png"));
  EXPECT_THAT(FormatDataCheckReport(*report), HasSubstr("FAILED: 1 problem(s)"));

  options_.threads = 0;
  EXPECT_EQ(CheckDataset(options_).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CheckImageFileExistsTest, NamesTheFile) {
  testing::TempDir dir;
  EXPECT_TRUE(CheckImageFileExists(dir.WriteFile("a.png", "x")).ok());
  const absl::Status missing = CheckImageFileExists(dir.Join("b.png"));
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing.message(), absl::StrCat("image not found: ", dir.Join("b.png")));
  const absl::Status directory = CheckImageFileExists(dir.path());
  EXPECT_EQ(directory.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(directory.message(), absl::StrCat("not a regular file: ", dir.path()));
}

}  // namespace
}  // namespace fedtune::data
