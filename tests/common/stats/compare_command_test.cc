// Tests of `fedtune stats compare`: the score-table loader's error cases, the
// JSON report, and the real binary's exit codes.
#include "common/stats/compare_command.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "common/io/file_util.h"
#include "common/stats/score_table.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::stats {
namespace {

using ::testing::HasSubstr;

constexpr char kTruth[] =
    "Path,Sex,Age,Edema,Cardiomegaly\n"
    "p1,M,50,1,0\n"
    "p2,F,60,0,1.0\n"
    "p3,F,70,1.0,\n"
    "p4,M,40,0,0\n"
    "p5,F,30,-1,1\n"
    "p6,M,20,0.0,0\n";
constexpr char kScoresA[] =
    "Path,Edema,Cardiomegaly\n"
    "p6,0.1,0.2\n"
    "p1,0.9,0.3\n"
    "p2,0.2,0.8\n"
    "p3,0.7,0.5\n"
    "p4,0.3,0.1\n"
    "p5,0.5,0.9\n";
constexpr char kScoresB[] =
    "Path,Edema,Cardiomegaly\n"
    "p1,0.6,0.3\n"
    "p2,0.6,0.4\n"
    "p3,0.4,0.5\n"
    "p4,0.3,0.6\n"
    "p5,0.5,0.9\n"
    "p6,0.2,0.2\n";

class CompareCommandTest : public ::testing::Test {
 protected:
  absl::Status Run(const std::string& truth, const std::string& a, const std::string& b,
                   std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {
        "--truth",    dir_.WriteFile("truth.csv", truth), "--scores-a", dir_.WriteFile("a.csv", a),
        "--scores-b", dir_.WriteFile("b.csv", b),         "--out",      dir_.Join("report.json"),
        "--quiet"};
    args.insert(args.end(), extra.begin(), extra.end());
    cli::Command command = MakeStatsCompareCommand(printed_);
    auto flags = cli::ParseFlags(args, command.flags, command.max_positional);
    if (!flags.ok()) return flags.status();
    return command.run(*flags);
  }
  nlohmann::json Report() { return nlohmann::json::parse(*io::ReadFile(dir_.Join("report.json"))); }

  testing::TempDir dir_;
  std::ostringstream printed_;
};

TEST_F(CompareCommandTest, PrintsTheTableToTheInjectedStreamUnlessQuiet) {
  ASSERT_TRUE(Run(kTruth, kScoresA, kScoresB).ok());
  EXPECT_EQ(printed_.str(), "");  // --quiet.
  std::vector<std::string> args = {"--truth",    dir_.Join("truth.csv"), "--scores-a", dir_.Join("a.csv"),
                                   "--scores-b", dir_.Join("b.csv"),     "--out",      dir_.Join("loud.json")};
  cli::Command command = MakeStatsCompareCommand(printed_);
  auto flags = cli::ParseFlags(args, command.flags, command.max_positional);
  ASSERT_TRUE(flags.ok()) << flags.status();
  ASSERT_TRUE(command.run(*flags).ok());
  EXPECT_THAT(printed_.str(), HasSubstr("Edema"));
}

TEST_F(CompareCommandTest, WritesTheReportWithExactFieldNames) {
  ASSERT_TRUE(Run(kTruth, kScoresA, kScoresB).ok());
  nlohmann::json r = Report();
  ASSERT_EQ(r["labels"].size(), 2u);
  const nlohmann::json& edema = r["labels"][0];
  EXPECT_EQ(edema["name"], "Edema");
  // p5 (-1) is excluded from Edema only: positives p1, p3; negatives p2, p4,
  // p6.
  EXPECT_EQ(edema["n_pos"], 2);
  EXPECT_EQ(edema["n_neg"], 3);
  EXPECT_EQ(edema["a"]["auc"], 1.0);
  // b: positives .6, .4 vs negatives .6, .3, .2 -> (0.5 + 1 + 1 + 0 + 1 + 1) /
  // 6 = 0.75.
  EXPECT_DOUBLE_EQ(edema["b"]["auc"].get<double>(), 0.75);
  EXPECT_DOUBLE_EQ(edema["delong"]["difference"].get<double>(), 0.25);
  for (const char* key : {"auc", "variance", "ci95", "youden"}) EXPECT_TRUE(edema["a"].contains(key)) << key;
  for (const char* key : {"threshold", "sensitivity", "specificity", "sensitivity_ci95", "specificity_ci95"}) {
    EXPECT_TRUE(edema["a"]["youden"].contains(key)) << key;
  }
  for (const char* key : {"difference", "z", "p_value", "ci95"}) EXPECT_TRUE(edema["delong"].contains(key)) << key;
  const nlohmann::json& cardio = r["labels"][1];
  EXPECT_EQ(cardio["n_pos"], 2);  // p2, p5; p3 blank excluded.
  EXPECT_EQ(cardio["n_neg"], 3);
  const nlohmann::json& overall = r["overall"];
  EXPECT_DOUBLE_EQ(overall["mean_auc_a"].get<double>(), 1.0);
  EXPECT_EQ(overall["wilcoxon"]["n"], 2);
  EXPECT_EQ(overall["wilcoxon"]["method"], "exact");
  EXPECT_EQ(overall["wilcoxon"]["p_value"], 0.5);
  EXPECT_EQ(overall["wilcoxon"]["statistic"], 0.0);
}

TEST_F(CompareCommandTest, LabelsFlagRestricts) {
  ASSERT_TRUE(Run(kTruth, kScoresA, kScoresB, {"--labels", "Cardiomegaly"}).ok());
  nlohmann::json r = Report();
  ASSERT_EQ(r["labels"].size(), 1u);
  EXPECT_EQ(r["labels"][0]["name"], "Cardiomegaly");
  absl::Status bad = Run(kTruth, kScoresA, kScoresB, {"--labels", "Edema,Nope"});
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.message()), HasSubstr("'Nope' is not a label column"));
}

TEST_F(CompareCommandTest, SingleClassLabelIsReportedNotFatal) {
  const std::string truth = "Path,X\np1,1\np2,1\np3,1\n";
  const std::string scores = "Path,X\np1,0.1\np2,0.2\np3,0.3\n";
  ASSERT_TRUE(Run(truth, scores, scores).ok());
  nlohmann::json r = Report();
  EXPECT_TRUE(r["labels"][0]["a"]["auc"].is_null());
  EXPECT_TRUE(r["labels"][0]["delong"].is_null());
  EXPECT_TRUE(r["overall"]["wilcoxon"]["p_value"].is_null());
  EXPECT_TRUE(r["overall"]["mean_auc_a"].is_null());
}

struct BadCase {
  const char* name;
  std::string truth;
  std::string a;
  std::string expected;  // Substring of the error message.
};

TEST_F(CompareCommandTest, BadInputNamesFileLineAndColumn) {
  const std::string a_ok = kScoresA;
  const std::vector<BadCase> cases = {
      {"missing id", kTruth, "Path,Edema,Cardiomegaly\np1,0.9,0.3\np2,0.2,0.8\n", "a.csv: no row for Path 'p3'"},
      {"duplicate id in scores", kTruth, a_ok + "p1,0.5,0.5\n", "a.csv:8: duplicate Path 'p1' (first on line 3)"},
      {"duplicate id in truth", std::string(kTruth) + "p1,M,50,1,0\n", a_ok, "truth.csv:8: duplicate Path 'p1'"},
      {"non-numeric score", kTruth,
       "Path,Edema,Cardiomegaly\np6,0.1,0.2\np1,high,0.3\np2,0.2,0.8\np3,0.7,0."
       "5\n"
       "p4,0.3,0.1\np5,0.5,0.9\n",
       "a.csv:3: column 'Edema': score 'high' is not a finite number"},
      {"non-finite score", kTruth,
       "Path,Edema,Cardiomegaly\np6,0.1,0.2\np1,0.9,inf\np2,0.2,0.8\np3,0.7,0."
       "5\n"
       "p4,0.3,0.1\np5,0.5,0.9\n",
       "a.csv:3: column 'Cardiomegaly': score 'inf' is not a finite number"},
      {"nan score", kTruth,
       "Path,Edema,Cardiomegaly\np6,nan,0.2\np1,0.9,0.3\np2,0.2,0.8\np3,0.7,0."
       "5\n"
       "p4,0.3,0.1\np5,0.5,0.9\n",
       "a.csv:2: column 'Edema': score 'nan'"},
      {"blank score", kTruth,
       "Path,Edema,Cardiomegaly\np6,,0.2\np1,0.9,0.3\np2,0.2,0.8\np3,0.7,0.5\n"
       "p4,0.3,0.1\np5,0.5,0.9\n",
       "a.csv:2: column 'Edema': score '' is not a finite number"},
      {"missing label column", kTruth, "Path,Edema\np1,1\np2,1\np3,1\np4,1\np5,1\np6,1\n",
       "a.csv:1: no column 'Cardiomegaly'"},
      {"bad truth value", "Path,Edema\np1,2\np2,0\n", "Path,Edema\np1,1\np2,0\n",
       "truth.csv:2: column 'Edema': truth value '2' is not one of"},
      {"uncertain-looking truth", "Path,Edema\np1,0.5\np2,0\n", "Path,Edema\np1,1\np2,0\n", "truth value '0.5'"},
      {"first column not Path", "Id,Edema\np1,1\n", a_ok, "truth.csv:1: the first column must be 'Path'"},
      {"ragged row", "Path,Edema\np1,1,3\n", a_ok, "truth.csv:2: expected 2 fields"},
      {"no label columns", "Path,Sex\np1,M\n", a_ok, "no label columns"},
      {"empty file", "", a_ok, "truth.csv:1: no header line"},
  };
  for (const BadCase& c : cases) {
    absl::Status status = Run(c.truth, c.a, kScoresB);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.name << ": " << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.expected)) << c.name;
    EXPECT_EQ(cli::ExitCodeFor(status), cli::kExitBadInput) << c.name;
  }
}

TEST_F(CompareCommandTest, MissingFileIsNotFound) {
  cli::Command command = MakeStatsCompareCommand(printed_);
  auto flags = cli::ParseFlags(
      {"--truth", dir_.Join("nope.csv"), "--scores-a", "x", "--scores-b", "y", "--out", dir_.Join("r.json")},
      command.flags, 0);
  ASSERT_TRUE(flags.ok());
  absl::Status status = command.run(*flags);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(status.message()), HasSubstr("nope.csv"));
  EXPECT_EQ(cli::ExitCodeFor(status), cli::kExitBadInput);
}

TEST_F(CompareCommandTest, RealBinaryExitCodesAndTable) {
  const std::string truth = dir_.WriteFile("t.csv", kTruth);
  const std::string a = dir_.WriteFile("a.csv", kScoresA);
  const std::string b = dir_.WriteFile("b.csv", kScoresB);
  const std::string bin = testing::BinPath("fedtune");
  std::string out;
  int rc = testing::RunCommand(bin + " stats compare --truth " + truth + " --scores-a " + a + " --scores-b " + b +
                                   " --out " + dir_.Join("r.json"),
                               &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("Edema"));
  EXPECT_THAT(out, HasSubstr("Wilcoxon signed-rank (exact)"));
  rc = testing::RunCommand(bin + " stats compare --truth " + truth + " --scores-a " + truth + " --scores-b " + b +
                               " --out " + dir_.Join("r2.json"),
                           &out);
  EXPECT_EQ(rc, 2) << out;
  EXPECT_THAT(out, HasSubstr("t.csv:4: column 'Cardiomegaly': score '' is not a finite number"));
  rc = testing::RunCommand(bin + " stats compare --truth " + truth, &out);
  EXPECT_EQ(rc, 2) << out;
  EXPECT_THAT(out, HasSubstr("missing required flag"));
  // An --out path in a directory that does not exist is bad input too (NotFound
  // -> 2), and is named.
  rc = testing::RunCommand(bin + " stats compare --truth " + truth + " --scores-a " + a + " --scores-b " + b +
                               " --quiet --out " + dir_.Join("no/such/dir/r.json"),
                           &out);
  EXPECT_EQ(rc, 2) << out;
  EXPECT_THAT(out, HasSubstr("no/such/dir/r.json"));
}

}  // namespace
}  // namespace fedtune::stats
