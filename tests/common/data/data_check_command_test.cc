// Tests of common/data/data_check_command.h: `data check` end to end, with the imaging decoder as the probe.
#include "common/data/data_check_command.h"

#include <filesystem>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/cli/command.h"
#include "common/io/file_util.h"
#include "common/logging.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "opencv2/core.hpp"
#include "opencv2/imgcodecs.hpp"
#include "tests/common/imaging/hostile_images.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::data {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;

// Real DICOM files that no one here wrote: Debian's python3-pydicom test data.
constexpr const char* kPydicomTestFiles = "/usr/lib/python3/dist-packages/pydicom/data/test_files";

std::string Header() {
  std::vector<std::string> names = {"Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"};
  for (const char* label : kChexpertLabels) names.push_back(label);
  return absl::StrJoin(names, ",");
}

std::string Row(const std::string& path, const std::string& meta, const std::vector<std::string>& labels = {}) {
  std::vector<std::string> cells = labels;
  cells.resize(kNumChexpertLabels);
  return absl::StrCat(path, ",", meta, ",", absl::StrJoin(cells, ","), "\n");
}

void WritePng(const std::string& path, int depth) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  cv::Mat image(40, 32, depth == 16 ? CV_16UC1 : CV_8UC1);
  cv::randu(image, 0, depth == 16 ? 65535 : 255);
  CHECK(cv::imwrite(path, image)) << path;
}

void Copy(const std::string& from, const std::string& to) {
  std::filesystem::create_directories(std::filesystem::path(to).parent_path());
  std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing);
}

struct CheckRun {
  int exit_code;
  std::string output;
};

CheckRun RunCheck(const std::vector<std::string>& args) {
  std::ostringstream out;
  cli::Command command = MakeDataCheckCommand(out);
  absl::StatusOr<cli::ParsedFlags> flags = cli::ParseFlags(args, command.flags, command.max_positional);
  if (!flags.ok()) {
    return {cli::ExitCodeFor(flags.status()), std::string(flags.status().message())};
  }
  absl::Status status = command.run(*flags);
  return {cli::ExitCodeFor(status), absl::StrCat(out.str(), status.ok() ? "" : status.message())};
}

class DataCheckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = dir_.Join("data");
    WritePng(root_ + "/train/patient1/study1/view1_frontal.png", 16);
    WritePng(root_ + "/train/patient1/study1/view2_lateral.png", 8);
    WritePng(root_ + "/train/patient2/study1/view1_frontal.png", 8);
    good_rows_ = Row("train/patient1/study1/view1_frontal.png", "Female,60,Frontal,AP", {"", "1.0", "1.0", "-1.0"}) +
                 Row("train/patient1/study1/view2_lateral.png", "Female,60,Lateral,", {"", "1.0", "1.0"}) +
                 Row("train/patient2/study1/view1_frontal.png", "Male,30,Frontal,PA", {"1.0", "0.0", "0.0"});
  }

  testing::TempDir dir_;
  std::string root_;
  std::string good_rows_;
};

TEST_F(DataCheckTest, CleanDatasetPassesWithCounts) {
  const std::string manifest = dir_.WriteFile("m.csv", Header() + "\n" + good_rows_);
  CheckRun run = RunCheck({"--manifest", manifest, "--root", root_});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("3 rows, 3 well-formed; 2 patients, 2 studies; 3 images checked"));
  EXPECT_THAT(run.output, HasSubstr("OK: no problems found"));
  EXPECT_THAT(run.output, Not(HasSubstr("problems (")));
  // label, positive, negative, uncertain, blank.
  std::vector<std::string> lines = absl::StrSplit(run.output, '\n');
  auto squeeze = [](const std::string& s) { return absl::StrJoin(absl::StrSplit(s, ' ', absl::SkipEmpty()), " "); };
  std::vector<std::string> squeezed;
  for (const std::string& line : lines) squeezed.push_back(squeeze(line));
  EXPECT_THAT(squeezed, Contains("No Finding 1 0 0 2"));
  EXPECT_THAT(squeezed, Contains("Enlarged Cardiomediastinum 2 1 0 0"));
  EXPECT_THAT(squeezed, Contains("Lung Opacity 0 0 1 2"));
  EXPECT_THAT(squeezed, Contains("Support Devices 0 0 0 3"));
}

TEST_F(DataCheckTest, ReportsEveryProblemAtOnceWithExitCode2) {
  // A file that is not an image, and a PNG cut in half.
  dir_.WriteFile("data/train/patient3/study1/view1_frontal.png", "this is not a png");
  WritePng(root_ + "/whole.png", 16);
  const std::string png = *io::ReadFile(root_ + "/whole.png");
  dir_.WriteFile("data/train/patient4/study1/view1_frontal.png", png.substr(0, png.size() / 2));
  WritePng(root_ + "/train/patient5/study1/view2_lateral.png", 8);
  WritePng(root_ + "/train/patient6/study1/view1_frontal.png", 8);

  const std::string manifest = dir_.WriteFile(
      "m.csv",
      Header() + "\n" + good_rows_ +  // lines 1-4
          Row("train/patient3/study1/view1_frontal.png",
              "Male,50,Frontal,AP") +  // 5
          Row("train/patient4/study1/view1_frontal.png",
              "Male,50,Frontal,AP") +  // 6
          Row("train/patient5/study1/view2_lateral.png",
              "Male,50,Lateral,") +  // 7
          Row("train/patient6/study1/view1_frontal.png",
              "Male,abc,Frontal,AP") +  // 8
          Row("train/patient7/study1/view1_frontal.png",
              "Male,50,Frontal,AP") +  // 9
          Row("train/patient1/study1/view1_frontal.png",
              "Female,60,Frontal,AP") +  // 10
          Row("train/patient8/study1/view1_frontal.png", "Male,50,Frontal,AP", {"", "", "", "", "", "", "", "2"}));
  CheckRun run = RunCheck({"--manifest", manifest, "--root", root_});
  EXPECT_EQ(run.exit_code, cli::kExitBadInput) << run.output;
  const std::string m = manifest;
  EXPECT_THAT(run.output, HasSubstr(absl::StrCat(m, ":5: [Path] ", root_,
                                                 "/train/patient3/study1/view1_frontal.png: not a decodable image")));
  EXPECT_THAT(run.output, HasSubstr(absl::StrCat(m, ":6: [Path] ", root_,
                                                 "/train/patient4/study1/view1_frontal.png: not a decodable image")));
  EXPECT_THAT(run.output, HasSubstr(absl::StrCat(m,
                                                 ":7: [Frontal/Lateral] study patient5/study1 has "
                                                 "no frontal image (1 lateral)")));
  EXPECT_THAT(run.output, HasSubstr(absl::StrCat(m, ":8: [Age] 'abc'")));
  EXPECT_THAT(run.output, HasSubstr(absl::StrCat(m, ":9: [Path] image not found: ", root_,
                                                 "/train/patient7/study1/view1_frontal.png")));
  EXPECT_THAT(run.output, HasSubstr(absl::StrCat(m, ":10: [Path] duplicate path")));
  EXPECT_THAT(run.output, HasSubstr(absl::StrCat(m, ":11: [Pneumonia] '2'")));
  // The rejected row's image is checked too.
  EXPECT_THAT(run.output, HasSubstr(absl::StrCat(m, ":11: [Path] image not found")));
  EXPECT_THAT(run.output, HasSubstr("problems (8):"));
  EXPECT_THAT(run.output, HasSubstr("FAILED: 8 problem(s)"));
  EXPECT_THAT(run.output, HasSubstr("10 rows, 7 well-formed"));
  // Problems are listed in line order.
  EXPECT_LT(run.output.find(":5: "), run.output.find(":6: "));
  EXPECT_LT(run.output.find(":9: "), run.output.find(":10: "));

  // Without decoding, only existence is checked; two threads give the same
  // report as one.
  CheckRun no_decode = RunCheck({"--manifest", manifest, "--root", root_, "--no-decode"});
  EXPECT_EQ(no_decode.exit_code, cli::kExitBadInput);
  EXPECT_THAT(no_decode.output, Not(HasSubstr("not a decodable image")));
  EXPECT_THAT(no_decode.output, HasSubstr("problems (6):"));
  CheckRun threaded = RunCheck({"--manifest", manifest, "--root", root_, "--threads", "2"});
  EXPECT_EQ(threaded.output, run.output);
}

TEST_F(DataCheckTest, MissingColumnsAndMalformedCsv) {
  const std::string no_age = dir_.WriteFile("no_age.csv", absl::StrReplaceAll(Header(), {{"Age,", ""}}) + "\n");
  CheckRun run = RunCheck({"--manifest", no_age, "--root", root_});
  EXPECT_EQ(run.exit_code, cli::kExitBadInput);
  EXPECT_THAT(run.output, HasSubstr(":1: [Age] missing required column"));

  // A ragged row is one problem among the others: later rows are still checked.
  const std::string ragged =
      dir_.WriteFile("ragged.csv", Header() + "\n" + good_rows_ + "a.png,Male\n" + "b.png,Male,x\n");
  run = RunCheck({"--manifest", ragged, "--root", root_});
  EXPECT_EQ(run.exit_code, cli::kExitBadInput);
  EXPECT_THAT(run.output, HasSubstr("ragged.csv:5:"));
  EXPECT_THAT(run.output, HasSubstr("row skipped"));
  EXPECT_THAT(run.output, HasSubstr("ragged.csv:6:"));

  run = RunCheck({"--manifest", dir_.Join("absent.csv"), "--root", root_});
  EXPECT_EQ(run.exit_code, cli::kExitBadInput);
  run = RunCheck({"--manifest", ragged});
  EXPECT_EQ(run.exit_code, cli::kExitBadInput);
  EXPECT_THAT(run.output, HasSubstr("--root"));
  run = RunCheck({"--manifest", ragged, "--root", root_, "--threads", "0"});
  EXPECT_EQ(run.exit_code, cli::kExitBadInput);
}

// `data check` on images whose headers declare huge sizes over a few bytes:
// each is one problem naming the file, the size and the limit, and the check
// stays small. It runs in a child process that may grow by 1 GiB only.
TEST_F(DataCheckTest, HugeDeclaredImagesAreProblemsNotAllocations) {
  std::filesystem::create_directories(root_ + "/train/patient3/study1");
  imaging::hostile::WriteDicomDeclaring(root_ + "/train/patient3/study1/view1_frontal.dcm", 65535, 65535, 8);
  dir_.WriteFile("data/train/patient4/study1/view1_frontal.png", imaging::hostile::PngDeclaring(65535, 65535));
  const std::string manifest =
      dir_.WriteFile("m.csv", Header() + "\n" + good_rows_ +                                              // lines 1-4
                                  Row("train/patient3/study1/view1_frontal.dcm", "Male,50,Frontal,AP") +  // 5
                                  Row("train/patient4/study1/view1_frontal.png", "Male,50,Frontal,AP"));  // 6
  std::string output;
  const imaging::hostile::ChildOutcome outcome = imaging::hostile::RunInChildWithMemoryLimit([&]() -> absl::Status {
    CheckRun run = RunCheck({"--manifest", manifest, "--root", root_, "--threads", "2"});
    return absl::Status(absl::StatusCode::kInvalidArgument, absl::StrCat(run.exit_code, "\n", run.output));
  });
  ASSERT_TRUE(outcome.returned) << "data check " << outcome.how;
  EXPECT_EQ(outcome.message.substr(0, 2), "2\n") << outcome.message;
  EXPECT_THAT(outcome.message,
              HasSubstr(absl::StrCat(manifest, ":5: [Path] ", root_,
                                     "/train/patient3/study1/view1_frontal.dcm: DICOM header declares 65535 x 65535")));
  EXPECT_THAT(outcome.message,
              HasSubstr(absl::StrCat(manifest, ":6: [Path] ", root_,
                                     "/train/patient4/study1/view1_frontal.png: PNG header declares 65535 x 65535")));
  EXPECT_THAT(outcome.message, HasSubstr("4294836225 pixels, above the limit of 67108864"));
  EXPECT_THAT(outcome.message, HasSubstr("problems (2):"));
  EXPECT_LT(outcome.rss_growth_kb, 64 * 1024);
}

TEST_F(DataCheckTest, MaxImagePixelsFlag) {
  // The images are 32 x 40 = 1280 pixels.
  const std::string manifest = dir_.WriteFile("m.csv", Header() + "\n" + good_rows_);
  CheckRun run = RunCheck({"--manifest", manifest, "--root", root_, "--max-image-pixels", "1279"});
  EXPECT_EQ(run.exit_code, cli::kExitBadInput);
  EXPECT_THAT(run.output, HasSubstr("problems (3):"));
  EXPECT_THAT(run.output, HasSubstr("PNG header declares 32 x 40 = 1280 pixels, above the limit of 1279 pixels"));
  run = RunCheck({"--manifest", manifest, "--root", root_, "--max-image-pixels", "1280"});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  for (const char* bad : {"0", "1073741825", "many"}) {
    run = RunCheck({"--manifest", manifest, "--root", root_, "--max-image-pixels", bad});
    EXPECT_EQ(run.exit_code, cli::kExitBadInput) << bad;
    EXPECT_THAT(run.output, HasSubstr("max-image-pixels")) << bad;
  }
}

TEST_F(DataCheckTest, EstimatesTheBitsStoredOf16BitRasterImages) {
  // A 12-bit detector's image exported as a 16-bit PNG: values 0..4095.
  cv::Mat twelve(40, 32, CV_16UC1);
  cv::randu(twelve, 0, 4095);
  twelve.at<uint16_t>(3, 3) = 4095;
  CHECK(cv::imwrite(root_ + "/train/patient1/study1/view1_frontal.png", twelve));
  const std::string manifest = dir_.WriteFile("m.csv", Header() + "\n" + good_rows_);
  CheckRun run = RunCheck({"--manifest", manifest, "--root", root_});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("16-bit PNG/TIFF images: maximum sample 4095 over 1 images -> 12 bits stored"));
  run = RunCheck({"--manifest", manifest, "--root", root_, "--raster-bits-stored", "12"});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, Not(HasSubstr("too few")));
  run = RunCheck({"--manifest", manifest, "--root", root_, "--raster-bits-stored", "10"});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("--raster-bits-stored 10 is too few: samples above 1023 would be clamped"));
  run = RunCheck({"--manifest", manifest, "--root", root_, "--raster-bits-stored", "auto"});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  for (const char* bad : {"7", "17", "twelve"}) {
    run = RunCheck({"--manifest", manifest, "--root", root_, "--raster-bits-stored", bad});
    EXPECT_EQ(run.exit_code, cli::kExitBadInput) << bad;
    EXPECT_THAT(run.output, HasSubstr("--raster-bits-stored")) << bad;
  }
  // Only the existence of images is checked with --no-decode: no estimate.
  run = RunCheck({"--manifest", manifest, "--root", root_, "--no-decode"});
  EXPECT_THAT(run.output, Not(HasSubstr("16-bit PNG/TIFF")));
}

TEST_F(DataCheckTest, ReportListsTheFirstProblemsAndCountsTheRest) {
  // 20000 rows, each with a bad Age and a missing image: 40000 problems.
  std::string text = Header() + "\n";
  for (int i = 0; i < 20000; ++i) {
    absl::StrAppend(&text,
                    Row(absl::StrCat("train/patient", 100 + i, "/study1/view1_frontal.png"), "Male,abc,Frontal,AP"));
  }
  const std::string manifest = dir_.WriteFile("m.csv", text);
  CheckRun run = RunCheck({"--manifest", manifest, "--root", root_, "--no-decode", "--threads", "2"});
  EXPECT_EQ(run.exit_code, cli::kExitBadInput);
  EXPECT_THAT(run.output, HasSubstr("problems (40000):"));
  EXPECT_THAT(run.output, HasSubstr("... and 30000 more, not listed (the first 10000 by line are)"));
  EXPECT_THAT(run.output, HasSubstr("FAILED: 40000 problem(s)"));
  EXPECT_THAT(run.output, HasSubstr(absl::StrCat(manifest, ":5001: [Path] image not found")));
  EXPECT_THAT(run.output, Not(HasSubstr(absl::StrCat(manifest, ":5002: "))));
  EXPECT_LT(run.output.size(), 2000000u);
}

TEST(ProbeImageFileTest, RealDicomFiles) {
  const std::string files = kPydicomTestFiles;
  if (!std::filesystem::exists(files + "/CT_small.dcm")) {
    GTEST_SKIP() << "python3-pydicom test files not installed";
  }
  EXPECT_TRUE(ProbeImageFile(files + "/CT_small.dcm").ok()) << ProbeImageFile(files + "/CT_small.dcm");
  EXPECT_TRUE(ProbeImageFile(files + "/MR_small.dcm").ok()) << ProbeImageFile(files + "/MR_small.dcm");
  // RLE- and JPEG-LS-compressed pixel data decode through the registered
  // codecs.
  EXPECT_TRUE(ProbeImageFile(files + "/MR_small_RLE.dcm").ok()) << ProbeImageFile(files + "/MR_small_RLE.dcm");
  EXPECT_TRUE(ProbeImageFile(files + "/MR_small_jpeg_ls_lossless.dcm").ok())
      << ProbeImageFile(files + "/MR_small_jpeg_ls_lossless.dcm");

  absl::Status truncated = ProbeImageFile(files + "/MR_truncated.dcm");
  EXPECT_EQ(truncated.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(truncated.message(), HasSubstr("MR_truncated.dcm"));
  absl::Status colour = ProbeImageFile(files + "/SC_rgb_dcmtk_+eb+cr.dcm");
  EXPECT_THAT(colour.message(), HasSubstr("colour images are not supported"));
  absl::Status frames = ProbeImageFile(files + "/SC_rgb_rle_2frame.dcm");
  EXPECT_EQ(frames.code(), absl::StatusCode::kInvalidArgument);
  absl::Status no_pixels = ProbeImageFile(files + "/rtplan.dcm");
  EXPECT_THAT(no_pixels.message(), HasSubstr("no Pixel Data"));
  EXPECT_EQ(ProbeImageFile(files + "/does_not_exist.dcm").code(), absl::StatusCode::kNotFound);
}

TEST(ProbeImageFileTest, DicomWithoutExtensionIsRecognizedByItsPreamble) {
  const std::string ct = absl::StrCat(kPydicomTestFiles, "/CT_small.dcm");
  if (!std::filesystem::exists(ct)) {
    GTEST_SKIP() << "python3-pydicom test files not installed";
  }
  testing::TempDir dir;
  Copy(ct, dir.Join("image"));
  EXPECT_TRUE(ProbeImageFile(dir.Join("image")).ok()) << ProbeImageFile(dir.Join("image"));
  // A directory is not an image.
  EXPECT_EQ(ProbeImageFile(dir.path()).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtune::data
