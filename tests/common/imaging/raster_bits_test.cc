// DecodeOptions::raster_bits_stored (decode.h), its estimate from the data (raster_bits.h) and its place in the
// preprocessed-image cache's key (preprocess.h, cache.h).
#include "common/imaging/raster_bits.h"

#include <sys/stat.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <memory>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/imaging/cache.h"
#include "common/imaging/decode.h"
#include "common/imaging/preprocess.h"
#include "common/io/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::imaging {
namespace {

using ::testing::HasSubstr;

// A w x h 16-bit image of 12-bit data: values 0..max, max at (0, 0).
cv::Mat TwelveBit(int w, int h, int max = 4095) {
  cv::Mat m(h, w, CV_16UC1);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) m.at<uint16_t>(y, x) = static_cast<uint16_t>((x * 97 + y * 31) % (max + 1));
  }
  m.at<uint16_t>(0, 0) = static_cast<uint16_t>(max);
  return m;
}

std::string Write(const fedtune::testing::TempDir& dir, const std::string& name, const cv::Mat& m) {
  const std::string path = dir.Join(name);
  EXPECT_TRUE(cv::imwrite(path, m)) << path;
  return path;
}

TEST(RasterBitsStoredTest, A16BitPngOf12BitDataDecodesLikeTheStretchedReference) {
  fedtune::testing::TempDir dir;
  const cv::Mat data = TwelveBit(40, 30);
  // The reference: the same data exported stretched to the full 16 bits, which the default decoding gets right.
  cv::Mat stretched;
  data.convertTo(stretched, CV_16U, 65535.0 / 4095.0);
  const std::string png = Write(dir, "twelve.png", data);
  const std::string tiff = Write(dir, "twelve.tif", data);
  const std::string reference_path = Write(dir, "stretched.png", stretched);

  absl::StatusOr<Image> dark = DecodeImage(png);  // Today's default: by the container's 16 bits.
  ASSERT_TRUE(dark.ok()) << dark.status();
  EXPECT_NEAR(dark->at(0, 0), 4095.0 / 65535.0, 1e-6);

  DecodeOptions options;
  options.raster_bits_stored = 12;
  absl::StatusOr<Image> reference = DecodeImage(reference_path);
  ASSERT_TRUE(reference.ok()) << reference.status();
  for (const std::string& path : {png, tiff}) {
    absl::StatusOr<Image> image = DecodeImage(path, options);
    ASSERT_TRUE(image.ok()) << image.status();
    EXPECT_EQ(image->bits, 16);
    EXPECT_THAT(image->description, HasSubstr("12 bits stored"));
    float worst = 0;
    for (int y = 0; y < 30; ++y) {
      for (int x = 0; x < 40; ++x) {
        ASSERT_NEAR(image->at(x, y), data.at<uint16_t>(y, x) / 4095.0f, 1e-6) << x << "," << y;
        worst = std::max(worst, std::abs(image->at(x, y) - reference->at(x, y)));
      }
    }
    EXPECT_EQ(image->at(0, 0), 1.0f);
    EXPECT_LE(worst, 1.0f / 65535.0f);  // Within the reference's rounding to 16 bits.
  }
}

TEST(RasterBitsStoredTest, SamplesAboveTheBitsAreClampedAnd8BitFilesAreUntouched) {
  fedtune::testing::TempDir dir;
  cv::Mat m = TwelveBit(16, 16);
  m.at<uint16_t>(5, 5) = 60000;
  DecodeOptions options;
  options.raster_bits_stored = 12;
  absl::StatusOr<Image> image = DecodeImage(Write(dir, "over.png", m), options);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->at(5, 5), 1.0f);
  for (float v : image->pixels) ASSERT_LE(v, 1.0f);

  cv::Mat eight(8, 8, CV_8UC1, cv::Scalar(100));
  absl::StatusOr<Image> small = DecodeImage(Write(dir, "eight.png", eight), options);
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_NEAR(small->at(3, 3), 100.0 / 255.0, 1e-6);
  EXPECT_EQ(small->description.find("bits stored"), std::string::npos);
}

TEST(RasterBitsStoredTest, OutOfRangeValuesAreRefused) {
  for (int bits : {-1, 1, 7, 17, 32}) {
    DecodeOptions options;
    options.raster_bits_stored = bits;
    absl::Status status = ValidateDecodeOptions(options);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bits;
    EXPECT_THAT(status.message(), HasSubstr("raster_bits_stored")) << bits;
  }
  for (int bits : {0, 8, 12, 16}) {
    DecodeOptions options;
    options.raster_bits_stored = bits;
    EXPECT_TRUE(ValidateDecodeOptions(options).ok()) << bits;
  }
}

TEST(RasterBitsEstimateTest, FindsTheBitsOfThe16BitRasterImages) {
  fedtune::testing::TempDir dir;
  std::vector<std::string> paths;
  for (int i = 0; i < 5; ++i) paths.push_back(Write(dir, absl::StrCat("a", i, ".png"), TwelveBit(12, 10, 4000 + i)));
  paths.push_back(Write(dir, "b.tif", TwelveBit(12, 10, 4095)));
  paths.push_back(Write(dir, "eight.png", cv::Mat(8, 8, CV_8UC1, cv::Scalar(255))));  // Not counted.
  paths.push_back(dir.Join("missing.png"));
  absl::StatusOr<RasterBitsEstimate> estimate = EstimateRasterBitsStored(paths, DecodeOptions());
  ASSERT_TRUE(estimate.ok()) << estimate.status();
  EXPECT_EQ(estimate->images_sampled, 6);
  EXPECT_EQ(estimate->max_sample, 4095);
  EXPECT_EQ(estimate->bits_stored, 12);
  EXPECT_EQ(estimate->unreadable, 1);
  EXPECT_THAT(FormatRasterBitsEstimate(*estimate),
              HasSubstr("16-bit PNG/TIFF images: maximum sample 4095 over 6 images -> 12 bits stored"));

  // One sample above 4095 needs a 13th bit; full-range data needs all 16.
  paths.push_back(Write(dir, "c.png", TwelveBit(12, 10, 4096)));
  EXPECT_EQ(EstimateRasterBitsStored(paths, DecodeOptions())->bits_stored, 13);
  paths.push_back(Write(dir, "d.png", TwelveBit(12, 10, 65535)));
  EXPECT_EQ(EstimateRasterBitsStored(paths, DecodeOptions())->bits_stored, 16);
  // Dark data still gets 8 bits at least.
  const std::vector<std::string> dark = {Write(dir, "dark.png", TwelveBit(12, 10, 100))};
  EXPECT_EQ(EstimateRasterBitsStored(dark, DecodeOptions())->bits_stored, 8);
}

TEST(RasterBitsEstimateTest, SamplesAtMostMaxImagesSpreadOverThePaths) {
  fedtune::testing::TempDir dir;
  std::vector<std::string> paths;
  for (int i = 0; i < 10; ++i) {
    // Only the last image reaches 4095: a sample of 2 spread over 10 (indices 0 and 5) does not see it.
    paths.push_back(Write(dir, absl::StrCat("p", i, ".png"), TwelveBit(8, 8, i == 9 ? 4095 : 1000)));
  }
  absl::StatusOr<RasterBitsEstimate> two = EstimateRasterBitsStored(paths, DecodeOptions(), 2);
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ(two->images_sampled, 2);
  EXPECT_EQ(two->max_sample, 1000);
  EXPECT_EQ(two->bits_stored, 10);
  EXPECT_EQ(EstimateRasterBitsStored(paths, DecodeOptions(), 2)->max_sample, 1000);  // Deterministic.
  EXPECT_EQ(EstimateRasterBitsStored(paths, DecodeOptions())->bits_stored, 12);
  EXPECT_EQ(EstimateRasterBitsStored(paths, DecodeOptions(), 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(RasterBitsEstimateTest, NothingToEstimateWithout16BitRasterImages) {
  fedtune::testing::TempDir dir;
  const std::vector<std::string> paths = {Write(dir, "eight.png", cv::Mat(8, 8, CV_8UC1, cv::Scalar(7)))};
  absl::StatusOr<RasterBitsEstimate> estimate = EstimateRasterBitsStored(paths, DecodeOptions());
  ASSERT_TRUE(estimate.ok()) << estimate.status();
  EXPECT_EQ(estimate->images_sampled, 0);
  EXPECT_EQ(estimate->bits_stored, 0);
  EXPECT_THAT(FormatRasterBitsEstimate(*estimate), HasSubstr("none among 1 files"));
  EXPECT_EQ(ResolveRasterBitsStored(kRasterBitsStoredAuto, paths, DecodeOptions()).value(), 0);
}

// A FIFO among the paths is passed over as unreadable, not waited on (opening it would block).
TEST(RasterBitsEstimateTest, AFifoIsUnreadableNotWaitedOn) {
  fedtune::testing::TempDir dir;
  const std::string fifo = dir.Join("fifo.png");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const std::vector<std::string> paths = {Write(dir, "a.png", TwelveBit(12, 10)), fifo};
  absl::StatusOr<RasterBitsEstimate> estimate = EstimateRasterBitsStored(paths, DecodeOptions());
  ASSERT_TRUE(estimate.ok()) << estimate.status();
  EXPECT_EQ(estimate->unreadable, 1);
  EXPECT_EQ(estimate->bits_stored, 12);
}

// A little-endian, uncompressed, single-strip grayscale TIFF with its IFD after the pixels, as many TIFF writers lay
// files out (OpenCV's writer puts the IFD first).
std::string WriteTiffWithIfdLast(const fedtune::testing::TempDir& dir, const std::string& name, const cv::Mat& m) {
  const int bits = m.depth() == CV_16U ? 16 : 8;
  const uint32_t data_bytes = static_cast<uint32_t>(m.total() * m.elemSize());
  std::string out = "II*";
  out.push_back('\0');
  auto u16 = [&](uint32_t v) {
    out.push_back(static_cast<char>(v & 0xFF));
    out.push_back(static_cast<char>((v >> 8) & 0xFF));
  };
  auto u32 = [&](uint32_t v) {
    u16(v & 0xFFFF);
    u16(v >> 16);
  };
  u32(8 + data_bytes);                                            // The IFD follows the pixels.
  out.append(reinterpret_cast<const char*>(m.data), data_bytes);  // Little-endian host: samples as the file has them.
  const std::vector<std::array<uint32_t, 3>> entries = {{256, 4, static_cast<uint32_t>(m.cols)},
                                                        {257, 4, static_cast<uint32_t>(m.rows)},
                                                        {258, 3, uint32_t(bits)},
                                                        {259, 3, 1},
                                                        {262, 3, 1},
                                                        {273, 4, 8},
                                                        {277, 3, 1},
                                                        {278, 4, static_cast<uint32_t>(m.rows)},
                                                        {279, 4, data_bytes}};
  u16(static_cast<uint32_t>(entries.size()));
  for (const auto& [tag, type, value] : entries) {
    u16(tag);
    u16(type);
    u32(1);
    if (type == 3) {
      u16(value);
      u16(0);
    } else {
      u32(value);
    }
  }
  u32(0);
  return dir.WriteFile(name, out);
}

// TIFF writers often put the IFD after the pixels: its depth is then read from the whole file, so an 8-bit TIFF is
// not taken for a 16-bit candidate (and does not use up the images the estimate decodes).
TEST(RasterBitsEstimateTest, TiffDepthIsFoundWhenItsIfdFollowsThePixels) {
  fedtune::testing::TempDir dir;
  const std::string eight = WriteTiffWithIfdLast(dir, "eight.tif", cv::Mat(100, 100, CV_8UC1, cv::Scalar(9)));
  const std::string sixteen = WriteTiffWithIfdLast(dir, "sixteen.tif", TwelveBit(100, 100));
  absl::StatusOr<Image> decoded = DecodeImage(sixteen);  // The file is a valid TIFF.
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->bits, 16);
  absl::StatusOr<RasterBitsEstimate> estimate = EstimateRasterBitsStored({eight, sixteen}, DecodeOptions());
  ASSERT_TRUE(estimate.ok()) << estimate.status();
  EXPECT_EQ(estimate->candidates, 1);
  EXPECT_EQ(estimate->images_sampled, 1);
  EXPECT_EQ(estimate->bits_stored, 12);
}

// 16-bit PNG files that cannot be decoded (here: truncated after their header) leave auto nothing to go on: an
// error, not the container's scaling.
TEST(RasterBitsEstimateTest, AutoFailsWhenNo16BitCandidateDecodes) {
  fedtune::testing::TempDir dir;
  const std::string good = Write(dir, "good.png", TwelveBit(40, 40));
  absl::StatusOr<std::string> bytes = io::ReadFile(good);
  ASSERT_TRUE(bytes.ok());
  const std::string cut = dir.WriteFile("cut.png", bytes->substr(0, 60));
  absl::StatusOr<int> bits = ResolveRasterBitsStored(kRasterBitsStoredAuto, {cut}, DecodeOptions());
  EXPECT_EQ(bits.status().code(), absl::StatusCode::kFailedPrecondition) << bits.status();
  EXPECT_EQ(ResolveRasterBitsStored(kRasterBitsStoredAuto, {cut, good}, DecodeOptions()).value(), 12);
}

TEST(RasterBitsEstimateTest, ResolveAndParseFlag) {
  fedtune::testing::TempDir dir;
  const std::vector<std::string> paths = {Write(dir, "a.png", TwelveBit(8, 8))};
  EXPECT_EQ(ResolveRasterBitsStored(kRasterBitsStoredAuto, paths, DecodeOptions()).value(), 12);
  EXPECT_EQ(ResolveRasterBitsStored(0, paths, DecodeOptions()).value(), 0);
  EXPECT_EQ(ResolveRasterBitsStored(14, paths, DecodeOptions()).value(), 14);
  EXPECT_EQ(ResolveRasterBitsStored(20, paths, DecodeOptions()).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseRasterBitsStoredFlag("auto").value(), kRasterBitsStoredAuto);
  EXPECT_EQ(ParseRasterBitsStoredFlag("-1").value(), kRasterBitsStoredAuto);
  EXPECT_EQ(ParseRasterBitsStoredFlag("0").value(), 0);
  EXPECT_EQ(ParseRasterBitsStoredFlag("12").value(), 12);
  for (const char* bad : {"", "7", "17", "twelve", "12.5"}) {
    absl::StatusOr<int> parsed = ParseRasterBitsStoredFlag(bad);
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(parsed.status().message(), HasSubstr("--raster-bits-stored")) << bad;
  }
}

TEST(RasterBitsCacheTest, TheEffectiveBitsArePartOfTheCacheKey) {
  PreprocessOptions base;
  PreprocessOptions twelve = base;
  twelve.decode.raster_bits_stored = 12;
  PreprocessOptions fourteen = base;
  fourteen.decode.raster_bits_stored = 14;
  EXPECT_NE(CropAndResizeKey(base), CropAndResizeKey(twelve));
  EXPECT_NE(CropAndResizeKey(twelve), CropAndResizeKey(fourteen));
  EXPECT_THAT(CropAndResizeKey(twelve), HasSubstr("raster_bits=12"));
  // The default's key is unchanged (existing caches stay valid): no raster_bits term.
  EXPECT_EQ(CropAndResizeKey(base).find("raster_bits"), std::string::npos);

  fedtune::testing::TempDir dir;
  const std::string image = Write(dir, "twelve.png", TwelveBit(40, 40));
  base.size = twelve.size = 16;
  base.crop_borders = twelve.crop_borders = false;
  absl::StatusOr<std::unique_ptr<ImageCache>> plain = ImageCache::Open(dir.Join("cache"), base);
  absl::StatusOr<std::unique_ptr<ImageCache>> rescaled = ImageCache::Open(dir.Join("cache"), twelve);
  ASSERT_TRUE(plain.ok()) << plain.status();
  ASSERT_TRUE(rescaled.ok()) << rescaled.status();
  EXPECT_NE((*plain)->EntryPath(image), (*rescaled)->EntryPath(image));
  absl::StatusOr<PreprocessedImage> a = (*plain)->Get(image);
  absl::StatusOr<PreprocessedImage> b = (*rescaled)->Get(image);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ((*rescaled)->stats().misses, 1);  // Not served the other setting's entry.
  double sum_a = 0, sum_b = 0;
  for (float v : a->pixels) sum_a += v;
  for (float v : b->pixels) sum_b += v;
  EXPECT_NEAR(sum_b / sum_a, 65535.0 / 4095.0, 0.01);  // 16 times brighter.
}

}  // namespace
}  // namespace fedtune::imaging
