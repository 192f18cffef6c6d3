#include "common/imaging/convert_command.h"

#include <cmath>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/cli/command.h"
#include "common/imaging/decode.h"
#include "common/imaging/preprocess.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/imaging/hostile_images.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::imaging {
namespace {

const std::string kCtSmall = "/usr/lib/python3/dist-packages/pydicom/data/test_files/CT_small.dcm";

// Runs `data convert`; what it prints goes to *printed when given.
absl::Status RunConvert(const std::vector<std::string>& args, std::string* printed = nullptr) {
  std::ostringstream out;
  const cli::Command command = MakeDataConvertCommand(out);
  absl::StatusOr<cli::ParsedFlags> flags = cli::ParseFlags(args, command.flags, command.max_positional);
  if (!flags.ok()) return flags.status();
  absl::Status status = command.run(*flags);
  if (printed != nullptr) *printed = out.str();
  return status;
}

// The PNG's 16-bit values must be exactly round(65535 * expected).
void ExpectPngEquals(const std::string& png, int width, int height, const std::vector<float>& expected) {
  const cv::Mat m = cv::imread(png, cv::IMREAD_ANYDEPTH | cv::IMREAD_GRAYSCALE);
  ASSERT_FALSE(m.empty()) << png;
  ASSERT_EQ(m.depth(), CV_16U);
  ASSERT_EQ(m.cols, width);
  ASSERT_EQ(m.rows, height);
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      ASSERT_EQ(m.at<uint16_t>(y, x), std::lround(expected[static_cast<size_t>(y) * width + x] * 65535.0f))
          << x << "," << y;
}

TEST(DataConvertTest, CommandPathAndFlags) {
  std::ostringstream out;
  const cli::Command command = MakeDataConvertCommand(out);
  EXPECT_EQ(command.path, (std::vector<std::string>{"data", "convert"}));
  EXPECT_EQ(cli::ParseFlags({}, command.flags).status().code(),
            absl::StatusCode::kInvalidArgument);  // --in, --out.
}

TEST(DataConvertTest, DicomToSixteenBitPngAsDecoded) {
  testing::TempDir dir;
  const std::string out = dir.Join("ct.png");
  std::string printed;
  ASSERT_TRUE(RunConvert({"--in", kCtSmall, "--out", out}, &printed).ok());
  EXPECT_THAT(printed, ::testing::StartsWith(absl::StrCat("wrote ", out, ": 128x128 from ", kCtSmall, " (")));
  absl::StatusOr<Image> decoded = DecodeImage(kCtSmall);
  ASSERT_TRUE(decoded.ok());
  ExpectPngEquals(out, 128, 128, decoded->pixels);
  // Min-max window over the modality values: the full 16-bit range is used.
  const cv::Mat m = cv::imread(out, cv::IMREAD_ANYDEPTH);
  double lo, hi;
  cv::minMaxLoc(m, &lo, &hi);
  EXPECT_EQ(lo, 0);
  EXPECT_EQ(hi, 65535);
}

TEST(DataConvertTest, PreprocessCropsAndResizes) {
  testing::TempDir dir;
  cv::Mat m(60, 80, CV_16UC1, cv::Scalar(0));
  for (int y = 10; y < 50; ++y)
    for (int x = 20; x < 60; ++x) m.at<uint16_t>(y, x) = static_cast<uint16_t>(5000 + 900 * ((x / 4 + y / 4) % 40));
  const std::string in = dir.Join("in.png");
  ASSERT_TRUE(cv::imwrite(in, m));
  const std::string out = dir.Join("out.PNG");
  ASSERT_TRUE(RunConvert({"--in", in, "--out", out, "--preprocess", "--size", "20"}).ok());
  PreprocessOptions options;
  options.size = 20;
  absl::StatusOr<PreprocessedImage> want = LoadAndPreprocess(in, options);
  ASSERT_TRUE(want.ok());
  EXPECT_EQ(want->crop.width, 40);
  ExpectPngEquals(out, 20, 20, want->pixels);

  // --border-threshold 1 makes every edge a border... of a non-blank image? No:
  // the max 1 is never below 1 only for saturated rows; here nothing reaches 1,
  // so the image is blank by that threshold and kept whole.
  ASSERT_TRUE(RunConvert({"--in", in, "--out", out, "--preprocess", "--size", "20", "--border-threshold", "1"}).ok());
  options.border_threshold = 1.0f;
  want = LoadAndPreprocess(in, options);
  ASSERT_TRUE(want.ok());
  EXPECT_EQ(want->crop.width, 80);
  ExpectPngEquals(out, 20, 20, want->pixels);
}

TEST(DataConvertTest, BadInputs) {
  testing::TempDir dir;
  EXPECT_EQ(RunConvert({"--in", kCtSmall, "--out", dir.Join("x.jpg")}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RunConvert({"--in", dir.Join("missing.dcm"), "--out", dir.Join("x.png")}).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(RunConvert({"--in", kCtSmall, "--out", dir.Join("x.png"), "--preprocess", "--size", "3"}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RunConvert({"--in", kCtSmall, "--out", dir.Join("x.png"), "--size", "abc"}).code(),
            absl::StatusCode::kInvalidArgument);
  const absl::Status colour = RunConvert(
      {"--in", "/usr/lib/python3/dist-packages/pydicom/data/test_files/SC_rgb_rle.dcm", "--out", dir.Join("x.png")});
  EXPECT_EQ(cli::ExitCodeFor(colour), cli::kExitBadInput);
  EXPECT_EQ(RunConvert({"--in", kCtSmall, "--out", dir.Join("no/such/dir/x.png")}).code(), absl::StatusCode::kNotFound);
}

TEST(DataConvertTest, MaxImagePixelsFlag) {
  testing::TempDir dir;
  const std::string out = dir.Join("ct.png");
  // CT_small is 128 x 128 = 16384 pixels.
  absl::Status refused = RunConvert({"--in", kCtSmall, "--out", out, "--max-image-pixels", "16383"});
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.message(), ::testing::HasSubstr(kCtSmall));
  EXPECT_THAT(refused.message(), ::testing::HasSubstr("16384 pixels, above the limit of 16383"));
  EXPECT_TRUE(RunConvert({"--in", kCtSmall, "--out", out, "--max-image-pixels", "16384"}).ok());
  EXPECT_EQ(RunConvert({"--in", kCtSmall, "--out", out, "--max-image-pixels", "0"}).code(),
            absl::StatusCode::kInvalidArgument);

  // The finding: a DICOM declaring 65535 x 65535 over 16 bytes is refused by
  // default, from its header, in a child process that may grow by 1 GiB only.
  const std::string huge = dir.Join("huge.dcm");
  hostile::WriteDicomDeclaring(huge, 65535, 65535, 8);
  const hostile::ChildOutcome outcome = hostile::RunInChildWithMemoryLimit([&] {
    return RunConvert({"--in", huge, "--out", dir.Join("huge.png")});
  });
  ASSERT_TRUE(outcome.returned) << "data convert " << outcome.how;
  EXPECT_EQ(outcome.code, absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(outcome.message, ::testing::HasSubstr(huge));
  EXPECT_THAT(outcome.message, ::testing::HasSubstr("4294836225 pixels, above the limit of 67108864"));
  EXPECT_LT(outcome.rss_growth_kb, 64 * 1024);
}

TEST(DataConvertTest, RasterBitsStoredFlag) {
  testing::TempDir dir;
  // A 12-bit image in a 16-bit PNG: 0..4095.
  cv::Mat twelve(8, 8, CV_16UC1);
  for (int y = 0; y < 8; ++y)
    for (int x = 0; x < 8; ++x) twelve.at<uint16_t>(y, x) = static_cast<uint16_t>((x * 8 + y) * 65);
  twelve.at<uint16_t>(0, 0) = 4095;
  const std::string in = dir.Join("twelve.png");
  ASSERT_TRUE(cv::imwrite(in, twelve));
  std::vector<float> expected(64);
  for (int y = 0; y < 8; ++y)
    for (int x = 0; x < 8; ++x) expected[static_cast<size_t>(y) * 8 + x] = twelve.at<uint16_t>(y, x) / 4095.0f;
  for (const char* value : {"12", "auto"}) {
    const std::string out = dir.Join(absl::StrCat("out-", value, ".png"));
    std::string printed;
    ASSERT_TRUE(RunConvert({"--in", in, "--out", out, "--raster-bits-stored", value}, &printed).ok()) << value;
    EXPECT_THAT(printed, ::testing::HasSubstr("12 bits stored")) << value;
    ExpectPngEquals(out, 8, 8, expected);
  }
  EXPECT_EQ(RunConvert({"--in", in, "--out", dir.Join("x.png"), "--raster-bits-stored", "7"}).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtune::imaging
