#include "common/imaging/decode.h"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <fstream>
#include <iterator>
#include <memory>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "dcmtk/config/osconfig.h"  // Must come first among DCMTK headers.
#include "dcmtk/dcmdata/dctk.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/imaging/hostile_images.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::imaging {
namespace {

using ::testing::HasSubstr;

const std::string kPydicomFiles = "/usr/lib/python3/dist-packages/pydicom/data/test_files/";
const std::string kScript = std::string(FEDTUNE_SOURCE_DIR) + "/tests/common/imaging/dicom_reference.py";

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

struct Reference {
  int width = 0;
  int height = 0;
  std::vector<double> values;
};

Reference ReadReference(const std::string& path) {
  std::ifstream in(path);
  Reference r;
  in >> r.width >> r.height;
  double v;
  while (in >> v) r.values.push_back(v);
  return r;
}

// The synthetic cases (made by pydicom from pydicom's files) and pydicom's
// expected pixels for every case, computed once for the suite.
class DicomReferenceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    std::string out;
    ASSERT_EQ(testing::RunCommand(absl::StrCat(FEDTUNE_PYTHON, " ", kScript, " make ", dir_->path()), &out), 0) << out;
    std::string cmd = absl::StrCat(FEDTUNE_PYTHON, " ", kScript, " expected");
    for (const std::string& name : Cases()) absl::StrAppend(&cmd, " ", CasePath(name), " ", ExpectedPath(name));
    ASSERT_EQ(testing::RunCommand(cmd, &out), 0) << out;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::vector<std::string> Cases() {
    return {"MR_small.dcm", "CT_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
            "mono1_window.dcm", "mono1_minmax.dcm", "voi_lut.dcm", "rescale_window.dcm", "window_sigmoid.dcm",
            "window_linear_exact.dcm", "image_dfl.dcm",
            // JPEG 2000 (pydicom decodes them with Pillow's OpenJPEG): lossless, lossy, a codestream whose sign
            // disagrees with Pixel Representation, one whose precision disagrees with Bits Stored. (pydicom 2.3
            // cannot read JPEG2000-embedded-sequence-delimiter.dcm: see DecodeDicomTest below.)
            "MR_small_jp2klossless.dcm", "JPEG2000.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm",
            // 32 bits allocated, little and big endian; big endian with 16-bit samples in OB.
            "rtdose_1frame.dcm", "rtdose_expb_1frame.dcm", "bigendian_ob.dcm"};
  }
  // pydicom's own files (image_dfl.dcm: Deflated Explicit VR Little Endian) or the cases made from them.
  static std::string CasePath(const std::string& name) {
    const bool made = name.rfind("mono1_", 0) == 0 || name.rfind("window_", 0) == 0 || name == "voi_lut.dcm" ||
                      name == "rescale_window.dcm" || name == "two_frames.dcm" || name == "bigendian_ob.dcm";
    return made ? dir_->Join(name) : kPydicomFiles + name;
  }
  static std::string ExpectedPath(const std::string& name) { return dir_->Join(name + ".expected.txt"); }

  // Max |decoded - expected| over all pixels; fails the test on a size
  // mismatch.
  static double MaxError(const Image& image, const Reference& ref) {
    EXPECT_EQ(image.width, ref.width);
    EXPECT_EQ(image.height, ref.height);
    if (image.pixels.size() != ref.values.size()) {
      ADD_FAILURE() << "pixel count " << image.pixels.size() << " vs " << ref.values.size();
      return 1e9;
    }
    double max_err = 0;
    for (size_t i = 0; i < ref.values.size(); ++i) {
      max_err = std::max(max_err, std::abs(image.pixels[i] - ref.values[i]));
    }
    return max_err;
  }

  static testing::TempDir* dir_;
};
testing::TempDir* DicomReferenceTest::dir_ = nullptr;

// DCMTK renders through 16 bits: the observed error is one quantum (1.5e-5);
// allow three.
constexpr double kTolerance = 5e-5;

TEST_F(DicomReferenceTest, MatchesPydicomOnEveryCase) {
  for (const std::string& name : Cases()) {
    SCOPED_TRACE(name);
    absl::StatusOr<Image> image = DecodeImage(CasePath(name));
    ASSERT_TRUE(image.ok()) << image.status();
    EXPECT_EQ(image->format, "dicom");
    const Reference ref = ReadReference(ExpectedPath(name));
    ASSERT_GE(ref.values.size(), 100u);  // rtdose_1frame.dcm is 10 x 10.
    // The reference must not be flat, or the comparison would prove little.
    const auto [lo, hi] = std::minmax_element(ref.values.begin(), ref.values.end());
    ASSERT_GT(*hi - *lo, 0.3);
    const double err = MaxError(*image, ref);
    RecordProperty(name, absl::StrCat(err));
    EXPECT_LT(err, kTolerance);
  }
}

TEST_F(DicomReferenceTest, DescribesWhatWasApplied) {
  absl::StatusOr<Image> mono1 = DecodeImage(CasePath("mono1_window.dcm"));
  ASSERT_TRUE(mono1.ok()) << mono1.status();
  EXPECT_THAT(mono1->description, HasSubstr("MONOCHROME1"));
  EXPECT_THAT(mono1->description, HasSubstr("window C=40 W=400"));
  EXPECT_THAT(mono1->description, HasSubstr("inverted"));
  absl::StatusOr<Image> exact = DecodeImage(CasePath("window_linear_exact.dcm"));
  ASSERT_TRUE(exact.ok()) << exact.status();
  EXPECT_THAT(exact->description, HasSubstr("LINEAR_EXACT"));
  absl::StatusOr<Image> lut = DecodeImage(CasePath("voi_lut.dcm"));
  ASSERT_TRUE(lut.ok()) << lut.status();
  EXPECT_THAT(lut->description, HasSubstr("VOI LUT"));
  EXPECT_EQ(lut->bits, 12);
}

TEST_F(DicomReferenceTest, InversionIsExactComplementOfMonochrome2) {
  // The same stored pixels declared MONOCHROME2 (CT_small) and MONOCHROME1
  // (mono1_minmax) decode to x and 1 - x.
  absl::StatusOr<Image> m2 = DecodeImage(kPydicomFiles + "CT_small.dcm");
  absl::StatusOr<Image> m1 = DecodeImage(CasePath("mono1_minmax.dcm"));
  ASSERT_TRUE(m2.ok() && m1.ok());
  ASSERT_EQ(m2->pixels.size(), m1->pixels.size());
  double max_err = 0;
  for (size_t i = 0; i < m1->pixels.size(); ++i) {
    max_err = std::max(max_err, std::abs(1.0 - m2->pixels[i] - m1->pixels[i]));
  }
  EXPECT_LT(max_err, 2e-5);
}

TEST_F(DicomReferenceTest, JpegLsLosslessEqualsUncompressed) {
  // pydicom here cannot decode JPEG-LS; the file holds MR_small's pixels
  // losslessly.
  absl::StatusOr<Image> jls = DecodeImage(kPydicomFiles + "MR_small_jpeg_ls_lossless.dcm");
  ASSERT_TRUE(jls.ok()) << jls.status();
  EXPECT_LT(MaxError(*jls, ReadReference(ExpectedPath("MR_small.dcm"))), kTolerance);
}

TEST_F(DicomReferenceTest, Jpeg2000LosslessEqualsItsUncompressedTwin) {
  absl::StatusOr<Image> j2k = DecodeImage(kPydicomFiles + "MR_small_jp2klossless.dcm");
  absl::StatusOr<Image> plain = DecodeImage(kPydicomFiles + "MR_small.dcm");
  ASSERT_TRUE(j2k.ok()) << j2k.status();
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_TRUE(j2k->pixels == plain->pixels);
  EXPECT_THAT(j2k->description, HasSubstr("JPEG 2000"));
}

// 693_J2KI.dcm says Bits Stored 14, its codestream 16 bits: the samples are read at the codestream's precision, and
// Image::bits and the description say so.
TEST(DecodeDicomTest, Jpeg2000BitsAreTheCodestreamPrecision) {
  absl::StatusOr<Image> image = DecodeImage(kPydicomFiles + "693_J2KI.dcm");
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->bits, 16);
  EXPECT_THAT(image->description, HasSubstr("16 bits stored"));
}

TEST(DecodeDicomTest, Jpeg2000WithADelimiterTagInsideItsCodestreamIsRefusedClearly) {
  // JPEG2000-embedded-sequence-delimiter.dcm is JPEG2000.dcm with the bytes of a Sequence Delimitation Item tag
  // (FE FF DD E0) written over the codestream's Rsiz and Xsiz: the fragment must be read past them (they are data,
  // not a tag), and the codestream then declares an image 3,722,445,056 (0xDDE00100) samples wide. Pillow refuses it as
  // a decompression bomb; here OpenJPEG refuses its header, before any decoding.
  const std::string name = "JPEG2000-embedded-sequence-delimiter.dcm";
  absl::StatusOr<Image> image = DecodeImage(kPydicomFiles + name);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr(name));
  EXPECT_THAT(image.status().message(), HasSubstr("JPEG 2000"));
}

TEST_F(DicomReferenceTest, BigEndianTwinsDecodeAsTheirLittleEndianOriginals) {
  // 32 bits allocated (DCMTK alone swaps the two 16-bit halves of each sample) and 16 bits.
  for (const auto& [big, little] : {std::pair<std::string, std::string>{"rtdose_expb_1frame.dcm", "rtdose_1frame.dcm"},
                                    {"MR_small_bigendian.dcm", "MR_small.dcm"},
                                    {"MR_small_expb.dcm", "MR_small.dcm"}}) {
    SCOPED_TRACE(big);
    absl::StatusOr<Image> b = DecodeImage(kPydicomFiles + big);
    absl::StatusOr<Image> l = DecodeImage(kPydicomFiles + little);
    ASSERT_TRUE(b.ok()) << b.status();
    ASSERT_TRUE(l.ok()) << l.status();
    EXPECT_TRUE(b->pixels == l->pixels);
    const auto [lo, hi] = std::minmax_element(l->pixels.begin(), l->pixels.end());
    EXPECT_GT(*hi - *lo, 0.5f);  // Not a flat image.
  }
}

TEST_F(DicomReferenceTest, RejectsMultiFrame) {
  absl::StatusOr<Image> image = DecodeImage(CasePath("two_frames.dcm"));
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("multi-frame"));
  EXPECT_THAT(image.status().message(), HasSubstr("two_frames.dcm"));
}

TEST_F(DicomReferenceTest, ConcurrentDecodesAgree) {
  // The loader decodes from several threads; DCMTK's registries and dictionary
  // are shared between them.
  const std::vector<std::string> names = {"MR_small.dcm", "mono1_window.dcm", "voi_lut.dcm", "MR_small_RLE.dcm"};
  std::vector<std::vector<float>> serial;
  for (const std::string& name : names) serial.push_back(DecodeImage(CasePath(name))->pixels);
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < 12; ++k) {
        const size_t i = (k + t) % names.size();
        absl::StatusOr<Image> image = DecodeImage(CasePath(names[i]));
        if (!image.ok() || image->pixels != serial[i]) ++mismatches;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(DecodeDicomTest, DecodesTwelveBitLossyJpeg) {
  absl::StatusOr<Image> image = DecodeImage(kPydicomFiles + "JPEG-lossy.dcm");
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->width, 256);
  EXPECT_EQ(image->height, 1024);
  EXPECT_EQ(image->bits, 12);
  const auto [lo, hi] = std::minmax_element(image->pixels.begin(), image->pixels.end());
  EXPECT_FLOAT_EQ(*lo, 0.0f);  // Min-max window: the full range is used.
  EXPECT_FLOAT_EQ(*hi, 1.0f);
}

TEST(DecodeDicomTest, RejectsColourWithClearError) {
  for (const char* name : {"SC_rgb_rle.dcm", "SC_rgb_small_odd.dcm", "SC_ybr_full_422_uncompressed.dcm"}) {
    absl::StatusOr<Image> image = DecodeImage(kPydicomFiles + name);
    ASSERT_FALSE(image.ok()) << name;
    EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(image.status().message(), HasSubstr("colour"));
    EXPECT_THAT(image.status().message(), HasSubstr(name));
  }
}

TEST(DecodeDicomTest, RejectsRealMultiFrame) {
  absl::StatusOr<Image> image = DecodeImage(kPydicomFiles + "rtdose.dcm");
  ASSERT_FALSE(image.ok());
  EXPECT_THAT(image.status().message(), HasSubstr("multi-frame"));
}

TEST(DecodeDicomTest, RejectsAnUnsupportedSyntaxNamingIt) {
  // MR_small_jp2klossless.dcm relabelled JPEG 2000 Part 2 Multi-component Lossless (1.2.840.10008.1.2.4.92, a UID of
  // the same length): a syntax DCMTK knows and that is not decoded here.
  std::string bytes = ReadBytes(kPydicomFiles + "MR_small_jp2klossless.dcm");
  const size_t at = bytes.find("1.2.840.10008.1.2.4.90");
  ASSERT_NE(at, std::string::npos);
  ASSERT_LT(at, 400u);  // In the meta header.
  bytes.replace(at, 22, "1.2.840.10008.1.2.4.92");
  testing::TempDir dir;
  const std::string path = dir.WriteFile("multicomponent.dcm", bytes);
  absl::StatusOr<Image> image = DecodeImage(path);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("1.2.840.10008.1.2.4.92"));
  EXPECT_THAT(image.status().message(), HasSubstr("multicomponent.dcm"));
}

TEST(DecodeDicomTest, RejectsAVendorPrivateSyntaxNamingIt) {
  // MR_small_jp2klossless.dcm relabelled with a private UID of the same length, unknown to DCMTK.
  std::string bytes = ReadBytes(kPydicomFiles + "MR_small_jp2klossless.dcm");
  const size_t at = bytes.find("1.2.840.10008.1.2.4.90");
  ASSERT_NE(at, std::string::npos);
  ASSERT_LT(at, 400u);
  bytes.replace(at, 22, "1.3.6.1.4.1.99999.1.90");
  testing::TempDir dir;
  absl::StatusOr<Image> image = DecodeImage(dir.WriteFile("private.dcm", bytes));
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("'1.3.6.1.4.1.99999.1.90' is not supported (unknown to DCMTK"));
  EXPECT_THAT(image.status().message(), HasSubstr("private.dcm"));
}

TEST(DecodeDicomTest, RejectsHighThroughputJpeg2000NamingIt) {
  // MR_small_jp2klossless.dcm relabelled HTJ2K Lossless (1.2.840.10008.1.2.4.201): a UID DCMTK 3.6.7 does not know.
  // The meta header's UI element and group length are rewritten for the longer UID.
  std::string bytes = ReadBytes(kPydicomFiles + "MR_small_jp2klossless.dcm");
  const std::string old_uid = "1.2.840.10008.1.2.4.90";
  const std::string new_uid = std::string("1.2.840.10008.1.2.4.201") + '\0';  // Padded to even length.
  const size_t at = bytes.find(old_uid);
  ASSERT_NE(at, std::string::npos);
  ASSERT_EQ(static_cast<uint8_t>(bytes[at - 2]) | static_cast<uint8_t>(bytes[at - 1]) << 8, 22);
  bytes.replace(at, old_uid.size(), new_uid);
  bytes[at - 2] = static_cast<char>(new_uid.size());
  ASSERT_EQ(bytes.compare(132, 6, std::string("\x02\x00\x00\x00UL", 6)), 0);
  bytes[140] = static_cast<char>(static_cast<uint8_t>(bytes[140]) + 2);  // Group length (< 254 here).
  testing::TempDir dir;
  const std::string path = dir.WriteFile("htj2k.dcm", bytes);
  absl::StatusOr<Image> image = DecodeImage(path);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("htj2k.dcm"));
  EXPECT_THAT(std::string(image.status().message()), HasSubstr("1.2.840.10008.1.2.4.201"));
}

TEST(DecodeDicomTest, TruncatedFileIsAnErrorNotACrash) {
  absl::StatusOr<Image> image = DecodeImage(kPydicomFiles + "MR_truncated.dcm");
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("MR_truncated.dcm"));
}

TEST(DecodeDicomTest, TruncationAnywhereIsAnErrorNotACrash) {
  // Cut MR_small.dcm at many points: every prefix must give an error (or,
  // never, garbage dimensions).
  testing::TempDir dir;
  std::ifstream in(kPydicomFiles + "MR_small.dcm", std::ios::binary);
  const std::string whole((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GT(whole.size(), 9000u);
  for (size_t cut : {10u, 131u, 200u, 1000u, 1500u, 3000u, 6000u, 9000u, static_cast<unsigned>(whole.size()) - 1}) {
    const std::string path = dir.WriteFile(absl::StrCat("cut", cut, ".dcm"), whole.substr(0, cut));
    absl::StatusOr<Image> image = DecodeImage(path);
    EXPECT_FALSE(image.ok()) << "prefix of " << cut << " bytes decoded";
  }
}

TEST(DecodeDicomTest, DicomWithoutPixelDataIsRejected) {
  absl::StatusOr<Image> image = DecodeImage(kPydicomFiles + "rtplan.dcm");
  ASSERT_FALSE(image.ok());
  EXPECT_THAT(image.status().message(), HasSubstr("Pixel Data"));
}

// ---- Deflated Explicit VR Little Endian: inflated by the decoder itself, bounded (decode.h) ----

// Re-saves the DICOM file `from` as `to` in transfer syntax `xfer` (DCMTK's writer).
void SaveAs(const std::string& from, const std::string& to, E_TransferSyntax xfer) {
  DcmFileFormat file;
  ASSERT_TRUE(file.loadFile(from.c_str()).good()) << from;
  ASSERT_TRUE(file.saveFile(to.c_str(), xfer).good()) << to;
  DcmFileFormat check;
  ASSERT_TRUE(check.loadFile(to.c_str(), EXS_Unknown, EGL_noChange, DCM_MaxReadLength, ERM_metaOnly).good());
  OFString uid;
  ASSERT_TRUE(check.getMetaInfo()->findAndGetOFString(DCM_TransferSyntaxUID, uid).good());
  ASSERT_EQ(std::string(uid.c_str()), DcmXfer(xfer).getXferID());
}

// Where the deflated dataset starts: after the preamble, "DICM" and the meta header, whose group length is the
// first element (as DCMTK writes it).
size_t DeflatedDatasetOffset(const std::string& bytes) {
  EXPECT_EQ(bytes.compare(128, 4, "DICM"), 0);
  EXPECT_EQ(bytes.compare(132, 6, std::string("\x02\x00\x00\x00UL", 6)), 0);
  const uint32_t group_length = static_cast<uint8_t>(bytes[140]) | static_cast<uint8_t>(bytes[141]) << 8 |
                                static_cast<uint8_t>(bytes[142]) << 16 | static_cast<uint32_t>(bytes[143]) << 24;
  return 144 + group_length;
}

// pydicom's CT_small.dcm (128 x 128, 16 bits, uncompressed) and its copy deflated by DCMTK.
struct DeflatedTwins {
  std::string plain;
  std::string deflated;
};
DeflatedTwins WriteDeflatedTwins(const testing::TempDir& dir) {
  DeflatedTwins twins{kPydicomFiles + "CT_small.dcm", dir.Join("deflated.dcm")};
  SaveAs(twins.plain, twins.deflated, EXS_DeflatedLittleEndianExplicit);
  return twins;
}

TEST(DecodeDeflatedTest, DecodesToTheSamePixelsAsItsUncompressedTwin) {
  testing::TempDir dir;
  const DeflatedTwins twins = WriteDeflatedTwins(dir);
  ASSERT_LT(ReadBytes(twins.deflated).size(), ReadBytes(twins.plain).size());  // Really deflated.
  absl::StatusOr<Image> plain = DecodeImage(twins.plain);
  absl::StatusOr<Image> deflated = DecodeImage(twins.deflated);
  absl::StatusOr<Image> from_memory = DecodeImageFromMemory(ReadBytes(twins.deflated), "deflated.dcm", DecodeOptions());
  ASSERT_TRUE(plain.ok()) << plain.status();
  ASSERT_TRUE(deflated.ok()) << deflated.status();
  ASSERT_TRUE(from_memory.ok()) << from_memory.status();
  EXPECT_EQ(deflated->width, 128);
  EXPECT_EQ(deflated->height, 128);
  EXPECT_TRUE(deflated->pixels == plain->pixels);
  EXPECT_TRUE(from_memory->pixels == plain->pixels);
  const auto [lo, hi] = std::minmax_element(plain->pixels.begin(), plain->pixels.end());
  EXPECT_GT(*hi - *lo, 0.5f);  // Not a flat image.
  EXPECT_THAT(deflated->description, HasSubstr("Deflated"));
}

TEST(DecodeDeflatedTest, PydicomDeflatedFileDecodesAsItsUncompressedTwin) {
  // image_dfl.dcm (512 x 512, 8 bits) ends its deflate stream with an 8-byte trailer (CRC-32 and size).
  testing::TempDir dir;
  const std::string plain = dir.Join("image_plain.dcm");
  SaveAs(kPydicomFiles + "image_dfl.dcm", plain, EXS_LittleEndianExplicit);
  absl::StatusOr<Image> want = DecodeImage(plain);
  absl::StatusOr<Image> got = DecodeImage(kPydicomFiles + "image_dfl.dcm");
  ASSERT_TRUE(want.ok()) << want.status();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->width, 512);
  EXPECT_EQ(got->height, 512);
  EXPECT_TRUE(got->pixels == want->pixels);
}

TEST(DecodeDeflatedTest, TruncatedDeflateStreamIsRefused) {
  testing::TempDir dir;
  const DeflatedTwins twins = WriteDeflatedTwins(dir);
  const std::string whole = ReadBytes(twins.deflated);
  const size_t start = DeflatedDatasetOffset(whole);
  ASSERT_GT(whole.size(), start + 100);
  for (size_t cut : {start, start + 2, (start + whole.size()) / 2, whole.size() - 20}) {
    SCOPED_TRACE(cut);
    const std::string path = dir.WriteFile(absl::StrCat("cut", cut, ".dcm"), whole.substr(0, cut));
    absl::StatusOr<Image> image = DecodeImage(path);
    ASSERT_FALSE(image.ok());
    EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(image.status().message(), HasSubstr(path));
    EXPECT_THAT(image.status().message(), HasSubstr("truncated"));
  }
}

TEST(DecodeDeflatedTest, CorruptDeflateStreamIsRefused) {
  testing::TempDir dir;
  const DeflatedTwins twins = WriteDeflatedTwins(dir);
  std::string bytes = ReadBytes(twins.deflated);
  // 0xFF as the first byte of a raw deflate stream: a final block of the reserved type 3.
  bytes[DeflatedDatasetOffset(bytes)] = '\xFF';
  absl::StatusOr<Image> image = DecodeImageFromMemory(bytes, "corrupt.dcm", DecodeOptions());
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("corrupt.dcm"));
  EXPECT_THAT(image.status().message(), HasSubstr("corrupt deflate stream"));
}

TEST(DecodeDeflatedTest, TrailingBytesAfterTheStreamAreRefusedBeyondAShortTrailer) {
  testing::TempDir dir;
  const DeflatedTwins twins = WriteDeflatedTwins(dir);
  const std::string bytes = ReadBytes(twins.deflated);
  // A pad byte (even length) or an 8-byte trailer (as image_dfl.dcm has) is tolerated.
  EXPECT_TRUE(DecodeImageFromMemory(bytes + std::string(1, '\0'), "pad.dcm", DecodeOptions()).ok());
  EXPECT_TRUE(DecodeImageFromMemory(bytes + "12345678", "trailer.dcm", DecodeOptions()).ok());
  // More is not a deflated DICOM file: two files concatenated, or garbage.
  absl::StatusOr<Image> image = DecodeImageFromMemory(bytes + bytes, "twice.dcm", DecodeOptions());
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("twice.dcm"));
  EXPECT_THAT(image.status().message(), HasSubstr("bytes after the end of the deflate stream"));
}

TEST(IsDicomFileTest, ByMagicOrExtension) {
  testing::TempDir dir;
  std::string preamble(128, '\0');
  EXPECT_TRUE(*IsDicomFile(dir.WriteFile("no_extension", preamble + "DICM" + "rest")));
  EXPECT_TRUE(*IsDicomFile(dir.WriteFile("x.DCM", "short")));
  EXPECT_FALSE(*IsDicomFile(dir.WriteFile("x.png", "\x89PNG")));
  EXPECT_EQ(IsDicomFile(dir.Join("missing")).status().code(), absl::StatusCode::kNotFound);
}

// ---- Raster formats (OpenCV) ----

cv::Mat Gradient16(int w, int h) {
  cv::Mat m(h, w, CV_16UC1);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) m.at<uint16_t>(y, x) = static_cast<uint16_t>((x * 1000 + y * 37) % 65536);
  return m;
}

TEST(DecodeRasterTest, Png16BitScaledBy65535) {
  testing::TempDir dir;
  const cv::Mat m = Gradient16(40, 30);
  const std::string path = dir.Join("g16.png");
  ASSERT_TRUE(cv::imwrite(path, m));
  absl::StatusOr<Image> image = DecodeImage(path);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->format, "png");
  EXPECT_EQ(image->bits, 16);
  ASSERT_EQ(image->width, 40);
  ASSERT_EQ(image->height, 30);
  EXPECT_FALSE(image->converted_from_color);
  for (int y = 0; y < 30; ++y)
    for (int x = 0; x < 40; ++x) ASSERT_FLOAT_EQ(image->at(x, y), m.at<uint16_t>(y, x) / 65535.0f);
}

TEST(DecodeRasterTest, Png8BitScaledBy255) {
  testing::TempDir dir;
  cv::Mat m(20, 30, CV_8UC1);
  for (int y = 0; y < 20; ++y)
    for (int x = 0; x < 30; ++x) m.at<uint8_t>(y, x) = static_cast<uint8_t>(x * 8 + y);
  const std::string path = dir.Join("g8.png");
  ASSERT_TRUE(cv::imwrite(path, m));
  absl::StatusOr<Image> image = DecodeImage(path);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->bits, 8);
  EXPECT_FLOAT_EQ(image->at(29, 19), (29 * 8 + 19) / 255.0f);
  EXPECT_FLOAT_EQ(image->at(0, 0), 0.0f);
}

TEST(DecodeRasterTest, Tiff16Bit) {
  testing::TempDir dir;
  const cv::Mat m = Gradient16(33, 17);
  const std::string path = dir.Join("g16.tif");
  ASSERT_TRUE(cv::imwrite(path, m));
  absl::StatusOr<Image> image = DecodeImage(path);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->format, "tiff");
  EXPECT_FLOAT_EQ(image->at(32, 16), m.at<uint16_t>(16, 32) / 65535.0f);
}

TEST(DecodeRasterTest, GrayJpegDecodesCloseToSource) {
  testing::TempDir dir;
  cv::Mat m(64, 64, CV_8UC1, cv::Scalar(0));
  m(cv::Rect(16, 16, 32, 32)).setTo(cv::Scalar(200));
  const std::string path = dir.Join("x.jpg");
  ASSERT_TRUE(cv::imwrite(path, m, {cv::IMWRITE_JPEG_QUALITY, 95}));
  absl::StatusOr<Image> image = DecodeImage(path);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->format, "jpeg");
  EXPECT_NEAR(image->at(32, 32), 200 / 255.0, 0.02);
  EXPECT_NEAR(image->at(2, 2), 0.0, 0.02);
}

TEST(DecodeRasterTest, ColourIsConvertedToLuminanceAndFlagged) {
  testing::TempDir dir;
  cv::Mat m(8, 8, CV_8UC3, cv::Scalar(255, 0, 0));  // Pure blue (BGR).
  const std::string path = dir.Join("c.png");
  ASSERT_TRUE(cv::imwrite(path, m));
  absl::StatusOr<Image> image = DecodeImage(path);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_TRUE(image->converted_from_color);
  EXPECT_NEAR(image->at(3, 3), 0.114, 0.005);  // BT.601 blue weight.
}

TEST(DecodeRasterTest, ErrorsNameTheFile) {
  testing::TempDir dir;
  absl::StatusOr<Image> missing = DecodeImage(dir.Join("nope.png"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("nope.png"));

  absl::StatusOr<Image> text = DecodeImage(dir.WriteFile("notes.png", "this is not an image"));
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(text.status().message(), HasSubstr("notes.png"));

  // A PNG cut in half.
  const std::string full = dir.Join("full.png");
  ASSERT_TRUE(cv::imwrite(full, Gradient16(64, 64)));
  std::ifstream in(full, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  absl::StatusOr<Image> cut = DecodeImage(dir.WriteFile("cut.png", bytes.substr(0, bytes.size() / 2)));
  EXPECT_EQ(cut.status().code(), absl::StatusCode::kInvalidArgument);

  absl::StatusOr<Image> directory = DecodeImage(dir.path());
  EXPECT_FALSE(directory.ok());
}

// ---- Size limits (decode.h): a header that declares a huge image over a few
// bytes of data must be refused from the header, naming the file, the declared
// size and the limit, without allocating for the declared size. Each decode
// runs in a child process whose address space may grow by 1 GiB only: a decoder
// that allocates for the declared size fails there, or dies.

// Asserts a clean InvalidArgument from the header alone: fast and small.
void ExpectRefusedFromHeader(const std::string& path, const std::vector<std::string>& in_message) {
  SCOPED_TRACE(path);
  const hostile::ChildOutcome outcome = hostile::RunInChildWithMemoryLimit([&] { return DecodeImage(path).status(); });
  ASSERT_TRUE(outcome.returned) << "the decode " << outcome.how;
  EXPECT_EQ(outcome.code, absl::StatusCode::kInvalidArgument) << outcome.message;
  EXPECT_THAT(outcome.message, HasSubstr(path));
  for (const std::string& part : in_message) EXPECT_THAT(outcome.message, HasSubstr(part));
  EXPECT_LT(outcome.seconds, 10.0);
  EXPECT_LT(outcome.rss_growth_kb, 64 * 1024) << "the decode grew by " << outcome.rss_growth_kb << " KiB";
}

TEST(DecodeLimitTest, DicomDeclaringHugeSizeOverSixteenBytesIsRefused) {
  testing::TempDir dir;
  const std::string path = dir.Join("huge.dcm");
  hostile::WriteDicomDeclaring(path, 65535, 65535, 8);  // 16 bytes of pixel data.
  ExpectRefusedFromHeader(path, {"65535 x 65535", "4294836225", "67108864"});
}

TEST(DecodeLimitTest, CompressedDicomDeclaringHugeSizeIsRefusedBeforeDecompression) {
  testing::TempDir dir;
  const std::string path = dir.Join("huge_rle.dcm");
  hostile::WriteDicomWithSize(kPydicomFiles + "MR_small_RLE.dcm", path, 65535, 65535);
  ExpectRefusedFromHeader(path, {"65535 x 65535", "4294836225", "67108864"});
}

TEST(DecodeLimitTest, DicomPixelDataShorterThanDeclaredIsRefused) {
  // Within the limit, but 64 x 64 at 16 bits needs 8192 bytes: 16 are there.
  testing::TempDir dir;
  const std::string path = dir.Join("short.dcm");
  hostile::WriteDicomDeclaring(path, 64, 64, 8);
  ExpectRefusedFromHeader(path, {"Pixel Data", "16 bytes", "8192"});
}

TEST(DecodeLimitTest, DeflateBombIsRefusedOnceItInflatesPastTheFileLimit) {
  // A file of about 256 KiB whose dataset inflates to 256 MiB (DCMTK would allocate all of it while reading).
  // Under a limit of 2^20 pixels an uncompressed file may hold 16 MiB: inflation stops there. The child may not
  // write past 20 MiB into any file (its in-memory ones included) nor grow its heap by 64 MiB.
  testing::TempDir dir;
  const std::string path = dir.Join("bomb.dcm");
  hostile::WriteDeflateBomb(path, 256u << 20);
  DecodeOptions options;
  options.max_pixels = 1 << 20;
  ASSERT_EQ(MaxImageFileBytes(options), 16 << 20);
  const std::string bytes = ReadBytes(path);
  for (bool from_memory : {false, true}) {
    SCOPED_TRACE(from_memory ? "from memory" : "from the file");
    const hostile::ChildOutcome outcome = hostile::RunInChildWithMemoryLimit(
        [&] {
          return from_memory ? DecodeImageFromMemory(bytes, path, options).status()
                             : DecodeImage(path, options).status();
        },
        int64_t{1} << 30, int64_t{20} << 20);
    ASSERT_TRUE(outcome.returned) << "the decode " << outcome.how;
    EXPECT_EQ(outcome.code, absl::StatusCode::kInvalidArgument) << outcome.message;
    EXPECT_THAT(outcome.message, HasSubstr(path));
    EXPECT_THAT(outcome.message, HasSubstr("inflates"));
    EXPECT_THAT(outcome.message, HasSubstr("limit of 16777216 bytes"));
    EXPECT_LT(outcome.seconds, 10.0);
    EXPECT_LT(outcome.rss_growth_kb, 64 * 1024) << "the decode grew by " << outcome.rss_growth_kb << " KiB";
  }
}

TEST(DecodeLimitTest, DeflatedFileWithinTheLimitDecodesWithoutLoadingItsLargeElements) {
  // The same kind of file inflating to 32 MiB is within the default limit (1 GiB) and is a valid 4 x 4 image: it
  // decodes, and its 32 MiB private element stays in the in-memory file (DCMTK reads large values when used).
  testing::TempDir dir;
  const std::string path = dir.Join("big_private_element.dcm");
  hostile::WriteDeflateBomb(path, 32u << 20);
  const hostile::ChildOutcome outcome = hostile::RunInChildWithMemoryLimit([&] { return DecodeImage(path).status(); });
  ASSERT_TRUE(outcome.returned) << "the decode " << outcome.how;
  EXPECT_EQ(outcome.code, absl::StatusCode::kOk) << outcome.message;
  EXPECT_LT(outcome.rss_growth_kb, 16 * 1024) << "the decode grew by " << outcome.rss_growth_kb << " KiB";
}

TEST(DecodeLimitTest, PngDeclaringHugeSizeIsRefused) {
  testing::TempDir dir;
  ExpectRefusedFromHeader(dir.WriteFile("huge.png", hostile::PngDeclaring(65535, 65535)),
                          {"65535 x 65535", "4294836225", "67108864"});
  // Under OpenCV's own limit (2^30 pixels): 32767 x 32767 16-bit RGB would be a
  // 6 GiB Mat.
  ExpectRefusedFromHeader(dir.WriteFile("big.png", hostile::PngDeclaring(32767, 32767)),
                          {"32767 x 32767", "1073676289", "67108864"});
}

TEST(DecodeLimitTest, JpegDeclaringHugeSizeIsRefused) {
  testing::TempDir dir;
  ExpectRefusedFromHeader(dir.WriteFile("huge.jpg", hostile::JpegDeclaring(65535, 65535)),
                          {"65535 x 65535", "4294836225", "67108864"});
  ExpectRefusedFromHeader(dir.WriteFile("big.jpg", hostile::JpegDeclaring(32767, 32767)),
                          {"32767 x 32767", "1073676289", "67108864"});
}

TEST(DecodeLimitTest, TiffAndBmpDeclaringHugeSizeAreRefused) {
  testing::TempDir dir;
  ExpectRefusedFromHeader(dir.WriteFile("big.tif", hostile::TiffDeclaring(30000, 30000)),
                          {"30000 x 30000", "900000000", "67108864"});
  ExpectRefusedFromHeader(dir.WriteFile("big.bmp", hostile::BmpDeclaring(30000, -30000)),
                          {"30000 x 30000", "900000000", "67108864"});
}

TEST(DecodeLimitTest, LimitIsConfigurableAndInclusive) {
  testing::TempDir dir;
  const std::string png = dir.Join("g16.png");
  ASSERT_TRUE(cv::imwrite(png, Gradient16(40, 30)));
  DecodeOptions options;
  options.max_pixels = 1199;
  absl::StatusOr<Image> refused = DecodeImage(png, options);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr(png));
  EXPECT_THAT(refused.status().message(), HasSubstr("40 x 30 = 1200 pixels"));
  EXPECT_THAT(refused.status().message(), HasSubstr("limit of 1199 pixels"));
  options.max_pixels = 1200;
  EXPECT_TRUE(DecodeImage(png, options).ok());

  // DICOM: 128 x 128 = 16384.
  options.max_pixels = 16383;
  absl::StatusOr<Image> ct = DecodeImage(kPydicomFiles + "CT_small.dcm", options);
  EXPECT_EQ(ct.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ct.status().message(), HasSubstr("128 x 128 (Columns x Rows) = 16384 pixels"));
  options.max_pixels = 16384;
  EXPECT_TRUE(DecodeImage(kPydicomFiles + "CT_small.dcm", options).ok());

  for (int64_t bad : {int64_t{0}, int64_t{-1}, kMaxImagePixelsLimit + 1}) {
    options.max_pixels = bad;
    absl::StatusOr<Image> invalid = DecodeImage(png, options);
    EXPECT_EQ(invalid.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(invalid.status().message(), HasSubstr("max_image_pixels")) << bad;
  }
}

TEST(DecodeLimitTest, MultiFrameCountsEveryFrame) {
  // rtdose.dcm: 10 x 10 x 15 frames.
  DecodeOptions options;
  options.max_pixels = 1499;
  absl::StatusOr<Image> dose = DecodeImage(kPydicomFiles + "rtdose.dcm", options);
  EXPECT_THAT(dose.status().message(), HasSubstr("10 x 10 (Columns x Rows) x 15 frame(s) x 1 sample(s) per pixel"));
  EXPECT_THAT(dose.status().message(), HasSubstr("1500 pixels"));
}

TEST(DecodeLimitTest, FilesLargerThanTheLimitAllowsAreRefusedUnread) {
  // 16 bytes per allowed pixel: a limit of 4 pixels allows 64-byte files.
  testing::TempDir dir;
  const std::string png = dir.Join("g16.png");
  ASSERT_TRUE(cv::imwrite(png, Gradient16(2, 2)));
  DecodeOptions options;
  options.max_pixels = 4;
  EXPECT_EQ(MaxImageFileBytes(options), 64);
  absl::StatusOr<Image> image = DecodeImage(png, options);
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("above the limit of 64 bytes"));
  EXPECT_EQ(MaxImageFileBytes(DecodeOptions()), 1 << 30);
  options.max_pixels = kMaxImagePixelsLimit;
  EXPECT_EQ(MaxImageFileBytes(options), (int64_t{1} << 31) - 1);
}

TEST(DecodeLimitTest, FifoIsRefusedNotWaitedOn) {
  // Reading a FIFO named in a manifest would block forever (or, fed by a
  // writer, never end).
  testing::TempDir dir;
  const std::string fifo = dir.Join("pipe.png");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const hostile::ChildOutcome outcome = hostile::RunInChildWithMemoryLimit([&] { return DecodeImage(fifo).status(); });
  ASSERT_TRUE(outcome.returned) << outcome.how;
  EXPECT_EQ(outcome.code, absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(outcome.message, HasSubstr("not a regular file"));
}

TEST(DecodeRasterTest, FormatsOtherThanPngJpegTiffBmpAreRefused) {
  testing::TempDir dir;
  cv::Mat m(8, 8, CV_8UC1, cv::Scalar(100));
  for (const std::string ext : {".pgm", ".webp", ".hdr", ".ras"}) {
    const std::string path = dir.Join("x" + ext);
    ASSERT_TRUE(cv::imwrite(path, ext == ".hdr" ? cv::Mat(8, 8, CV_32FC3, cv::Scalar::all(0.5)) : m)) << ext;
    absl::StatusOr<Image> image = DecodeImage(path);
    EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument) << ext;
    EXPECT_THAT(image.status().message(), HasSubstr("not a PNG, JPEG, TIFF or BMP file")) << ext;
    EXPECT_THAT(image.status().message(), HasSubstr(path)) << ext;
  }
}

TEST(DecodeRasterTest, BmpAndFloatTiff) {
  testing::TempDir dir;
  cv::Mat m(20, 30, CV_8UC3, cv::Scalar(0, 0, 255));  // Red.
  const std::string bmp = dir.Join("r.bmp");
  ASSERT_TRUE(cv::imwrite(bmp, m));
  absl::StatusOr<Image> image = DecodeImage(bmp);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->format, "bmp");
  EXPECT_EQ(image->width, 30);
  EXPECT_EQ(image->height, 20);
  EXPECT_NEAR(image->at(5, 5), 0.299, 0.005);  // BT.601 red weight.

  const std::string tif = dir.Join("f.tif");
  ASSERT_TRUE(cv::imwrite(tif, cv::Mat(4, 4, CV_32FC1, cv::Scalar(0.5))));
  absl::StatusOr<Image> floats = DecodeImage(tif);
  EXPECT_EQ(floats.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(floats.status().message(), HasSubstr("sample type"));
}

TEST(DecodeFromMemoryTest, SameImageAsFromTheFile) {
  testing::TempDir dir;
  const std::string png = dir.Join("g16.png");
  ASSERT_TRUE(cv::imwrite(png, Gradient16(40, 30)));
  const std::string jpg = dir.Join("x.jpg");
  ASSERT_TRUE(cv::imwrite(jpg, Gradient16(40, 30) / 256));
  for (const std::string& path : {kPydicomFiles + "MR_small.dcm", kPydicomFiles + "CT_small.dcm",
                                  kPydicomFiles + "MR_small_RLE.dcm", kPydicomFiles + "JPEG-lossy.dcm", png, jpg}) {
    SCOPED_TRACE(path);
    absl::StatusOr<Image> from_file = DecodeImage(path);
    absl::StatusOr<Image> from_memory = DecodeImageFromMemory(ReadBytes(path), path, DecodeOptions());
    ASSERT_TRUE(from_file.ok()) << from_file.status();
    ASSERT_TRUE(from_memory.ok()) << from_memory.status();
    EXPECT_EQ(from_memory->width, from_file->width);
    EXPECT_EQ(from_memory->format, from_file->format);
    EXPECT_EQ(from_memory->description, from_file->description);
    EXPECT_TRUE(from_memory->pixels == from_file->pixels);
  }
}

TEST(DecodeFromMemoryTest, HostileInputsAreRefusedAsFromFiles) {
  testing::TempDir dir;
  const std::string dcm = dir.Join("huge.dcm");
  hostile::WriteDicomDeclaring(dcm, 65535, 65535, 8);
  // 2^16 pixels allow files of 1 MiB: the bomb inflates to 4 MiB.
  DecodeOptions options;
  options.max_pixels = 1 << 16;
  const std::string bomb = dir.Join("bomb.dcm");
  hostile::WriteDeflateBomb(bomb, 4 << 20);
  const std::string dicoms[] = {ReadBytes(dcm), ReadBytes(bomb)};
  const std::string rasters[] = {hostile::PngDeclaring(65535, 65535), hostile::JpegDeclaring(32767, 32767)};
  const hostile::ChildOutcome outcome = hostile::RunInChildWithMemoryLimit([&]() -> absl::Status {
    for (const std::string& bytes : dicoms) {
      absl::StatusOr<Image> image = DecodeImageFromMemory(bytes, "mem.dcm", options);
      if (image.status().code() != absl::StatusCode::kInvalidArgument) return image.status();
    }
    for (const std::string& bytes : rasters) {
      absl::StatusOr<Image> image = DecodeImageFromMemory(bytes, "mem", options);
      if (image.status().code() != absl::StatusCode::kInvalidArgument) return image.status();
    }
    return absl::InvalidArgumentError("all refused");
  });
  ASSERT_TRUE(outcome.returned) << outcome.how;
  EXPECT_EQ(outcome.message, "all refused");
  EXPECT_LT(outcome.rss_growth_kb, 64 * 1024);
}

TEST(DecodeFromMemoryTest, MetaHeaderElementDeclaringGigabytesIsNotAllocated) {
  // Found by fuzzing: a 1 KB DICOM whose meta header element (0002,0002) has a
  // non-standard VR and declares 2,156,231,840 bytes. DCMTK's buffer stream
  // allocated that much before noticing the data ends; reading files, it checks.
  const std::string bytes = ReadBytes(std::string(FEDTUNE_SOURCE_DIR) +
                                      "/tests/fuzz/corpus/dicom/regression_meta_element_2gb_buffer_stream.dcm");
  ASSERT_GT(bytes.size(), 132u);
  const hostile::ChildOutcome outcome = hostile::RunInChildWithMemoryLimit(
      [&] { return DecodeImageFromMemory(bytes, "meta.dcm", DecodeOptions()).status(); });
  ASSERT_TRUE(outcome.returned) << outcome.how;
  EXPECT_EQ(outcome.code, absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(outcome.message, HasSubstr("meta.dcm"));
  // Under the child's limit a 2 GB request fails inside DCMTK with this text.
  EXPECT_THAT(outcome.message, ::testing::Not(HasSubstr("Virtual Memory exhausted")));
}

TEST(DecodeFromMemoryTest, DicomWithoutPreambleIsKnownByItsName) {
  // The dataset alone (no preamble, no meta header), as old archives store it.
  testing::TempDir dir;
  DcmFileFormat file;
  ASSERT_TRUE(file.loadFile((kPydicomFiles + "CT_small.dcm").c_str()).good());
  const std::string path = dir.Join("bare.dcm");
  ASSERT_TRUE(file.getDataset()->saveFile(path.c_str(), EXS_LittleEndianImplicit).good());
  absl::StatusOr<Image> want = DecodeImage(kPydicomFiles + "CT_small.dcm");
  absl::StatusOr<Image> from_file = DecodeImage(path);
  absl::StatusOr<Image> from_memory = DecodeImageFromMemory(ReadBytes(path), "bare.DICOM", DecodeOptions());
  ASSERT_TRUE(want.ok() && from_file.ok() && from_memory.ok()) << from_file.status() << from_memory.status();
  EXPECT_TRUE(from_file->pixels == want->pixels);
  EXPECT_TRUE(from_memory->pixels == want->pixels);
  EXPECT_EQ(DecodeImageFromMemory(ReadBytes(path), "bare.bin", DecodeOptions()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtune::imaging
