#include "common/data/public_collections.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/data/chexpert_labels.h"
#include "common/data/manifest.h"
#include "common/data/manifest_writer.h"
#include "common/io/csv.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::data {
namespace {

using ::testing::AllOf;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// The tables' headers exactly as PhysioNet and the NIH distribute them.
constexpr char kChexpertHeader[] =
    "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,"
    "Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices\n";
constexpr char kMetadataHeader[] =
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime,"
    "ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning\n";
constexpr char kSplitHeader[] = "dicom_id,study_id,subject_id,split\n";
constexpr char kNihHeader[] =
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]";

// One metadata row in the real layout.
std::string MetadataRow(const std::string& dicom, const std::string& subject, const std::string& study,
                        const std::string& view) {
  return absl::StrCat(dicom, ",", subject, ",", study, ",CHEST (PA AND LAT),", view,
                      ",3056,2544,21800506,213014.531,CHEST (PA AND LAT),postero-anterior,Erect\n");
}

// The three MIMIC-CXR tables of a small collection:
//   subject 10000032, study 50414267: PA + LATERAL images, No Finding;
//   subject 10000032, study 53189527: AP + LL + a blank ViewPosition + SWIMMERS, Cardiomegaly 1, Edema -1;
//   subject 10000764, study 57375967: PA, Atelectasis 0 (in the test split);
//   subject 10000898, study 50771383: PA, no label row.
struct MimicFixture {
  fedtune::testing::TempDir dir;
  std::string labels, metadata, split;

  MimicFixture() {
    labels = dir.WriteFile("mimic-cxr-2.0.0-chexpert.csv", absl::StrCat(kChexpertHeader,
                                                                        "10000032,50414267,,,,,,,,,1.0,,,,,\n"
                                                                        "10000032,53189527,,1.0,,-1.0,,,,,,,,,,\n"
                                                                        "10000764,57375967,0.0,,,,,,,,,,,,,\n"
                                                                        "10000935,55000000,,,,,,,,,1.0,,,,,\n"));
    metadata =
        dir.WriteFile("mimic-cxr-2.0.0-metadata.csv",
                      absl::StrCat(kMetadataHeader, MetadataRow("02aa804e-bde0afdd", "10000032", "50414267", "PA"),
                                   MetadataRow("174413ec-4ec4c1f7", "10000032", "50414267", "LATERAL"),
                                   MetadataRow("2a2277a9-b0ded155", "10000032", "53189527", "AP"),
                                   MetadataRow("e084de3b-be89b11e", "10000032", "53189527", "LL"),
                                   MetadataRow("68b5c4b1-227d0485", "10000032", "53189527", ""),
                                   MetadataRow("aaaa0000-11112222", "10000032", "53189527", "SWIMMERS"),
                                   MetadataRow("fffabebf-74fd3a1f", "10000764", "57375967", "PA"),
                                   MetadataRow("0c4eb1e1-b801903c", "10000898", "50771383", "PA")));
    split = dir.WriteFile("mimic-cxr-2.0.0-split.csv", absl::StrCat(kSplitHeader,
                                                                    "02aa804e-bde0afdd,50414267,10000032,train\n"
                                                                    "174413ec-4ec4c1f7,50414267,10000032,train\n"
                                                                    "2a2277a9-b0ded155,53189527,10000032,train\n"
                                                                    "e084de3b-be89b11e,53189527,10000032,validate\n"
                                                                    "fffabebf-74fd3a1f,57375967,10000764,test\n"));
  }

  PublicCollectionOptions Options() const {
    PublicCollectionOptions options;
    options.collection = PublicCollection::kMimicCxr;
    options.labels_csv = labels;
    options.metadata_csv = metadata;
    return options;
  }
};

// The rows through the writer and the strict and lenient parsers: what `data index` writes is a valid manifest.
ManifestParse RoundTrip(const std::vector<ManifestRow>& rows) {
  absl::StatusOr<io::CsvTable> table = io::ParseCsv(FormatManifestCsv(rows), "manifest.csv");
  EXPECT_TRUE(table.ok()) << table.status();
  if (!table.ok()) return {};
  ManifestParse parse = ParseManifest(*table);
  EXPECT_THAT(parse.problems, IsEmpty());
  EXPECT_THAT(parse.warnings, IsEmpty());
  EXPECT_EQ(parse.manifest.entries().size(), rows.size());
  EXPECT_TRUE(Manifest::FromTable(*table).ok());
  return parse;
}

std::vector<std::string> Paths(const std::vector<ManifestRow>& rows) {
  std::vector<std::string> paths;
  for (const ManifestRow& row : rows) paths.push_back(row.path);
  return paths;
}

TEST(MimicCxrTest, BuildsOneRowPerFrontalOrLateralImageOfALabelledStudy) {
  MimicFixture f;
  absl::StatusOr<PublicCollectionIndex> index = IndexPublicCollection(f.Options());
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_THAT(Paths(index->rows), ElementsAre("files/p10/p10000032/s50414267/02aa804e-bde0afdd.dcm",
                                              "files/p10/p10000032/s50414267/174413ec-4ec4c1f7.dcm",
                                              "files/p10/p10000032/s53189527/2a2277a9-b0ded155.dcm",
                                              "files/p10/p10000032/s53189527/e084de3b-be89b11e.dcm",
                                              "files/p10/p10000764/s57375967/fffabebf-74fd3a1f.dcm"));
  const std::vector<ManifestRow>& rows = index->rows;
  EXPECT_EQ(rows[0].view, View::kFrontal);
  EXPECT_EQ(rows[0].projection, "PA");
  EXPECT_EQ(rows[1].view, View::kLateral);
  EXPECT_EQ(rows[1].projection, "");
  EXPECT_EQ(rows[2].projection, "AP");
  EXPECT_EQ(rows[3].view, View::kLateral);
  EXPECT_EQ(rows[3].projection, "LL");
  EXPECT_EQ(rows[0].patient, "10000032");
  EXPECT_EQ(rows[0].study, "50414267");
  EXPECT_EQ(rows[0].sex, Sex::kUnknown);
  EXPECT_FALSE(rows[0].age.has_value());
  RawLabels no_finding{};
  no_finding[kNoFinding] = RawLabel::kPositive;
  EXPECT_EQ(rows[0].labels, no_finding);
  EXPECT_EQ(rows[1].labels, no_finding);  // A study's labels go to each of its images.
  RawLabels study2{};
  study2[kCardiomegaly] = RawLabel::kPositive;
  study2[kEdema] = RawLabel::kUncertain;
  EXPECT_EQ(rows[2].labels, study2);
  RawLabels study3{};
  study3[kAtelectasis] = RawLabel::kNegative;
  EXPECT_EQ(rows[4].labels, study3);

  EXPECT_THAT(index->notes, Contains(HasSubstr("skipped 2 images whose ViewPosition is not PA, AP, LATERAL or LL: "
                                               "1 blank, 1 'SWIMMERS'")));
  EXPECT_THAT(index->notes, Contains(HasSubstr("skipped 1 images of 1 studies with no row in the labels table")));
  EXPECT_THAT(index->notes, Contains(HasSubstr("1 studies of the labels table have no image kept")));
  EXPECT_THAT(index->notes, Contains("kept 5 images (3 frontal, 2 lateral) of 3 studies of 2 patients"));

  ManifestParse parse = RoundTrip(rows);
  ASSERT_EQ(parse.manifest.studies().size(), 3u);
  EXPECT_EQ(parse.manifest.studies()[0].frontal.size(), 1u);
  EXPECT_EQ(parse.manifest.studies()[0].lateral.size(), 1u);
  EXPECT_EQ(parse.manifest.patients().size(), 2u);
  EXPECT_EQ(parse.manifest.entries()[3].projection, "LL");
  EXPECT_EQ(parse.manifest.entries()[2].labels, study2);
}

TEST(MimicCxrTest, KeepsOneSplitAndWritesJpgPathsUnderThePrefix) {
  MimicFixture f;
  PublicCollectionOptions options = f.Options();
  options.split_file = f.split;
  options.split = "train";
  options.image_kind = "jpg";
  options.path_prefix = "mimic-cxr-jpg/2.0.0";  // The '/' is added.
  absl::StatusOr<PublicCollectionIndex> index = IndexPublicCollection(options);
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_THAT(Paths(index->rows),
              ElementsAre("mimic-cxr-jpg/2.0.0/files/p10/p10000032/s50414267/02aa804e-bde0afdd.jpg",
                          "mimic-cxr-jpg/2.0.0/files/p10/p10000032/s50414267/174413ec-4ec4c1f7.jpg",
                          "mimic-cxr-jpg/2.0.0/files/p10/p10000032/s53189527/2a2277a9-b0ded155.jpg"));
  EXPECT_THAT(index->notes, Contains(HasSubstr("skipped 2 images of splits other than 'train'")));
  EXPECT_THAT(index->notes, Contains(HasSubstr("skipped 3 images with no row in the split table")));
  RoundTrip(index->rows);

  options.split = "test";
  index = IndexPublicCollection(options);
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_THAT(Paths(index->rows),
              ElementsAre("mimic-cxr-jpg/2.0.0/files/p10/p10000764/s57375967/fffabebf-74fd3a1f.jpg"));
}

TEST(MimicCxrTest, ADuplicateStudyInTheLabelsNamesBothLines) {
  MimicFixture f;
  PublicCollectionOptions options = f.Options();
  options.labels_csv = f.dir.WriteFile("dup.csv", absl::StrCat(kChexpertHeader,
                                                               "10000032,50414267,,,,,,,,,1.0,,,,,\n"
                                                               "10000764,57375967,0.0,,,,,,,,,,,,,\n"
                                                               "10000032,50414267,1.0,,,,,,,,,,,,,\n"));
  absl::StatusOr<PublicCollectionIndex> index = IndexPublicCollection(options);
  EXPECT_EQ(index.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(index.status().message(),
              AllOf(HasSubstr("dup.csv:4: [study_id]"), HasSubstr("50414267"), HasSubstr("line 2")));
}

TEST(MimicCxrTest, MalformedTablesAreErrorsNamingFileLineAndColumn) {
  MimicFixture f;
  PublicCollectionOptions options = f.Options();
  struct Case {
    const char* name;
    std::string text;
    std::string expected;
  };
  const std::vector<Case> label_cases = {
      {"bad-label.csv", absl::StrCat(kChexpertHeader, "10000032,50414267,,2.0,,,,,,,,,,,,\n"),
       "bad-label.csv:2: [Cardiomegaly]"},
      {"bad-id.csv", absl::StrCat(kChexpertHeader, "10000032,s50414267,,,,,,,,,,,,,,\n"), "bad-id.csv:2: [study_id]"},
      {"no-column.csv", "subject_id,study_id,Atelectasis\n1,2,\n", "no-column.csv:1: the header lacks column(s) "},
      {"ragged.csv", absl::StrCat(kChexpertHeader, "10000032,50414267\n"), "ragged.csv:2"},
      {"gzip.csv", std::string("\x1f\x8b\x08\x00", 4), "gunzip"},
  };
  for (const Case& c : label_cases) {
    options.labels_csv = f.dir.WriteFile(c.name, c.text);
    absl::StatusOr<PublicCollectionIndex> index = IndexPublicCollection(options);
    EXPECT_EQ(index.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_THAT(index.status().message(), HasSubstr(c.expected)) << c.name;
  }
  options = f.Options();
  options.metadata_csv =
      f.dir.WriteFile("meta.csv", absl::StrCat(kMetadataHeader, MetadataRow("02aa804e", "10000032", "50414267", "PA"),
                                               MetadataRow("../../etc", "10000032", "50414267", "PA")));
  absl::StatusOr<PublicCollectionIndex> index = IndexPublicCollection(options);
  EXPECT_EQ(index.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(index.status().message(), HasSubstr("meta.csv:3: [dicom_id]"));

  options.metadata_csv =
      f.dir.WriteFile("dup-image.csv", absl::StrCat(kMetadataHeader, MetadataRow("a1", "10000032", "50414267", "PA"),
                                                    MetadataRow("a1", "10000032", "50414267", "PA")));
  index = IndexPublicCollection(options);
  EXPECT_THAT(index.status().message(), AllOf(HasSubstr("dup-image.csv:3: [dicom_id]"), HasSubstr("line 2")));

  // The labels say study 50414267 is subject 10000032's.
  options.metadata_csv = f.dir.WriteFile(
      "other-subject.csv", absl::StrCat(kMetadataHeader, MetadataRow("a1", "19999999", "50414267", "PA")));
  index = IndexPublicCollection(options);
  EXPECT_EQ(index.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(index.status().message(),
              AllOf(HasSubstr("other-subject.csv:2: [subject_id]"), HasSubstr("mimic-cxr-2.0.0-chexpert.csv:2")));

  options = f.Options();
  options.split_file = f.dir.WriteFile("bad-split.csv", absl::StrCat(kSplitHeader,
                                                                     "02aa804e-bde0afdd,50414267,10000032,"
                                                                     "training\n"));
  options.split = "train";
  index = IndexPublicCollection(options);
  EXPECT_THAT(index.status().message(), HasSubstr("bad-split.csv:2: [split]"));
}

TEST(MimicCxrTest, BadOptionsAndMissingFiles) {
  MimicFixture f;
  PublicCollectionOptions options = f.Options();
  options.image_kind = "png";
  EXPECT_THAT(IndexPublicCollection(options).status().message(), HasSubstr("'png'"));
  options = f.Options();
  options.split = "train";  // No split file.
  EXPECT_EQ(IndexPublicCollection(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.split_file = f.split;
  options.split = "val";
  EXPECT_THAT(IndexPublicCollection(options).status().message(), HasSubstr("'val'"));
  options = f.Options();
  options.metadata_csv.clear();
  EXPECT_THAT(IndexPublicCollection(options).status().message(), HasSubstr("metadata"));
  options = f.Options();
  options.path_prefix = "../outside";
  EXPECT_THAT(IndexPublicCollection(options).status().message(), HasSubstr("path prefix"));
  options = f.Options();
  options.metadata_csv = f.dir.Join("missing.csv");
  absl::Status status = IndexPublicCollection(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("missing.csv"));
  options.metadata_csv = f.dir.path();  // A directory.
  EXPECT_EQ(IndexPublicCollection(options).status().code(), absl::StatusCode::kInvalidArgument);
}

// Data_Entry_2017.csv in the layout with the trailing empty column, or without it.
std::string NihTable(const std::vector<std::string>& rows, bool trailing_column) {
  std::string text = absl::StrCat(kNihHeader, trailing_column ? ",\n" : "\n");
  for (const std::string& row : rows)
    absl::StrAppend(&text, row, ",2500,2048,0.168,0.168", trailing_column ? ",\n" : "\n");
  return text;
}

PublicCollectionOptions NihOptions(const std::string& labels) {
  PublicCollectionOptions options;
  options.collection = PublicCollection::kNihCxr14;
  options.labels_csv = labels;
  options.path_prefix = "images/";
  return options;
}

TEST(NihCxr14Test, MapsFindingsToCheXpertLabels) {
  for (bool trailing_column : {true, false}) {
    SCOPED_TRACE(trailing_column);
    fedtune::testing::TempDir dir;
    const std::string labels = dir.WriteFile(
        "Data_Entry_2017.csv",
        NihTable({"00000001_000.png,Cardiomegaly,0,1,58,M,PA", "00000001_001.png,Cardiomegaly|Emphysema,1,1,058Y,M,PA",
                  "00000002_000.png,No Finding,0,2,011M,F,AP",
                  "00000003_000.png,Effusion|Mass|Nodule|Pleural_Thickening,0,3,"
                  "414,F,PA",
                  "00000004_000.png,Infiltration,0,4,,,PA", "00000005_000.png,No Finding,0,5,40,M,LATERAL"},
                 trailing_column));
    absl::StatusOr<PublicCollectionIndex> index = IndexPublicCollection(NihOptions(labels));
    ASSERT_TRUE(index.ok()) << index.status();
    const std::vector<ManifestRow>& rows = index->rows;
    ASSERT_THAT(Paths(rows),
                ElementsAre("images/00000001_000.png", "images/00000001_001.png", "images/00000002_000.png",
                            "images/00000003_000.png", "images/00000004_000.png"));
    // The labels NIH can say something about: 0.0 unless listed; Pleural Other (broader than Pleural_Thickening)
    // 1.0 when listed, else blank.
    RawLabels all_negative{};
    for (int l : {kNoFinding, kAtelectasis, kCardiomegaly, kPleuralEffusion, kPneumonia, kPneumothorax, kConsolidation,
                  kEdema, kLungLesion}) {
      all_negative[l] = RawLabel::kNegative;
    }
    RawLabels cardiomegaly = all_negative;
    cardiomegaly[kCardiomegaly] = RawLabel::kPositive;
    EXPECT_EQ(rows[0].labels, cardiomegaly);
    EXPECT_EQ(rows[1].labels, cardiomegaly);  // Emphysema dropped.
    RawLabels no_finding = all_negative;
    no_finding[kNoFinding] = RawLabel::kPositive;
    EXPECT_EQ(rows[2].labels, no_finding);
    RawLabels pleural = all_negative;
    pleural[kPleuralEffusion] = RawLabel::kPositive;
    pleural[kLungLesion] = RawLabel::kPositive;
    pleural[kPleuralOther] = RawLabel::kPositive;
    EXPECT_EQ(rows[3].labels, pleural);
    EXPECT_EQ(rows[4].labels, all_negative);  // Infiltration: no counterpart; Lung Opacity stays blank.
    EXPECT_EQ(rows[4].labels[kLungOpacity], RawLabel::kBlank);
    EXPECT_EQ(rows[4].labels[kPleuralOther], RawLabel::kBlank);

    EXPECT_EQ(rows[0].age, 58.0);
    EXPECT_EQ(rows[1].age, 58.0);
    ASSERT_TRUE(rows[2].age.has_value());
    EXPECT_NEAR(*rows[2].age, 11.0 / 12.0, 1e-9);
    EXPECT_FALSE(rows[3].age.has_value());  // 414 years: a known error of the real table.
    EXPECT_FALSE(rows[4].age.has_value());
    EXPECT_EQ(rows[0].sex, Sex::kMale);
    EXPECT_EQ(rows[2].sex, Sex::kFemale);
    EXPECT_EQ(rows[4].sex, Sex::kUnknown);
    EXPECT_EQ(rows[2].projection, "AP");
    EXPECT_EQ(rows[1].patient, "1");
    EXPECT_EQ(rows[1].study, "1");

    EXPECT_THAT(index->notes, Contains(HasSubstr("skipped 1 images whose View Position is not PA or AP: 1 'LATERAL'")));
    EXPECT_THAT(index->notes, Contains(HasSubstr("1 images with an age above 130 years")));
    EXPECT_THAT(index->notes, Contains(HasSubstr("Emphysema on 1, Infiltration on 1 images")));
    ManifestParse parse = RoundTrip(rows);
    EXPECT_EQ(parse.manifest.studies().size(), 5u);  // (patient 1, follow-up 0) and (1, 1) are two studies.
    EXPECT_EQ(parse.manifest.patients().size(), 4u);
  }
}

TEST(NihCxr14Test, TheImageListKeepsTheListedImages) {
  fedtune::testing::TempDir dir;
  const std::string labels = dir.WriteFile("Data_Entry_2017.csv", NihTable({"00000001_000.png,Cardiomegaly,0,1,58,M,PA",
                                                                            "00000002_000.png,No Finding,0,2,81,M,PA",
                                                                            "00000003_000.png,Hernia,0,3,81,F,PA"},
                                                                           true));
  PublicCollectionOptions options = NihOptions(labels);
  options.split_file =
      dir.WriteFile("test_list.txt", "00000003_000.png\r\n00000001_000.png\r\n\r\n00009999_000.png\r\n");
  absl::StatusOr<PublicCollectionIndex> index = IndexPublicCollection(options);
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_THAT(Paths(index->rows), ElementsAre("images/00000001_000.png", "images/00000003_000.png"));
  EXPECT_THAT(index->notes, Contains(HasSubstr("skipped 1 images not in the image list")));
  EXPECT_THAT(index->notes, Contains(HasSubstr("1 names of the image list have no row in")));
  EXPECT_THAT(index->notes, Contains(HasSubstr("'00009999_000.png'")));
  RoundTrip(index->rows);

  options.split = "test";
  EXPECT_EQ(IndexPublicCollection(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(NihCxr14Test, MalformedRowsAreErrorsNamingLineAndColumn) {
  fedtune::testing::TempDir dir;
  struct Case {
    std::string row;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"00000001_000.png,Cardiomegaly|Tumour,0,1,58,M,PA", "[Finding Labels] 'Tumour'"},
      {"00000001_000.png,No Finding|Mass,0,1,58,M,PA", "[Finding Labels]"},
      {"00000001_000.png,,0,1,58,M,PA", "[Finding Labels]"},
      {"00000001_000.png,Mass,0,1,fifty,M,PA", "[Patient Age] 'fifty'"},
      {"00000001_000.png,Mass,0,1,58Q,M,PA", "[Patient Age]"},
      {"00000001_000.png,Mass,x,1,58,M,PA", "[Follow-up #]"},
      {"00000001_000.png,Mass,0,-1,58,M,PA", "[Patient ID]"},
      {"sub/00000001_000.png,Mass,0,1,58,M,PA", "[Image Index]"},
      {"..,Mass,0,1,58,M,PA", "[Image Index]"},
  };
  for (const Case& c : cases) {
    const std::string labels =
        dir.WriteFile("Data_Entry_2017.csv", NihTable({"00000000_000.png,No Finding,0,9,58,M,PA", c.row}, true));
    absl::StatusOr<PublicCollectionIndex> index = IndexPublicCollection(NihOptions(labels));
    EXPECT_EQ(index.status().code(), absl::StatusCode::kInvalidArgument) << c.row;
    EXPECT_THAT(index.status().message(), AllOf(HasSubstr("Data_Entry_2017.csv:3: "), HasSubstr(c.expected))) << c.row;
  }
  const std::string labels =
      dir.WriteFile("dup.csv", NihTable({"00000001_000.png,Mass,0,1,58,M,PA", "00000002_000.png,Mass,0,2,58,M,PA",
                                         "00000001_000.png,Mass,0,1,58,M,PA"},
                                        false));
  absl::StatusOr<PublicCollectionIndex> index = IndexPublicCollection(NihOptions(labels));
  EXPECT_THAT(index.status().message(), AllOf(HasSubstr("dup.csv:4: [Image Index]"), HasSubstr("line 2")));

  PublicCollectionOptions options = NihOptions(labels);
  options.metadata_csv = labels;
  EXPECT_EQ(IndexPublicCollection(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(NihCxr14Test, TheMappingCoversEveryFindingOnce) {
  std::vector<std::string> names;
  for (const NihFindingMapping& m : kNihToChexpert) {
    names.push_back(m.nih);
    EXPECT_GE(m.chexpert, -1);
    EXPECT_LT(m.chexpert, kNumChexpertLabels);
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(std::unique(names.begin(), names.end()), names.end());
  EXPECT_EQ(names.size(), 15u);
}

// Data_Entry_2017_v2020.csv, the table the NIH serves now, calls the sex column "Patient Sex".
TEST(NihCxr14Test, ReadsTheV2020TableWithItsPatientSexColumn) {
  fedtune::testing::TempDir dir;
  std::string text = NihTable({"00000001_000.png,Cardiomegaly,0,1,57,M,PA", "00000002_000.png,No Finding,0,2,61,F,AP"},
                              /*trailing_column=*/true);
  const size_t at = text.find("Patient Gender");
  ASSERT_NE(at, std::string::npos);
  text.replace(at, std::string("Patient Gender").size(), "Patient Sex");
  const std::string labels = dir.WriteFile("Data_Entry_2017_v2020.csv", text);
  absl::StatusOr<PublicCollectionIndex> index = IndexPublicCollection(NihOptions(labels));
  ASSERT_TRUE(index.ok()) << index.status();
  ASSERT_EQ(index->rows.size(), 2u);
  EXPECT_EQ(index->rows[0].sex, Sex::kMale);
  EXPECT_EQ(index->rows[1].sex, Sex::kFemale);
  EXPECT_EQ(index->rows[0].age, 57.0);
}

}  // namespace
}  // namespace fedtune::data
