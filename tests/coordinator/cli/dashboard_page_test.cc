// The dashboard's renderings (coordinator/cli/dashboard_page.h) from hand-built snapshots: the page's content and its
// stable hooks, failure reports, errors, escaping of everything a site or the coordinator sent (HTML and JSON), the
// loss chart, and the bounds.
#include "coordinator/cli/dashboard_page.h"

#include <map>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/coordinator/cli/run_report_fixture.h"
#include "tests/coordinator/cli/terminal_check.h"

namespace fedtune::admin {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr int64_t kNow = 1'700'000'000'000;

v1::SiteInfo Site(const std::string& id) {
  v1::SiteInfo site;
  site.set_site_id(id);
  site.set_site_status(v1::SITE_STATUS_APPROVED);
  site.set_status("approved");
  site.set_last_seen_ms(kNow - 4'000);
  site.set_state("training");
  site.mutable_dataset()->set_images(640);
  site.mutable_dataset()->set_train_images(450);
  site.mutable_dataset()->set_validation_images(90);
  site.mutable_dataset()->set_test_images(100);
  site.mutable_capabilities()->set_agent_version("0.9.1");
  site.mutable_capabilities()->set_device("cpu");
  return site;
}

v1::SiteFailure Failure(const std::string& message) {
  v1::SiteFailure failure;
  failure.set_site_id("site-b");
  failure.set_received_ms(kNow - 60'000);
  v1::FailureReport* r = failure.mutable_report();
  r->set_run_id("run-7");
  r->set_round(2);
  r->set_stage(v1::FAILURE_STAGE_TRAINING);
  r->set_error_class("DATA_LOSS");
  r->set_status_code(15);
  r->set_message(message);
  r->add_log_lines("reading image 12 of 40");
  r->add_log_lines("cannot decode image: truncated PNG");
  return failure;
}

DashboardSnapshot Snapshot() {
  DashboardSnapshot s;
  s.seq = 12;
  s.taken_ms = kNow;
  s.coordinator = "localhost:50051";
  v1::ListSitesResponse sites;
  *sites.add_sites() = Site("site-a");
  v1::SiteInfo b = Site("site-b");
  b.set_state("retrying: coordinator unreachable");
  *b.mutable_last_failure() = Failure("image unreadable");
  *sites.add_sites() = b;
  s.sites = sites;
  v1::RunStatus run = testing::MakeRunReport().status();
  run.set_state("running");
  *run.mutable_sites(1)->mutable_last_failure() = Failure("image unreadable");
  s.run = run;
  v1::ListRunsResponse runs;
  v1::RunStatus newest = run;
  newest.clear_rounds();
  newest.clear_sites();
  *runs.add_runs() = newest;
  v1::RunStatus older;
  older.set_run_id("run-6");
  older.set_state("aborted");
  older.mutable_config()->set_rounds(5);
  older.set_current_round(3);
  *runs.add_runs() = older;
  s.runs = runs;
  return s;
}

TEST(DashboardPageTest, ShowsSitesCurrentRunAndHistoryWithStableHooks) {
  const std::string page = DashboardPageHtml(Snapshot());
  EXPECT_TRUE(absl::StartsWith(page, "<!DOCTYPE html>"));
  EXPECT_THAT(page, HasSubstr("<body data-seq=\"12\">"));
  EXPECT_THAT(page, HasSubstr("id=\"snapshot-status\" data-seq=\"12\" data-ok=\"true\""));
  EXPECT_THAT(page, HasSubstr("localhost:50051"));
  // Sites: status, state, last seen, dataset summary, agent version.
  EXPECT_THAT(page, HasSubstr("<table id=\"sites\">"));
  EXPECT_THAT(page, HasSubstr("<tr data-site=\"site-a\"><td class=\"label\">site-a</td>"));
  EXPECT_THAT(page, HasSubstr("approved"));
  EXPECT_THAT(page, HasSubstr("4s ago"));
  EXPECT_THAT(page, HasSubstr("640 images (train 450, val 90, test 100)"));
  EXPECT_THAT(page, HasSubstr("0.9.1"));
  EXPECT_THAT(page, HasSubstr("<span class=\"state warn\">retrying: coordinator unreachable</span>"));
  // The current run: round x of y, per-site progress and traffic, the chart, the rounds, the report link.
  EXPECT_THAT(page, HasSubstr("id=\"current-round\" data-round=\"2\" data-rounds=\"2\">2 of 2</span>"));
  EXPECT_THAT(page, HasSubstr("data-run-id=\"run-7\" data-state=\"running\""));
  EXPECT_THAT(page, HasSubstr("Run run-7 &ldquo;demo &lt;b&gt;&rdquo;"));
  EXPECT_THAT(page, HasSubstr("2 closed"));
  EXPECT_THAT(page, HasSubstr("traffic 5.0 MiB down, 3.0 MiB up"));
  EXPECT_THAT(page, HasSubstr("<table id=\"run-sites\">"));
  EXPECT_THAT(page, HasSubstr("<progress max=\"1\" value=\"1.000\"></progress> 100%"));
  EXPECT_THAT(page, HasSubstr("2.0 MiB"));
  EXPECT_THAT(page, HasSubstr("<svg id=\"loss-chart\" data-points=\"2\""));
  EXPECT_THAT(page, HasSubstr("<table id=\"rounds\">"));
  EXPECT_THAT(page, HasSubstr("1 of 2 min_sites at the deadline"));
  EXPECT_THAT(page, HasSubstr("<a href=\"/runs/run-7/report\">consortium report</a>"));
  // History, newest first, each with its report.
  EXPECT_THAT(page, HasSubstr("<table id=\"runs\">"));
  EXPECT_LT(page.find("<tr data-run-id=\"run-7\">"), page.find("<tr data-run-id=\"run-6\">"));
  EXPECT_THAT(page, HasSubstr("<a href=\"/runs/run-6/report\">report</a>"));
  EXPECT_THAT(page, HasSubstr("3/5"));
  // Compiled in, nothing external.
  EXPECT_THAT(page, HasSubstr("<script src=\"/static/dashboard.js\"></script>"));
  EXPECT_THAT(page, Not(HasSubstr("http://")));
  EXPECT_THAT(page, Not(HasSubstr("https://")));
  EXPECT_THAT(page, Not(HasSubstr("<link")));
}

TEST(DashboardPageTest, FailureReportsShowStageClassMessageAndLogLines) {
  const std::string page = DashboardPageHtml(Snapshot());
  // The site's last failure (sites table) and its last failure in the run (run's table).
  EXPECT_THAT(page, HasSubstr("<div class=\"failure\" data-stage=\"training\"><b>training</b>: <code>DATA_LOSS</code> "
                              "image unreadable <span class=\"note\">(run-7 round 2, 60s ago)</span>"));
  EXPECT_THAT(page, HasSubstr("<details data-key=\"site/site-b\"><summary>last log lines</summary>"));
  EXPECT_THAT(page, HasSubstr("<details data-key=\"run/site-b\">"));
  EXPECT_THAT(page, HasSubstr("cannot decode image: truncated PNG"));
  const json state = json::parse(DashboardStateJson(Snapshot()));
  const json& failure = state["sites"][1]["last_failure"];
  EXPECT_EQ(failure["stage"], "training");
  EXPECT_EQ(failure["error_class"], "DATA_LOSS");
  EXPECT_EQ(failure["status_code"], 15);
  EXPECT_EQ(failure["message"], "image unreadable");
  EXPECT_EQ(failure["log_lines"].size(), 2u);
  EXPECT_TRUE(state["sites"][0]["last_failure"].is_null());
  EXPECT_EQ(state["run"]["sites"][1]["last_failure"]["round"], 2);
}

TEST(DashboardPageTest, StateJsonHasTheSnapshot) {
  const json state = json::parse(DashboardStateJson(Snapshot()));
  EXPECT_EQ(state["format"], "fedtune-dashboard-state-v1");
  EXPECT_EQ(state["seq"], 12);
  EXPECT_EQ(state["coordinator"], "localhost:50051");
  EXPECT_TRUE(state["errors"].empty());
  ASSERT_EQ(state["sites"].size(), 2u);
  EXPECT_EQ(state["sites_total"], 2);
  EXPECT_EQ(state["sites"][0]["site_id"], "site-a");
  EXPECT_EQ(state["sites"][0]["status"], "approved");
  EXPECT_EQ(state["sites"][0]["agent_version"], "0.9.1");
  EXPECT_EQ(state["sites"][0]["dataset"]["train_images"], 450);
  const json& run = state["run"];
  EXPECT_EQ(run["run_id"], "run-7");
  EXPECT_EQ(run["name"], "demo <b>");  // JSON carries the text; the page escapes it.
  EXPECT_EQ(run["current_round"], 2);
  EXPECT_EQ(run["rounds_planned"], 2);
  EXPECT_EQ(run["rounds_closed"], 2);
  EXPECT_EQ(run["report_url"], "/runs/run-7/report");
  EXPECT_EQ(run["bytes_down"], 5 << 20);
  ASSERT_EQ(run["losses"].size(), 2u);
  EXPECT_EQ(run["losses"][0]["round"], 1);
  EXPECT_NEAR(run["losses"][0]["train_loss"].get<double>(), 0.4, 1e-9);  // The closed attempt's two updates.
  EXPECT_NEAR(run["losses"][1]["train_loss"].get<double>(), 0.3, 1e-9);
  EXPECT_NEAR(run["losses"][1]["validation_loss"].get<double>(), 0.45, 1e-9);
  EXPECT_EQ(run["sites"][0]["progress"], 1.0);
  ASSERT_EQ(state["runs"].size(), 2u);
  EXPECT_EQ(state["runs"][1]["run_id"], "run-6");
  EXPECT_EQ(state["runs"][1]["state"], "aborted");
  EXPECT_EQ(state["runs"][1]["current_round"], 3);
}

TEST(DashboardPageTest, ErrorsAndMissingPartsAreShown) {
  DashboardSnapshot s;
  s.seq = 3;
  s.taken_ms = kNow;
  s.coordinator = "coordinator.example:443";
  s.errors = {"coordinator unreachable: coordinator coordinator.example:443: ListSites: failed to connect"};
  const std::string page = DashboardPageHtml(s);
  EXPECT_THAT(page, HasSubstr("data-ok=\"false\""));
  EXPECT_THAT(page, HasSubstr("<p class=\"error\" id=\"error\">coordinator unreachable: coordinator "
                              "coordinator.example:443: ListSites: failed to connect</p>"));
  EXPECT_THAT(page, HasSubstr("id=\"current-round\" data-round=\"0\" data-rounds=\"0\""));
  EXPECT_THAT(page, HasSubstr("Not known yet"));
  const json state = json::parse(DashboardStateJson(s));
  EXPECT_EQ(state["errors"][0], s.errors[0]);
  EXPECT_TRUE(state["sites"].is_null());
  EXPECT_TRUE(state["run"].is_null());
  EXPECT_TRUE(state["runs"].is_null());
  // Before any poll.
  EXPECT_THAT(DashboardPageHtml(DashboardSnapshot()), HasSubstr("Waiting for the first answer"));
  // A coordinator without runs.
  DashboardSnapshot empty;
  empty.seq = 1;
  empty.no_run = true;
  empty.sites = v1::ListSitesResponse();
  empty.runs = v1::ListRunsResponse();
  const std::string empty_page = DashboardPageHtml(empty);
  EXPECT_THAT(empty_page, HasSubstr("No run yet."));
  EXPECT_THAT(empty_page, HasSubstr("No site has contacted the coordinator yet."));
}

TEST(DashboardPageTest, EverythingFromTheNetworkIsEscaped) {
  std::vector<std::string> hostile = testing::HostileTexts();
  hostile.push_back("<script>alert(1)</script>");
  hostile.push_back("\"><img src=x onerror=alert(1)>");
  hostile.push_back("</section><section id=\"current-round\" data-round=\"99\">");
  for (const std::string& text : hostile) {
    DashboardSnapshot s = Snapshot();
    v1::SiteInfo& site = s.sites->mutable_sites()->at(0);
    site.set_site_id(text);
    site.set_state(text);
    site.mutable_capabilities()->set_agent_version(text);
    *site.mutable_last_failure() = Failure(text);
    site.mutable_last_failure()->mutable_report()->set_error_class(text);
    site.mutable_last_failure()->mutable_report()->add_log_lines(text);
    s.run->set_name(text);
    s.run->set_message(text);
    s.run->mutable_sites(0)->set_state(text);
    s.run->mutable_rounds(0)->set_message(text);
    s.runs->mutable_runs(1)->set_run_id(text);
    s.errors.push_back(text);
    s.coordinator = text;
    const std::string page = DashboardPageHtml(s);
    EXPECT_EQ(testing::TerminalUnsafety(page), "") << text;
    EXPECT_THAT(page, Not(HasSubstr("<script>alert"))) << text;
    EXPECT_THAT(page, Not(HasSubstr("<img"))) << text;
    EXPECT_THAT(page, Not(HasSubstr("data-round=\"99\""))) << text;
    EXPECT_THAT(page, Not(HasSubstr("href=\"/runs/\"><img"))) << text;
    // JSON: valid, one line per event, and the sections escaped the same way.
    const std::string event = DashboardEventJson(s);
    EXPECT_EQ(event.find('\n'), std::string::npos) << text;
    const json parsed = json::parse(event);
    for (const auto& [id, section] : parsed["sections"].items()) {
      EXPECT_THAT(section.get<std::string>(), Not(HasSubstr("<script>alert"))) << id;
      EXPECT_THAT(section.get<std::string>(), Not(HasSubstr("<img"))) << id;
    }
    const json state = json::parse(DashboardStateJson(s));
    EXPECT_EQ(testing::TerminalUnsafety(state["sites"][0]["site_id"].get<std::string>()), "") << text;
    EXPECT_TRUE(state["runs"][1]["report_url"].is_null()) << text;  // Not a run id the route accepts: no link.
  }
}

TEST(DashboardPageTest, ChangedEventsCarryOnlyWhatChanged) {
  std::map<std::string, std::string> sent;
  const json all = json::parse(DashboardChangedEventJson(Snapshot(), &sent));
  EXPECT_EQ(all["sections"].size(), DashboardSectionIds().size());
  EXPECT_EQ(sent.size(), DashboardSectionIds().size());
  EXPECT_EQ(DashboardChangedEventJson(Snapshot(), &sent), "");  // Nothing changed: nothing to send.
  DashboardSnapshot later = Snapshot();
  later.run->set_current_round(later.run->current_round() + 1);
  const json changed = json::parse(DashboardChangedEventJson(later, &sent));
  EXPECT_TRUE(changed["sections"].contains("run-section")) << changed.dump();
  EXPECT_FALSE(changed["sections"].contains("sites-section")) << changed.dump();
  EXPECT_EQ(sent["run-section"], DashboardSectionHtml(later, "run-section"));
}

TEST(DashboardPageTest, EventCarriesEverySectionOnOneLine) {
  const std::string event = DashboardEventJson(Snapshot());
  EXPECT_EQ(event.find('\n'), std::string::npos);
  const json parsed = json::parse(event);
  EXPECT_EQ(parsed["seq"], 12);
  const std::string page = DashboardPageHtml(Snapshot());
  for (const std::string& id : DashboardSectionIds()) {
    ASSERT_TRUE(parsed["sections"].contains(id)) << id;
    const std::string section = parsed["sections"][id];
    EXPECT_TRUE(absl::StartsWith(section, absl::StrCat("<section id=\"", id, "\""))) << section;
    EXPECT_TRUE(absl::EndsWith(section, "</section>")) << id;
    EXPECT_THAT(page, HasSubstr(section)) << id;  // The page is made of the same sections.
  }
  EXPECT_EQ(DashboardSectionHtml(Snapshot(), "nope"), "");
}

TEST(DashboardPageTest, ListsAreBounded) {
  DashboardSnapshot s = Snapshot();
  for (int i = 0; i < 3 * kDashboardMaxSites; ++i) *s.sites->add_sites() = Site(absl::StrCat("site-", i));
  for (int i = 0; i < 4 * kDashboardMaxRuns; ++i) {
    v1::RunStatus* run = s.runs->add_runs();
    run->set_run_id(absl::StrCat("run-x", i));
  }
  v1::SiteInfo& big = s.sites->mutable_sites()->at(0);
  big.set_state(std::string(100000, 'x'));
  for (int i = 0; i < 1000; ++i) big.mutable_last_failure()->mutable_report()->add_log_lines("line");
  const std::string page = DashboardPageHtml(s);
  size_t rows = 0;
  for (size_t at = page.find("<tr data-site="); at != std::string::npos; at = page.find("<tr data-site=", at + 1)) {
    ++rows;
  }
  EXPECT_EQ(rows, static_cast<size_t>(kDashboardMaxSites) + s.run->sites_size());
  EXPECT_THAT(page, HasSubstr(absl::StrCat(3 * kDashboardMaxSites + 2 - kDashboardMaxSites, " more sites not shown")));
  EXPECT_THAT(page, Not(HasSubstr(absl::StrCat("run-x", kDashboardMaxRuns))));
  EXPECT_THAT(page, HasSubstr(absl::StrCat("run-x", kDashboardMaxRuns - 3)));
  EXPECT_THAT(page, Not(HasSubstr(std::string(kDashboardMaxText + 1, 'x'))));
  EXPECT_LT(page.size(), 2u << 20);
  const json state = json::parse(DashboardStateJson(s));
  EXPECT_EQ(state["sites"].size(), static_cast<size_t>(kDashboardMaxSites));
  EXPECT_EQ(state["sites_total"], 3 * kDashboardMaxSites + 2);
  EXPECT_EQ(state["runs"].size(), static_cast<size_t>(kDashboardMaxRuns));
  EXPECT_EQ(state["sites"][0]["last_failure"]["log_lines"].size(), static_cast<size_t>(kDashboardMaxLogLines));
}

TEST(DashboardPageTest, LossChart) {
  v1::RunStatus run;
  run.mutable_config()->set_rounds(4);
  EXPECT_THAT(LossChartSvg(run), HasSubstr("data-points=\"0\""));
  EXPECT_THAT(LossChartSvg(run), HasSubstr("no round has reported a loss yet"));
  // Round 1 failed once, then closed; round 2 is open with one upload; round 3 has a NaN loss only.
  auto add = [&](int round, int attempt, v1::RoundState state, std::vector<double> losses) {
    v1::RoundInfo* r = run.add_rounds();
    r->set_round(round);
    r->set_attempt(attempt);
    r->set_round_state(state);
    for (double loss : losses) {
      v1::UpdateInfo* u = r->add_updates();
      u->set_upload_status(v1::UPLOAD_STATUS_ACCEPTED);
      u->set_train_loss(loss);
    }
  };
  add(1, 1, v1::ROUND_STATE_FAILED, {9.0});
  add(1, 2, v1::ROUND_STATE_CLOSED, {0.8, 0.6});
  add(2, 1, v1::ROUND_STATE_OPEN, {0.5});
  add(3, 1, v1::ROUND_STATE_OPEN, {std::nan("")});
  const std::string svg = LossChartSvg(run);
  EXPECT_TRUE(absl::StartsWith(svg, "<svg id=\"loss-chart\" data-points=\"2\""));
  EXPECT_TRUE(absl::EndsWith(svg, "</svg>"));
  EXPECT_THAT(svg, HasSubstr("<title>round 1: train loss 0.7000</title>"));
  EXPECT_THAT(svg, HasSubstr("<title>round 2: train loss 0.5000</title>"));
  EXPECT_THAT(svg, Not(HasSubstr("9.000")));
  EXPECT_THAT(svg, Not(HasSubstr("nan")));
  EXPECT_THAT(svg, HasSubstr("<polyline"));
  EXPECT_THAT(svg, HasSubstr("mean train loss"));
  EXPECT_THAT(svg, Not(HasSubstr("mean validation loss")));  // No validation loss reported.
}

TEST(DashboardPageTest, ReportUrlsOnlyForRunIdsTheRouteAccepts) {
  EXPECT_EQ(RunReportUrl("run-0001"), "/runs/run-0001/report");
  EXPECT_EQ(RunReportUrl("a.b_c-9"), "/runs/a.b_c-9/report");
  for (const char* bad : {"", ".", "..", "a/b", "run 1", "<x>", "run%2F", "r\xc3\xa9"}) {
    EXPECT_EQ(RunReportUrl(bad), std::nullopt) << bad;
  }
  EXPECT_EQ(RunReportUrl(std::string(64, 'r')).has_value(), true);
  EXPECT_EQ(RunReportUrl(std::string(65, 'r')), std::nullopt);
}

TEST(DashboardPageTest, ScriptUsesOnlyTheDashboardsOwnEndpoints) {
  const std::string script = kDashboardScript;
  EXPECT_THAT(script, HasSubstr("new EventSource('/events')"));
  EXPECT_THAT(script, Not(HasSubstr("http")));
  EXPECT_THAT(script, Not(HasSubstr("eval(")));
}

TEST(DashboardPageTest, ScriptReconnectsAfterTheBrowserGaveUp) {
  // After a non-200 answer EventSource is CLOSED for good: the script says so and opens a new one later.
  const std::string script = kDashboardScript;
  EXPECT_THAT(script, HasSubstr("source.readyState === EventSource.CLOSED"));
  EXPECT_THAT(script, HasSubstr("setLive('disconnected', 'stale')"));
  EXPECT_THAT(script, HasSubstr("setTimeout(connect, 10000)"));
}

}  // namespace
}  // namespace fedtune::admin
