#include "common/imaging/raster_header.h"

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fedtune::imaging {
namespace {

using ::testing::HasSubstr;

std::string Encode(const std::string& ext, const cv::Mat& m, const std::vector<int>& params = {}) {
  std::vector<uchar> out;
  EXPECT_TRUE(cv::imencode(ext, m, out, params)) << ext;
  return std::string(out.begin(), out.end());
}

// The size OpenCV itself decodes from `bytes`.
cv::Size Decoded(const std::string& bytes) {
  const cv::Mat raw(1, static_cast<int>(bytes.size()), CV_8UC1, const_cast<char*>(bytes.data()));
  return cv::imdecode(raw, cv::IMREAD_ANYDEPTH | cv::IMREAD_ANYCOLOR).size();
}

void ExpectHeader(const std::string& bytes, const std::string& format, int64_t width, int64_t height) {
  absl::StatusOr<RasterHeader> h = ReadRasterHeader(bytes);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->format, format);
  EXPECT_EQ(h->width, width);
  EXPECT_EQ(h->height, height);
}

std::string Le(uint64_t v, int n) {
  std::string s(n, '\0');
  // Bytes past the 8th are zero (shifting a 64-bit value by 64 or more is undefined; UBSan caught it).
  for (int i = 0; i < n && i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xFF);
  return s;
}
std::string Be(uint64_t v, int n) {
  std::string s(n, '\0');
  for (int i = 0; i < n; ++i) {
    const int shift = 8 * (n - 1 - i);
    s[i] = shift < 64 ? static_cast<char>((v >> shift) & 0xFF) : '\0';
  }
  return s;
}

TEST(RasterHeaderTest, ReadsWhatOpenCvWrites) {
  for (int depth : {CV_8U, CV_16U}) {
    for (int channels : {1, 3}) {
      const cv::Mat m(23, 37, CV_MAKETYPE(depth, channels), cv::Scalar::all(90));
      SCOPED_TRACE(m.type());
      ExpectHeader(Encode(".png", m), "png", 37, 23);
      ExpectHeader(Encode(".tiff", m), "tiff", 37, 23);
      ExpectHeader(Encode(".tiff", m, {cv::IMWRITE_TIFF_COMPRESSION, 1}), "tiff", 37, 23);
      if (depth == CV_8U) {
        ExpectHeader(Encode(".jpg", m), "jpeg", 37, 23);
        ExpectHeader(Encode(".jpg", m, {cv::IMWRITE_JPEG_PROGRESSIVE, 1}), "jpeg", 37, 23);
        ExpectHeader(Encode(".bmp", m), "bmp", 37, 23);
      }
    }
  }
  absl::StatusOr<RasterHeader> png16 = ReadRasterHeader(Encode(".png", cv::Mat(2, 2, CV_16UC1)));
  ASSERT_TRUE(png16.ok());
  EXPECT_EQ(png16->bits_per_sample, 16);
}

TEST(RasterHeaderTest, JpegMarkersAreWalkedAsLibjpegWalksThem) {
  const std::string jpeg = Encode(".jpg", cv::Mat(23, 37, CV_8UC1, cv::Scalar(90)));
  // After SOI: an APP1 segment whose payload looks like a SOF0 declaring
  // 32767 x 32767, then junk bytes and fill bytes before the next marker.
  // libjpeg skips the APP1 by its length, discards the junk (with a warning)
  // and the fill: the real SOF declares 37 x 23.
  const std::string fake_sof = std::string("\xFF\xC0\x00\x11\x08", 5) + Be(32767, 2) + Be(32767, 2);
  const std::string app1 = std::string("\xFF\xE1", 2) + Be(2 + fake_sof.size(), 2) + fake_sof;
  const std::string tricky = jpeg.substr(0, 2) + app1 + std::string("\x12\x34\x00\xFF\xFF\xFF", 6) + jpeg.substr(2);
  EXPECT_EQ(Decoded(tricky), cv::Size(37, 23));
  ExpectHeader(tricky, "jpeg", 37, 23);
  // RSTn and TEM markers have no length.
  const std::string rst = jpeg.substr(0, 2) + std::string("\xFF\xD0\xFF\x01", 4) + jpeg.substr(2);
  ExpectHeader(rst, "jpeg", 37, 23);
}

TEST(RasterHeaderTest, HandWrittenTiffVariants) {
  // Big-endian classic TIFF: ImageWidth SHORT, ImageLength LONG, then
  // ImageWidth again (a duplicate: the larger value is reported), tiles.
  auto entry_be = [](int tag, int type, uint32_t value) {
    const std::string v = type == 3 ? Be(value, 2) + std::string(2, '\0') : Be(value, 4);
    return Be(tag, 2) + Be(type, 2) + Be(1, 4) + v;
  };
  const std::string mm = std::string("MM\0*", 4) + Be(8, 4) + Be(5, 2) + entry_be(256, 3, 300) + entry_be(257, 4, 200) +
                         entry_be(256, 4, 70000) + entry_be(322, 3, 256) + entry_be(323, 3, 128) + Be(0, 4);
  absl::StatusOr<RasterHeader> h = ReadRasterHeader(mm);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->width, 70000);
  EXPECT_EQ(h->height, 200);
  EXPECT_EQ(h->tile_width, 256);
  EXPECT_EQ(h->tile_height, 128);

  // BigTIFF (little-endian): LONG8 values inline; BitsPerSample out of line.
  auto entry_big = [](int tag, int type, uint64_t count, uint64_t value) {
    return Le(tag, 2) + Le(type, 2) + Le(count, 8) + Le(value, 8);
  };
  std::string big = std::string("II+\0", 4) + Le(8, 2) + Le(0, 2) + Le(16, 8) + Le(3, 8) +
                    entry_big(256, 16, 1, 5000000000ULL) + entry_big(257, 3, 1, 7) +
                    entry_big(258, 3, 5, 16 + 8 + 3 * 20 + 8) + Le(0, 8);
  big += Le(8, 2) + Le(32, 2) + Le(8, 2) + Le(8, 2) + Le(8, 2);
  h = ReadRasterHeader(big);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->width, 5000000000LL);
  EXPECT_EQ(h->height, 7);
  EXPECT_EQ(h->bits_per_sample, 32);
}

TEST(RasterHeaderTest, BmpTopDownAndCoreHeaders) {
  std::string bmp = Encode(".bmp", cv::Mat(23, 37, CV_8UC3, cv::Scalar::all(9)));
  bmp.replace(22, 4, Le(static_cast<uint32_t>(-23), 4));  // Top-down.
  EXPECT_EQ(Decoded(bmp), cv::Size(37, 23));
  ExpectHeader(bmp, "bmp", 37, 23);
  const std::string core = "BM" + Le(0, 12) + Le(12, 4) + Le(640, 2) + Le(480, 2) + Le(1, 2) + Le(24, 2);
  ExpectHeader(core, "bmp", 640, 480);
}

TEST(RasterHeaderTest, MalformedHeadersAreInvalidArgument) {
  const std::string png = Encode(".png", cv::Mat(4, 4, CV_8UC1));
  const std::string jpeg = Encode(".jpg", cv::Mat(4, 4, CV_8UC1));
  const std::string tiff = Encode(".tiff", cv::Mat(4, 4, CV_8UC1));
  std::string no_ihdr = png;
  no_ihdr.replace(12, 4, "IDAT");
  std::string zero_width = png;
  zero_width.replace(16, 4, Be(0, 4));
  std::string far_ifd = tiff;
  far_ifd.replace(4, 4, Le(1u << 30, 4));
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "not a PNG, JPEG, TIFF or BMP"},
      {"GIF89a", "not a PNG, JPEG, TIFF or BMP"},
      {png.substr(0, 20), "truncated"},
      {no_ihdr, "not IHDR"},
      {zero_width, "empty image"},
      {std::string("\xFF\xD8\xFF\xD9", 4), "EOI before"},
      {std::string("\xFF\xD8\xFF\xDA\x00\x02", 6), "SOS before"},
      {jpeg.substr(0, 30), "no frame header"},
      {std::string("\xFF\xD8\xFF\xC0\x00\x11\x08\x00", 8), "truncated frame header"},
      {std::string("\xFF\xD8\xFF\xE0\x00\x01", 6), "length 1 < 2"},
      {far_ifd, "outside the data"},
      {tiff.substr(0, 12), "TIFF header"},
      {"BM" + Le(0, 12) + Le(20, 4), "info header size 20"},
  };
  for (const auto& [bytes, why] : cases) {
    absl::StatusOr<RasterHeader> h = ReadRasterHeader(bytes);
    EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument) << why;
    EXPECT_THAT(h.status().message(), HasSubstr(why));
  }
}

}  // namespace
}  // namespace fedtune::imaging
