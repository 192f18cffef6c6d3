// Tests of common/data/index_command.h: `data index` flags, outputs, exit statuses, and the public-collection formats
// reaching data::IndexPublicCollection.
#include "common/data/index_command.h"

#include <sys/stat.h>

#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/cli/command.h"
#include "common/data/chexpert_labels.h"
#include "common/data/manifest.h"
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

absl::Status RunIndex(const std::vector<std::string>& args, std::string* printed = nullptr) {
  std::ostringstream out;
  const cli::Command command = MakeDataIndexCommand(out);
  auto flags = cli::ParseFlags(args, command.flags, command.max_positional);
  if (!flags.ok()) return flags.status();
  absl::Status status = command.run(*flags);
  if (printed != nullptr) *printed = out.str();
  return status;
}

void WriteImage(const std::string& path, const std::string& accession, const std::string& sop,
                const std::string& view) {
  DcmFileFormat file;
  DcmDataset* ds = file.getDataset();
  ds->putAndInsertString(DCM_SOPClassUID, UID_ComputedRadiographyImageStorage);
  ds->putAndInsertString(DCM_SOPInstanceUID, sop.c_str());
  ds->putAndInsertString(DCM_StudyInstanceUID, ("1.2.5." + sop).c_str());
  ds->putAndInsertString(DCM_AccessionNumber, accession.c_str());
  ds->putAndInsertString(DCM_PatientID, "12345");
  ds->putAndInsertString(DCM_Modality, "CR");
  ds->putAndInsertString(DCM_ViewPosition, view.c_str());
  ds->putAndInsertUint16(DCM_Rows, 2);
  ds->putAndInsertUint16(DCM_Columns, 2);
  Uint16 px[4] = {1, 2, 3, 4};
  ds->putAndInsertUint16Array(DCM_PixelData, px, 4);
  ASSERT_TRUE(io::MakeDirectories(path.substr(0, path.rfind('/'))).ok());
  ASSERT_TRUE(file.saveFile(path.c_str(), EXS_LittleEndianExplicit).good());
}

std::string Labels(const std::vector<std::string>& keys) {
  std::string text = "AccessionNumber";
  for (const char* label : kChexpertLabels) absl::StrAppend(&text, ",", label);
  text += "\n";
  for (const std::string& key : keys) {
    text += key;
    for (int l = 0; l < kNumChexpertLabels; ++l) text += l == 2 ? ",1.0" : ",0.0";
    text += "\n";
  }
  return text;
}

class IndexCommandTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteImage(dir_.Join("export/x/1.dcm"), "A1", "9.1", "PA");
    WriteImage(dir_.Join("export/y/1.dcm"), "A2", "9.2", "AP");
    dir_.WriteFile("secret", "a-site-secret-of-enough-bytes\n");
  }
  std::vector<std::string> Args(const std::string& labels) {
    return {"--dicom-dir",   dir_.Join("export"),
            "--labels",      dir_.WriteFile("labels.csv", labels),
            "--secret-file", dir_.Join("secret"),
            "--out",         dir_.Join("manifest.csv"),
            "--threads",     "2"};
  }
  testing::TempDir dir_;
};

TEST_F(IndexCommandTest, WritesTheManifestTheStateAndTheReport) {
  std::vector<std::string> args = Args(Labels({"A1", "A3"}));
  args.push_back("--report");
  args.push_back(dir_.Join("report.json"));
  std::string printed;
  ASSERT_TRUE(RunIndex(args, &printed).ok()) << printed;
  EXPECT_THAT(printed, HasSubstr("manifest: 1 images of 1 studies"));
  EXPECT_THAT(printed, HasSubstr("AccessionNumber A2: e.g. y/1.dcm"));
  EXPECT_THAT(printed, HasSubstr("line 3: AccessionNumber A3"));
  absl::StatusOr<Manifest> manifest = Manifest::ReadCsv(dir_.Join("manifest.csv"));
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  ASSERT_EQ(manifest->entries().size(), 1u);
  EXPECT_EQ(manifest->entries()[0].path, "x/1.dcm");
  EXPECT_EQ(manifest->entries()[0].labels[2], RawLabel::kPositive);
  EXPECT_TRUE(io::FileSize(dir_.Join("manifest.csv.index-state")).value() > 0);
  // The manifest, the state file and the report name studies: readable by their owner only.
  for (const char* name : {"manifest.csv", "manifest.csv.index-state", "report.json"}) {
    struct stat st;
    ASSERT_EQ(::stat(dir_.Join(name).c_str(), &st), 0) << name;
    EXPECT_EQ(st.st_mode & 0777, 0600u) << name;
  }
  absl::StatusOr<std::string> json = io::ReadFile(dir_.Join("report.json"));
  ASSERT_TRUE(json.ok());
  const nlohmann::json report = nlohmann::json::parse(*json);
  EXPECT_EQ(report["rows"], 1);
  EXPECT_EQ(report["studies_without_labels"][0]["file"], "y/1.dcm");
  EXPECT_EQ(report["label_rows_without_study"][0]["key"], "A3");

  // A second run reads no header; --state moves the state file.
  ASSERT_TRUE(RunIndex(Args(Labels({"A1", "A2"})), &printed).ok());
  EXPECT_THAT(printed, HasSubstr("(0 headers read, 2 unchanged from the state file)"));
  args = Args(Labels({"A1", "A2"}));
  args.push_back("--state");
  args.push_back(dir_.Join("elsewhere.state"));
  ASSERT_TRUE(RunIndex(args, &printed).ok());
  EXPECT_THAT(printed, HasSubstr("(2 headers read, 0 unchanged"));
}

TEST_F(IndexCommandTest, RefusesBadInputWithExitCodeTwo) {
  std::string printed;
  absl::Status status = RunIndex(Args(Labels({"Z9"})), &printed);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("matched"));
  EXPECT_FALSE(io::FileSize(dir_.Join("manifest.csv")).value() > 0);
  // An older manifest is left in place, and the message says so.
  dir_.WriteFile("manifest.csv", "an older manifest\n");
  status = RunIndex(Args(Labels({"Z9"})), &printed);
  EXPECT_THAT(status.message(), HasSubstr("the existing " + dir_.Join("manifest.csv") + " was left unchanged"));
  EXPECT_EQ(io::ReadFile(dir_.Join("manifest.csv")).value(), "an older manifest\n");

  status = RunIndex(Args(Labels({"A1", "A1"})));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("is also on line 2"));
  EXPECT_EQ(cli::ExitCodeFor(status), cli::kExitBadInput);

  std::vector<std::string> args = Args(Labels({"A1"}));
  args.push_back("--key");
  args.push_back("PatientID");
  EXPECT_THAT(RunIndex(args).message(), HasSubstr("--key"));
  args = Args(Labels({"A1"}));
  args.push_back("--view-fallback");
  args.push_back("sideways");
  EXPECT_THAT(RunIndex(args).message(), HasSubstr("--view-fallback"));
  args = Args(Labels({"A1"}));
  args.push_back("--split");
  args.push_back("train");
  EXPECT_THAT(RunIndex(args).message(), HasSubstr("does not apply"));
  dir_.WriteFile("secret", "short");
  EXPECT_THAT(RunIndex(Args(Labels({"A1"}))).message(), HasSubstr("--secret-file"));
  EXPECT_EQ(RunIndex({"--labels", "l.csv", "--out", "m.csv", "--secret-file", "s"}).code(),
            absl::StatusCode::kInvalidArgument);  // No --dicom-dir.
}

TEST_F(IndexCommandTest, StopAfterLeavesAResumableState) {
  for (int i = 0; i < 6; ++i)
    WriteImage(dir_.Join(absl::StrCat("export/z/", i, ".dcm")), "A1", "9.9." + std::to_string(i), "LL");
  std::vector<std::string> args = Args(Labels({"A1", "A2"}));
  args.push_back("--stop-after");
  args.push_back("3");
  absl::Status status = RunIndex(args);
  EXPECT_EQ(status.code(), absl::StatusCode::kAborted) << status;
  std::string printed;
  ASSERT_TRUE(RunIndex(Args(Labels({"A1", "A2"})), &printed).ok());
  // The stopped run recorded 3 headers; the rerun reads only the other 5.
  EXPECT_THAT(printed, HasSubstr("(5 headers read, 3 unchanged"));
  EXPECT_THAT(printed, HasSubstr("manifest: 8 images of 2 studies"));
}

// The public collections' flags reach data::IndexPublicCollection (its own tests check the content): a small
// NIH table in the real layout, filtered by an image list, prefixed, becomes a manifest; a missing labels file is
// NotFound naming it, and the MIMIC-only flags are refused for NIH.
TEST(IndexCommandPublicTest, PassesFlagsToIndexPublicCollection) {
  testing::TempDir dir;
  const std::string labels =
      dir.WriteFile("Data_Entry_2017.csv",
                    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
                    "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2500,2048,0.168,0.168\n"
                    "00000002_000.png,No Finding,0,2,61,F,AP,2500,2048,0.168,0.168\n");
  const std::string list = dir.WriteFile("test_list.txt", "00000002_000.png\n");
  std::string printed;
  absl::Status status = RunIndex({"--format", "nih-cxr14", "--labels", labels, "--split-file", list, "--path-prefix",
                                  "images/", "--out", dir.Join("m.csv")},
                                 &printed);
  ASSERT_TRUE(status.ok()) << status << printed;
  absl::StatusOr<Manifest> manifest = Manifest::ReadCsv(dir.Join("m.csv"));
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  ASSERT_EQ(manifest->entries().size(), 1u);
  EXPECT_EQ(manifest->entries()[0].path, "images/00000002_000.png");
  EXPECT_EQ(manifest->entries()[0].projection, "AP");
  EXPECT_EQ(manifest->entries()[0].labels[kNoFinding], RawLabel::kPositive);

  const std::string missing = dir.Join("no-such-labels.csv");
  for (const std::string format : {"mimic-cxr", "nih-cxr14"}) {
    std::vector<std::string> args = {"--format", format, "--labels", missing, "--out", dir.Join("m2.csv")};
    if (format == "mimic-cxr") {
      for (const char* flag : {"--metadata", "meta.csv", "--image-kind", "jpg"}) args.push_back(flag);
    }
    status = RunIndex(args);
    EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
    EXPECT_THAT(status.message(), HasSubstr("no-such-labels.csv"));
  }
  EXPECT_EQ(
      RunIndex({"--format", "nih-cxr14", "--labels", labels, "--metadata", "meta.csv", "--out", dir.Join("m3.csv")})
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(RunIndex({"--format", "mimic-cxr", "--out", dir.Join("m.csv")}).message(), HasSubstr("--labels"));
  EXPECT_THAT(RunIndex({"--format", "nih-cxr14", "--labels", missing, "--dicom-dir", "d", "--out", dir.Join("m.csv")})
                  .message(),
              HasSubstr("--dicom-dir does not apply"));
  EXPECT_THAT(RunIndex({"--format", "dicomdir", "--out", dir.Join("m.csv")}).message(), HasSubstr("--format"));
}

}  // namespace
}  // namespace fedtune::data
