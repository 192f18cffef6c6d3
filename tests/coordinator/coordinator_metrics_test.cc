#include "coordinator/coordinator_metrics.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "coordinator/rpc_metrics_interceptor.h"
#include "coordinator/state_store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::coordinator {
namespace {

using federation::RoundState;
using federation::RunState;
using federation::SiteStatus;
using ::testing::HasSubstr;
using ::testing::Not;

// The text exposition of a collectable.
std::string Scrape(const prometheus::Collectable& collectable) {
  return prometheus::TextSerializer().Serialize(collectable.Collect());
}

// The value of the sample line `series` ("name{labels}"); -1 when absent.
double Sample(const std::string& body, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    if (absl::StartsWith(line, series + " ")) {
      double value = -1;
      if (absl::SimpleAtod(line.substr(series.size() + 1), &value)) return value;
    }
  }
  return -1;
}

TEST(CoordinatorMetricsTest, RunAndRoundEventsChangeTheirSeries) {
  CoordinatorMetrics metrics;
  std::string body = Scrape(*metrics.registry());
  // Present at 0 before anything happened, so that dashboards and alerts see the series.
  EXPECT_EQ(Sample(body, "fedtune_coordinator_runs_started_total"), 0);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_current_round"), 0);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_round_open"), 0);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_rounds_total{state=\"closed\"}"), 0);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_rounds_total{state=\"failed\"}"), 0);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_open_streams{kind=\"download\"}"), 0);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_aggregation_seconds_count"), 0);

  metrics.RunStarted();
  metrics.SetCurrentRound(2, true);
  metrics.RoundEnded("closed");
  metrics.RoundEnded("closed");
  metrics.RoundEnded("failed");
  metrics.RoundEnded("no such state");
  metrics.AggregationFinished(0.3);
  body = Scrape(*metrics.registry());
  EXPECT_EQ(Sample(body, "fedtune_coordinator_runs_started_total"), 1);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_current_round"), 2);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_round_open"), 1);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_rounds_total{state=\"closed\"}"), 2);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_rounds_total{state=\"failed\"}"), 1);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_rounds_total{state=\"other\"}"), 1);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_aggregation_seconds_count"), 1);
  EXPECT_DOUBLE_EQ(Sample(body, "fedtune_coordinator_aggregation_seconds_sum"), 0.3);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_aggregation_seconds_bucket{le=\"0.25\"}"), 0);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_aggregation_seconds_bucket{le=\"0.5\"}"), 1);

  metrics.SetCurrentRound(0, false);
  body = Scrape(*metrics.registry());
  EXPECT_EQ(Sample(body, "fedtune_coordinator_current_round"), 0);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_round_open"), 0);
}

TEST(CoordinatorMetricsTest, SiteTransfersUploadsAndFailuresAreCountedPerSite) {
  CoordinatorMetrics metrics;
  metrics.SiteSentBytes("site-a", 1000);
  metrics.SiteSentBytes("site-a", 24);
  metrics.SiteReceivedBytes("site-b", 500);
  metrics.SiteReceivedBytes("site-b", -7);  // Never decreases a counter.
  metrics.UploadResult("site-a", "accepted");
  metrics.UploadResult("site-b", "refused");
  metrics.UploadResult("site-b", "declined");
  metrics.UploadResult("site-b", "refused");
  metrics.UploadResumed("site-b");
  metrics.SiteFailure("site-a", "training");
  metrics.SiteFailure("site-a", "made-up stage");
  const std::string body = Scrape(*metrics.registry());
  EXPECT_EQ(Sample(body, "fedtune_coordinator_site_sent_bytes_total{site=\"site-a\"}"), 1024);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_site_received_bytes_total{site=\"site-b\"}"), 500);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_uploads_total{result=\"accepted\",site=\"site-a\"}"), 1);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_uploads_total{result=\"refused\",site=\"site-b\"}"), 2);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_uploads_total{result=\"declined\",site=\"site-b\"}"), 1);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_upload_resumes_total{site=\"site-b\"}"), 1);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_site_failures_total{site=\"site-a\",stage=\"training\"}"), 1);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_site_failures_total{site=\"site-a\",stage=\"other\"}"), 1);
}

TEST(CoordinatorMetricsTest, ASiteSeriesExistAtZeroFromItsFirstCall) {
  CoordinatorMetrics metrics;
  EXPECT_THAT(Scrape(*metrics.registry()), Not(HasSubstr("site-c")));
  metrics.SiteWaitingForTask("site-c");
  const std::string body = Scrape(*metrics.registry());
  EXPECT_EQ(Sample(body, "fedtune_coordinator_site_sent_bytes_total{site=\"site-c\"}"), 0);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_site_received_bytes_total{site=\"site-c\"}"), 0);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_upload_resumes_total{site=\"site-c\"}"), 0);
  for (const char* result : {"accepted", "refused", "declined"}) {
    EXPECT_EQ(Sample(body, std::string("fedtune_coordinator_uploads_total{result=\"") + result + "\",site=\"site-c\"}"),
              0);
  }
  for (const char* stage : CoordinatorMetrics::kFailureStages) {
    EXPECT_EQ(
        Sample(body, std::string("fedtune_coordinator_site_failures_total{site=\"site-c\",stage=\"") + stage + "\"}"),
        0);
  }
}

TEST(CoordinatorMetricsTest, RpcsAreCountedByMethodAndCodeAndStreamsWhileOpen) {
  CoordinatorMetrics metrics;
  metrics.RpcFinished("SiteService/GetTask", "OK", 2.0);
  metrics.RpcFinished("SiteService/GetTask", "OK", 0.01);
  metrics.RpcFinished("SiteService/GetTask", "UNAVAILABLE", 0.01);
  metrics.StreamOpened("upload");
  metrics.StreamOpened("upload");
  metrics.StreamClosed("upload");
  const std::string body = Scrape(*metrics.registry());
  EXPECT_EQ(Sample(body, "fedtune_coordinator_rpcs_total{code=\"OK\",method=\"SiteService/GetTask\"}"), 2);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_rpcs_total{code=\"UNAVAILABLE\",method=\"SiteService/GetTask\"}"), 1);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_rpc_duration_seconds_count{method=\"SiteService/GetTask\"}"), 3);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_rpc_duration_seconds_bucket{method=\"SiteService/GetTask\",le=\"1\"}"),
            2);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_open_streams{kind=\"upload\"}"), 1);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_open_streams{kind=\"download\"}"), 0);
}

TEST(CoordinatorMetricsTest, HeartbeatTextsBecomeCoarseStates) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"downloading", "downloading"},
      {"training", "training"},
      {"training member 1/3, epoch 2/5", "training"},
      {"training the local-only baseline", "training"},
      {"evaluating", "evaluating"},
      {"evaluating the local-only baseline", "evaluating"},
      {"cross-site evaluation 1/2", "evaluating"},
      {"encoding", "uploading"},
      {"uploading", "uploading"},
      {"sharing", "uploading"},
      {"reporting", "uploading"},
      {"secure aggregation: keys", "secure_aggregation"},
      {"retrying: UNAVAILABLE connection refused", "retrying"},
      {"failed: INVALID_ARGUMENT image unreadable", "failed"},
      {"done", "idle"},
      {"declined", "idle"},
      {"cancelled", "idle"},
      {"", "idle"},
      {"anything a newer agent says", "idle"}};
  for (const auto& [text, coarse] : cases) EXPECT_EQ(CoordinatorMetrics::CoarseSiteState(text), coarse) << text;
}

TEST(CoordinatorMetricsTest, AFailedSiteStaysFailedUntilItsNextTaskReportsAnotherState) {
  CoordinatorMetrics metrics;
  metrics.SiteHeartbeat("site-a", "training member 1/1, epoch 1/2");
  EXPECT_EQ(metrics.SiteStates().at("site-a"), "training");
  metrics.SiteFailure("site-a", "training");
  EXPECT_EQ(metrics.SiteStates().at("site-a"), "failed");
  metrics.SiteWaitingForTask("site-a");  // Waiting for work after the failure: still shown failed.
  EXPECT_EQ(metrics.SiteStates().at("site-a"), "failed");
  metrics.SiteHeartbeat("site-a", "downloading");
  EXPECT_EQ(metrics.SiteStates().at("site-a"), "downloading");
  metrics.SiteWaitingForTask("site-a");
  EXPECT_EQ(metrics.SiteStates().at("site-a"), "idle");
}

class StateCollectorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<StateStore>> store = StateStore::Open(":memory:");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }

  void AddRun(const std::string& id, RunState state) {
    RunRecord run;
    run.run_id = id;
    run.config.set_rounds(1);
    run.state = state;
    run.sites = {"site-a"};
    run.base_model_digest = std::string(64, 'a');
    run.current_round = 1;
    RoundRecord round;
    round.run_id = id;
    round.round = 1;
    round.attempt = 1;
    round.state = RoundState::kOpen;
    round.model_digest = run.base_model_digest;
    ASSERT_TRUE(store_->CreateRun(run, round).ok());
  }

  std::unique_ptr<StateStore> store_;
  testing::TempDir tmp_;
  absl::Time now_ = absl::FromUnixSeconds(1'800'000'000);
};

TEST_F(StateCollectorTest, RunsByStateSitesAndSpoolAreReadAtScrapeTime) {
  CoordinatorMetricsOptions options;
  options.clock = [this] { return now_; };
  options.heartbeat_timeout_seconds = 60;
  CoordinatorMetrics metrics(options);
  std::shared_ptr<prometheus::Collectable> collector = metrics.StateCollector(store_.get(), tmp_.path());

  std::string body = Scrape(*collector);
  for (const char* state : {"running", "evaluating", "completed", "failed", "aborted"}) {
    EXPECT_EQ(Sample(body, std::string("fedtune_coordinator_runs{state=\"") + state + "\"}"), 0) << state;
  }
  EXPECT_THAT(body, Not(HasSubstr("fedtune_coordinator_spool_bytes ")));  // No spool folder yet: left out.

  AddRun("run-0001", RunState::kCompleted);
  AddRun("run-0002", RunState::kCompleted);
  AddRun("run-0003", RunState::kRunning);
  const int64_t now_ms = absl::ToUnixMillis(now_);
  ASSERT_TRUE(store_->SetSiteStatus("site-a", SiteStatus::kApproved, true, now_ms - 5'000).ok());
  ASSERT_TRUE(store_->TouchSite("site-a", now_ms - 5'000).ok());
  ASSERT_TRUE(store_->SetSiteStatus("site-b", SiteStatus::kApproved, true, now_ms).ok());
  ASSERT_TRUE(store_->TouchSite("site-b", now_ms - 61'000).ok());  // Silent for longer than the timeout.
  ASSERT_TRUE(store_->SetSiteStatus("site-r", SiteStatus::kRevoked, true, now_ms).ok());
  ASSERT_TRUE(store_->TouchSite("site-r", now_ms).ok());
  metrics.SiteHeartbeat("site-a", "training member 1/1, epoch 1/1");
  metrics.SiteHeartbeat("site-b", "uploading");
  tmp_.WriteFile("spool/run-0003/r1-a1-site-a-x.upload", std::string(300, 'x'));
  tmp_.WriteFile("spool/run-0003/r1-a1-site-b-y.upload", std::string(200, 'y'));

  body = Scrape(*collector);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_runs{state=\"completed\"}"), 2);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_runs{state=\"running\"}"), 1);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_runs{state=\"aborted\"}"), 0);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_site_last_seen_timestamp_seconds{site=\"site-a\"}"),
            (now_ms - 5'000) / 1000.0);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_site_state{site=\"site-a\",state=\"training\"}"), 1);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_site_state{site=\"site-a\",state=\"idle\"}"), 0);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_site_state{site=\"site-b\",state=\"lost\"}"), 1);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_site_state{site=\"site-b\",state=\"uploading\"}"), 0);
  EXPECT_THAT(body, Not(HasSubstr("site-r")));  // Revoked: not shown.
  // Exactly one state is 1 per site.
  int ones = 0;
  for (const char* state : CoordinatorMetrics::kSiteStates) {
    ones += Sample(body, std::string("fedtune_coordinator_site_state{site=\"site-a\",state=\"") + state + "\"}") == 1;
  }
  EXPECT_EQ(ones, 1);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_spool_bytes"), 500);

  // site-b calls again: no longer lost; it waits for a task.
  ASSERT_TRUE(store_->TouchSite("site-b", now_ms).ok());
  metrics.SiteWaitingForTask("site-b");
  body = Scrape(*collector);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_site_state{site=\"site-b\",state=\"idle\"}"), 1);
  EXPECT_EQ(Sample(body, "fedtune_coordinator_site_state{site=\"site-b\",state=\"lost\"}"), 0);
}

TEST(RpcMetricsInterceptorTest, MethodLabelsAndCodeNames) {
  const std::set<std::string> known = CoordinatorMethods();
  EXPECT_TRUE(known.count("/fedtune.v1.SiteService/GetTask"));
  EXPECT_TRUE(known.count("/fedtune.v1.SiteService/UploadUpdate"));
  EXPECT_TRUE(known.count("/fedtune.v1.AdminService/StartRun"));
  EXPECT_EQ(RpcMethodLabel("/fedtune.v1.SiteService/GetTask", known), "SiteService/GetTask");
  EXPECT_EQ(RpcMethodLabel("/fedtune.v1.AdminService/ExportModel", known), "AdminService/ExportModel");
  EXPECT_EQ(RpcMethodLabel("/evil.Service/Anything", known), "unknown");
  EXPECT_EQ(RpcMethodLabel("", known), "unknown");
  EXPECT_STREQ(GrpcCodeName(grpc::StatusCode::OK), "OK");
  EXPECT_STREQ(GrpcCodeName(grpc::StatusCode::UNAVAILABLE), "UNAVAILABLE");
  EXPECT_STREQ(GrpcCodeName(grpc::StatusCode::UNAUTHENTICATED), "UNAUTHENTICATED");
  EXPECT_STREQ(GrpcCodeName(static_cast<grpc::StatusCode>(99)), "UNKNOWN");
}

}  // namespace
}  // namespace fedtune::coordinator
