#include "common/imaging/preprocess.h"

#include <cmath>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::imaging {
namespace {

Image Filled(int w, int h, float value) {
  Image image;
  image.width = w;
  image.height = h;
  image.pixels.assign(static_cast<size_t>(w) * h, value);
  return image;
}

void Set(Image* image, int x, int y, float v) { image->pixels[static_cast<size_t>(y) * image->width + x] = v; }

// A 40x30 image: borders of 3 (top), 5 (bottom), 2 (left), 7 (right) pixels of
// dark noise below 0.05, content above.
Image Bordered() {
  Image image = Filled(40, 30, 0.0f);
  for (int y = 0; y < 30; ++y) {
    for (int x = 0; x < 40; ++x) {
      const bool content = y >= 3 && y < 25 && x >= 2 && x < 33;
      Set(&image, x, y, content ? 0.2f + 0.01f * ((x * 7 + y * 3) % 50) : 0.01f * ((x + y) % 5));
    }
  }
  return image;
}

TEST(FindContentBoxTest, RemovesDarkEdgesOnly) {
  Image image = Bordered();
  // A black row and column inside the content must stay.
  for (int x = 2; x < 33; ++x) Set(&image, x, 12, 0.0f);
  for (int y = 3; y < 25; ++y) Set(&image, 20, y, 0.0f);
  const CropBox box = FindContentBox(image, 0.05f);
  EXPECT_EQ(box.x, 2);
  EXPECT_EQ(box.y, 3);
  EXPECT_EQ(box.width, 31);
  EXPECT_EQ(box.height, 22);
}

TEST(FindContentBoxTest, ThresholdIsConfigurable) {
  const Image image = Bordered();                     // Border noise reaches 0.04.
  const CropBox none = FindContentBox(image, 0.04f);  // 0.04 is not below 0.04: nothing is a border.
  EXPECT_EQ(none.width, 40);
  EXPECT_EQ(none.height, 30);
  const CropBox zero = FindContentBox(image, 0.0f);
  EXPECT_EQ(zero.width, 40);
}

TEST(FindContentBoxTest, BlankImageIsKeptWhole) {
  const CropBox box = FindContentBox(Filled(10, 12, 0.0f), 0.05f);
  EXPECT_EQ(box.x, 0);
  EXPECT_EQ(box.y, 0);
  EXPECT_EQ(box.width, 10);
  EXPECT_EQ(box.height, 12);
}

TEST(CropAndResizeTest, AreaInterpolationAveragesBlocks) {
  // 64x64 content inside a black border, downsized by 4: each output pixel is
  // the mean of a 4x4 block.
  Image image = Filled(64 + 10, 64 + 6, 0.0f);
  std::vector<float> content(64 * 64);
  for (int y = 0; y < 64; ++y) {
    for (int x = 0; x < 64; ++x) {
      content[y * 64 + x] = 0.1f + 0.8f * static_cast<float>((x * 13 + y * 29) % 64) / 63.0f;
      Set(&image, x + 4, y + 2, content[y * 64 + x]);
    }
  }
  PreprocessOptions options;
  options.size = 16;
  absl::StatusOr<PreprocessedImage> out = CropAndResize(image, options);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->size, 16);
  EXPECT_EQ(out->source_width, 74);
  EXPECT_EQ(out->crop.x, 4);
  EXPECT_EQ(out->crop.y, 2);
  EXPECT_EQ(out->crop.width, 64);
  EXPECT_EQ(out->crop.height, 64);
  ASSERT_EQ(out->pixels.size(), 256u);
  for (int oy = 0; oy < 16; ++oy) {
    for (int ox = 0; ox < 16; ++ox) {
      double sum = 0;
      for (int dy = 0; dy < 4; ++dy)
        for (int dx = 0; dx < 4; ++dx) sum += content[(oy * 4 + dy) * 64 + ox * 4 + dx];
      ASSERT_NEAR(out->pixels[oy * 16 + ox], sum / 16, 1e-5) << ox << "," << oy;
    }
  }
  // Without cropping, the border is part of the image.
  options.crop_borders = false;
  absl::StatusOr<PreprocessedImage> whole = CropAndResize(image, options);
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(whole->crop.width, 74);
  EXPECT_LT(whole->pixels[0],
            out->pixels[0]);  // The top-left output now averages in black border.
}

TEST(CropAndResizeTest, UpscalingStaysInRange) {
  Image image = Filled(5, 7, 1.0f);
  Set(&image, 2, 3, 0.0f);
  PreprocessOptions options;
  options.size = 32;
  options.crop_borders = false;
  absl::StatusOr<PreprocessedImage> out = CropAndResize(image, options);
  ASSERT_TRUE(out.ok());
  for (float v : out->pixels) {
    ASSERT_GE(v, 0.0f);
    ASSERT_LE(v, 1.0f);
  }
}

TEST(CropAndResizeTest, RejectsBadOptionsAndEmptyImages) {
  PreprocessOptions options;
  options.size = 4;
  EXPECT_EQ(CropAndResize(Filled(8, 8, 0.5f), options).status().code(), absl::StatusCode::kInvalidArgument);
  options = PreprocessOptions();
  options.border_threshold = 1.5f;
  EXPECT_EQ(CropAndResize(Filled(8, 8, 0.5f), options).status().code(), absl::StatusCode::kInvalidArgument);
  options = PreprocessOptions();
  options.std = 0.0f;
  EXPECT_EQ(ValidatePreprocessOptions(options).code(), absl::StatusCode::kInvalidArgument);
  Image empty;
  empty.path = "empty.png";
  absl::StatusOr<PreprocessedImage> out = CropAndResize(empty, PreprocessOptions());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), ::testing::HasSubstr("empty.png"));
}

TEST(NormalizeTest, UsesStudyMeanAndStd) {
  PreprocessOptions options;
  EXPECT_FLOAT_EQ(options.mean, 0.449f);
  EXPECT_FLOAT_EQ(options.std, 0.226f);
  std::vector<float> v = {0.0f, 0.449f, 1.0f};
  Normalize(options, &v);
  EXPECT_NEAR(v[0], -0.449 / 0.226, 1e-5);
  EXPECT_NEAR(v[1], 0.0, 1e-6);
  EXPECT_NEAR(v[2], 0.551 / 0.226, 1e-5);
}

TEST(LoadAndPreprocessTest, SixteenBitPngWithBorder) {
  testing::TempDir dir;
  cv::Mat m(50, 60, CV_16UC1, cv::Scalar(0));
  m(cv::Rect(10, 5, 40, 40)).setTo(cv::Scalar(30000));
  const std::string path = dir.Join("x.png");
  ASSERT_TRUE(cv::imwrite(path, m));
  PreprocessOptions options;
  options.size = 8;
  absl::StatusOr<PreprocessedImage> out = LoadAndPreprocess(path, options);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->crop.x, 10);
  EXPECT_EQ(out->crop.width, 40);
  for (float v : out->pixels) ASSERT_NEAR(v, 30000 / 65535.0, 1e-6);
  EXPECT_EQ(LoadAndPreprocess(dir.Join("missing.png"), options).status().code(), absl::StatusCode::kNotFound);
}

TEST(CropAndResizeKeyTest, CoversExactlyThePixelSettings) {
  PreprocessOptions a;
  PreprocessOptions b = a;
  b.mean = 0.5f;
  b.std = 0.25f;
  EXPECT_EQ(CropAndResizeKey(a), CropAndResizeKey(b));
  b = a;
  b.size = 256;
  EXPECT_NE(CropAndResizeKey(a), CropAndResizeKey(b));
  b = a;
  b.crop_borders = false;
  EXPECT_NE(CropAndResizeKey(a), CropAndResizeKey(b));
  b = a;
  b.border_threshold = 0.051f;
  EXPECT_NE(CropAndResizeKey(a), CropAndResizeKey(b));
}

}  // namespace
}  // namespace fedtune::imaging
