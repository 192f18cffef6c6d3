#include "coordinator/cli/consortium_report.h"

#include <limits>
#include <regex>
#include <string>

#include "absl/strings/escaping.h"
#include "common/io/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/coordinator/cli/run_report_fixture.h"
#include "tests/coordinator/cli/terminal_check.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::admin {
namespace {

using ::fedtune::admin::testing::AddModel;
using ::fedtune::admin::testing::MakeRunReport;
using ::testing::DoubleNear;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(SummarizeSitesTest, FinalEvaluationAndMissingOne) {
  const std::vector<SiteSummary> s = SummarizeSites(MakeRunReport());
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].site_id, "site-a");
  EXPECT_TRUE(s[0].final_evaluation);
  EXPECT_EQ(s[0].test_cases, 120);
  EXPECT_THAT(*s[0].mean_auc_open_source, DoubleNear(0.65, 1e-12));
  EXPECT_THAT(*s[0].mean_auc_global, DoubleNear(0.70, 1e-12));
  EXPECT_THAT(*s[0].mean_auc_adapted, DoubleNear(0.75, 1e-12));
  EXPECT_EQ(s[0].labels_compared, 2);  // Edema has no AUC.
  EXPECT_EQ(s[0].improved_significant, 2);
  EXPECT_EQ(s[0].worsened_significant, 0);
  EXPECT_THAT(*s[0].wilcoxon_p, DoubleNear(0.25, 1e-12));
  EXPECT_EQ(s[1].site_id, "site-b");
  EXPECT_FALSE(s[1].final_evaluation);
  EXPECT_FALSE(s[1].mean_auc_adapted.has_value());
  EXPECT_FALSE(s[1].wilcoxon_p.has_value());
}

TEST(SummarizeSitesTest, MeanComputedFromLabelsWhenMissingAndReversedComparison) {
  v1::RunReport report;
  v1::SiteRunReport* site = report.add_sites();
  site->set_site_id("x");
  v1::MetricsReport* m = site->add_metrics();
  m->set_kind("final");
  AddModel(m, "open-source", {0.6, 0.8, NAN}, 0);  // mean_auc not filled in: (0.6 + 0.8) / 2.
  AddModel(m, "adapted", {0.5, 0.7, NAN}, NAN);
  // Stored as adapted-vs-open-source the other way round: a worse label must not count as improved.
  testing::AddComparison(m, "adapted", "open-source", {0.01, 0.5, NAN}, 0.3, 1);
  const SiteSummary s = SummarizeSites(report)[0];
  EXPECT_THAT(*s.mean_auc_open_source, DoubleNear(0.7, 1e-12));
  EXPECT_THAT(*s.mean_auc_adapted, DoubleNear(0.6, 1e-12));
  EXPECT_FALSE(s.mean_auc_global.has_value());
  EXPECT_EQ(s.improved_significant, 0);
  EXPECT_EQ(s.worsened_significant, 1);
}

TEST(ConsortiumReportJsonTest, StableKeysValuesAndNulls) {
  const nlohmann::json j = nlohmann::json::parse(ConsortiumReportJson(MakeRunReport()));
  EXPECT_EQ(j["format"], "fedtune-consortium-report-v1");
  EXPECT_EQ(j["run"]["id"], "run-7");
  EXPECT_EQ(j["run"]["name"], "demo <b>");
  EXPECT_EQ(j["run"]["state"], "completed");
  EXPECT_EQ(j["run"]["rounds_planned"], 2);
  EXPECT_EQ(j["run"]["bytes_up"], 3 << 20);

  const nlohmann::json& a = j["summary"][0];
  EXPECT_EQ(a["site_id"], "site-a");
  EXPECT_NEAR(a["mean_auc"]["open_source"].get<double>(), 0.65, 1e-12);
  EXPECT_NEAR(a["mean_auc"]["global"].get<double>(), 0.70, 1e-12);
  EXPECT_NEAR(a["mean_auc"]["adapted"].get<double>(), 0.75, 1e-12);
  EXPECT_EQ(a["improved_significant"], 2);
  EXPECT_EQ(a["labels_compared"], 2);
  EXPECT_NEAR(a["wilcoxon_p"].get<double>(), 0.25, 1e-12);
  EXPECT_TRUE(j["summary"][1]["mean_auc"]["adapted"].is_null());
  EXPECT_FALSE(j["summary"][1]["final_evaluation"].get<bool>());

  const nlohmann::json& site = j["sites"][0];
  EXPECT_EQ(site["dataset"]["test_images"], 120);
  ASSERT_EQ(site["labels"].size(), 3u);
  const nlohmann::json& atelectasis = site["labels"][0];
  EXPECT_EQ(atelectasis["label"], "Atelectasis");
  EXPECT_EQ(atelectasis["positives"], 30);
  EXPECT_NEAR(atelectasis["auc"]["adapted"]["auc"].get<double>(), 0.80, 1e-12);
  EXPECT_NEAR(atelectasis["auc"]["adapted"]["ci_low"].get<double>(), 0.75, 1e-12);
  EXPECT_NEAR(atelectasis["auc"]["global"]["ci_high"].get<double>(), 0.80, 1e-12);
  EXPECT_NEAR(atelectasis["delong_p"]["global_vs_open_source"].get<double>(), 0.04, 1e-12);
  EXPECT_NEAR(atelectasis["delong_p"]["adapted_vs_open_source"].get<double>(), 0.01, 1e-12);
  EXPECT_NEAR(atelectasis["delong_p"]["adapted_vs_global"].get<double>(), 0.3, 1e-12);
  const nlohmann::json& edema = site["labels"][2];
  EXPECT_TRUE(edema["auc"]["open_source"]["auc"].is_null());  // NaN -> null.
  EXPECT_TRUE(edema["auc"]["adapted"]["ci_low"].is_null());
  EXPECT_TRUE(edema["delong_p"]["adapted_vs_global"].is_null());
  EXPECT_EQ(site["comparisons"]["adapted_vs_open_source"]["improved_significant"], 2);
  ASSERT_EQ(site["rounds"].size(), 1u);
  EXPECT_NEAR(site["rounds"][0]["train_loss"].get<double>(), 0.4321, 1e-12);
  EXPECT_NEAR(site["rounds"][0]["mean_auc_local"].get<double>(), 0.69, 1e-12);
  EXPECT_EQ(site["bytes_down"], 2 << 20);

  EXPECT_TRUE(j["sites"][1]["rounds"][0]["validation_loss"].is_null());  // Not reported (0).
  EXPECT_NEAR(j["sites"][1]["rounds"][0]["train_loss"].get<double>(), 0.5, 1e-12);
  ASSERT_EQ(j["rounds"].size(), 3u);
  EXPECT_EQ(j["rounds"][0]["state"], "failed");
  EXPECT_EQ(j["rounds"][1]["attempt"], 2);
  EXPECT_EQ(j["rounds"][1]["accepted"], 2);
  EXPECT_EQ(j["rounds"][1]["bytes_up"], 3000);
  EXPECT_EQ(j["rounds"][2]["updates"][1]["site_id"], "site-b");
  EXPECT_EQ(j["rounds"][2]["updates"][1]["bytes"], 2500);

  EXPECT_FALSE(j["cross_site"]["evaluated"].get<bool>());
  EXPECT_THAT(j["cross_site"]["note"].get<std::string>(), HasSubstr("No cross-site evaluation was run"));
}

TEST(ConsortiumReportJsonTest, CrossSiteMatrixFromEvaluationsNamedAfterSites) {
  v1::RunReport report = MakeRunReport();
  // site-a evaluated site-b's adapted model; site-b sent a final report with its own adapted model.
  AddModel(report.mutable_sites(0)->mutable_metrics(1), "site-b", {0.66, 0.62, NAN}, 0.64);
  v1::MetricsReport* b_final = report.mutable_sites(1)->add_metrics();
  b_final->set_kind("final");
  AddModel(b_final, "adapted", {0.9, 0.8, 0.7}, 0.8);
  const nlohmann::json j = nlohmann::json::parse(ConsortiumReportJson(report));
  EXPECT_TRUE(j["cross_site"]["evaluated"].get<bool>());
  bool found = false;
  for (const nlohmann::json& cell : j["cross_site"]["matrix"]) {
    if (cell["model_of"] == "site-b" && cell["evaluated_at"] == "site-a") {
      EXPECT_NEAR(cell["mean_auc"].get<double>(), 0.64, 1e-12);
      found = true;
    }
  }
  EXPECT_TRUE(found);
  const std::string html = ConsortiumReportHtml(report);
  EXPECT_THAT(html, Not(HasSubstr("No cross-site evaluation was run")));
  EXPECT_THAT(html, HasSubstr("Model \\ evaluated at"));
  EXPECT_THAT(html, HasSubstr(">0.640</td>"));
  EXPECT_THAT(html, HasSubstr("<td class=\"diag\" style=\"background: hsl(210, 70%, "));
  EXPECT_THAT(html, HasSubstr(">0.800</td>"));
}

// Three sites of a run with cross-site evaluation: site-a and site-b shared their adapted models, site-c declined.
v1::RunReport CrossSiteRunReport() {
  v1::RunReport report;
  report.mutable_status()->set_run_id("run-9");
  report.mutable_status()->mutable_config()->set_cross_site_evaluation(true);
  const std::vector<std::string> ids = {"site-a", "site-b", "site-c"};
  for (size_t i = 0; i < ids.size(); ++i) {
    v1::SiteRunReport* site = report.add_sites();
    site->set_site_id(ids[i]);
    v1::MetricsReport* final_report = site->add_metrics();
    final_report->set_kind("final");
    final_report->set_adapted_model_shared(ids[i] != "site-c");
    const double o = 0.1 * static_cast<double>(i);
    testing::AddModel(final_report, "open-source", {0.6, 0.6, 0.6}, 0.6);
    testing::AddModel(final_report, "global", {0.7, 0.7, 0.7}, 0.7);
    testing::AddModel(final_report, "adapted", {0.8 + o / 10, 0.8, 0.8}, 0.8 + o / 10);
    testing::AddComparison(final_report, "open-source", "global", {0.2, 0.3, 0.4}, 0.5, 0);
    // The adapted model is better than global on one label: p 0.001 over 3 labels -> 0.003.
    testing::AddComparison(final_report, "global", "adapted", {0.001, 0.5, 0.5}, 0.25, 1);
    v1::MetricsReport* cross = site->add_metrics();
    cross->set_kind("cross_site");
    testing::AddModel(cross, "global", {0.7, 0.7, 0.7}, 0.7);
    for (const char* other : {"site-a", "site-b"}) {
      if (other == ids[i]) continue;
      testing::AddModel(cross, other, {0.5, 0.5, 0.5}, 0.5);
      testing::AddComparison(cross, "global", other, {0.01, 0.2, 0.3}, 0.25, 0);  // Worse: 0.03 adjusted.
    }
  }
  for (const char* id : {"site-a", "site-b"}) {
    v1::SharedModel* m = report.add_shared_models();
    m->set_site_id(id);
    m->set_digest(std::string(64, 'a'));
    m->set_bytes(1000);
  }
  return report;
}

TEST(ConsortiumReportJsonTest, CrossSiteFullMatrixWithNotShared) {
  const nlohmann::json j = nlohmann::json::parse(ConsortiumReportJson(CrossSiteRunReport()));
  const nlohmann::json& cs = j["cross_site"];
  EXPECT_TRUE(cs["evaluated"].get<bool>());
  EXPECT_EQ(cs["sites"], nlohmann::json({"site-a", "site-b", "site-c"}));
  EXPECT_EQ(cs["models"], nlohmann::json({"adapted model of site-a", "adapted model of site-b",
                                          "adapted model of site-c", "global", "open-source"}));
  EXPECT_EQ(cs["not_shared"], nlohmann::json({"site-c"}));
  ASSERT_EQ(cs["mean_auc"].size(), 5u);
  for (size_t r = 0; r < 5; ++r) {
    ASSERT_EQ(cs["mean_auc"][r].size(), 3u) << r;
    for (size_t c = 0; c < 3; ++c) {
      const bool declined = r == 2 && c != 2;
      EXPECT_EQ(cs["mean_auc"][r][c].is_null(), declined) << r << "," << c;
      EXPECT_EQ(cs["cell_status"][r][c], declined ? "not shared" : "ok") << r << "," << c;
    }
  }
  EXPECT_NEAR(cs["mean_auc"][0][0].get<double>(), 0.8, 1e-12);   // site-a's own adapted model.
  EXPECT_NEAR(cs["mean_auc"][1][0].get<double>(), 0.5, 1e-12);   // site-b's at site-a (its cross_site report).
  EXPECT_NEAR(cs["mean_auc"][0][2].get<double>(), 0.5, 1e-12);   // site-a's at site-c, which declined to share.
  EXPECT_NEAR(cs["mean_auc"][2][2].get<double>(), 0.82, 1e-12);  // site-c's own model: its own final report.
  EXPECT_NEAR(cs["mean_auc"][3][1].get<double>(), 0.7, 1e-12);
  EXPECT_NEAR(cs["mean_auc"][4][1].get<double>(), 0.6, 1e-12);
  // Min per-label DeLong p, Bonferroni over 3 labels; null on the global row.
  EXPECT_NEAR(cs["delong_p_vs_global"][0][0].get<double>(), 0.003, 1e-12);
  EXPECT_NEAR(cs["delong_p_vs_global"][1][0].get<double>(), 0.03, 1e-12);
  EXPECT_NEAR(cs["delong_p_vs_global"][4][0].get<double>(), 0.6, 1e-12);
  EXPECT_TRUE(cs["delong_p_vs_global"][3][0].is_null());
  EXPECT_TRUE(cs["delong_p_vs_global"][2][0].is_null());
  EXPECT_EQ(cs["shared_models"].size(), 2u);
}

TEST(ConsortiumReportHtmlTest, CrossSiteMatrixColoursMarksAndLegend) {
  const std::string html = ConsortiumReportHtml(CrossSiteRunReport());
  EXPECT_THAT(html, HasSubstr("<td class=\"label\">adapted model of site-c</td><td class=\"na\">not shared</td>"));
  EXPECT_THAT(html, HasSubstr("<td class=\"label\">open-source</td>"));
  EXPECT_THAT(html, HasSubstr("\u25B2</span>"));  // site-a's own model beats global on one label.
  EXPECT_THAT(html, HasSubstr("\u25BC</span>"));  // The others' models are worse there.
  EXPECT_THAT(html, HasSubstr("Not shared: site-c."));
  EXPECT_THAT(html, HasSubstr("class=\"swatch\""));
  EXPECT_THAT(html, Not(HasSubstr("No cross-site evaluation was run")));
  for (const char* bad : {"http://", "https://", "src=", "<script", "url("}) EXPECT_THAT(html, Not(HasSubstr(bad)));
}

TEST(ConsortiumReportHtmlTest, ValuesEscapingAndSelfContained) {
  const std::string html = ConsortiumReportHtml(MakeRunReport());
  EXPECT_THAT(html, HasSubstr("<!DOCTYPE html>"));
  EXPECT_THAT(html, HasSubstr("demo &lt;b&gt;"));
  EXPECT_THAT(html, Not(HasSubstr("demo <b>")));
  EXPECT_THAT(html, HasSubstr("Site site-a"));
  EXPECT_THAT(html, HasSubstr("Site site-b"));
  // AUC with CI, p-values, n/a for the NaN label, the site without a final evaluation.
  EXPECT_THAT(html, HasSubstr("0.800 <span class=\"ci\">(0.750\u20130.850)</span>"));
  EXPECT_THAT(html, HasSubstr("<td>0.010</td>"));
  EXPECT_THAT(html, HasSubstr("<td>0.040</td>"));
  EXPECT_THAT(html, HasSubstr("<td class=\"na\">n/a</td>"));
  EXPECT_THAT(html, HasSubstr("sent no final evaluation"));
  EXPECT_THAT(html, HasSubstr("2 of 2"));
  EXPECT_THAT(html, HasSubstr("at 1 of 1 site with a final evaluation."));
  // Rounds: the failed attempt, bytes.
  EXPECT_THAT(html, HasSubstr("1 of 2 min_sites at the deadline"));
  EXPECT_THAT(html, HasSubstr("2.9 KiB"));
  EXPECT_THAT(html, HasSubstr("No cross-site evaluation was run"));
  EXPECT_THAT(html, HasSubstr("aria-label=\"Mean AUC per site\""));
  EXPECT_THAT(html, HasSubstr("aria-label=\"Training loss per round and site\""));
  EXPECT_THAT(html, HasSubstr("site-a, round 1: 0.4321"));
  // Self-contained: no external resource of any kind.
  for (const char* bad : {"http://", "https://", "src=", "<script", "<link", "url(", "@import", "href=\"/"}) {
    EXPECT_THAT(html, Not(HasSubstr(bad))) << bad;
  }
  // Every NaN was caught (no "nan" printed as a number).
  EXPECT_FALSE(std::regex_search(html, std::regex(">-?nan<|>-?inf<", std::regex::icase)));
}

TEST(SiteSummaryTextTest, Table) {
  const std::string text = SiteSummaryText(MakeRunReport());
  EXPECT_THAT(text, HasSubstr("run run-7 \"demo <b>\" (completed, 2 of 2 rounds)"));
  EXPECT_THAT(text, HasSubstr("mean AUC open-source -> global -> adapted"));
  EXPECT_THAT(text, HasSubstr("0.650 -> 0.700 -> 0.750"));
  EXPECT_THAT(text, HasSubstr("2/2"));
  EXPECT_THAT(text, HasSubstr("0.250"));
  EXPECT_THAT(text, HasSubstr("n/a (no final evaluation)"));
  // site-a's row: site, test cases, the three AUCs, improved, worse, Wilcoxon.
  EXPECT_TRUE(std::regex_search(text, std::regex("site-a +120 +0\\.650 -> 0\\.700 -> 0\\.750 +2/2 +0 +0\\.250\n")))
      << text;
}

// A run with the local-only baseline: its model and its three comparisons reach the summary, the JSON and the table.
TEST(SiteSummaryTextTest, LocalOnlyBaselineWhenReported) {
  v1::RunReport report = MakeRunReport();
  v1::MetricsReport* final_report = nullptr;
  for (v1::MetricsReport& m : *report.mutable_sites(0)->mutable_metrics()) {
    if (m.kind() == "final") final_report = &m;
  }
  ASSERT_NE(final_report, nullptr);
  AddModel(final_report, "local-only", {0.66, 0.70, NAN}, 0.68);
  testing::AddComparison(final_report, "local-only", "adapted", {0.01, 0.02, NAN}, 0.04, 2);
  const std::vector<SiteSummary> s = SummarizeSites(report);
  EXPECT_THAT(*s[0].mean_auc_local_only, DoubleNear(0.68, 1e-12));
  EXPECT_FALSE(s[1].mean_auc_local_only.has_value());
  const std::string text = SiteSummaryText(report);
  EXPECT_TRUE(
      std::regex_search(text, std::regex("site-a +120 +0\\.650 -> 0\\.700 -> 0\\.750 +0\\.680 +2/2 +0 +0\\.250\n")))
      << text;
  // Without the baseline the column is not shown.
  EXPECT_THAT(SiteSummaryText(MakeRunReport()), Not(HasSubstr("local only")));
  const nlohmann::json json = nlohmann::json::parse(ConsortiumReportJson(report));
  EXPECT_THAT(json["summary"][0]["mean_auc"]["local_only"].get<double>(), DoubleNear(0.68, 1e-12));
  EXPECT_TRUE(json["summary"][1]["mean_auc"]["local_only"].is_null());
  const nlohmann::json& site = json["sites"][0];
  EXPECT_THAT(site["models"]["local_only"]["mean_auc"].get<double>(), DoubleNear(0.68, 1e-12));
  EXPECT_THAT(site["comparisons"]["adapted_vs_local_only"]["wilcoxon_p"].get<double>(), DoubleNear(0.04, 1e-12));
  EXPECT_EQ(site["comparisons"]["adapted_vs_local_only"]["improved_significant"].get<int>(), 2);
  EXPECT_THAT(site["labels"][0]["delong_p"]["adapted_vs_local_only"].get<double>(), DoubleNear(0.01, 1e-12));
  EXPECT_THAT(ConsortiumReportHtml(report), HasSubstr("adapted vs local only"));
}

TEST(WriteConsortiumReportTest, WritesBothFiles) {
  fedtune::testing::TempDir tmp;
  const std::string dir = tmp.Join("out/report");
  absl::StatusOr<ReportFiles> files = WriteConsortiumReport(MakeRunReport(), dir);
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(files->json_path, dir + "/report.json");
  absl::StatusOr<std::string> json = io::ReadFile(files->json_path);
  ASSERT_TRUE(json.ok());
  EXPECT_EQ(*json, ConsortiumReportJson(MakeRunReport()));
  absl::StatusOr<std::string> html = io::ReadFile(files->html_path);
  ASSERT_TRUE(html.ok());
  EXPECT_EQ(*html, ConsortiumReportHtml(MakeRunReport()));
}

TEST(ConsortiumReportTest, EmptyReportDoesNotFail) {
  v1::RunReport report;
  EXPECT_THAT(ConsortiumReportHtml(report), HasSubstr("No site took part in this run."));
  const nlohmann::json j = nlohmann::json::parse(ConsortiumReportJson(report));
  EXPECT_TRUE(j["sites"].empty());
  EXPECT_THAT(SiteSummaryText(report), HasSubstr("site"));
}

// Site-supplied names (site ids as stored, label names, round notes) in the report: the terminal summary is
// escaped, the HTML holds no control character or invalid UTF-8, and report.json is still written (valid JSON).
// MakeRunReport with differential privacy: site-a's round report says epsilon 1.2, its final report 2.5 (the latest
// wins); site-b's round report `b_epsilon` (or non-private), and site-b declined round 2.
v1::RunReport PrivateRunReport(double b_epsilon, bool b_non_private) {
  v1::RunReport report = MakeRunReport();
  v1::RunConfig* config = report.mutable_status()->mutable_config();
  config->set_dp("dp-sgd");
  config->set_dp_noise_multiplier(1.1);
  config->set_dp_clip_norm(0.8);
  auto account = [](v1::MetricsReport* m, double epsilon, double delta, double budget, bool non_private) {
    v1::PrivacyAccount* a = m->mutable_privacy();
    a->set_epsilon(epsilon);
    a->set_delta(delta);
    a->set_max_epsilon(budget);
    a->set_private_steps(40);
    a->set_non_private_training(non_private);
  };
  v1::SiteRunReport* a = report.mutable_sites(0);
  account(a->mutable_metrics(0), 1.2, 1e-5, 4, false);
  account(a->mutable_metrics(1), 2.5, 1e-5, 4, false);
  account(report.mutable_sites(1)->mutable_metrics(0), b_epsilon, 1e-6, 0, b_non_private);
  v1::UpdateInfo* declined = report.mutable_status()->mutable_rounds(2)->mutable_updates(1);
  declined->set_upload_status(v1::UPLOAD_STATUS_DECLINED);
  declined->set_status("");
  declined->set_message("privacy budget: would raise this site's epsilon above its max_epsilon 3");
  declined->set_bytes(0);
  return report;
}

TEST(ConsortiumReportPrivacyTest, EpsilonPerSiteConsortiumMaximumAndDeclinedRounds) {
  const v1::RunReport report = PrivateRunReport(3.1, false);
  const nlohmann::json j = nlohmann::json::parse(ConsortiumReportJson(report));
  const nlohmann::json& p = j["privacy"];
  EXPECT_EQ(p["dp"], "dp-sgd");
  EXPECT_DOUBLE_EQ(p["dp_noise_multiplier"].get<double>(), 1.1);
  EXPECT_DOUBLE_EQ(p["consortium_epsilon"].get<double>(), 3.1);  // max(2.5, 3.1)
  EXPECT_FALSE(p["consortium_non_private"].get<bool>());
  EXPECT_DOUBLE_EQ(p["delta"].get<double>(), 1e-5);  // The larger delta.
  EXPECT_THAT(p["composition"].get<std::string>(), HasSubstr("parallel composition"));
  ASSERT_EQ(p["sites"].size(), 2u);
  EXPECT_EQ(p["sites"][0]["site_id"], "site-a");
  EXPECT_DOUBLE_EQ(p["sites"][0]["epsilon"].get<double>(), 2.5);  // The final report's, not round 1's.
  EXPECT_DOUBLE_EQ(p["sites"][0]["max_epsilon"].get<double>(), 4);
  EXPECT_EQ(p["sites"][0]["private_steps"], 40);
  EXPECT_TRUE(p["sites"][0]["declined_rounds"].empty());
  EXPECT_DOUBLE_EQ(p["sites"][1]["delta"].get<double>(), 1e-6);
  EXPECT_EQ(p["sites"][1]["declined_rounds"], nlohmann::json::array({2}));
  ASSERT_EQ(p["declined"].size(), 1u);
  EXPECT_EQ(p["declined"][0]["round"], 2);
  EXPECT_EQ(p["declined"][0]["site_id"], "site-b");
  EXPECT_THAT(p["declined"][0]["reason"].get<std::string>(), HasSubstr("max_epsilon 3"));
  // The round: one accepted, one declined (not refused); the update says "declined".
  const nlohmann::json& round2 = j["rounds"][2];
  EXPECT_EQ(round2["accepted"], 1);
  EXPECT_EQ(round2["refused"], 0);
  EXPECT_EQ(round2["declined"], 1);
  EXPECT_EQ(round2["updates"][1]["status"], "declined");

  const std::string text = SiteSummaryText(report);
  EXPECT_THAT(text, HasSubstr("Differential privacy (dp-sgd, noise multiplier 1.1, clip norm 0.8): consortium "
                              "epsilon 3.1 at delta 1e-05"));
  EXPECT_THAT(text, HasSubstr("parallel composition"));
  EXPECT_THAT(text, HasSubstr("declined: round 2 attempt 1 by site-b: privacy budget"));
  EXPECT_TRUE(std::regex_search(text, std::regex(R"(site-a +2\.5 +1e-05 +4 +-)"))) << text;
  EXPECT_TRUE(std::regex_search(text, std::regex(R"(site-b +3\.1 +1e-06 +none +2)"))) << text;

  const std::string html = ConsortiumReportHtml(report);
  EXPECT_THAT(html, HasSubstr("<h2>Differential privacy</h2>"));
  EXPECT_THAT(html, HasSubstr("Consortium epsilon 3.1 at delta 1e-05"));
  EXPECT_THAT(html, HasSubstr("<h3>Declined rounds</h3>"));
  EXPECT_THAT(html, HasSubstr("<td class=\"text\">declined</td>"));
  EXPECT_THAT(html, HasSubstr("<td>2.5</td>"));
}

TEST(ConsortiumReportPrivacyTest, ANonPrivateSiteMakesTheConsortiumEpsilonInfinite) {
  const v1::RunReport report = PrivateRunReport(std::numeric_limits<double>::infinity(), true);
  const nlohmann::json j = nlohmann::json::parse(ConsortiumReportJson(report));
  EXPECT_TRUE(j["privacy"]["consortium_epsilon"].is_null());
  EXPECT_TRUE(j["privacy"]["consortium_non_private"].get<bool>());
  EXPECT_TRUE(j["privacy"]["sites"][1]["epsilon"].is_null());
  EXPECT_TRUE(j["privacy"]["sites"][1]["non_private_training"].get<bool>());
  EXPECT_THAT(SiteSummaryText(report), HasSubstr("consortium epsilon ∞ (non-private)"));
  EXPECT_TRUE(std::regex_search(SiteSummaryText(report), std::regex(R"(site-b +∞ \(non-private\))")));
  EXPECT_THAT(ConsortiumReportHtml(report), HasSubstr("<td>∞ (non-private)</td>"));

  // A run without differential privacy shows none of it; its JSON says so with nulls.
  const v1::RunReport plain = MakeRunReport();
  EXPECT_THAT(SiteSummaryText(plain), Not(HasSubstr("Differential privacy")));
  EXPECT_THAT(ConsortiumReportHtml(plain), Not(HasSubstr("Differential privacy")));
  const nlohmann::json none = nlohmann::json::parse(ConsortiumReportJson(plain));
  EXPECT_TRUE(none["privacy"]["consortium_epsilon"].is_null());
  EXPECT_FALSE(none["privacy"]["sites"][0]["reported"].get<bool>());
}

// A DP run where a site with accepted updates reported no privacy account (an older agent, a lost report): the
// consortium epsilon is n/a, not the maximum over the others, and the report names the site.
TEST(ConsortiumReportPrivacyTest, AMissingAccountMakesTheConsortiumEpsilonNotANumber) {
  v1::RunReport report = PrivateRunReport(3.1, false);
  for (v1::MetricsReport& m : *report.mutable_sites(1)->mutable_metrics()) m.clear_privacy();
  const nlohmann::json j = nlohmann::json::parse(ConsortiumReportJson(report));
  const nlohmann::json& p = j["privacy"];
  EXPECT_TRUE(p["consortium_epsilon"].is_null());
  EXPECT_FALSE(p["consortium_epsilon_complete"].get<bool>());
  EXPECT_EQ(p["sites_without_account"], nlohmann::json::array({"site-b"}));
  EXPECT_FALSE(p["sites"][1]["reported"].get<bool>());
  const std::string text = SiteSummaryText(report);
  EXPECT_THAT(text, HasSubstr("consortium epsilon n/a"));
  EXPECT_THAT(text, HasSubstr("no privacy account from site-b"));
  EXPECT_THAT(ConsortiumReportHtml(report), HasSubstr("no privacy account from site-b"));
  EXPECT_THAT(ConsortiumReportHtml(report), HasSubstr("Consortium epsilon n/a"));
  // A NaN epsilon is not an account either.
  report.mutable_sites(1)->mutable_metrics(0)->mutable_privacy()->set_epsilon(std::nan(""));
  EXPECT_TRUE(nlohmann::json::parse(ConsortiumReportJson(report))["privacy"]["consortium_epsilon"].is_null());
  // Every account present: complete.
  const nlohmann::json full = nlohmann::json::parse(ConsortiumReportJson(PrivateRunReport(3.1, false)));
  EXPECT_TRUE(full["privacy"]["consortium_epsilon_complete"].get<bool>());
  EXPECT_TRUE(full["privacy"]["sites_without_account"].empty());
}

// `fedtune report --reference-run`: the private run's mean AUCs next to a non-private reference run's, per site,
// with the differences and the site's epsilon; a site the reference lacks shows n/a.
TEST(ConsortiumReportReferenceTest, PrivateRunNextToTheNonPrivateReference) {
  const v1::RunReport report = PrivateRunReport(3.1, false);
  v1::RunReport reference = MakeRunReport();
  reference.mutable_status()->set_run_id("run-reference");
  reference.mutable_status()->set_name("non-private");
  const std::vector<SiteSummary> ours = SummarizeSites(report);
  const std::vector<SiteSummary> theirs = SummarizeSites(reference);
  ASSERT_EQ(ours.size(), 2u);
  ASSERT_TRUE(ours[0].mean_auc_adapted.has_value() && theirs[0].mean_auc_adapted.has_value());
  // The reference's first site evaluated a better adapted model by 0.05.
  for (v1::MetricsReport& m : *reference.mutable_sites(0)->mutable_metrics()) {
    if (m.kind() != "final") continue;
    for (v1::ModelEvaluation& e : *m.mutable_models()) {
      if (e.name() == "adapted") e.set_mean_auc(e.mean_auc() + 0.05);
    }
  }
  reference.mutable_sites()->RemoveLast();  // The reference lacks site-b.

  const nlohmann::json j = nlohmann::json::parse(ConsortiumReportJson(report, &reference));
  const nlohmann::json& r = j["reference"];
  EXPECT_EQ(r["run_id"], "run-reference");
  EXPECT_EQ(r["dp"], "none");
  ASSERT_EQ(r["sites"].size(), 2u);
  EXPECT_EQ(r["sites"][0]["site_id"], "site-a");
  EXPECT_DOUBLE_EQ(r["sites"][0]["epsilon"].get<double>(), 2.5);
  const double a = r["sites"][0]["mean_auc"]["adapted"].get<double>();
  const double ra = r["sites"][0]["reference_mean_auc"]["adapted"].get<double>();
  EXPECT_NEAR(ra - a, 0.05, 1e-9);
  EXPECT_NEAR(r["sites"][0]["difference"]["adapted"].get<double>(), -0.05, 1e-9);
  EXPECT_TRUE(r["sites"][1]["reference_mean_auc"]["adapted"].is_null());
  EXPECT_TRUE(r["sites"][1]["difference"]["adapted"].is_null());
  EXPECT_FALSE(nlohmann::json::parse(ConsortiumReportJson(report)).contains("reference"));

  const std::string text = SiteSummaryText(report, &reference);
  EXPECT_THAT(text, HasSubstr("Against reference run run-reference"));
  EXPECT_THAT(text, HasSubstr("dp dp-sgd (noise multiplier 1.1, clip 0.8)"));
  EXPECT_TRUE(std::regex_search(text, std::regex(R"(site-a +2\.5 .* -0\.050)"))) << text;
  const std::string html = ConsortiumReportHtml(report, &reference);
  EXPECT_THAT(html, HasSubstr("<h2>Against the reference run</h2>"));
  EXPECT_THAT(html, HasSubstr("<td>-0.050</td>"));
}

TEST(ConsortiumReportTest, HostileSiteTextIsEscapedInEveryOutput) {
  for (const std::string& hostile : testing::HostileTexts()) {
    v1::RunReport report = MakeRunReport();
    report.mutable_status()->set_name(hostile);
    report.mutable_status()->set_state(hostile);
    report.mutable_status()->set_message(hostile);
    for (v1::RoundInfo& round : *report.mutable_status()->mutable_rounds()) round.set_message(hostile);
    // A declined update whose reason (site-supplied) is hostile, and a site with a privacy account.
    report.mutable_status()->mutable_config()->set_dp(hostile);
    v1::UpdateInfo* declined = report.mutable_status()->mutable_rounds(2)->mutable_updates(1);
    declined->set_upload_status(v1::UPLOAD_STATUS_DECLINED);
    declined->set_message(hostile);
    report.mutable_sites(0)->mutable_metrics(1)->mutable_privacy()->set_epsilon(1.5);
    for (v1::SiteRunReport& site : *report.mutable_sites()) {
      site.set_site_id(hostile + site.site_id());
      for (v1::MetricsReport& metrics : *site.mutable_metrics()) {
        for (v1::ModelEvaluation& model : *metrics.mutable_models()) {
          for (v1::LabelAuc& label : *model.mutable_labels()) label.set_label(hostile + label.label());
        }
      }
    }
    const std::string text = SiteSummaryText(report);
    EXPECT_EQ(testing::TerminalUnsafety(text), "") << absl::CEscape(hostile) << "\n" << absl::CEscape(text);
    const std::string html = ConsortiumReportHtml(report);
    EXPECT_EQ(testing::TerminalUnsafety(html), "") << absl::CEscape(hostile);
    std::string json;
    ASSERT_NO_THROW(json = ConsortiumReportJson(report)) << absl::CEscape(hostile);
    EXPECT_FALSE(nlohmann::json::parse(json, nullptr, false).is_discarded()) << absl::CEscape(hostile);
  }
}

}  // namespace
}  // namespace fedtune::admin
