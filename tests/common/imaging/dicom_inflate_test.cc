#include "common/imaging/dicom_inflate.h"

#include <zlib.h>

#include <cstdint>
#include <fstream>
#include <iterator>
#include <string>

#include "absl/strings/str_cat.h"
#include "dcmtk/config/osconfig.h"  // Must come first among DCMTK headers.
#include "dcmtk/dcmdata/dctk.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::imaging {
namespace {

using ::testing::HasSubstr;

const std::string kPydicomFiles = "/usr/lib/python3/dist-packages/pydicom/data/test_files/";

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::string Le(uint32_t v, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  return s;
}

// One Explicit VR Little Endian element of group 0002 (OB: 2 reserved bytes and a 4-byte length).
std::string MetaElement(uint16_t element, const std::string& vr, const std::string& value) {
  const uint32_t length = static_cast<uint32_t>(value.size());
  return absl::StrCat(Le(2, 2), Le(element, 2), vr, vr == "OB" ? Le(0, 2) + Le(length, 4) : Le(length, 2), value);
}

// A raw deflate stream (no zlib header) of `data`.
std::string Deflate(const std::string& data) {
  z_stream z{};
  EXPECT_EQ(deflateInit2(&z, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(deflateBound(&z, data.size()), '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  z.avail_in = static_cast<uInt>(data.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

// A deflated file by hand: preamble, "DICM", `meta` (group 0002 elements), then `dataset` deflated.
std::string DeflatedFile(const std::string& meta, const std::string& dataset) {
  return std::string(128, '\0') + "DICM" + meta + Deflate(dataset);
}

std::string StandardMeta(const std::string& transfer_syntax = "1.2.840.10008.1.2.1.99") {
  const std::string rest = MetaElement(0x0001, "OB", "") + MetaElement(0x0010, "UI", transfer_syntax) +
                           MetaElement(0x0012, "UI", std::string("1.2.3.4\0", 8));
  return MetaElement(0x0000, "UL", Le(static_cast<uint32_t>(rest.size()), 4)) + rest;
}

// An Explicit VR Little Endian dataset: (0008,0060) CS "OT".
const std::string kDataset = absl::StrCat(Le(0x0008, 2), Le(0x0060, 2), "CS", Le(2, 2), "OT");

struct Result {
  absl::Status status;
  std::string output;
};

Result Inflate(const std::string& bytes, int64_t max_bytes = int64_t{1} << 30) {
  testing::TempDir dir;
  const std::string path = dir.WriteFile("in.dcm", bytes);
  Result r;
  DicomInflateOptions options;
  options.max_bytes = max_bytes;
  options.limit_source = "(test limit)";
  r.status = InflateDeflatedDicom(path, "in.dcm", options, [&](absl::string_view piece) {
    r.output.append(piece.data(), piece.size());
    return absl::OkStatus();
  });
  return r;
}

// The rewritten header that StandardMeta() becomes.
std::string RewrittenStandardHeader() {
  const std::string rest = MetaElement(0x0001, "OB", "") +
                           MetaElement(0x0010, "UI", std::string("1.2.840.10008.1.2.1\0", 20)) +
                           MetaElement(0x0012, "UI", std::string("1.2.3.4\0", 8));
  return std::string(128, '\0') + "DICM" + MetaElement(0x0000, "UL", Le(static_cast<uint32_t>(rest.size()), 4)) + rest;
}

TEST(InflateDeflatedDicomTest, RewritesTheMetaHeaderAndInflatesTheDataset) {
  const Result r = Inflate(DeflatedFile(StandardMeta(), kDataset));
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.output, RewrittenStandardHeader() + kDataset);
}

TEST(InflateDeflatedDicomTest, MetaHeaderWithoutGroupLengthOrPreamble) {
  // No (0002,0000): the meta header ends at the first tag of another group (as DCMTK reads it). No preamble either.
  const std::string meta = MetaElement(0x0001, "OB", "") + MetaElement(0x0010, "UI", "1.2.840.10008.1.2.1.99");
  const Result r = Inflate(meta + Deflate(kDataset));
  ASSERT_TRUE(r.status.ok()) << r.status;
  const std::string rest =
      MetaElement(0x0001, "OB", "") + MetaElement(0x0010, "UI", std::string("1.2.840.10008.1.2.1\0", 20));
  EXPECT_EQ(r.output, std::string(128, '\0') + "DICM" +
                          MetaElement(0x0000, "UL", Le(static_cast<uint32_t>(rest.size()), 4)) + rest + kDataset);
}

TEST(InflateDeflatedDicomTest, DcmtkReadsTheOutputAsTheUncompressedTwin) {
  testing::TempDir dir;
  DcmFileFormat original;
  ASSERT_TRUE(original.loadFile((kPydicomFiles + "CT_small.dcm").c_str()).good());
  const std::string deflated = dir.Join("deflated.dcm");
  ASSERT_TRUE(original.saveFile(deflated.c_str(), EXS_DeflatedLittleEndianExplicit).good());
  const Result r = Inflate(ReadBytes(deflated));
  ASSERT_TRUE(r.status.ok()) << r.status;
  const std::string rewritten = dir.WriteFile("rewritten.dcm", r.output);
  DcmFileFormat read;
  ASSERT_TRUE(read.loadFile(rewritten.c_str()).good());
  EXPECT_EQ(read.getDataset()->getOriginalXfer(), EXS_LittleEndianExplicit);
  const Uint16* want = nullptr;
  const Uint16* got = nullptr;
  unsigned long want_count = 0, got_count = 0;
  ASSERT_TRUE(original.getDataset()->findAndGetUint16Array(DCM_PixelData, want, &want_count).good());
  ASSERT_TRUE(read.getDataset()->findAndGetUint16Array(DCM_PixelData, got, &got_count).good());
  ASSERT_EQ(got_count, 128u * 128u);
  ASSERT_EQ(got_count, want_count);
  EXPECT_TRUE(std::equal(want, want + want_count, got));
}

TEST(InflateDeflatedDicomTest, LimitIsExactAndNothingPastItReachesTheSink) {
  const std::string file = DeflatedFile(StandardMeta(), kDataset + std::string(100000, '\0'));
  const int64_t size = static_cast<int64_t>(RewrittenStandardHeader().size() + kDataset.size() + 100000);
  const Result at = Inflate(file, size);
  EXPECT_TRUE(at.status.ok()) << at.status;
  EXPECT_EQ(static_cast<int64_t>(at.output.size()), size);
  const Result below = Inflate(file, size - 1);
  EXPECT_EQ(below.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(below.status.message(), HasSubstr("in.dcm"));
  EXPECT_THAT(below.status.message(), HasSubstr(absl::StrCat("limit of ", size - 1, " bytes (test limit)")));
  EXPECT_LE(static_cast<int64_t>(below.output.size()), size - 1);
  // A limit below the header alone: nothing is written.
  const Result tiny = Inflate(file, 100);
  EXPECT_EQ(tiny.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tiny.output, "");
}

TEST(InflateDeflatedDicomTest, InputLargerThanTheLimitIsRefused) {
  // Incompressible input: the file itself is above the limit.
  std::string noise(200000, '\0');
  uint32_t x = 1;
  for (char& c : noise) c = static_cast<char>((x = x * 1103515245 + 12345) >> 24);
  const std::string file = DeflatedFile(StandardMeta(), kDataset + noise);
  const Result r = Inflate(file, 100000);
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_LE(r.output.size(), 100000u);
}

TEST(InflateDeflatedDicomTest, TrailingBytes) {
  const std::string file = DeflatedFile(StandardMeta(), kDataset);
  EXPECT_TRUE(Inflate(file + std::string(1, '\0')).status.ok());
  EXPECT_TRUE(Inflate(file + std::string(kMaxDeflatedTrailingBytes, 'x')).status.ok());
  const Result r = Inflate(file + std::string(kMaxDeflatedTrailingBytes + 1, 'x'));
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status.message(), HasSubstr("9 bytes after the end of the deflate stream"));
  const Result big = Inflate(file + std::string(1 << 20, 'x'));
  EXPECT_THAT(big.status.message(), HasSubstr("at least"));
}

TEST(InflateDeflatedDicomTest, TruncatedAndCorruptStreams) {
  const std::string file = DeflatedFile(StandardMeta(), kDataset + std::string(5000, 'a'));
  const size_t stream_at = 132 + StandardMeta().size();
  for (size_t cut : {stream_at, stream_at + 1, file.size() - 2}) {
    const Result r = Inflate(file.substr(0, cut));
    EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument) << cut;
    EXPECT_THAT(r.status.message(), HasSubstr("truncated")) << cut;
  }
  std::string corrupt = file;
  corrupt[stream_at] = '\xFF';  // A block of the reserved type 3.
  const Result r = Inflate(corrupt);
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status.message(), HasSubstr("corrupt deflate stream"));
}

TEST(InflateDeflatedDicomTest, BadMetaHeadersAreRefused) {
  struct Case {
    std::string file;
    std::string message;
  };
  const std::string preamble = std::string(128, '\0') + "DICM";
  std::string unknown_vr = MetaElement(0x0010, "UI", "1.2.840.10008.1.2.1.99");
  unknown_vr[4] = 'Q';
  const Case cases[] = {
      {Deflate(kDataset), "no meta header"},
      {preamble + Deflate(kDataset), "no meta header"},
      {DeflatedFile(StandardMeta("1.2.840.10008.1.2.1"), kDataset), "names transfer syntax '1.2.840.10008.1.2.1'"},
      {DeflatedFile(MetaElement(0x0001, "OB", ""), kDataset), "0 Transfer Syntax UID elements"},
      {DeflatedFile(
           MetaElement(0x0010, "UI", "1.2.840.10008.1.2.1.99") + MetaElement(0x0010, "UI", "1.2.840.10008.1.2.1.99"),
           kDataset),
       "2 Transfer Syntax UID elements"},
      {preamble + unknown_vr + Deflate(kDataset), "unknown VR 'QI'"},
      {preamble + MetaElement(0x0000, "UL", Le(1 << 20, 4)), "group length 1048576"},
      {preamble + MetaElement(0x0001, "OB", "") + MetaElement(0x0010, "UI", "1.2.840.10008.1.2.1.99").substr(0, 10),
       "truncated meta header"},
      {preamble + Le(2, 2) + Le(0x0001, 2) + "OB" + Le(0, 2) + Le(0xFFFFFFFF, 4), "undefined length"},
      {preamble + Le(2, 2) + Le(0x0001, 2) + "OB" + Le(0, 2) + Le(1 << 20, 4) + std::string(1 << 20, '\0'),
       "meta header longer than 65536 bytes"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.message);
    const Result r = Inflate(c.file);
    EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument) << r.status;
    EXPECT_THAT(r.status.message(), HasSubstr(c.message));
    EXPECT_THAT(r.status.message(), HasSubstr("in.dcm"));
    EXPECT_EQ(r.output, "");
  }
}

TEST(InflateDeflatedDicomTest, SinkErrorsAndMissingFiles) {
  testing::TempDir dir;
  const std::string path = dir.WriteFile("in.dcm", DeflatedFile(StandardMeta(), kDataset));
  DicomInflateOptions options;
  options.max_bytes = 1 << 20;
  const absl::Status full = InflateDeflatedDicom(
      path, "in.dcm", options, [](absl::string_view) { return absl::ResourceExhaustedError("sink full"); });
  EXPECT_EQ(full, absl::ResourceExhaustedError("sink full"));
  const absl::Status missing = InflateDeflatedDicom(dir.Join("missing.dcm"), "missing.dcm", options,
                                                    [](absl::string_view) { return absl::OkStatus(); });
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.message(), HasSubstr("missing.dcm"));
}

}  // namespace
}  // namespace fedtune::imaging
