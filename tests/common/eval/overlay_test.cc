#include "common/eval/overlay.h"

#include <ATen/ATen.h>

#include <cmath>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <string>
#include <vector>

#include "common/io/file_util.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::eval {
namespace {

constexpr int kSize = 32;

// Gray: left half black (0), right half white (1). Cam: top half 1, bottom half 0.
std::vector<float> HalfGray() {
  std::vector<float> gray(kSize * kSize, 0.0f);
  for (int r = 0; r < kSize; ++r) {
    for (int c = kSize / 2; c < kSize; ++c) gray[r * kSize + c] = 1.0f;
  }
  return gray;
}

at::Tensor TopHalfCam(int size) {
  at::Tensor cam = at::zeros({size, size}, at::kFloat);
  cam.slice(0, 0, size / 2).fill_(1.0);
  return cam;
}

cv::Vec3b Jet(uchar value) {
  cv::Mat one(1, 1, CV_8U, cv::Scalar(value)), colored;
  cv::applyColorMap(one, colored, cv::COLORMAP_JET);
  return colored.at<cv::Vec3b>(0, 0);
}

cv::Mat Decode(const std::string& png) {
  std::vector<uchar> bytes(png.begin(), png.end());
  return cv::imdecode(bytes, cv::IMREAD_COLOR);
}

void ExpectPixel(const cv::Mat& image, int row, int col, double gray255, const cv::Vec3b& jet, double alpha) {
  const cv::Vec3b pixel = image.at<cv::Vec3b>(row, col);
  for (int ch = 0; ch < 3; ++ch) {
    EXPECT_NEAR(pixel[ch], (1 - alpha) * gray255 + alpha * jet[ch], 1.0) << "(" << row << "," << col << ") ch " << ch;
  }
}

TEST(OverlayTest, BlendsGrayWithJetColourMap) {
  absl::StatusOr<std::string> png = GradCamOverlayPng(HalfGray(), kSize, TopHalfCam(kSize), 0.4);
  ASSERT_TRUE(png.ok()) << png.status();
  ASSERT_GE(png->size(), 8u);
  EXPECT_EQ(png->substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  const cv::Mat image = Decode(*png);
  ASSERT_EQ(image.rows, kSize);
  ASSERT_EQ(image.cols, kSize);
  ASSERT_EQ(image.type(), CV_8UC3);
  ExpectPixel(image, 2, 2, 0, Jet(255), 0.4);     // Black, strongest evidence.
  ExpectPixel(image, 2, 30, 255, Jet(255), 0.4);  // White, strongest evidence.
  ExpectPixel(image, 30, 2, 0, Jet(0), 0.4);      // Black, no evidence.
  ExpectPixel(image, 30, 30, 255, Jet(0), 0.4);   // White, no evidence.
  // JET: evidence is red (BGR order), no evidence is blue.
  EXPECT_GT(image.at<cv::Vec3b>(2, 2)[2], image.at<cv::Vec3b>(2, 2)[0]);
  EXPECT_GT(image.at<cv::Vec3b>(30, 2)[0], image.at<cv::Vec3b>(30, 2)[2]);

  // alpha 0 is the radiograph alone, in gray.
  absl::StatusOr<std::string> plain = GradCamOverlayPng(HalfGray(), kSize, TopHalfCam(kSize), 0.0);
  ASSERT_TRUE(plain.ok()) << plain.status();
  const cv::Mat gray = Decode(*plain);
  EXPECT_EQ(gray.at<cv::Vec3b>(2, 2), cv::Vec3b(0, 0, 0));
  EXPECT_EQ(gray.at<cv::Vec3b>(30, 30), cv::Vec3b(255, 255, 255));
}

TEST(OverlayTest, ResizesCoarseMapsAndClipsOutOfRangeValues) {
  at::Tensor cam = TopHalfCam(8) * 3.0 - 1.0;  // 2 on top, -1 below: clipped to 1 and 0.
  absl::StatusOr<std::string> png = GradCamOverlayPng(HalfGray(), kSize, cam.to(at::kDouble));
  ASSERT_TRUE(png.ok()) << png.status();
  const cv::Mat image = Decode(*png);
  ASSERT_EQ(image.rows, kSize);
  ASSERT_EQ(image.cols, kSize);
  ExpectPixel(image, 1, 1, 0, Jet(255), 0.4);
  ExpectPixel(image, 30, 30, 255, Jet(0), 0.4);
}

TEST(OverlayTest, WritesThePngAtomically) {
  testing::TempDir dir;
  const std::string path = dir.Join("overlay.png");
  ASSERT_TRUE(WriteGradCamOverlay(path, HalfGray(), kSize, TopHalfCam(kSize)).ok());
  absl::StatusOr<std::string> written = io::ReadFile(path);
  ASSERT_TRUE(written.ok()) << written.status();
  absl::StatusOr<std::string> png = GradCamOverlayPng(HalfGray(), kSize, TopHalfCam(kSize));
  ASSERT_TRUE(png.ok());
  EXPECT_EQ(*written, *png);

  absl::Status missing_dir = WriteGradCamOverlay(dir.Join("no/such/dir/x.png"), HalfGray(), kSize, TopHalfCam(kSize));
  EXPECT_FALSE(missing_dir.ok());
  absl::Status bad = WriteGradCamOverlay(dir.Join("bad.png"), HalfGray(), kSize + 1, TopHalfCam(kSize));
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(bad.message()).find("bad.png"), std::string::npos) << bad;
}

TEST(OverlayTest, RejectsBadInputs) {
  const at::Tensor cam = TopHalfCam(kSize);
  EXPECT_EQ(GradCamOverlayPng(HalfGray(), 0, cam).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GradCamOverlayPng(HalfGray(), kSize - 1, cam).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GradCamOverlayPng(HalfGray(), kSize, cam, 1.5).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GradCamOverlayPng(HalfGray(), kSize, cam, std::nan("")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GradCamOverlayPng(HalfGray(), kSize, cam.unsqueeze(0)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GradCamOverlayPng(HalfGray(), kSize, at::Tensor()).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GradCamOverlayPng(HalfGray(), kSize, cam.to(at::kByte)).status().code(),
            absl::StatusCode::kInvalidArgument);
  at::Tensor nan_cam = cam.clone();
  nan_cam[3][3] = std::nan("");
  EXPECT_EQ(GradCamOverlayPng(HalfGray(), kSize, nan_cam).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<float> nan_gray = HalfGray();
  nan_gray[5] = std::nanf("");
  EXPECT_EQ(GradCamOverlayPng(nan_gray, kSize, cam).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtune::eval
