// Every DICOM transfer syntax decode.h supports, on fixtures the test writes itself (dicom_fixtures.h): one
// structured 64 x 48 image at 8, 12 and 16 bits, unsigned and signed where the syntax allows, is written in each
// syntax and decoded. Lossless syntaxes must decode bit-exact to the uncompressed (Explicit VR Little Endian)
// reference decode; lossy ones within a stated tolerance.
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/imaging/decode.h"
#include "common/imaging/jpeg2000.h"
#include "dcmtk/config/osconfig.h"  // Must come first among DCMTK headers.
#include "dcmtk/dcmdata/dcxfer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/imaging/dicom_fixtures.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::imaging {
namespace {

using ::testing::HasSubstr;

constexpr int kWidth = 64;
constexpr int kHeight = 48;

struct Depth {
  int bits_stored;
  int bits_allocated;
  bool is_signed;
  std::string Name() const { return absl::StrCat(is_signed ? "s" : "u", bits_stored); }
};
const std::vector<Depth>& AllDepths() {
  static const std::vector<Depth> depths = {
      {8, 8, false}, {12, 16, false}, {12, 16, true}, {16, 16, false}, {16, 16, true}};
  return depths;
}

struct Syntax {
  E_TransferSyntax xfer;
  bool lossless;
  // Which depths the encoder takes.
  bool (*accepts)(const Depth&);
};
bool Any(const Depth&) { return true; }
bool EightBit(const Depth& d) { return d.bits_stored == 8; }
bool UnsignedUpTo12(const Depth& d) { return !d.is_signed && d.bits_stored <= 12; }
bool Unsigned(const Depth& d) { return !d.is_signed; }
bool NotSigned12(const Depth& d) { return !(d.is_signed && d.bits_stored == 12); }

// Mean and max |a - b| of two decodes of the same size.
struct Difference {
  double mean = 0;
  double max = 0;
};
Difference Compare(const Image& a, const Image& b) {
  Difference d;
  EXPECT_EQ(a.width, b.width);
  EXPECT_EQ(a.height, b.height);
  if (a.pixels.size() != b.pixels.size()) return {1e9, 1e9};
  for (size_t i = 0; i < a.pixels.size(); ++i) {
    const double e = std::abs(static_cast<double>(a.pixels[i]) - b.pixels[i]);
    d.mean += e;
    d.max = std::max(d.max, e);
  }
  d.mean /= static_cast<double>(a.pixels.size());
  return d;
}

class TransferSyntaxMatrixTest : public ::testing::Test {
 protected:
  // The reference: the uncompressed Explicit VR Little Endian file of `depth`.
  Image Reference(const Depth& depth, bool windowed = false) {
    const std::string path = dir_.Join(absl::StrCat("ref_", depth.Name(), windowed ? "_windowed" : "", ".dcm"));
    fixtures::WriteDicom(path, Source(depth, windowed), EXS_LittleEndianExplicit);
    absl::StatusOr<Image> image = DecodeImage(path);
    EXPECT_TRUE(image.ok()) << image.status();
    if (!image.ok()) return Image();
    // The reference must show the structure (not flat): the comparisons would prove little otherwise.
    const auto [lo, hi] = std::minmax_element(image->pixels.begin(), image->pixels.end());
    EXPECT_GT(*hi - *lo, 0.9f);
    return *image;
  }
  // Lossy codecs move the image's extremes, and with them a min-max window: the lossy comparisons use files with a
  // fixed window (and so do their references).
  static fixtures::Samples Source(const Depth& d, bool windowed = false) {
    fixtures::Samples s = fixtures::SyntheticImage(kWidth, kHeight, d.bits_stored, d.bits_allocated, d.is_signed);
    s.full_range_window = windowed;
    return s;
  }
  testing::TempDir dir_;
};

// Lossy JPEG (8 bits at quality 90, 12 bits at quality 90) and JPEG-LS near-lossless (deviation 2 of 256 or more)
// on a smooth image: the mean error is well under 1% of the range, the worst pixel (at an edge) under 10%.
constexpr double kLossyMeanTolerance = 0.01;
constexpr double kLossyMaxTolerance = 0.1;

TEST_F(TransferSyntaxMatrixTest, EverySupportedSyntaxDecodesLikeTheUncompressedFile) {
  const std::vector<Syntax> syntaxes = {
      {EXS_LittleEndianImplicit, true, Any},
      {EXS_BigEndianExplicit, true, Any},
      {EXS_DeflatedLittleEndianExplicit, true, Any},
      {EXS_RLELossless, true, Any},
      {EXS_JPEGProcess14SV1, true, Any},
      // DCMTK 3.6.7's JPEG-LS encoder hands signed 12-bit samples to CharLS sign-extended, which fails an assertion
      // (abort), and refuses signed samples near-lossless: those fixtures cannot be made here.
      {EXS_JPEGLSLossless, true, NotSigned12},
      {EXS_JPEGProcess1, false, EightBit},
      {EXS_JPEGProcess2_4, false, UnsignedUpTo12},
      {EXS_JPEGLSLossy, false, Unsigned},
  };
  for (const Depth& depth : AllDepths()) {
    const Image reference = Reference(depth);
    const Image windowed_reference = Reference(depth, /*windowed=*/true);
    for (const Syntax& syntax : syntaxes) {
      if (!syntax.accepts(depth)) continue;
      const std::string name = DcmXfer(syntax.xfer).getXferName();
      SCOPED_TRACE(absl::StrCat(depth.Name(), " ", name));
      const std::string path = dir_.Join(absl::StrCat(depth.Name(), "_", static_cast<int>(syntax.xfer), ".dcm"));
      fixtures::WriteDicom(path, Source(depth, /*windowed=*/!syntax.lossless), syntax.xfer);
      absl::StatusOr<Image> image = DecodeImage(path);
      ASSERT_TRUE(image.ok()) << image.status();
      EXPECT_EQ(image->bits, depth.bits_stored);
      if (syntax.lossless) {
        EXPECT_TRUE(image->pixels == reference.pixels) << "max error " << Compare(*image, reference).max;
      } else {
        const Difference d = Compare(*image, windowed_reference);
        EXPECT_LT(d.mean, kLossyMeanTolerance);
        EXPECT_LT(d.max, kLossyMaxTolerance);
        EXPECT_GT(d.max, 0.0) << "a lossy syntax decoded bit-exact: was it really compressed?";
      }
    }
  }
}

// Explicit VR Big Endian with samples wider than the unit DCMTK swaps (16-bit words for OW): 32 bits allocated
// (24 stored), written most significant byte first, decodes as its little-endian twin, which DCMTK alone would get
// wrong (halves exchanged). And 8 bits allocated in OW, which PS3.5 serialises as 16-bit words (the two samples of
// each word swapped in the file) and DCMTK swaps back: also its little-endian twin.
TEST_F(TransferSyntaxMatrixTest, BigEndianSamplesWiderThanTheSwapUnitDecodeAsTheLittleEndianTwin) {
  std::vector<fixtures::Samples> cases = {fixtures::SyntheticImage(kWidth, kHeight, 24, 32, false),
                                          fixtures::SyntheticImage(kWidth, kHeight, 24, 32, true),
                                          fixtures::SyntheticImage(kWidth, kHeight, 8, 8, false)};
  cases[2].eight_bit_ow = true;
  for (const fixtures::Samples& samples : cases) {
    const std::string name =
        absl::StrCat(samples.is_signed ? "s" : "u", samples.bits_stored, "_", samples.bits_allocated);
    SCOPED_TRACE(name);
    const std::string le = dir_.Join(name + "_le.dcm"), be = dir_.Join(name + "_be.dcm");
    fixtures::WriteDicom(le, samples, EXS_LittleEndianExplicit);
    fixtures::WriteDicom(be, samples, EXS_BigEndianExplicit);
    absl::StatusOr<Image> little = DecodeImage(le);
    ASSERT_TRUE(little.ok()) << little.status();
    const auto [lo, hi] = std::minmax_element(little->pixels.begin(), little->pixels.end());
    EXPECT_GT(*hi - *lo, 0.9f);
    absl::StatusOr<Image> big = DecodeImage(be);
    ASSERT_TRUE(big.ok()) << big.status();
    EXPECT_TRUE(big->pixels == little->pixels) << "max error " << Compare(*big, *little).max;
    EXPECT_EQ(big->bits, samples.bits_stored);
    // The file really holds what the comment says: the last pixel data bytes, in the file's order.
    std::ifstream in(be, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto* end = reinterpret_cast<const unsigned char*>(bytes.data() + bytes.size());
    const uint32_t last = static_cast<uint32_t>(samples.values.back()),
                   before = static_cast<uint32_t>(samples.values[samples.values.size() - 2]);
    if (samples.bits_allocated == 32) {
      const uint32_t v = (uint32_t{end[-4]} << 24) | (uint32_t{end[-3]} << 16) | (uint32_t{end[-2]} << 8) | end[-1];
      EXPECT_EQ(v, last & 0xFFFFFF);
    } else {
      EXPECT_EQ(end[-2], last & 0xFF);  // The second sample of the last word, first.
      EXPECT_EQ(end[-1], before & 0xFF);
    }
  }
}

TEST_F(TransferSyntaxMatrixTest, Jpeg2000LosslessDecodesBitExact) {
  for (const Depth& depth : AllDepths()) {
    for (int fragments : {1, 3}) {
      SCOPED_TRACE(absl::StrCat(depth.Name(), ", ", fragments, " fragment(s)"));
      const Image reference = Reference(depth);
      const std::string path = dir_.Join(absl::StrCat("j2k_", depth.Name(), "_", fragments, ".dcm"));
      fixtures::WriteJpeg2000Dicom(path, Source(depth), /*lossless=*/true, fragments);
      absl::StatusOr<Image> image = DecodeImage(path);
      ASSERT_TRUE(image.ok()) << image.status();
      EXPECT_TRUE(image->pixels == reference.pixels) << "max error " << Compare(*image, reference).max;
      EXPECT_EQ(image->bits, depth.bits_stored);
      EXPECT_THAT(image->description, HasSubstr("JPEG 2000"));
    }
  }
}

TEST_F(TransferSyntaxMatrixTest, Jpeg2000LosslessCodestreamDecodesToItsSource) {
  for (const Depth& depth : AllDepths()) {
    SCOPED_TRACE(depth.Name());
    const fixtures::Samples source = Source(depth);
    absl::StatusOr<Jpeg2000Image> decoded =
        DecodeJpeg2000(fixtures::EncodeJpeg2000(source, /*lossless=*/true), "fixture",
                       [](const Jpeg2000Header&) { return absl::OkStatus(); });
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(decoded->header.width, kWidth);
    EXPECT_EQ(decoded->header.height, kHeight);
    EXPECT_EQ(decoded->header.precision, depth.bits_stored);
    EXPECT_EQ(decoded->header.is_signed, depth.is_signed);
    EXPECT_TRUE(decoded->samples == source.values);
  }
}

// The irreversible 9/7 wavelet at 5:1 on a smooth image: errors like lossy JPEG's.
TEST_F(TransferSyntaxMatrixTest, Jpeg2000LossyDecodesWithinTolerance) {
  for (const Depth& depth : AllDepths()) {
    SCOPED_TRACE(depth.Name());
    const Image reference = Reference(depth, /*windowed=*/true);
    const std::string path = dir_.Join(absl::StrCat("j2k_lossy_", depth.Name(), ".dcm"));
    fixtures::WriteJpeg2000Dicom(path, Source(depth, /*windowed=*/true), /*lossless=*/false, /*fragments=*/3,
                                 /*ratio=*/5.0);
    absl::StatusOr<Image> image = DecodeImage(path);
    ASSERT_TRUE(image.ok()) << image.status();
    const Difference d = Compare(*image, reference);
    EXPECT_LT(d.mean, kLossyMeanTolerance);
    EXPECT_LT(d.max, kLossyMaxTolerance);
    EXPECT_GT(d.max, 0.0) << "lossy JPEG 2000 decoded bit-exact: was it really compressed?";
  }
}

TEST_F(TransferSyntaxMatrixTest, Jpeg2000HeaderDisagreeingWithTheDatasetIsRefusedBeforeDecoding) {
  const Depth depth{12, 16, false};
  fixtures::Samples other = fixtures::SyntheticImage(kWidth + 2, kHeight, 12, 16, false);
  const std::string codestream = fixtures::EncodeJpeg2000(other, true);
  const std::string path = dir_.Join("size_mismatch.dcm");
  fixtures::WriteJpeg2000Dicom(path, Source(depth), true, 1, 10.0, codestream);
  absl::StatusOr<Image> image = DecodeImage(path);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("size_mismatch.dcm"));
  EXPECT_THAT(image.status().message(), HasSubstr("66 x 48"));

  // A 16-bit codestream in a file that allocates 8 bits.
  const std::string wide = fixtures::EncodeJpeg2000(fixtures::SyntheticImage(kWidth, kHeight, 16, 16, false), true);
  const std::string path8 = dir_.Join("too_deep.dcm");
  fixtures::WriteJpeg2000Dicom(path8, fixtures::SyntheticImage(kWidth, kHeight, 8, 8, false), true, 1, 10.0, wide);
  image = DecodeImage(path8);
  ASSERT_FALSE(image.ok());
  EXPECT_THAT(image.status().message(), HasSubstr("Bits Allocated 8"));

  // The DICOM header (64 x 48) within the limit, the codestream's size (66 x 48) above it.
  DecodeOptions exact;
  exact.max_pixels = kWidth * kHeight;
  image = DecodeImage(path, exact);
  ASSERT_FALSE(image.ok());
  EXPECT_THAT(image.status().message(), HasSubstr("codestream declares 66 x 48 = 3168 pixels, above the limit"));
}

TEST_F(TransferSyntaxMatrixTest, Jpeg2000HeaderIsCheckedBeforeDecoding) {
  const fixtures::Samples wide = fixtures::SyntheticImage(8, 8, 16, 16, false);
  absl::StatusOr<Jpeg2000Image> garbage =
      DecodeJpeg2000("not a codestream", "garbage", [](const Jpeg2000Header&) { return absl::OkStatus(); });
  ASSERT_FALSE(garbage.ok());
  EXPECT_EQ(garbage.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(garbage.status().message(), HasSubstr("garbage"));
  // The check sees the header before decoding and its error is returned as is.
  bool checked = false;
  absl::StatusOr<Jpeg2000Image> refused =
      DecodeJpeg2000(fixtures::EncodeJpeg2000(wide, true), "checked", [&](const Jpeg2000Header& h) {
        checked = true;
        EXPECT_EQ(h.width, 8);
        EXPECT_EQ(h.height, 8);
        EXPECT_EQ(h.precision, 16);
        EXPECT_EQ(h.components, 1);
        EXPECT_FALSE(h.jp2);
        return absl::FailedPreconditionError("refused by the check");
      });
  EXPECT_TRUE(checked);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(TransferSyntaxMatrixTest, Jpeg2000ColourCodestreamIsRefused) {
  // pydicom's GDCMJ2K_TextGBR.dcm holds a 3-component (YBR_RCT) codestream; the DICOM path refuses it as colour
  // before decoding, so its codestream is handed to the decoder directly.
  std::ifstream in("/usr/lib/python3/dist-packages/pydicom/data/test_files/GDCMJ2K_TextGBR.dcm", std::ios::binary);
  const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t soc = file.find("\xFF\x4F\xFF\x51");
  ASSERT_NE(soc, std::string::npos);
  bool checked = false;
  absl::StatusOr<Jpeg2000Image> d = DecodeJpeg2000(file.substr(soc), "rgb", [&](const Jpeg2000Header&) {
    checked = true;
    return absl::OkStatus();
  });
  ASSERT_FALSE(d.ok());
  EXPECT_FALSE(checked);
  EXPECT_THAT(d.status().message(), HasSubstr("3 components"));
}

// A tiled codestream (64 x 48 in 16 x 16 tiles: 12 tile-parts) decodes bit-exact; cut after its third tile, with EOC
// appended (a well-formed but incomplete codestream, which OpenJPEG decodes "OK" with the missing tiles black), or
// with a tile-part left out, it is refused.
TEST_F(TransferSyntaxMatrixTest, Jpeg2000TiledDecodesBitExactAndMissingTilesAreRefused) {
  const Depth depth{12, 16, false};
  const std::string tiled = fixtures::EncodeJpeg2000(Source(depth), /*lossless=*/true, 10.0, /*tile_size=*/16);
  // The tile-parts, walked by their lengths (Psot) from the first SOT.
  std::vector<size_t> sot;
  for (size_t at = tiled.find("\xFF\x90"); at != std::string::npos && at + 10 <= tiled.size();) {
    sot.push_back(at);
    const auto* p = reinterpret_cast<const unsigned char*>(tiled.data() + at + 6);
    const size_t psot = (size_t{p[0]} << 24) | (size_t{p[1]} << 16) | (size_t{p[2]} << 8) | p[3];
    if (psot == 0) break;
    at += psot;
    if (at + 2 > tiled.size() || tiled.compare(at, 2, "\xFF\x90") != 0) break;
  }
  ASSERT_EQ(sot.size(), 12u);

  const Image reference = Reference(depth);
  const std::string whole = dir_.Join("tiled.dcm");
  fixtures::WriteJpeg2000Dicom(whole, Source(depth), true, 2, 10.0, tiled);
  absl::StatusOr<Image> image = DecodeImage(whole);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_TRUE(image->pixels == reference.pixels) << "max error " << Compare(*image, reference).max;

  const std::string cut = dir_.Join("cut.dcm");
  fixtures::WriteJpeg2000Dicom(cut, Source(depth), true, 1, 10.0, tiled.substr(0, sot[3]) + "\xFF\xD9");
  image = DecodeImage(cut);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("cut.dcm"));
  EXPECT_THAT(image.status().message(), HasSubstr("9 of 12 tiles missing (the first: tile 3)"));

  const std::string gap = tiled.substr(0, sot[5]) + tiled.substr(sot[6]);  // Tile 5 left out.
  absl::StatusOr<Jpeg2000Image> decoded =
      DecodeJpeg2000(gap, "gap", [](const Jpeg2000Header&) { return absl::OkStatus(); });
  ASSERT_FALSE(decoded.ok());
  EXPECT_THAT(decoded.status().message(), HasSubstr("1 of 12 tiles missing (the first: tile 5)"));
}

// A signed codestream in a file with Pixel Representation 0 decodes as pydicom 2.3 decodes it: offset binary,
// v + 2^(precision-1) (not the two's-complement bits read as unsigned, which wraps negatives to the top).
TEST_F(TransferSyntaxMatrixTest, Jpeg2000SignedCodestreamWithUnsignedPixelRepresentationIsOffsetBinary) {
  const fixtures::Samples signed_source = fixtures::SyntheticImage(kWidth, kHeight, 12, 16, true);
  fixtures::Samples offset = signed_source;
  offset.is_signed = false;
  for (int32_t& v : offset.values) v += 2048;
  const std::string plain = dir_.Join("offset_plain.dcm");
  fixtures::WriteDicom(plain, offset, EXS_LittleEndianExplicit);
  absl::StatusOr<Image> expected = DecodeImage(plain);
  ASSERT_TRUE(expected.ok()) << expected.status();
  const std::string path = dir_.Join("signed_cs_pr0.dcm");
  fixtures::WriteJpeg2000Dicom(path, offset, true, 1, 10.0, fixtures::EncodeJpeg2000(signed_source, true));
  absl::StatusOr<Image> image = DecodeImage(path);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_TRUE(image->pixels == expected->pixels) << "max error " << Compare(*image, *expected).max;
}

// CPU seconds used by `who` (RUSAGE_SELF: the process; RUSAGE_THREAD: this thread).
double CpuSeconds(int who) {
  rusage u{};
  getrusage(who, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

// OPJ_NUM_THREADS in the environment makes OpenJPEG decode code-blocks on a pool of worker threads; the decoder must
// stay on the calling thread all the same: most of the CPU time of a few decodes is this thread's. OpenJPEG still
// starts and stops its pool when a codec is made, a fixed cost per decode that grows on a loaded machine: the image
// is large enough (2048 x 2048) for the decoding to dwarf it (measured with 512 x 512: 49% to 99% of the CPU time on
// this thread with the fix, 16% without; 1024 x 1024 on an idle machine: 93% to 99%).
TEST_F(TransferSyntaxMatrixTest, Jpeg2000DecodesOnTheCallingThreadWhateverOpjNumThreadsSays) {
  const std::string codestream =
      fixtures::EncodeJpeg2000(fixtures::SyntheticImage(2048, 2048, 12, 16, false), /*lossless=*/true);
  ASSERT_EQ(setenv("OPJ_NUM_THREADS", "4", 1), 0);
  const double process_before = CpuSeconds(RUSAGE_SELF), thread_before = CpuSeconds(RUSAGE_THREAD);
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<Jpeg2000Image> decoded =
        DecodeJpeg2000(codestream, "threads", [](const Jpeg2000Header&) { return absl::OkStatus(); });
    EXPECT_TRUE(decoded.ok()) << decoded.status();
  }
  const double process = CpuSeconds(RUSAGE_SELF) - process_before, thread = CpuSeconds(RUSAGE_THREAD) - thread_before;
  unsetenv("OPJ_NUM_THREADS");
  EXPECT_GT(thread, 0.5 * process) << "this thread " << thread << " s of the process's " << process << " s";
}

// A multi-frame file without Number of Frames: two codestreams, one a fragment, after an offset table listing both,
// or after an empty one. Frame 1 must not be decoded silently.
TEST_F(TransferSyntaxMatrixTest, Jpeg2000WithMoreFramesThanNumberOfFramesSaysIsRefused) {
  const fixtures::Samples source = Source({12, 16, false});
  std::string one = fixtures::EncodeJpeg2000(source, true);
  if (one.size() % 2 != 0) one.push_back('\0');
  const std::string two = one + one;
  const std::string with_table = dir_.Join("two_frames_bot.dcm");
  fixtures::WriteJpeg2000Dicom(with_table, source, true, 2, 10.0, two, {0, static_cast<uint32_t>(one.size() + 8)});
  absl::StatusOr<Image> image = DecodeImage(with_table);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(image.status().message(), HasSubstr("two_frames_bot.dcm"));
  EXPECT_THAT(image.status().message(), HasSubstr("Basic Offset Table lists 2 frames"));

  const std::string without_table = dir_.Join("two_frames.dcm");
  fixtures::WriteJpeg2000Dicom(without_table, source, true, 2, 10.0, two);
  image = DecodeImage(without_table);
  ASSERT_FALSE(image.ok());
  EXPECT_THAT(image.status().message(), HasSubstr("two_frames.dcm"));
  EXPECT_THAT(image.status().message(), HasSubstr("after the end of the codestream (EOC)"));

  // One frame with an offset table of one entry, and zero padding after EOC, still decodes.
  const std::string padded = dir_.Join("padded.dcm");
  fixtures::WriteJpeg2000Dicom(padded, source, true, 1, 10.0, one + std::string(6, '\0'), {0});
  image = DecodeImage(padded);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_TRUE(image->pixels == Reference({12, 16, false}).pixels);
}

// A codestream written by hand (after the reviewer's bomb.py): SOC, SIZ declaring `width` x 1 samples of 8 bits in
// `components` components and tiles of `tile_width` x 1, COD, QCD, one empty tile-part, EOC.
std::string HandWrittenCodestream(uint32_t width, uint32_t tile_width, int components) {
  std::string b;
  auto be16 = [&](uint32_t v) {
    b.push_back(static_cast<char>(v >> 8));
    b.push_back(static_cast<char>(v));
  };
  auto be32 = [&](uint32_t v) {
    be16(v >> 16);
    be16(v & 0xFFFF);
  };
  be16(0xFF4F);
  be16(0xFF51);
  be16(38 + 3 * components);
  be16(0);  // Rsiz.
  for (uint32_t v : {width, 1u, 0u, 0u, tile_width, 1u, 0u, 0u}) be32(v);
  be16(components);
  for (int c = 0; c < components; ++c) b.append("\x07\x01\x01", 3);
  be16(0xFF52);  // COD: LRCP, 1 layer, no transform, 0 decomposition levels, 64 x 64 code-blocks.
  for (uint32_t v : {12u, 0u, 0u}) be16(v);
  b.append("\x00\x00\x04\x04\x00\x01", 6);
  be16(0xFF5C);  // QCD: no quantisation, guard bits 2.
  be16(4);
  b.append("\x40\x40", 2);
  be16(0xFF90);  // SOT of tile 0, part 0 of 1, 10 bytes long.
  be16(10);
  be16(0);
  be32(0);
  b.append("\x00\x01", 2);
  be16(0xFF93);
  be16(0xFFD9);
  return b;
}

// OpenJPEG allocates coding parameters for every tile and component while it reads the main header: such a
// codestream must be refused from its SIZ marker, before OpenJPEG sees it (60,000 tiles in 82 bytes took 750 MB and
// decoded "OK"; 16,384 components took 1.9 GB).
TEST_F(TransferSyntaxMatrixTest, Jpeg2000DeclaringThousandsOfTilesOrComponentsIsRefusedFromItsSiz) {
  bool checked = false;
  const auto any = [&](const Jpeg2000Header&) {
    checked = true;
    return absl::OkStatus();
  };
  // One tile per sample: 60,000 tiles.
  absl::StatusOr<Jpeg2000Image> tiles = DecodeJpeg2000(HandWrittenCodestream(60000, 1, 1), "tiles", any);
  ASSERT_FALSE(tiles.ok());
  EXPECT_EQ(tiles.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tiles.status().message(), HasSubstr("60000 tiles"));
  EXPECT_FALSE(checked);
  absl::StatusOr<Jpeg2000Image> components = DecodeJpeg2000(HandWrittenCodestream(100, 1, 16384), "comps", any);
  ASSERT_FALSE(components.ok());
  EXPECT_THAT(components.status().message(), HasSubstr("16384 components"));
  EXPECT_FALSE(checked);
  // At the limit the same codestream passes the SIZ checks (the check is called) and is then decoded.
  absl::StatusOr<Jpeg2000Image> at_limit =
      DecodeJpeg2000(HandWrittenCodestream(kMaxJpeg2000Tiles, 1, 1), "limit", [&](const Jpeg2000Header& h) {
        checked = true;
        EXPECT_EQ(h.tiles, kMaxJpeg2000Tiles);
        EXPECT_EQ(h.width, kMaxJpeg2000Tiles);
        return absl::FailedPreconditionError("stop here");
      });
  EXPECT_TRUE(checked);
  EXPECT_EQ(at_limit.status().code(), absl::StatusCode::kFailedPrecondition);
  // A SIZ length that does not fit one component, and a JP2 file whose box runs past the end.
  std::string long_siz = HandWrittenCodestream(100, 100, 1);
  long_siz[5] = 44;
  EXPECT_THAT(DecodeJpeg2000(long_siz, "lsiz", any).status().message(), HasSubstr("SIZ marker length 44"));
  const std::string jp2 = std::string("\x00\x00\x00\x0C\x6A\x50\x20\x20\x0D\x0A\x87\x0A", 12) +
                          std::string("\x00\x01\x00\x00jp2c", 8) + HandWrittenCodestream(100, 100, 1);
  EXPECT_THAT(DecodeJpeg2000(jp2, "jp2", any).status().message(), HasSubstr("JP2 box at byte 12"));

  // Through the DICOM path: a 60000 x 1 image whose codestream has 1 x 1 tiles.
  const std::string path = dir_.Join("tiles.dcm");
  fixtures::WriteJpeg2000Dicom(path, fixtures::SyntheticImage(60000, 1, 8, 8, false), true, 1, 10.0,
                               HandWrittenCodestream(60000, 1, 1));
  absl::StatusOr<Image> image = DecodeImage(path);
  ASSERT_FALSE(image.ok());
  EXPECT_THAT(image.status().message(), HasSubstr("tiles.dcm"));
  EXPECT_THAT(image.status().message(), HasSubstr("60000 tiles"));
}

// Truncated or corrupted codestreams (fixed seeds) must give an error or, for corruption that OpenJPEG cannot
// detect, an image of the right size: never a crash, never a hang.
TEST_F(TransferSyntaxMatrixTest, Jpeg2000TruncatedOrCorruptIsAnErrorNotACrash) {
  const fixtures::Samples source = fixtures::SyntheticImage(kWidth, kHeight, 12, 16, false);
  const std::string good = fixtures::EncodeJpeg2000(source, true);
  // As the DICOM path does: the header must declare the expected size.
  const auto expected_size = [](const Jpeg2000Header& h) {
    return h.width == kWidth && h.height == kHeight ? absl::OkStatus() : absl::InvalidArgumentError("size");
  };
  int refused_truncations = 0, cuts = 0;
  for (size_t cut = 0; cut + 2 < good.size(); cut += std::max<size_t>(1, good.size() / 40)) {
    ++cuts;
    absl::StatusOr<Jpeg2000Image> d = DecodeJpeg2000(good.substr(0, cut), "cut", expected_size);
    if (!d.ok()) {
      ++refused_truncations;
      EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument) << d.status();
    } else {
      EXPECT_EQ(d->samples.size(), source.values.size());
    }
  }
  // Every cut inside the main header, and most after it, are refused.
  EXPECT_GT(refused_truncations, cuts / 2);
  std::mt19937 rng(7);
  for (int trial = 0; trial < 60; ++trial) {
    std::string bad = good;
    for (int k = 0; k < 1 + trial % 4; ++k) bad[rng() % bad.size()] = static_cast<char>(rng());
    absl::StatusOr<Jpeg2000Image> d = DecodeJpeg2000(bad, "corrupt", expected_size);
    if (d.ok()) {
      EXPECT_EQ(d->samples.size(), source.values.size());
    }
    // And through the DICOM path, from memory.
    const std::string path = dir_.Join("corrupt.dcm");
    fixtures::WriteJpeg2000Dicom(path, source, true, 2, 10.0, bad);
    absl::StatusOr<Image> image = DecodeImage(path);
    if (image.ok()) {
      EXPECT_EQ(image->pixels.size(), source.values.size());
    } else {
      EXPECT_THAT(image.status().message(), HasSubstr("corrupt.dcm"));
    }
  }
}

}  // namespace
}  // namespace fedtune::imaging
