// Tests of common/data/dicom_index.h: header reads, the resumable scan, the labels file, the join and its report.
#include "common/data/dicom_index.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/data/manifest_writer.h"
#include "common/io/csv.h"
#include "common/io/file_util.h"
#include "dcmtk/dcmdata/dcdeftag.h"
#include "dcmtk/dcmdata/dcfilefo.h"
#include "dcmtk/dcmdata/dcuid.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::data {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kSecret[] = "0123456789abcdef-site-secret";

struct TestDicom {
  std::string sop_class = UID_DigitalXRayImageStorageForPresentation;
  std::string sop_uid = "1.2.3.1";
  std::string study_uid = "1.2.3.100";
  std::string accession = "ACC1";
  std::string patient_id = "MRN-4711";
  std::string view = "PA";
  std::string modality = "DX";
  bool pixels = true;
  int private_bytes = 0;  // A private OB element of this size before Pixel Data.
  E_TransferSyntax transfer_syntax = EXS_LittleEndianExplicit;
};

void WriteTestDicom(const std::string& path, const TestDicom& t) {
  DcmFileFormat file;
  DcmDataset* ds = file.getDataset();
  ASSERT_TRUE(ds->putAndInsertString(DCM_SOPClassUID, t.sop_class.c_str()).good());
  ASSERT_TRUE(ds->putAndInsertString(DCM_SOPInstanceUID, t.sop_uid.c_str()).good());
  ASSERT_TRUE(ds->putAndInsertString(DCM_StudyInstanceUID, t.study_uid.c_str()).good());
  ASSERT_TRUE(ds->putAndInsertString(DCM_SeriesInstanceUID, "1.2.3.200").good());
  ASSERT_TRUE(ds->putAndInsertString(DCM_AccessionNumber, t.accession.c_str()).good());
  ASSERT_TRUE(ds->putAndInsertString(DCM_PatientID, t.patient_id.c_str()).good());
  ASSERT_TRUE(ds->putAndInsertString(DCM_PatientSex, "F").good());
  ASSERT_TRUE(ds->putAndInsertString(DCM_PatientAge, "042Y").good());
  ASSERT_TRUE(ds->putAndInsertString(DCM_Modality, t.modality.c_str()).good());
  ASSERT_TRUE(ds->putAndInsertString(DCM_ViewPosition, t.view.c_str()).good());
  if (t.private_bytes > 0) {
    std::vector<Uint8> blob(t.private_bytes, 7);
    ASSERT_TRUE(ds->putAndInsertString(DcmTagKey(0x0009, 0x0010), "FEDTUNE TEST").good());
    ASSERT_TRUE(ds->putAndInsertUint8Array(DcmTag(0x0009, 0x1001, EVR_OB), blob.data(), blob.size()).good());
  }
  if (t.pixels) {
    ASSERT_TRUE(ds->putAndInsertUint16(DCM_Rows, 4).good());
    ASSERT_TRUE(ds->putAndInsertUint16(DCM_Columns, 4).good());
    ASSERT_TRUE(ds->putAndInsertUint16(DCM_BitsAllocated, 16).good());
    ASSERT_TRUE(ds->putAndInsertUint16(DCM_BitsStored, 12).good());
    ASSERT_TRUE(ds->putAndInsertUint16(DCM_HighBit, 11).good());
    ASSERT_TRUE(ds->putAndInsertUint16(DCM_SamplesPerPixel, 1).good());
    ASSERT_TRUE(ds->putAndInsertString(DCM_PhotometricInterpretation, "MONOCHROME2").good());
    std::vector<Uint16> px(16, 100);
    ASSERT_TRUE(ds->putAndInsertUint16Array(DCM_PixelData, px.data(), px.size()).good());
  }
  ASSERT_TRUE(io::MakeDirectories(path.substr(0, path.rfind('/'))).ok());
  ASSERT_TRUE(file.saveFile(path.c_str(), t.transfer_syntax).good()) << path;
}

std::string LabelsHeader(const std::string& key) {
  std::string header = key;
  for (const char* label : kChexpertLabels) absl::StrAppend(&header, ",", label);
  return header + ",Comment\n";
}

std::string LabelsRow(const std::string& key, const std::string& first = "1.0") {
  std::string row = key + "," + first;
  for (int l = 1; l < kNumChexpertLabels; ++l) row += l == 4 ? ",-1.0" : ",";
  return row + ",free text\n";
}

TEST(ReadDicomHeaderTest, ReadsAttributesAndPseudonymizesThePatient) {
  testing::TempDir dir;
  const std::string path = dir.Join("a.dcm");
  WriteTestDicom(path, TestDicom{});
  const DicomFileRecord r = ReadDicomHeader(path, kSecret, 1 << 20);
  EXPECT_EQ(r.kind, FileKind::kImage) << r.reason;
  EXPECT_EQ(r.sop_instance_uid, "1.2.3.1");
  EXPECT_EQ(r.study_uid, "1.2.3.100");
  EXPECT_EQ(r.accession, "ACC1");
  EXPECT_EQ(r.view_position, "PA");
  EXPECT_EQ(r.modality, "DX");
  EXPECT_EQ(r.sex, "F");
  EXPECT_EQ(r.age, "042Y");
  EXPECT_EQ(r.sop_class_uid, UID_DigitalXRayImageStorageForPresentation);
  // The pseudonym: 32 hex digits, stable for a secret, different for another, never the raw id.
  EXPECT_EQ(r.patient.size(), 32u);
  EXPECT_EQ(r.patient, PseudonymizePatientId(kSecret, "MRN-4711"));
  EXPECT_EQ(r.patient, PseudonymizePatientId(kSecret, " MRN-4711 "));
  EXPECT_NE(r.patient, PseudonymizePatientId("another-secret-of-16+", "MRN-4711"));
  EXPECT_THAT(r.patient, Not(HasSubstr("4711")));
}

TEST(ReadDicomHeaderTest, ClassifiesWhatIsNotAnImage) {
  testing::TempDir dir;
  TestDicom sr;
  sr.sop_class = UID_BasicTextSRStorage;
  sr.pixels = false;
  WriteTestDicom(dir.Join("sr.dcm"), sr);
  DicomFileRecord r = ReadDicomHeader(dir.Join("sr.dcm"), kSecret, 1 << 20);
  EXPECT_EQ(r.kind, FileKind::kNonImage);
  EXPECT_THAT(r.reason, HasSubstr("non-image object"));

  TestDicom no_pixels;
  no_pixels.pixels = false;
  WriteTestDicom(dir.Join("np.dcm"), no_pixels);
  r = ReadDicomHeader(dir.Join("np.dcm"), kSecret, 1 << 20);
  EXPECT_EQ(r.kind, FileKind::kNonImage);
  EXPECT_THAT(r.reason, HasSubstr("no Pixel Data"));

  r = ReadDicomHeader(dir.WriteFile("notes.txt", std::string(300, 'x')), kSecret, 1 << 20);
  EXPECT_EQ(r.kind, FileKind::kNotDicom);
  EXPECT_THAT(r.reason, HasSubstr("DICM"));

  // DICM, then garbage: a malformed header, not a crash.
  r = ReadDicomHeader(dir.WriteFile("bad.dcm", std::string(128, '\0') + "DICM" + std::string(64, '\xff')), kSecret,
                      1 << 20);
  EXPECT_EQ(r.kind, FileKind::kNotDicom);

  r = ReadDicomHeader(dir.Join("missing.dcm"), kSecret, 1 << 20);
  EXPECT_EQ(r.kind, FileKind::kUnreadable);
  EXPECT_THAT(r.reason, HasSubstr("cannot open"));
}

TEST(ReadDicomHeaderTest, BoundsTheHeaderBytesRead) {
  testing::TempDir dir;
  TestDicom big;
  big.private_bytes = 300 * 1024;  // The header is longer than 256 KiB; pixels come after it.
  WriteTestDicom(dir.Join("big.dcm"), big);
  DicomFileRecord r = ReadDicomHeader(dir.Join("big.dcm"), kSecret, 256 * 1024);
  EXPECT_EQ(r.kind, FileKind::kNotDicom);
  EXPECT_THAT(r.reason, HasSubstr("262144"));
  r = ReadDicomHeader(dir.Join("big.dcm"), kSecret, 1 << 20);
  EXPECT_EQ(r.kind, FileKind::kImage) << r.reason;
}

// Little-endian bytes of a 16- or 32-bit value.
std::string Le(uint32_t v, int bytes) {
  std::string out;
  for (int i = 0; i < bytes; ++i) out += static_cast<char>((v >> (8 * i)) & 0xff);
  return out;
}

// An explicit-VR little-endian element with a 2-byte length.
std::string Short(uint16_t group, uint16_t element, const char* vr, const std::string& value) {
  return Le(group, 2) + Le(element, 2) + vr + Le(static_cast<uint32_t>(value.size()), 2) + value;
}

// A Part-10 preamble and meta header, then a dataset start (SOP class and instance, PatientID).
std::string Part10Start() {
  std::string meta = Le(2, 2) + Le(1, 2) + "OB" + std::string(2, '\0') + Le(2, 4) + std::string("\0\1", 2) +
                     Short(2, 2, "UI", std::string("1.2.840.10008.5.1.4.1.1.1\0", 26)) +
                     Short(2, 3, "UI", std::string("1.2.3\0", 6)) +
                     Short(2, 0x10, "UI", std::string("1.2.840.10008.1.2.1\0", 20));
  return std::string(128, '\0') + "DICM" + Short(2, 0, "UL", Le(static_cast<uint32_t>(meta.size()), 4)) + meta +
         Short(8, 0x16, "UI", std::string("1.2.840.10008.5.1.4.1.1.1\0", 26)) +
         Short(8, 0x18, "UI", std::string("1.2.3\0", 6)) + Short(0x10, 0x20, "LO", "MRN1");
}

// Part10Start() and `levels` undefined-length sequences, each holding one undefined-length item, never closed.
std::string DeeplyNested(int levels) {
  std::string deep = Part10Start();
  for (int i = 0; i < levels; ++i) {
    deep += Le(8, 2) + Le(0x1140, 2) + "SQ" + std::string(2, '\0') + Le(0xFFFFFFFFu, 4);
    deep += Le(0xFFFE, 2) + Le(0xE000, 2) + Le(0xFFFFFFFFu, 4);
  }
  return deep;
}

TEST(ReadDicomHeaderTest, HostileHeadersBecomeReasonsNotCrashes) {
  testing::TempDir dir;
  // A value declaring 4 GiB that is not there; an undefined-length sequence nested 2,000 deep and never closed.
  const std::string huge = Part10Start() + Le(9, 2) + Le(0x1001, 2) + "OB" + std::string(2, '\0') + Le(0xFFFFFFF0u, 4) +
                           std::string(100, 'x');
  const std::string deep = DeeplyNested(2000);
  for (const auto& [name, bytes] : {std::pair<std::string, std::string>{"huge.dcm", huge}, {"deep.dcm", deep}}) {
    const DicomFileRecord r = ReadDicomHeader(dir.WriteFile(name, bytes), kSecret, 1 << 20);
    EXPECT_EQ(r.kind, FileKind::kNotDicom) << name;
  }
  EXPECT_THAT(ReadDicomHeader(dir.Join("huge.dcm"), kSecret, 1 << 20).reason, HasSubstr("malformed DICOM header"));
  EXPECT_THAT(ReadDicomHeader(dir.Join("deep.dcm"), kSecret, 1 << 20).reason, HasSubstr("nested deeper than 1000"));
}

// 10,000 and 50,000 nested undefined-length sequences (about 200 KB and 1 MB) overflowed the stack inside DCMTK:
// they are refused before DCMTK parses them, on the caller's thread, on a std::thread and in a threaded scan.
TEST(ReadDicomHeaderTest, DeeplyNestedSequencesAreRefusedWithoutCrashing) {
  testing::TempDir dir;
  for (int levels : {10000, 50000}) {
    const std::string name = absl::StrCat("export/deep", levels, ".dcm");
    const std::string path = dir.WriteFile(name, DeeplyNested(levels));
    DicomFileRecord r = ReadDicomHeader(path, kSecret, 4 << 20);
    EXPECT_EQ(r.kind, FileKind::kNotDicom) << levels;
    EXPECT_THAT(r.reason, HasSubstr("sequences nested deeper than 1000")) << levels;
    std::thread worker([&] { r = ReadDicomHeader(path, kSecret, 4 << 20); });
    worker.join();
    EXPECT_THAT(r.reason, HasSubstr("sequences nested deeper than 1000")) << levels;
  }
  // At the limit, DCMTK parses it on the scan's threads (whose stack size is set) without crashing.
  dir.WriteFile("export/at-limit.dcm", DeeplyNested(kMaxItemNesting));
  DicomIndexOptions o;
  o.dicom_dir = dir.Join("export");
  o.secret = kSecret;
  o.state_path = dir.Join("state");
  o.threads = 3;
  o.max_header_bytes = 4 << 20;
  absl::StatusOr<DicomScan> scan = ScanDicomFolder(o);
  ASSERT_TRUE(scan.ok()) << scan.status();
  ASSERT_EQ(scan->files.size(), 3u);
  EXPECT_THAT(scan->files[0].reason, Not(HasSubstr("nested deeper")));
  EXPECT_THAT(scan->files[1].reason, HasSubstr("nested deeper"));
  EXPECT_THAT(scan->files[2].reason, HasSubstr("nested deeper"));
}

// A Part-10 DX image written byte by byte, with the given AccessionNumber and PatientID values as they are (padding
// included), and 8 bytes of Pixel Data.
std::string RawImage(const std::string& accession, const std::string& patient_id) {
  std::string meta = Le(2, 2) + Le(1, 2) + "OB" + std::string(2, '\0') + Le(2, 4) + std::string("\0\1", 2) +
                     Short(2, 2, "UI", std::string("1.2.840.10008.5.1.4.1.1.1\0", 26)) +
                     Short(2, 3, "UI", std::string("1.2.3\0", 6)) +
                     Short(2, 0x10, "UI", std::string("1.2.840.10008.1.2.1\0", 20));
  return std::string(128, '\0') + "DICM" + Short(2, 0, "UL", Le(static_cast<uint32_t>(meta.size()), 4)) + meta +
         Short(8, 0x16, "UI", std::string("1.2.840.10008.5.1.4.1.1.1\0", 26)) +
         Short(8, 0x18, "UI", std::string("1.2.3\0", 6)) + Short(8, 0x50, "SH", accession) +
         Short(8, 0x60, "CS", "CR") + Short(0x10, 0x20, "LO", patient_id) + Short(0x18, 0x5101, "CS", "PA") +
         Le(0x7FE0, 2) + Le(0x10, 2) + "OW" + std::string(2, '\0') + Le(8, 4) + std::string(8, '\1');
}

// DICOM pads with a space, or a NUL: "AC1\0" is AC1 (it joins label AC1), and "MRN1\0" and "MRN1 " are one patient.
TEST(ReadDicomHeaderTest, NulPaddingIsStrippedLikeSpaces) {
  testing::TempDir dir;
  const DicomFileRecord nul = ReadDicomHeader(
      dir.WriteFile("nul.dcm", RawImage(std::string("AC1\0", 4), std::string("MRN1\0\0", 6))), kSecret, 1 << 20);
  const DicomFileRecord space =
      ReadDicomHeader(dir.WriteFile("space.dcm", RawImage("AC1 ", "MRN1  ")), kSecret, 1 << 20);
  ASSERT_EQ(nul.kind, FileKind::kImage) << nul.reason;
  ASSERT_EQ(space.kind, FileKind::kImage) << space.reason;
  EXPECT_EQ(nul.accession, "AC1");
  EXPECT_EQ(space.accession, "AC1");
  EXPECT_EQ(nul.patient, space.patient);
  EXPECT_EQ(nul.patient, PseudonymizePatientId(kSecret, "MRN1"));
  EXPECT_EQ(PseudonymizePatientId(kSecret, std::string("MRN1\0", 5)), PseudonymizePatientId(kSecret, "MRN1"));
}

// No raw control byte of a file name or key reaches the terminal.
TEST(FormatDicomIndexReportTest, EscapesControlBytes) {
  DicomIndexReport report;
  report.key = "AccessionNumber";
  report.unreadable_files.push_back({"a\x1b[2Jb.dcm", "", "not DICOM"});
  report.studies_without_labels.push_back({"c.dcm", "K\x07\x1b]0;x", ""});
  const std::string text = FormatDicomIndexReport(report);
  EXPECT_EQ(text.find('\x1b'), std::string::npos) << text;
  EXPECT_EQ(text.find('\x07'), std::string::npos) << text;
  EXPECT_THAT(text, HasSubstr("a\\x1b[2Jb.dcm"));
}

// A Deflated Explicit VR Little Endian image is an image: its Pixel Data is found in the inflated dataset.
TEST(ReadDicomHeaderTest, ReadsDeflatedImages) {
  testing::TempDir dir;
  TestDicom t;
  t.modality = "CR";
  t.transfer_syntax = EXS_DeflatedLittleEndianExplicit;
  t.private_bytes = 100000;  // Compresses well: the inflated header is larger than the file.
  WriteTestDicom(dir.Join("deflated.dcm"), t);
  DicomFileRecord r = ReadDicomHeader(dir.Join("deflated.dcm"), kSecret, 1 << 20);
  EXPECT_EQ(r.kind, FileKind::kImage) << r.reason;
  EXPECT_EQ(r.accession, "ACC1");
  EXPECT_EQ(r.modality, "CR");
  EXPECT_EQ(r.view_position, "PA");
  // A header that inflates past max_header_bytes is refused saying so, as for uncompressed files.
  r = ReadDicomHeader(dir.Join("deflated.dcm"), kSecret, 64 * 1024);
  EXPECT_EQ(r.kind, FileKind::kNotDicom);
  EXPECT_THAT(r.reason, HasSubstr("inflated bytes"));
  t.pixels = false;
  WriteTestDicom(dir.Join("no-pixels.dcm"), t);
  r = ReadDicomHeader(dir.Join("no-pixels.dcm"), kSecret, 1 << 20);
  EXPECT_EQ(r.kind, FileKind::kNonImage) << r.reason;
  EXPECT_THAT(r.reason, HasSubstr("no Pixel Data"));
}

DicomIndexOptions Options(const testing::TempDir& dir) {
  DicomIndexOptions o;
  o.dicom_dir = dir.Join("export");
  o.labels_csv = dir.Join("labels.csv");
  o.secret = kSecret;
  o.state_path = dir.Join("manifest.csv.index-state");
  o.threads = 2;
  return o;
}

// The state file inside the export is never indexed, however its path is spelt; a DICOMDIR longer than
// max_header_bytes is a non-image object, not an unreadable file.
TEST(ScanDicomFolderTest, SkipsTheStateFileByIdentityAndClassifiesLargeDicomdirs) {
  testing::TempDir dir;
  WriteTestDicom(dir.Join("export/a.dcm"), TestDicom{});
  TestDicom dicomdir;
  dicomdir.sop_class = UID_MediaStorageDirectoryStorage;
  dicomdir.sop_uid = "1.2.3.9";
  dicomdir.pixels = false;
  dicomdir.private_bytes = 200000;
  WriteTestDicom(dir.Join("export/DICOMDIR"), dicomdir);
  DicomIndexOptions o = Options(dir);
  o.state_path = dir.Join("export/./sub/../index.state");
  ASSERT_TRUE(io::MakeDirectories(dir.Join("export/sub")).ok());
  o.max_header_bytes = 64 * 1024;
  for (int run = 0; run < 2; ++run) {
    absl::StatusOr<DicomScan> scan = ScanDicomFolder(o);
    ASSERT_TRUE(scan.ok()) << scan.status();
    ASSERT_EQ(scan->files.size(), 2u) << run << ": " << scan->files.back().path;
    EXPECT_EQ(scan->files[0].path, "DICOMDIR");
    EXPECT_EQ(scan->files[0].kind, FileKind::kNonImage) << scan->files[0].reason;
    EXPECT_THAT(scan->files[0].reason, HasSubstr("non-image object"));
    EXPECT_EQ(scan->files[1].path, "a.dcm");
  }
}

// The JSON report keeps every byte of a file name that is not UTF-8.
TEST(DicomIndexReportJsonTest, EscapesNamesThatAreNotUtf8) {
  DicomIndexReport report;
  report.unreadable_files.push_back({"caf\xe9.dcm", "", "not DICOM"});
  const std::string json = DicomIndexReportJson(report);
  EXPECT_THAT(json, HasSubstr("\"file_escaped\": \"caf\\\\xe9.dcm\""));
}

// A same-size rewrite whose modification time is put back (touch -r, rsync -a, cp -p) is read again: its
// status-change time differs.
TEST(ScanDicomFolderTest, RereadsASameSizeRewriteWithItsModificationTimeRestored) {
  testing::TempDir dir;
  DicomIndexOptions o = Options(dir);
  const std::string path = dir.Join("export/a.dcm");
  TestDicom t;
  t.accession = "ACC1";
  WriteTestDicom(path, t);
  struct stat before;
  ASSERT_EQ(::stat(path.c_str(), &before), 0);
  absl::StatusOr<DicomScan> scan = ScanDicomFolder(o);
  ASSERT_TRUE(scan.ok()) << scan.status();
  EXPECT_EQ(scan->files_read, 1);

  // File times come from a coarse clock (a few ms): wait well past a tick so that the rewrite's ctime differs.
  ::usleep(100 * 1000);
  t.accession = "ACC2";
  WriteTestDicom(path, t);
  const struct timespec times[2] = {before.st_atim, before.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
  struct stat after;
  ASSERT_EQ(::stat(path.c_str(), &after), 0);
  ASSERT_EQ(after.st_size, before.st_size);
  ASSERT_EQ(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);
  ASSERT_EQ(after.st_mtim.tv_sec, before.st_mtim.tv_sec);

  scan = ScanDicomFolder(o);
  ASSERT_TRUE(scan.ok()) << scan.status();
  EXPECT_EQ(scan->files_read, 1);
  EXPECT_EQ(scan->files_reused, 0);
  ASSERT_EQ(scan->files.size(), 1u);
  EXPECT_EQ(scan->files[0].accession, "ACC2");
}

// " lead.dcm" would be read back from the manifest as "lead.dcm": it is listed as an unusable name instead.
TEST(ScanDicomFolderTest, ListsNamesWithSurroundingSpacesAsUnusable) {
  testing::TempDir dir;
  WriteTestDicom(dir.Join("export/ lead.dcm"), TestDicom{});
  absl::StatusOr<DicomScan> scan = ScanDicomFolder(Options(dir));
  ASSERT_TRUE(scan.ok()) << scan.status();
  ASSERT_EQ(scan->files.size(), 1u);
  EXPECT_EQ(scan->files[0].kind, FileKind::kUnreadable);
  EXPECT_THAT(scan->files[0].reason, HasSubstr("name not usable in a manifest"));
}

TEST(ScanDicomFolderTest, ResumesAfterAnInterruptionAndRereadsOnlyChangedFiles) {
  testing::TempDir dir;
  for (int i = 0; i < 30; ++i) {
    TestDicom t;
    t.sop_uid = absl::StrCat("1.2.3.", 1000 + i);
    WriteTestDicom(dir.Join(absl::StrCat("export/s", i / 10, "/im", i % 10, ".dcm")), t);
  }
  DicomIndexOptions o = Options(dir);
  o.batch_size = 4;
  o.stop_after_files = 10;
  absl::StatusOr<DicomScan> scan = ScanDicomFolder(o);
  ASSERT_EQ(scan.status().code(), absl::StatusCode::kAborted) << scan.status();
  EXPECT_THAT(scan.status().message(), HasSubstr("rerun"));

  o.stop_after_files = 0;
  scan = ScanDicomFolder(o);
  ASSERT_TRUE(scan.ok()) << scan.status();
  // Batches of 4: the interrupted run recorded 12 files (3 batches) and the resumed one read only the rest.
  EXPECT_EQ(scan->files_reused, 12);
  EXPECT_EQ(scan->files_read, 18);
  ASSERT_EQ(scan->files.size(), 30u);
  EXPECT_EQ(scan->files[0].path, "s0/im0.dcm");
  for (const DicomFileRecord& f : scan->files) EXPECT_EQ(f.kind, FileKind::kImage) << f.path << ": " << f.reason;

  scan = ScanDicomFolder(o);
  ASSERT_TRUE(scan.ok()) << scan.status();
  EXPECT_EQ(scan->files_read, 0);
  EXPECT_EQ(scan->files_reused, 30);
  EXPECT_EQ(scan->files[5].sop_instance_uid, "1.2.3.1005");  // Attributes come back from the state file.

  // A changed file (another size) is read again; a removed one is forgotten.
  TestDicom changed;
  changed.sop_uid = "1.2.3.99999";
  changed.accession = "ACC-CHANGED-LONGER";
  WriteTestDicom(dir.Join("export/s1/im3.dcm"), changed);
  ASSERT_EQ(::unlink(dir.Join("export/s2/im9.dcm").c_str()), 0);
  scan = ScanDicomFolder(o);
  ASSERT_TRUE(scan.ok()) << scan.status();
  EXPECT_EQ(scan->files_read, 1);
  EXPECT_EQ(scan->files_reused, 28);
  EXPECT_EQ(scan->files[13].sop_instance_uid, "1.2.3.99999");

  // Another secret: every pseudonym would differ, so everything is read again.
  o.secret = "a-different-secret-0123";
  scan = ScanDicomFolder(o);
  ASSERT_TRUE(scan.ok()) << scan.status();
  EXPECT_TRUE(scan->state_reset);
  EXPECT_EQ(scan->files_read, 29);
}

TEST(ScanDicomFolderTest, ReportsLinksLoopsAndUnusableFilesPerFile) {
  testing::TempDir dir;
  WriteTestDicom(dir.Join("export/a/im.dcm"), TestDicom{});
  ASSERT_EQ(::symlink("..", dir.Join("export/a/up").c_str()), 0);    // A folder loop.
  ASSERT_EQ(::symlink("self", dir.Join("export/self").c_str()), 0);  // A link to itself.
  ASSERT_EQ(::symlink("nowhere.dcm", dir.Join("export/dangling").c_str()), 0);
  ASSERT_EQ(::symlink("a/im.dcm", dir.Join("export/link.dcm").c_str()), 0);  // A link to a file: indexed.
  ASSERT_EQ(::mkfifo(dir.Join("export/fifo").c_str(), 0600), 0);
  dir.WriteFile("export/readme.txt", "not an image");
  DicomIndexOptions o = Options(dir);
  absl::StatusOr<DicomScan> scan = ScanDicomFolder(o);
  ASSERT_TRUE(scan.ok()) << scan.status();
  std::map<std::string, DicomFileRecord> by_path;
  for (const DicomFileRecord& f : scan->files) by_path[f.path] = f;
  EXPECT_EQ(by_path["a/im.dcm"].kind, FileKind::kImage);
  EXPECT_EQ(by_path["link.dcm"].kind, FileKind::kImage);
  EXPECT_THAT(by_path["a/up"].reason, HasSubstr("already visited"));
  EXPECT_THAT(by_path["self"].reason, HasSubstr("symbolic link loop"));
  EXPECT_THAT(by_path["dangling"].reason, HasSubstr("dangling"));
  EXPECT_THAT(by_path["fifo"].reason, HasSubstr("not a regular file"));
  EXPECT_EQ(by_path["readme.txt"].kind, FileKind::kNotDicom);

  o.max_files = 1;
  scan = ScanDicomFolder(o);
  EXPECT_EQ(scan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(scan.status().message(), HasSubstr("--max-files"));

  o = Options(dir);
  o.dicom_dir = dir.Join("nope");
  EXPECT_EQ(ScanDicomFolder(o).status().code(), absl::StatusCode::kNotFound);
  o = Options(dir);
  o.secret = "short";
  EXPECT_EQ(ScanDicomFolder(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ParseStudyLabelsTest, NamesFileLineAndColumnOfEveryProblem) {
  auto parse = [](const std::string& text, StudyKey key = StudyKey::kAccessionNumber) {
    absl::StatusOr<io::CsvTable> table = io::ParseCsv(text, "labels.csv");
    EXPECT_TRUE(table.ok()) << table.status();
    return ParseStudyLabels(*table, key);
  };
  auto ok = parse(LabelsHeader("AccessionNumber") + LabelsRow("A1") + LabelsRow(" A2 ", "0.0"));
  ASSERT_TRUE(ok.ok()) << ok.status();
  ASSERT_EQ(ok->size(), 2u);
  EXPECT_EQ(ok->at("A1").labels[0], RawLabel::kPositive);
  EXPECT_EQ(ok->at("A1").labels[4], RawLabel::kUncertain);
  EXPECT_EQ(ok->at("A1").labels[1], RawLabel::kBlank);
  EXPECT_EQ(ok->at("A2").line, 3);

  auto dup = parse(LabelsHeader("AccessionNumber") + LabelsRow("A1") + LabelsRow("A2") + LabelsRow("A1"));
  EXPECT_EQ(dup.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(dup.status().message(), HasSubstr("labels.csv:4: [AccessionNumber] 'A1' is also on line 2"));

  auto bad = parse(LabelsHeader("AccessionNumber") + LabelsRow("A1", "yes"));
  EXPECT_THAT(bad.status().message(), HasSubstr("labels.csv:2: [No Finding]"));
  auto no_key = parse(LabelsHeader("AccessionNumber") + LabelsRow("A1"), StudyKey::kStudyInstanceUid);
  EXPECT_THAT(no_key.status().message(), HasSubstr("no 'StudyInstanceUID' column"));
  auto blank = parse(LabelsHeader("AccessionNumber") + LabelsRow(""));
  EXPECT_THAT(blank.status().message(), HasSubstr("labels.csv:2: [AccessionNumber] is blank"));
  auto missing = parse("AccessionNumber,No Finding\nA1,1.0\n");
  EXPECT_THAT(missing.status().message(), HasSubstr("missing label column(s): Enlarged Cardiomediastinum"));
}

// Study A: PA + LL + a second copy of the PA; B: lateral only; C: not in the labels; E: blank ViewPosition; an SR.
// The labels have A, B, E and D (not in the export).
void WriteExport(const testing::TempDir& dir) {
  auto image = [&](const std::string& path, const std::string& accession, const std::string& sop,
                   const std::string& view) {
    TestDicom t;
    t.accession = accession;
    t.study_uid = "1.2.9." + std::to_string(accession.back());
    t.sop_uid = sop;
    t.view = view;
    WriteTestDicom(dir.Join("export/" + path), t);
  };
  image("A/1.dcm", "A", "1.1", "PA");
  image("A/2.dcm", "A", "1.2", "LL");
  image("A/3-copy.dcm", "A", "1.1", "PA");
  image("B/1.dcm", "B", "2.1", "LATERAL");
  image("C/1.dcm", "C", "3.1", "AP");
  image("E/1.dcm", "E", "5.1", "");
  TestDicom sr;
  sr.sop_class = UID_BasicTextSRStorage;
  sr.accession = "A";
  sr.sop_uid = "1.9";
  sr.pixels = false;
  WriteTestDicom(dir.Join("export/A/sr.dcm"), sr);
  dir.WriteFile("labels.csv", LabelsHeader("AccessionNumber") + LabelsRow("A") + LabelsRow("B") + LabelsRow("D") +
                                  LabelsRow("E", "0.0"));
}

TEST(IndexDicomExportTest, JoinsLabelsAndReportsEveryCase) {
  testing::TempDir dir;
  WriteExport(dir);
  absl::StatusOr<DicomIndex> index = IndexDicomExport(Options(dir));
  ASSERT_TRUE(index.ok()) << index.status();
  const DicomIndexReport& r = index->report;
  ASSERT_EQ(index->rows.size(), 2u);
  EXPECT_EQ(index->rows[0].path, "A/1.dcm");
  EXPECT_EQ(index->rows[0].view, View::kFrontal);
  EXPECT_EQ(index->rows[0].projection, "PA");
  EXPECT_EQ(index->rows[0].labels[0], RawLabel::kPositive);
  EXPECT_EQ(index->rows[0].patient, PseudonymizePatientId(kSecret, "MRN-4711"));
  EXPECT_EQ(index->rows[0].study, "A");  // The key.
  EXPECT_EQ(index->rows[0].sex, Sex::kFemale);
  EXPECT_EQ(index->rows[0].age, 42);
  EXPECT_EQ(index->rows[1].path, "A/2.dcm");
  EXPECT_EQ(index->rows[1].view, View::kLateral);
  EXPECT_EQ(index->rows[1].projection, "LL");

  ASSERT_EQ(r.studies_without_labels.size(), 1u);
  EXPECT_EQ(r.studies_without_labels[0].key, "C");
  EXPECT_EQ(r.studies_without_labels[0].file, "C/1.dcm");
  ASSERT_EQ(r.label_rows_without_study.size(), 1u);
  EXPECT_EQ(r.label_rows_without_study[0].key, "D");
  EXPECT_EQ(r.label_rows_without_study[0].line, 4);
  ASSERT_EQ(r.studies_without_frontal.size(), 2u);  // B (lateral only) and E (its only image has no view).
  EXPECT_EQ(r.studies_without_frontal[0].key, "B");
  ASSERT_EQ(r.duplicate_instances.size(), 1u);
  EXPECT_EQ(r.duplicate_instances[0].file, "A/3-copy.dcm");
  EXPECT_THAT(r.duplicate_instances[0].detail, HasSubstr("A/1.dcm"));
  ASSERT_EQ(r.non_image_objects.size(), 1u);
  EXPECT_EQ(r.non_image_objects[0].file, "A/sr.dcm");
  ASSERT_EQ(r.images_left_out.size(), 1u);
  EXPECT_EQ(r.images_left_out[0].file, "E/1.dcm");
  EXPECT_THAT(r.images_left_out[0].detail, HasSubstr("--view-fallback"));

  const std::string text = FormatDicomIndexReport(r);
  EXPECT_THAT(text, HasSubstr("AccessionNumber C: e.g. C/1.dcm"));
  EXPECT_THAT(text, HasSubstr("line 4: AccessionNumber D"));
  EXPECT_THAT(text, HasSubstr("A/3-copy.dcm: same SOP Instance UID 1.1 as A/1.dcm (kept)"));
  const std::string json = DicomIndexReportJson(r);
  EXPECT_THAT(json, HasSubstr("\"duplicate_instances\""));

  // The rows make a manifest that parses without a problem, and without the raw patient id.
  const std::string csv = FormatManifestCsv(index->rows);
  EXPECT_THAT(csv, Not(HasSubstr("MRN-4711")));
  absl::StatusOr<io::CsvTable> table = io::ParseCsv(csv, "m.csv");
  ASSERT_TRUE(table.ok()) << table.status();
  const ManifestParse parse = ParseManifest(*table);
  EXPECT_TRUE(parse.problems.empty()) << parse.problems[0].message;

  // With --view-fallback frontal, E's image is frontal and E is indexed.
  DicomIndexOptions o = Options(dir);
  o.view_fallback = ViewFallback::kFrontal;
  index = IndexDicomExport(o);
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(index->rows.size(), 3u);
  EXPECT_EQ(index->report.files_read, 0);  // All from the state file.
  EXPECT_EQ(index->report.studies_without_frontal.size(), 1u);

  // Study D's only image has no PatientID and its SR is not an image: its label row says why it has no study.
  TestDicom d;
  d.accession = "D";
  d.sop_uid = "4.1";
  d.patient_id = "";
  WriteTestDicom(dir.Join("export/D/1.dcm"), d);
  d.sop_uid = "4.2";
  d.sop_class = UID_BasicTextSRStorage;
  d.pixels = false;
  WriteTestDicom(dir.Join("export/D/sr.dcm"), d);
  index = IndexDicomExport(Options(dir));
  ASSERT_TRUE(index.ok()) << index.status();
  ASSERT_EQ(index->report.label_rows_without_study.size(), 1u);
  EXPECT_EQ(index->report.label_rows_without_study[0].key, "D");
  EXPECT_THAT(FormatDicomIndexReport(index->report),
              HasSubstr("line 4: AccessionNumber D (2 files carry this key, all left out: 1 under images left out: "
                        "no PatientID, 1 under non-image objects)"));

  // By StudyInstanceUID: the labels file must have that column.
  o.key = StudyKey::kStudyInstanceUid;
  EXPECT_EQ(IndexDicomExport(o).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtune::data
