#include "common/data/manifest.h"

#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/io/csv.h"
#include "common/logging.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::data {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

std::string Header() {
  std::vector<std::string> names = {"Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"};
  for (const char* label : kChexpertLabels) names.push_back(label);
  return absl::StrJoin(names, ",");
}

// A row with the given metadata and 14 label cells.
std::string Row(const std::string& path, const std::string& meta, const std::vector<std::string>& labels) {
  std::vector<std::string> cells = labels;
  cells.resize(kNumChexpertLabels);
  return absl::StrCat(path, ",", meta, ",", absl::StrJoin(cells, ","));
}

io::CsvTable Parse(const std::string& text) {
  absl::StatusOr<io::CsvTable> table = io::ParseCsv(text, "m.csv");
  CHECK(table.ok()) << table.status();
  return *std::move(table);
}

TEST(ParseRawLabelTest, AcceptsCheXpertValues) {
  EXPECT_EQ(*ParseRawLabel("1.0"), RawLabel::kPositive);
  EXPECT_EQ(*ParseRawLabel("1"), RawLabel::kPositive);
  EXPECT_EQ(*ParseRawLabel(" 0.0 "), RawLabel::kNegative);
  EXPECT_EQ(*ParseRawLabel("0"), RawLabel::kNegative);
  EXPECT_EQ(*ParseRawLabel("-1.0"), RawLabel::kUncertain);
  EXPECT_EQ(*ParseRawLabel("-1.00"), RawLabel::kUncertain);
  EXPECT_EQ(*ParseRawLabel(""), RawLabel::kBlank);
  EXPECT_EQ(*ParseRawLabel("  "), RawLabel::kBlank);
}

TEST(ParseRawLabelTest, RejectsOtherValues) {
  for (const char* bad : {"0.5", "2", "yes", "nan", "1.0.0", "-2"}) {
    absl::StatusOr<RawLabel> label = ParseRawLabel(bad);
    ASSERT_FALSE(label.ok()) << bad;
    EXPECT_EQ(label.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(label.status().message(), HasSubstr(bad));
  }
}

TEST(IdsFromChexpertPathTest, FollowsTheLayout) {
  std::optional<PathIds> ids = IdsFromChexpertPath("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg");
  ASSERT_TRUE(ids.has_value());
  EXPECT_EQ(ids->patient, "patient00001");
  EXPECT_EQ(ids->study, "study1");
  EXPECT_FALSE(IdsFromChexpertPath("images/0001.png").has_value());
  EXPECT_FALSE(IdsFromChexpertPath("patient00001/view1_frontal.jpg").has_value());
  EXPECT_FALSE(IdsFromChexpertPath("patientX/study1/a.jpg").has_value());
  EXPECT_FALSE(IdsFromChexpertPath("patient00001").has_value());
}

TEST(ManifestTest, ParsesRowsAndGroupsStudiesAndPatients) {
  const std::string text = absl::StrCat(
      Header(), "\n",
      Row("train/patient00001/study1/view1_frontal.jpg", "Female,68,Frontal,AP", {"", "", "1.0", "-1.0", "", "0.0"}),
      "\n",  //
      Row("train/patient00001/study1/view2_lateral.jpg", "Female,68,Lateral,", {"", "", "1.0"}), "\n",
      Row("train/patient00002/study1/view1_frontal.jpg", "Male,45,Frontal,PA", {"1.0"}), "\n",
      Row("train/patient00001/study2/view1_frontal.jpg", "Unknown,,frontal,ap", {}), "\n");
  absl::StatusOr<Manifest> manifest = Manifest::FromTable(Parse(text));
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  ASSERT_EQ(manifest->entries().size(), 4u);

  const ManifestEntry& first = manifest->entries()[0];
  EXPECT_EQ(first.line, 2);
  EXPECT_EQ(first.path, "train/patient00001/study1/view1_frontal.jpg");
  EXPECT_EQ(first.patient_id, "patient00001");
  EXPECT_EQ(first.study_id, "patient00001/study1");
  EXPECT_EQ(first.sex, Sex::kFemale);
  EXPECT_EQ(first.age, 68.0);
  EXPECT_EQ(first.view, View::kFrontal);
  EXPECT_EQ(first.projection, "AP");
  EXPECT_EQ(first.labels[kNoFinding], RawLabel::kBlank);
  EXPECT_EQ(first.labels[kCardiomegaly], RawLabel::kPositive);
  EXPECT_EQ(first.labels[kLungOpacity], RawLabel::kUncertain);
  EXPECT_EQ(first.labels[kEdema], RawLabel::kNegative);
  EXPECT_EQ(manifest->entries()[2].labels[kNoFinding], RawLabel::kPositive);
  EXPECT_EQ(manifest->entries()[3].sex, Sex::kUnknown);
  EXPECT_FALSE(manifest->entries()[3].age.has_value());
  EXPECT_EQ(manifest->entries()[3].projection, "AP");

  // Study 1 of patient 1 groups its frontal and lateral images; study ids do
  // not collide across patients.
  ASSERT_EQ(manifest->studies().size(), 3u);
  EXPECT_EQ(manifest->studies()[0].study_id, "patient00001/study1");
  EXPECT_THAT(manifest->studies()[0].frontal, ElementsAre(0));
  EXPECT_THAT(manifest->studies()[0].lateral, ElementsAre(1));
  EXPECT_EQ(manifest->studies()[1].study_id, "patient00002/study1");
  EXPECT_EQ(manifest->studies()[2].study_id, "patient00001/study2");
  ASSERT_EQ(manifest->patients().size(), 2u);
  EXPECT_THAT(manifest->patients()[0].studies, ElementsAre(0, 2));
  EXPECT_THAT(manifest->patients()[1].studies, ElementsAre(1));
  EXPECT_THAT(manifest->study_of_entry(), ElementsAre(0, 0, 1, 2));
  EXPECT_THAT(manifest->patient_of_study(), ElementsAre(0, 1, 0));
}

TEST(ManifestTest, ExplicitPatientAndStudyColumnsWin) {
  std::string header = absl::StrCat(Header(), ",Patient,Study");
  std::string text = absl::StrCat(header, "\n", Row("site/img1.png", "Male,50,Frontal,PA", {}), ",P7,S1\n",
                                  Row("site/img2.png", "Male,50,Lateral,LL", {}), ",P7,S1\n",
                                  // Blank explicit ids fall back to the path layout.
                                  Row("x/patient00003/study4/view1_frontal.jpg", "Male,50,Frontal,PA", {}), ",,\n");
  absl::StatusOr<Manifest> manifest = Manifest::FromTable(Parse(text));
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  ASSERT_EQ(manifest->studies().size(), 2u);
  EXPECT_EQ(manifest->studies()[0].study_id, "P7/S1");
  EXPECT_THAT(manifest->studies()[0].frontal, ElementsAre(0));
  EXPECT_THAT(manifest->studies()[0].lateral, ElementsAre(1));
  EXPECT_EQ(manifest->entries()[2].patient_id, "patient00003");
  EXPECT_EQ(manifest->entries()[2].study_id, "patient00003/study4");
}

TEST(ParseManifestTest, ReportsEveryProblemWithLineAndColumn) {
  std::string text = absl::StrCat(Header(), ",Extra\n", Row("p/patient1/study1/a.jpg", "Male,40,Frontal,AP", {"1.0"}),
                                  ",x\n",  // line 2: clean
                                  Row("p/patient1/study1/b.jpg", "Mail,-3,Oblique,XY", {"0.5", "", "yes"}),
                                  ",x\n",  // line 3: 6 problems
                                  Row("/abs/patient2/study1/a.jpg", "Male,40,Frontal,AP", {}),
                                  ",x\n",  // line 4: absolute
                                  Row("../patient2/study1/a.jpg", "Male,40,Frontal,AP", {}),
                                  ",x\n",                                                 // line 5: leaves root
                                  Row("images/a.jpg", "Male,40,Frontal,AP", {}), ",x\n",  // line 6: no ids
                                  Row("p/./patient1/study1/a.jpg", "Male,40,Frontal,AP", {}),
                                  ",x\n",                                      // line 7: duplicate of 2
                                  Row("", "Male,40,Frontal,AP", {}), ",x\n");  // line 8: empty path
  ManifestParse parse = ParseManifest(Parse(text));

  std::vector<std::string> got;
  for (const ManifestProblem& p : parse.problems) {
    got.push_back(FormatProblem("m.csv", p));
  }
  EXPECT_THAT(got, ElementsAre(HasSubstr("m.csv:3: [Sex] 'Mail'"), HasSubstr("m.csv:3: [Age] '-3'"),
                               HasSubstr("m.csv:3: [Frontal/Lateral] 'Oblique'"), HasSubstr("m.csv:3: [AP/PA] 'XY'"),
                               HasSubstr("m.csv:3: [No Finding] '0.5'"), HasSubstr("m.csv:3: [Cardiomegaly] 'yes'"),
                               HasSubstr("m.csv:4: [Path] absolute path"), HasSubstr("m.csv:5: [Path] path leaves"),
                               HasSubstr("m.csv:6: [Patient] no id"),
                               HasSubstr("m.csv:7: [Path] duplicate path "
                                         "'p/./patient1/study1/a.jpg' (first on line 2)"),
                               HasSubstr("m.csv:8: [Path] empty path")));
  ASSERT_EQ(parse.warnings.size(), 1u);
  EXPECT_EQ(FormatProblem("m.csv", parse.warnings[0]), "m.csv:1: [Extra] unknown column, ignored");
  ASSERT_EQ(parse.manifest.entries().size(), 1u);
  EXPECT_EQ(parse.manifest.entries()[0].line, 2);
  EXPECT_EQ(parse.rejected.size(), 6u);
  // A rejected row keeps what could be parsed.
  EXPECT_EQ(parse.rejected[0].path, "p/patient1/study1/b.jpg");
  EXPECT_EQ(parse.rejected[0].line, 3);
}

TEST(ParseManifestTest, ReportsMissingColumns) {
  io::CsvTable table = Parse(
      "Path,Sex,Frontal/Lateral,No "
      "Finding\np/patient1/study1/a.jpg,Male,Frontal,1.0\n");
  ManifestParse parse = ParseManifest(table);
  std::vector<std::string> columns;
  for (const ManifestProblem& p : parse.problems) {
    EXPECT_EQ(p.line, 1);
    EXPECT_EQ(p.message, "missing required column");
    columns.push_back(p.column);
  }
  EXPECT_EQ(columns.size(), 2u + kNumChexpertLabels - 1);
  EXPECT_EQ(columns[0], "Age");
  EXPECT_EQ(columns[1], "AP/PA");
  EXPECT_EQ(columns[2], "Enlarged Cardiomediastinum");
}

TEST(ManifestTest, FromTableFailsWithEveryProblemNamed) {
  std::string text = absl::StrCat(Header(), "\n", Row("p/patient1/study1/a.jpg", "Male,40,Frontal,AP", {"2"}), "\n",
                                  Row("p/patient1/study1/b.jpg", "Male,x,Frontal,AP", {}), "\n");
  absl::StatusOr<Manifest> manifest = Manifest::FromTable(Parse(text));
  ASSERT_FALSE(manifest.ok());
  EXPECT_EQ(manifest.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(manifest.status().message(), HasSubstr("2 problem(s) in manifest m.csv"));
  EXPECT_THAT(manifest.status().message(), HasSubstr("m.csv:2: [No Finding] '2'"));
  EXPECT_THAT(manifest.status().message(), HasSubstr("m.csv:3: [Age] 'x'"));
}

TEST(ManifestTest, ReadCsvReportsFileAndMalformedRows) {
  testing::TempDir dir;
  absl::StatusOr<Manifest> missing = Manifest::ReadCsv(dir.Join("none.csv"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);

  // A row with a missing field (a cell dropped by hand-editing) is a CSV error
  // naming its line.
  std::string short_row = Row("p/patient1/study1/a.jpg", "Male,40,Frontal", {});
  std::string path = dir.WriteFile(
      "m.csv",
      absl::StrCat(Header(), "\n", Row("p/patient1/study1/b.jpg", "Male,40,Frontal,AP", {}), "\n", short_row, "\n"));
  absl::StatusOr<Manifest> malformed = Manifest::ReadCsv(path);
  ASSERT_FALSE(malformed.ok());
  EXPECT_EQ(malformed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(malformed.status().message(), HasSubstr(":3:"));

  std::string good =
      dir.WriteFile("good.csv", absl::StrCat(Header(), "\r\n\"p/patient1/study1/a,b.jpg\",Male,40,Frontal,AP",
                                             std::string(kNumChexpertLabels, ','), "\r\n"));
  absl::StatusOr<Manifest> manifest = Manifest::ReadCsv(good);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  EXPECT_EQ(manifest->entries()[0].path, "p/patient1/study1/a,b.jpg");
  EXPECT_EQ(manifest->source(), good);
}

TEST(ManifestTest, EmptyManifestIsValid) {
  absl::StatusOr<Manifest> manifest = Manifest::FromTable(Parse(Header() + "\n"));
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  EXPECT_THAT(manifest->entries(), IsEmpty());
  EXPECT_THAT(manifest->patients(), IsEmpty());
}

TEST(CountLabelValuesTest, CountsEachValue) {
  std::string text = absl::StrCat(Header(), "\n", Row("p/patient1/study1/a.jpg", "Male,40,Frontal,AP", {"1", "0"}),
                                  "\n", Row("p/patient1/study1/b.jpg", "Male,40,Frontal,AP", {"-1", "0"}), "\n",
                                  Row("p/patient2/study1/b.jpg", "Male,40,Frontal,AP", {"1", "", "1"}), "\n");
  absl::StatusOr<Manifest> manifest = Manifest::FromTable(Parse(text));
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  auto counts = CountLabelValues(manifest->entries());
  EXPECT_EQ(counts[kNoFinding].positive, 2);
  EXPECT_EQ(counts[kNoFinding].uncertain, 1);
  EXPECT_EQ(counts[kEnlargedCardiomediastinum].negative, 2);
  EXPECT_EQ(counts[kEnlargedCardiomediastinum].blank, 1);
  EXPECT_EQ(counts[kCardiomegaly].positive, 1);
  EXPECT_EQ(counts[kCardiomegaly].blank, 2);
  EXPECT_EQ(counts[kSupportDevices].blank, 3);
}

TEST(ValidateManifestPathTest, AcceptsRelativePathsInsideTheRoot) {
  EXPECT_TRUE(ValidateManifestPath("a/b.png").ok());
  EXPECT_TRUE(ValidateManifestPath("a..b/c...png").ok());
  EXPECT_TRUE(ValidateManifestPath("./a.png").ok());
  EXPECT_THAT(ValidateManifestPath("").message(), HasSubstr("empty"));
  EXPECT_THAT(ValidateManifestPath("/a.png").message(), HasSubstr("absolute"));
  EXPECT_THAT(ValidateManifestPath("a/../../b.png").message(), HasSubstr(".."));
  EXPECT_THAT(ValidateManifestPath("a\\b.png").message(), HasSubstr("'/'"));
}

// `data index` writes what this accepts; the parser trims cells, so " lead.dcm" would be read back as "lead.dcm".
TEST(ValidateManifestPathTest, RefusesLeadingAndTrailingSpaces) {
  EXPECT_THAT(ValidateManifestPath(" lead.dcm").message(), HasSubstr("space"));
  EXPECT_THAT(ValidateManifestPath("trail.dcm ").message(), HasSubstr("space"));
  EXPECT_TRUE(ValidateManifestPath("a b/c d.dcm").ok());
}

TEST(ValidateManifestPathTest, RefusesControlCharactersAndOverlongPaths) {
  // A NUL would cut the path short at open(); other control characters
  // (newlines, terminal escapes) end up in reports and logs.
  for (const std::string& bad :
       {std::string("a/b\0c.png", 9), std::string("a/\nb.png"), std::string("a/\x1b[2Jb.png")}) {
    absl::Status status = ValidateManifestPath(bad);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << absl::CHexEscape(bad);
    EXPECT_THAT(status.message(), HasSubstr("control character")) << absl::CHexEscape(bad);
  }
  EXPECT_TRUE(ValidateManifestPath("a/" + std::string(4094, 'x')).ok());
  absl::Status long_path = ValidateManifestPath("a/" + std::string(4095, 'x'));
  EXPECT_EQ(long_path.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(long_path.message(), HasSubstr("4097 bytes, longer than 4096"));
  EXPECT_TRUE(ValidateManifestPath("a/\xc3\xa9t\xc3\xa9.png").ok());  // UTF-8 is fine.
}

TEST(ParseManifestTest, QuotedCellsAreShortenedAndEscaped) {
  // A 10 KB bad cell and a terminal escape must not reach the report as they
  // are.
  std::string text =
      absl::StrCat(Header(), "\n", Row("p/patient1/study1/a.jpg", "Male,40,Frontal,AP", {std::string(10000, '7')}),
                   "\n", Row("p/patient1/study1/b.jpg", "\x1b[2J,40,Frontal,AP", {}), "\n");
  ManifestParse parse = ParseManifest(Parse(text));
  ASSERT_EQ(parse.problems.size(), 2u);
  EXPECT_LT(parse.problems[0].message.size(), 200u);
  EXPECT_THAT(parse.problems[0].message, HasSubstr("(10000 bytes)"));
  EXPECT_THAT(parse.problems[1].message, HasSubstr("'\\x1b[2J'"));
  EXPECT_EQ(parse.problems[1].message.find('\x1b'), std::string::npos);
  // Column names come from the file too.
  EXPECT_EQ(FormatProblem("m.csv", {1, "Ex\x1btra", "unknown column, ignored"}),
            "m.csv:1: [Ex\\x1btra] unknown column, ignored");
  EXPECT_EQ(FormatProblem("m.csv", {1, std::string(100, 'c'), "x"}),
            absl::StrCat("m.csv:1: [", std::string(64, 'c'), "... (100 bytes)] x"));
}

TEST(ParseManifestTest, ProblemsListedAreCappedTheRestCounted) {
  // Every cell of every row wrong: 18 problems a row.
  std::string text = Header() + "\n";
  const int rows = 1000;
  for (int i = 0; i < rows; ++i) {
    absl::StrAppend(
        &text, Row(absl::StrCat("p/patient", i, "/study1/a.jpg"), "x,x,x,x", std::vector<std::string>(14, "x")), "\n");
  }
  ManifestParse parse = ParseManifest(Parse(text));
  EXPECT_EQ(parse.problems.size(), static_cast<size_t>(kMaxListedManifestProblems));
  EXPECT_EQ(parse.unlisted_problems, 18 * rows - kMaxListedManifestProblems);
  EXPECT_EQ(parse.problems.back().line, 1 + kMaxListedManifestProblems / 18 + 1);  // The first ones, by line.
  EXPECT_EQ(parse.rejected.size(), static_cast<size_t>(rows));
  absl::StatusOr<Manifest> strict = Manifest::FromTable(Parse(text));
  EXPECT_THAT(strict.status().message(), HasSubstr("18000 problem(s) in manifest m.csv"));
}

TEST(ResolveImagePathTest, JoinsRootAndPath) {
  EXPECT_EQ(ResolveImagePath("/data", "a/b.png"), "/data/a/b.png");
  EXPECT_EQ(ResolveImagePath("/data/", "a/b.png"), "/data/a/b.png");
  EXPECT_EQ(ResolveImagePath("/", "a/b.png"), "/a/b.png");
  EXPECT_EQ(ResolveImagePath("", "a/b.png"), "a/b.png");
}

}  // namespace
}  // namespace fedtune::data
