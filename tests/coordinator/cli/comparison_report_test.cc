#include "coordinator/cli/comparison_report.h"

#include <cmath>
#include <string>
#include <vector>

#include "common/io/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/coordinator/cli/run_report_fixture.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::admin {
namespace {

using ::fedtune::admin::testing::AddComparison;
using ::fedtune::admin::testing::AddModel;
using ::testing::DoubleNear;
using ::testing::HasSubstr;
using ::testing::Not;

// A run of `strategy` at site-a and site-b. site-a has a final evaluation with the four models (local-only only when
// `local_only`), CIs on the adapted model, and the comparisons with the local-only baseline; site-b has none.
v1::RunReport MakeRun(const std::string& run_id, v1::RunConfig::Personalization personalization, bool local_only,
                      double adapted_mean) {
  v1::RunReport report;
  v1::RunStatus* status = report.mutable_status();
  status->set_run_id(run_id);
  status->set_name("exp");
  status->set_state("completed");
  status->mutable_config()->set_personalization(personalization);
  status->mutable_config()->set_aggregation("fedavg");
  status->mutable_config()->set_rounds(1);
  status->set_base_model_digest(std::string(64, 'b'));
  status->set_started_ms(1'700'000'000'000);
  status->set_finished_ms(1'700'000'125'000);
  v1::SiteRunReport* a = report.add_sites();
  a->set_site_id("site-a");
  v1::MetricsReport* m = a->add_metrics();
  m->set_kind("final");
  m->set_test_cases(120);
  AddModel(m, "open-source", {0.70, 0.60, NAN}, 0.65);
  if (local_only) AddModel(m, "local-only", {0.72, 0.62, NAN}, 0.67);
  AddModel(m, "global", {0.74, 0.64, NAN}, 0.69);
  AddModel(m, "adapted", {adapted_mean + 0.05, adapted_mean - 0.05, NAN}, adapted_mean);
  v1::ModelEvaluation* adapted = m->mutable_models(m->models_size() - 1);
  adapted->set_mean_auc_ci_low(adapted_mean - 0.04);
  adapted->set_mean_auc_ci_high(adapted_mean + 0.04);
  if (local_only) {
    AddComparison(m, "local-only", "adapted", {0.02, 0.5, NAN}, 0.25, 1);
    m->mutable_comparisons(0)->add_auc_difference(0.08);
    m->mutable_comparisons(0)->add_auc_difference(0.01);
    m->mutable_comparisons(0)->add_auc_difference(NAN);
    // Stored the other way round: the report must orient it as global vs local-only.
    AddComparison(m, "global", "local-only", {0.3, 0.4, NAN}, 0.5, 0);
  }
  report.add_sites()->set_site_id("site-b");
  return report;
}

std::vector<StrategyRun> TwoRuns(bool local_only) {
  return {{"fedavg", MakeRun("run-1", v1::RunConfig::NONE, local_only, 0.75)},
          {"fedbn", MakeRun("run-2", v1::RunConfig::FEDBN, local_only, 0.80)}};
}

TEST(StrategyNameTest, FromPersonalizationOrAggregation) {
  v1::RunConfig config;
  EXPECT_EQ(StrategyNameOf(config), "fedavg");
  config.set_aggregation("fedprox");
  EXPECT_EQ(StrategyNameOf(config), "fedprox");
  config.set_personalization(v1::RunConfig::SILOBN);
  EXPECT_EQ(StrategyNameOf(config), "silobn");
  config.set_personalization(v1::RunConfig::DITTO);
  EXPECT_EQ(StrategyNameOf(config), "ditto");
}

TEST(StrategyNameTest, RepeatedNamesGetTheRunId) {
  std::vector<v1::RunReport> runs = {MakeRun("r1", v1::RunConfig::NONE, true, 0.7),
                                     MakeRun("r2", v1::RunConfig::FEDBN, true, 0.7),
                                     MakeRun("r3", v1::RunConfig::NONE, true, 0.7)};
  EXPECT_EQ(StrategyNames(runs), (std::vector<std::string>{"fedavg (r1)", "fedbn", "fedavg (r3)"}));
}

TEST(ComparisonJsonTest, EverySiteAndStrategyWithMeansCisAndComparisons) {
  const nlohmann::json j = nlohmann::json::parse(ComparisonReportJson(TwoRuns(true)));
  EXPECT_EQ(j["format"], "fedtune-strategy-comparison-v1");
  EXPECT_EQ(j["base_model_digest"], std::string(64, 'b'));
  EXPECT_TRUE(j["same_base_model"].get<bool>());
  ASSERT_EQ(j["strategies"].size(), 2u);
  EXPECT_EQ(j["strategies"][0]["strategy"], "fedavg");
  EXPECT_EQ(j["strategies"][1]["personalization"], "fedbn");
  EXPECT_THAT(j["strategies"][0]["wall_seconds"].get<double>(), DoubleNear(125, 1e-9));
  EXPECT_EQ(j["sites"], nlohmann::json::array({"site-a", "site-b"}));
  ASSERT_EQ(j["results"].size(), 4u);  // 2 sites x 2 strategies.

  const nlohmann::json& a_fedbn = j["results"][1];
  EXPECT_EQ(a_fedbn["site_id"], "site-a");
  EXPECT_EQ(a_fedbn["strategy"], "fedbn");
  EXPECT_TRUE(a_fedbn["final_evaluation"].get<bool>());
  EXPECT_EQ(a_fedbn["test_cases"], 120);
  EXPECT_THAT(a_fedbn["models"]["adapted"]["mean_auc"].get<double>(), DoubleNear(0.80, 1e-12));
  EXPECT_THAT(a_fedbn["models"]["adapted"]["ci_low"].get<double>(), DoubleNear(0.76, 1e-12));
  EXPECT_THAT(a_fedbn["models"]["adapted"]["ci_high"].get<double>(), DoubleNear(0.84, 1e-12));
  EXPECT_TRUE(a_fedbn["models"]["global"]["ci_low"].is_null());  // 0, 0 from the fixture: not computed.
  EXPECT_THAT(a_fedbn["models"]["local_only"]["mean_auc"].get<double>(), DoubleNear(0.67, 1e-12));
  const nlohmann::json& pair = a_fedbn["adapted_vs_local_only"];
  EXPECT_THAT(pair["wilcoxon_p"].get<double>(), DoubleNear(0.25, 1e-12));
  ASSERT_EQ(pair["labels"].size(), 3u);
  EXPECT_THAT(pair["labels"][0]["delong_p"].get<double>(), DoubleNear(0.02, 1e-12));
  EXPECT_THAT(pair["labels"][0]["auc_difference"].get<double>(), DoubleNear(0.08, 1e-12));
  EXPECT_TRUE(pair["labels"][2]["delong_p"].is_null());
  EXPECT_THAT(a_fedbn["global_vs_local_only"]["wilcoxon_p"].get<double>(), DoubleNear(0.5, 1e-12));

  const nlohmann::json& b_fedavg = j["results"][2];
  EXPECT_EQ(b_fedavg["site_id"], "site-b");
  EXPECT_FALSE(b_fedavg["final_evaluation"].get<bool>());
  EXPECT_TRUE(b_fedavg["models"]["adapted"].is_null());
  EXPECT_TRUE(b_fedavg["adapted_vs_local_only"].is_null());

  ASSERT_EQ(j["summary"].size(), 2u);
  EXPECT_THAT(j["summary"][0]["open_source"]["mean_auc"].get<double>(), DoubleNear(0.65, 1e-12));
  EXPECT_THAT(j["summary"][0]["strategies"]["fedavg"]["adapted"]["mean_auc"].get<double>(), DoubleNear(0.75, 1e-12));
  EXPECT_THAT(j["summary"][0]["strategies"]["fedbn"]["global"]["mean_auc"].get<double>(), DoubleNear(0.69, 1e-12));
  EXPECT_TRUE(j["summary"][1]["local_only"]["mean_auc"].is_null());
}

TEST(ComparisonJsonTest, WithoutLocalOnlyEverythingOfItIsNull) {
  const nlohmann::json j = nlohmann::json::parse(ComparisonReportJson(TwoRuns(false)));
  for (const nlohmann::json& result : j["results"]) {
    EXPECT_TRUE(result["models"]["local_only"].is_null());
    EXPECT_TRUE(result["adapted_vs_local_only"].is_null());
    EXPECT_TRUE(result["global_vs_local_only"].is_null());
  }
  EXPECT_TRUE(j["summary"][0]["local_only"]["mean_auc"].is_null());
  EXPECT_THAT(j["summary"][0]["open_source"]["mean_auc"].get<double>(), DoubleNear(0.65, 1e-12));
}

TEST(ComparisonJsonTest, DifferentBaseModelsAreFlagged) {
  std::vector<StrategyRun> runs = TwoRuns(true);
  runs[1].report.mutable_status()->set_base_model_digest(std::string(64, 'c'));
  const nlohmann::json j = nlohmann::json::parse(ComparisonReportJson(runs));
  EXPECT_FALSE(j["same_base_model"].get<bool>());
  EXPECT_TRUE(j["base_model_digest"].is_null());
  EXPECT_THAT(ComparisonReportHtml(runs), HasSubstr("NOT start from the same base model"));
  EXPECT_THAT(ComparisonSummaryText(runs), HasSubstr("NOT the same base model"));
}

TEST(ComparisonHtmlTest, TablesNaAndEscaping) {
  std::vector<StrategyRun> runs = TwoRuns(false);
  runs[0].report.mutable_sites(0)->set_site_id("<script>x</script>");
  const std::string html = ComparisonReportHtml(runs);
  EXPECT_THAT(html, HasSubstr("<h2>Mean AUC per site and model</h2>"));
  EXPECT_THAT(html, HasSubstr("&lt;script&gt;"));
  EXPECT_THAT(html, Not(HasSubstr("<script>")));
  EXPECT_THAT(html, HasSubstr("n/a (no final evaluation)"));
  EXPECT_THAT(html, HasSubstr("0.800 <span class=\"ci\">(0.760"));
  EXPECT_THAT(html, HasSubstr("per-label p-values n/a"));
  EXPECT_THAT(html, HasSubstr("2 min 05 s"));  // Wall time.
  EXPECT_THAT(html, HasSubstr("</html>\n"));
}

TEST(ComparisonHtmlTest, PerLabelDeLongOfAdaptedVsLocalOnly) {
  const std::string html = ComparisonReportHtml(TwoRuns(true));
  EXPECT_THAT(html, HasSubstr("Adapted vs local-only per label"));
  EXPECT_THAT(html, HasSubstr("<td>+0.080</td><td>0.020</td>"));
}

TEST(ComparisonTextTest, RunsAndSummaryTable) {
  const std::string text = ComparisonSummaryText(TwoRuns(true));
  EXPECT_THAT(text, HasSubstr("fedbn global/adapted"));
  EXPECT_THAT(text, HasSubstr("2 min 05 s"));
  // site-a: open-source, local-only, then per strategy global / adapted.
  EXPECT_THAT(text, ::testing::ContainsRegex("site-a +0\\.650 +0\\.670 +0\\.690 / 0\\.750 +0\\.690 / 0\\.800"));
  EXPECT_THAT(text, ::testing::ContainsRegex("site-b +n/a +n/a +n/a / n/a"));
}

TEST(WriteComparisonReportTest, WritesBothFiles) {
  fedtune::testing::TempDir dir;
  const std::string out = dir.path() + "/nested/report";
  absl::StatusOr<ComparisonFiles> files = WriteComparisonReport(TwoRuns(true), out);
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(files->json_path, out + "/comparison.json");
  absl::StatusOr<std::string> json = io::ReadFile(files->json_path);
  ASSERT_TRUE(json.ok());
  EXPECT_EQ(*json, ComparisonReportJson(TwoRuns(true)));
  EXPECT_TRUE(io::ReadFile(files->html_path).ok());
}

}  // namespace
}  // namespace fedtune::admin
