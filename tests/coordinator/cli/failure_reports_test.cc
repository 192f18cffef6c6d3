// The operator's views of failure reports (coordinator/cli/admin_commands.h) from hand-built answers: `sites show`
// (SiteDetailText), the "last failure" column of `sites list` and the failures under `run status`; and that whatever a
// site puts in a report (message, log lines, error class) reaches the terminal escaped and bounded.
#include <algorithm>
#include <map>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "coordinator/cli/admin_commands.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/coordinator/cli/terminal_check.h"

namespace fedtune::admin {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr int64_t kNow = 1'700'000'000'000;

v1::SiteFailure Failure(int64_t received_ms, const std::string& message) {
  v1::SiteFailure f;
  f.set_site_id("site-a");
  f.set_received_ms(received_ms);
  v1::FailureReport* r = f.mutable_report();
  r->set_run_id("run-0003");
  r->set_round(2);
  r->set_attempt(1);
  r->set_task_kind(v1::Task::TRAIN);
  r->set_stage(v1::FAILURE_STAGE_TRAINING);
  r->set_error_class("INVALID_ARGUMENT");
  r->set_status_code(3);
  r->set_message(message);
  r->set_failed_ms(received_ms - 1000);
  return f;
}

v1::SiteResponse SiteA() {
  v1::SiteResponse response;
  v1::SiteInfo* site = response.mutable_site();
  site->set_site_id("site-a");
  site->set_status("approved");
  site->set_certificate_serial("3");
  site->set_first_seen_ms(kNow - 3'600'000);
  site->set_last_seen_ms(kNow - 4'000);
  site->set_state("training member 1/1, epoch 1/2");
  site->set_key_sha256(std::string(64, 'a'));
  site->mutable_dataset()->set_images(80);
  site->mutable_dataset()->set_train_images(48);
  site->mutable_dataset()->set_validation_images(12);
  site->mutable_dataset()->set_test_images(20);
  site->mutable_dataset()->set_studies(56);
  site->mutable_dataset()->set_patients(41);
  site->mutable_capabilities()->set_agent_version("fedtune-site/1");
  site->mutable_capabilities()->set_device("cpu");
  site->mutable_capabilities()->set_threads(2);
  v1::SiteFailure newest = Failure(kNow - 60'000, "[path]: not a decodable image (format by content: unknown)");
  newest.mutable_report()->add_log_lines("I1208 training member 1/1, epoch 1/2");
  newest.mutable_report()->add_log_lines("E1208 [path]: not a decodable image");
  newest.mutable_report()->set_will_retry(true);
  v1::SiteFailure older = Failure(kNow - 7'200'000, "coordinator unreachable");
  older.mutable_report()->set_stage(v1::FAILURE_STAGE_DOWNLOAD);
  older.mutable_report()->set_error_class("UNAVAILABLE");
  older.mutable_report()->set_status_code(14);
  *site->mutable_last_failure() = newest;
  *response.add_failures() = newest;
  *response.add_failures() = older;
  return response;
}

TEST(SiteDetailTextTest, ShowsTheSiteAndItsReportsMostRecentFirst) {
  const std::string text = SiteDetailText(SiteA(), kNow);
  EXPECT_THAT(text, HasSubstr("site site-a: approved (certificate serial 3)\n  pinned key sha256 aaaa"));
  EXPECT_THAT(text, HasSubstr("  last seen     4s ago ("));
  EXPECT_THAT(text, HasSubstr("  state         training member 1/1, epoch 1/2\n"));
  EXPECT_THAT(text, HasSubstr("  dataset       80 images: train 48, val 12, test 20; 56 studies, 41 patients\n"));
  EXPECT_THAT(text, HasSubstr("  agent         fedtune-site/1 on cpu, 2 thread(s)\n"));
  EXPECT_THAT(text, HasSubstr("\nFailure reports (2, most recent first):\n"));
  EXPECT_THAT(text, HasSubstr("(60s ago)  run-0003 round 2 attempt 1 (TRAIN)\n"
                              "  stage    training\n"
                              "  error    INVALID_ARGUMENT (code 3); the site retries the task itself\n"
                              "  message  [path]: not a decodable image (format by content: unknown)\n"));
  EXPECT_THAT(text, HasSubstr("  log      last 2 line(s) before the failure:\n"
                              "    | I1208 training member 1/1, epoch 1/2\n"
                              "    | E1208 [path]: not a decodable image\n"));
  EXPECT_THAT(text, HasSubstr("(2h ago)  run-0003 round 2 attempt 1 (TRAIN)\n"
                              "  stage    download\n"
                              "  error    UNAVAILABLE (code 14)\n"));
  EXPECT_THAT(text, HasSubstr("  log      none shared"));
  EXPECT_LT(text.find("(60s ago)"), text.find("(2h ago)")) << "most recent first";

  v1::SiteResponse quiet = SiteA();
  quiet.clear_failures();
  quiet.mutable_site()->clear_last_failure();
  const std::string none = SiteDetailText(quiet, kNow);
  EXPECT_THAT(none, HasSubstr("No failure reports."));
  EXPECT_THAT(none, Not(HasSubstr("Failure reports (")));
}

TEST(SiteDetailTextTest, ALogMessageOfSeveralLinesIsShownAsItsLines) {
  v1::SiteResponse response = SiteA();
  v1::FailureReport* r = response.mutable_failures(0)->mutable_report();
  r->clear_log_lines();
  r->add_log_lines("I split of <path>:\n% positive  all  train\nNo Finding  10.00  10.42\n");
  r->add_log_lines("E next\x1b[2J");
  EXPECT_THAT(SiteDetailText(response, kNow), HasSubstr("  log      last 2 line(s) before the failure:\n"
                                                        "    | I split of <path>:\n"
                                                        "    | % positive  all  train\n"
                                                        "    | No Finding  10.00  10.42\n"
                                                        "    | E next\\x1b[2J\n"));
}

TEST(SiteDetailTextTest, AFailureNotTiedToARun) {
  v1::SiteResponse response = SiteA();
  v1::FailureReport* r = response.mutable_failures(0)->mutable_report();
  r->clear_run_id();
  r->set_task_kind(v1::Task::NONE);
  EXPECT_THAT(SiteDetailText(response, kNow), HasSubstr("(60s ago)  no run\n"));
}

TEST(SitesTableTextTest, MarksASiteWhoseLatestFailureIsNewerThanItsLastSuccess) {
  v1::ListSitesResponse sites;
  *sites.add_sites() = SiteA().site();
  v1::SiteInfo* recovered = sites.add_sites();
  *recovered = SiteA().site();
  recovered->set_site_id("site-b");
  v1::SiteInfo* never = sites.add_sites();
  never->set_site_id("site-c");
  never->set_status("approved");
  // site-a succeeded before its failure; site-b after (it recovered); site-c never failed.
  std::map<std::string, int64_t> last_success = {{"site-a", kNow - 600'000}, {"site-b", kNow - 1'000}};
  const std::string table = SitesTableText(sites, kNow, last_success);
  EXPECT_THAT(table, HasSubstr("key sha256        last failure\n"));
  EXPECT_THAT(table, HasSubstr("! training INVALID_ARGUMENT 60s ago\n"));
  EXPECT_THAT(table, HasSubstr("  training INVALID_ARGUMENT 60s ago\n"));
  EXPECT_THAT(table, HasSubstr("! the site's latest failure is newer than its last accepted update"));

  last_success["site-a"] = kNow;
  const std::string healthy = SitesTableText(sites, kNow, last_success);
  EXPECT_THAT(healthy, Not(HasSubstr("!")));
  // No success known (no run yet, or not in the latest run): every failure is marked.
  const std::string unknown = SitesTableText(sites, kNow);
  EXPECT_THAT(unknown, HasSubstr("site-b  approved"));
  EXPECT_EQ(std::count(unknown.begin(), unknown.end(), '!'), 3) << unknown;  // site-a, site-b and the legend.
}

TEST(LastAcceptedUpdatesTest, TheLatestAcceptedUpdateOfEachSite) {
  v1::RunStatus status;
  auto add = [&status](int round, const std::string& site, v1::UploadStatus state, int64_t ms) {
    while (status.rounds_size() < round) status.add_rounds()->set_round(status.rounds_size() + 1);
    v1::UpdateInfo* u = status.mutable_rounds(round - 1)->add_updates();
    u->set_site_id(site);
    u->set_upload_status(state);
    u->set_received_ms(ms);
  };
  add(1, "site-a", v1::UPLOAD_STATUS_ACCEPTED, 100);
  add(2, "site-a", v1::UPLOAD_STATUS_ACCEPTED, 300);
  add(2, "site-b", v1::UPLOAD_STATUS_ACCEPTED, 200);
  add(2, "site-b", v1::UPLOAD_STATUS_REFUSED, 900);
  add(2, "site-c", v1::UPLOAD_STATUS_DECLINED, 950);
  EXPECT_EQ(LastAcceptedUpdates(status), (std::map<std::string, int64_t>{{"site-a", 300}, {"site-b", 200}}));
}

TEST(RunStatusTextTest, ListsEachSitesLatestFailureOfTheRunUnderTheSitesTable) {
  v1::RunStatus status;
  status.set_run_id("run-0003");
  status.set_run_state(v1::RUN_STATE_RUNNING);
  status.mutable_config()->set_rounds(3);
  v1::SiteRunState* a = status.add_sites();
  a->set_site_id("site-a");
  a->set_state("waiting");
  *a->mutable_last_failure() = Failure(kNow - 120'000, "[path]: not a decodable image");
  v1::SiteRunState* b = status.add_sites();
  b->set_site_id("site-b");
  b->set_state("training");
  const std::string text = RunStatusText(status, kNow);
  const size_t table = text.find("site    state");
  const size_t failures = text.find("Latest failure per site in this run");
  ASSERT_NE(table, std::string::npos) << text;
  ASSERT_NE(failures, std::string::npos) << text;
  EXPECT_LT(table, failures);
  EXPECT_THAT(text, HasSubstr("  site-a: round 2 attempt 1, training, INVALID_ARGUMENT, 2m ago: [path]: not a "
                              "decodable image\n"));
  EXPECT_THAT(text, Not(HasSubstr("site-b: round")));
  status.mutable_sites(0)->clear_last_failure();
  EXPECT_THAT(RunStatusText(status, kNow), Not(HasSubstr("Latest failure")));
}

// Everything in a report is the site's text: escaped, and bounded (a message at most 2048 bytes, a log line 512,
// plus the "..." of a cut).
TEST(FailureReportTerminalSafetyTest, SiteTextIsEscapedAndBounded) {
  for (const std::string& hostile : testing::HostileTexts()) {
    v1::SiteResponse response = SiteA();
    v1::SiteFailure* f = response.mutable_failures(0);
    f->set_site_id(hostile);
    v1::FailureReport* r = f->mutable_report();
    r->set_run_id(hostile);
    r->set_error_class(hostile);
    r->set_message(hostile);
    r->add_log_lines(hostile);
    *response.mutable_site()->mutable_last_failure() = *f;
    response.mutable_site()->mutable_capabilities()->set_agent_version(hostile);
    const std::string detail = SiteDetailText(response, kNow);
    EXPECT_EQ(testing::TerminalUnsafety(detail), "") << absl::CEscape(hostile) << "\n" << absl::CEscape(detail);

    v1::ListSitesResponse sites;
    *sites.add_sites() = response.site();
    const std::string table = SitesTableText(sites, kNow);
    EXPECT_EQ(testing::TerminalUnsafety(table), "") << absl::CEscape(hostile) << "\n" << absl::CEscape(table);

    v1::RunStatus status;
    status.set_run_id("run-0003");
    v1::SiteRunState* s = status.add_sites();
    s->set_site_id(hostile);
    *s->mutable_last_failure() = *f;
    const std::string text = RunStatusText(status, kNow);
    EXPECT_EQ(testing::TerminalUnsafety(text), "") << absl::CEscape(hostile) << "\n" << absl::CEscape(text);
  }
  v1::SiteResponse response = SiteA();
  v1::FailureReport* r = response.mutable_failures(0)->mutable_report();
  r->set_message("\x1b[2Jcleared " + std::string(5000, 'm'));
  r->clear_log_lines();
  r->add_log_lines(std::string(3000, 'l'));
  const std::string detail = SiteDetailText(response, kNow);
  EXPECT_THAT(detail, HasSubstr("  message  \\x1b[2Jcleared mmm"));
  EXPECT_THAT(detail, HasSubstr(std::string(100, 'm') + "...\n"));
  EXPECT_THAT(detail, Not(HasSubstr(std::string(2100, 'm'))));
  EXPECT_THAT(detail, HasSubstr("    | " + std::string(512, 'l') + "...\n"));
  EXPECT_THAT(detail, Not(HasSubstr(std::string(513, 'l'))));
}

}  // namespace
}  // namespace fedtune::admin
