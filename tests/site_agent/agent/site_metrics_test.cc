// The site agent's metrics (site_agent/agent/site_metrics.h): the values after each hook, the heartbeat state
// mapping, retry waits, TrainingProgress's epochs, and the exposition served by a real endpoint
// (common/metrics/metrics_server.h) checked by `promtool check metrics`.
#include "site_agent/agent/site_metrics.h"

#include <cmath>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/metrics/metrics_server.h"
#include "gtest/gtest.h"
#include "site_agent/agent/training_progress.h"
#include "tests/site_agent/agent/metrics_scrape.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::agent {
namespace {

using testing::MetricValue;

double StateValue(const SiteMetrics& metrics, const char* state) {
  return MetricValue(metrics.Scrape(), absl::StrCat("fedtune_site_state{state=\"", state, "\"}"));
}

// The state that reads 1; "" unless exactly one does.
std::string CurrentState(const SiteMetrics& metrics) {
  std::string current;
  int ones = 0;
  for (const char* state :
       {"idle", "hello", "downloading", "training", "evaluating", "uploading", "secure_aggregation", "retrying"}) {
    const double value = StateValue(metrics, state);
    EXPECT_TRUE(value == 0 || value == 1) << state << " " << value;
    if (value == 1) {
      current = state;
      ++ones;
    }
  }
  return ones == 1 ? current : "";
}

TEST(SiteMetricsTest, StartsIdleWithoutErrorsOrPrivacy) {
  SiteMetrics metrics;
  const std::string text = metrics.Scrape();
  EXPECT_EQ(CurrentState(metrics), "idle");
  EXPECT_EQ(MetricValue(text, "fedtune_site_round"), 0);
  EXPECT_EQ(MetricValue(text, "fedtune_site_training_progress_ratio"), 0);
  EXPECT_EQ(MetricValue(text, "fedtune_site_downloaded_bytes_total"), 0);
  EXPECT_EQ(MetricValue(text, "fedtune_site_uploaded_bytes_total"), 0);
  EXPECT_EQ(MetricValue(text, "fedtune_site_epoch_seconds_count"), 0);
  // The retried calls and the task results start at 0.
  EXPECT_EQ(MetricValue(text, "fedtune_site_rpc_retries_total{rpc=\"Hello\"}"), 0);
  EXPECT_EQ(MetricValue(text, "fedtune_site_rpc_retries_total{rpc=\"UploadUpdate\"}"), 0);
  EXPECT_EQ(MetricValue(text, "fedtune_site_rpc_retries_total{rpc=\"SecAggGetRoster\"}"), 0);
  EXPECT_EQ(MetricValue(text, "fedtune_site_tasks_total{kind=\"train\",result=\"ok\"}"), 0);
  EXPECT_EQ(MetricValue(text, "fedtune_site_tasks_total{kind=\"cross_evaluate\",result=\"cancelled\"}"), 0);
  // No sample before the first failure, nor before the site accounts DP.
  EXPECT_EQ(text.find("fedtune_site_last_error{"), std::string::npos);
  EXPECT_TRUE(std::isnan(MetricValue(text, "fedtune_site_privacy_epsilon_spent")));
  EXPECT_TRUE(std::isnan(MetricValue(text, "fedtune_site_privacy_epsilon_budget")));
}

TEST(SiteMetricsTest, HeartbeatStatesMapToCoarseStates) {
  EXPECT_EQ(SiteStateOfHeartbeat("downloading"), SiteState::kDownloading);
  EXPECT_EQ(SiteStateOfHeartbeat("training"), SiteState::kTraining);
  EXPECT_EQ(SiteStateOfHeartbeat("training member 2/3, epoch 1/5"), SiteState::kTraining);
  EXPECT_EQ(SiteStateOfHeartbeat("training the local-only baseline"), SiteState::kTraining);
  EXPECT_EQ(SiteStateOfHeartbeat("encoding"), SiteState::kTraining);
  EXPECT_EQ(SiteStateOfHeartbeat("secure aggregation: keys"), SiteState::kSecureAggregation);
  EXPECT_EQ(SiteStateOfHeartbeat("secure aggregation: unmasking"), SiteState::kSecureAggregation);
  EXPECT_EQ(SiteStateOfHeartbeat("uploading"), SiteState::kUploading);
  EXPECT_EQ(SiteStateOfHeartbeat("sharing"), SiteState::kUploading);
  EXPECT_EQ(SiteStateOfHeartbeat("evaluating"), SiteState::kEvaluating);
  EXPECT_EQ(SiteStateOfHeartbeat("evaluating the local-only baseline"), SiteState::kEvaluating);
  EXPECT_EQ(SiteStateOfHeartbeat("reporting"), SiteState::kEvaluating);
  EXPECT_EQ(SiteStateOfHeartbeat("cross-site evaluation 1/2"), SiteState::kEvaluating);
  EXPECT_EQ(SiteStateOfHeartbeat("retrying: coordinator unreachable"), SiteState::kRetrying);
  EXPECT_EQ(SiteStateOfHeartbeat("done"), SiteState::kIdle);
  EXPECT_EQ(SiteStateOfHeartbeat("declined"), SiteState::kIdle);
  EXPECT_EQ(SiteStateOfHeartbeat("cancelled"), SiteState::kIdle);
  EXPECT_EQ(SiteStateOfHeartbeat("failed: DATA_LOSS: x"), SiteState::kIdle);
  EXPECT_EQ(SiteStateOfHeartbeat("something new"), std::nullopt);

  SiteMetrics metrics;
  metrics.SetTaskState("training member 1/1, epoch 1/2", 0.3);
  EXPECT_EQ(CurrentState(metrics), "training");
  EXPECT_DOUBLE_EQ(MetricValue(metrics.Scrape(), "fedtune_site_training_progress_ratio"), 0.3);
  metrics.SetTaskState("something new", 0.5);  // Unknown text: the state stays, the progress moves.
  EXPECT_EQ(CurrentState(metrics), "training");
  EXPECT_DOUBLE_EQ(MetricValue(metrics.Scrape(), "fedtune_site_training_progress_ratio"), 0.5);
  metrics.SetProgress(7);  // Clamped.
  EXPECT_EQ(MetricValue(metrics.Scrape(), "fedtune_site_training_progress_ratio"), 1);
  metrics.SetProgress(NAN);  // Ignored.
  EXPECT_EQ(MetricValue(metrics.Scrape(), "fedtune_site_training_progress_ratio"), 1);
  metrics.SetState(SiteState::kHello);
  EXPECT_EQ(CurrentState(metrics), "hello");
  metrics.SetRound(4);
  EXPECT_EQ(MetricValue(metrics.Scrape(), "fedtune_site_round"), 4);
}

TEST(SiteMetricsTest, RetrySleepCountsRetriesAndShowsRetryingDuringTheWait) {
  SiteMetrics metrics;
  metrics.SetState(SiteState::kDownloading);
  int waits = 0;
  std::string state_during_wait;
  auto sleep = RetrySleep(&metrics, "DownloadModel", [&](absl::Duration d) {
    ++waits;
    EXPECT_EQ(d, absl::Milliseconds(5));
    state_during_wait = CurrentState(metrics);
  });
  sleep(absl::Milliseconds(5));
  sleep(absl::Milliseconds(5));
  EXPECT_EQ(waits, 2);
  EXPECT_EQ(state_during_wait, "retrying");
  EXPECT_EQ(CurrentState(metrics), "downloading");  // The state set before shows again.
  EXPECT_EQ(MetricValue(metrics.Scrape(), "fedtune_site_rpc_retries_total{rpc=\"DownloadModel\"}"), 2);
  // "": the waits show "retrying" but are not counted as retries of a call.
  auto uncounted = RetrySleep(&metrics, "", [&](absl::Duration) { state_during_wait = CurrentState(metrics); });
  uncounted(absl::Milliseconds(1));
  EXPECT_EQ(state_during_wait, "retrying");
  EXPECT_EQ(metrics.Scrape().find("fedtune_site_rpc_retries_total{rpc=\"\"}"), std::string::npos);
  metrics.CountRetry("GetTask");
  EXPECT_EQ(MetricValue(metrics.Scrape(), "fedtune_site_rpc_retries_total{rpc=\"GetTask\"}"), 1);
  // Without metrics the sleep is the one given.
  int plain = 0;
  RetrySleep(nullptr, "Hello", [&](absl::Duration) { ++plain; })(absl::Milliseconds(1));
  EXPECT_EQ(plain, 1);
}

TEST(SiteMetricsTest, TaskResultsErrorClassesAndTheLastError) {
  SiteMetrics metrics;
  metrics.TaskEnded("train", "ok");
  metrics.TaskEnded("train", "ok");
  metrics.TaskEnded("evaluate", "declined");
  metrics.TaskEnded("train", "cancelled", absl::CancelledError("cancelled by the coordinator"));
  std::string text = metrics.Scrape();
  EXPECT_EQ(MetricValue(text, "fedtune_site_tasks_total{kind=\"train\",result=\"ok\"}"), 2);
  EXPECT_EQ(MetricValue(text, "fedtune_site_tasks_total{kind=\"evaluate\",result=\"declined\"}"), 1);
  EXPECT_EQ(MetricValue(text, "fedtune_site_tasks_total{kind=\"train\",result=\"cancelled\"}"), 1);
  EXPECT_EQ(text.find("fedtune_site_errors_total{"), std::string::npos);  // Cancelling is no error.
  EXPECT_EQ(text.find("fedtune_site_last_error{"), std::string::npos);

  metrics.TaskEnded("train", "failed", absl::UnavailableError("coordinator 127.0.0.1:1: unreachable"));
  metrics.TaskEnded("cross_evaluate", "failed", absl::DataLossError("bad bytes"));
  metrics.TaskEnded("train", "failed", absl::UnavailableError("again"));
  metrics.TaskEnded("", "failed", absl::InvalidArgumentError("unknown task kind 9"));  // Not a task; an error.
  text = metrics.Scrape();
  EXPECT_EQ(MetricValue(text, "fedtune_site_tasks_total{kind=\"train\",result=\"failed\"}"), 2);
  EXPECT_EQ(MetricValue(text, "fedtune_site_tasks_total{kind=\"cross_evaluate\",result=\"failed\"}"), 1);
  EXPECT_EQ(text.find("kind=\"\""), std::string::npos);
  EXPECT_EQ(MetricValue(text, "fedtune_site_errors_total{class=\"UNAVAILABLE\"}"), 2);
  EXPECT_EQ(MetricValue(text, "fedtune_site_errors_total{class=\"DATA_LOSS\"}"), 1);
  EXPECT_EQ(MetricValue(text, "fedtune_site_errors_total{class=\"INVALID_ARGUMENT\"}"), 1);
  EXPECT_EQ(MetricValue(text, "fedtune_site_last_error{class=\"INVALID_ARGUMENT\"}"), 1);
  EXPECT_EQ(MetricValue(text, "fedtune_site_last_error{class=\"UNAVAILABLE\"}"), 0);
  EXPECT_EQ(MetricValue(text, "fedtune_site_last_error{class=\"DATA_LOSS\"}"), 0);
}

TEST(SiteMetricsTest, BytesEpochsAndPrivacy) {
  SiteMetrics metrics;
  metrics.AddDownloadedBytes(1000);
  metrics.AddDownloadedBytes(24);
  metrics.AddDownloadedBytes(-5);  // Ignored.
  metrics.AddUploadedBytes(4096);
  metrics.ObserveEpoch(0.25, 120);
  metrics.ObserveEpoch(3, 40);
  metrics.ObserveEpoch(NAN, -1);  // Ignored.
  metrics.SetPrivacy(false, 0, 0);
  std::string text = metrics.Scrape();
  EXPECT_EQ(MetricValue(text, "fedtune_site_downloaded_bytes_total"), 1024);
  EXPECT_EQ(MetricValue(text, "fedtune_site_uploaded_bytes_total"), 4096);
  EXPECT_EQ(MetricValue(text, "fedtune_site_epoch_seconds_count"), 2);
  EXPECT_DOUBLE_EQ(MetricValue(text, "fedtune_site_epoch_seconds_sum"), 3.25);
  EXPECT_EQ(MetricValue(text, "fedtune_site_epoch_seconds_bucket{le=\"0.5\"}"), 1);
  EXPECT_EQ(MetricValue(text, "fedtune_site_epoch_seconds_bucket{le=\"5\"}"), 2);
  EXPECT_EQ(MetricValue(text, "fedtune_site_training_images_per_second"), 40);
  EXPECT_TRUE(std::isnan(MetricValue(text, "fedtune_site_privacy_epsilon_spent")));
  metrics.SetPrivacy(true, 1.5, 0);  // DP accounted, no budget.
  text = metrics.Scrape();
  EXPECT_EQ(MetricValue(text, "fedtune_site_privacy_epsilon_spent"), 1.5);
  EXPECT_TRUE(std::isnan(MetricValue(text, "fedtune_site_privacy_epsilon_budget")));
  metrics.SetPrivacy(true, INFINITY, 8);  // After a round without DP: +Inf.
  text = metrics.Scrape();
  EXPECT_EQ(MetricValue(text, "fedtune_site_privacy_epsilon_spent"), INFINITY);
  EXPECT_EQ(MetricValue(text, "fedtune_site_privacy_epsilon_budget"), 8);
}

TEST(SiteMetricsTest, TrainingProgressPublishesEpochsAndTheTaskProgress) {
  SiteMetrics metrics;
  TrainingProgress progress(2, 2);  // Two networks, two epochs each.
  train::EpochRecord resumed;
  resumed.seconds = 100;
  ASSERT_TRUE(progress.OnResume("member0", {resumed}).ok());
  progress.PublishTo(&metrics, 0.05, 0.75);
  train::EpochRecord record;
  record.epoch = 1;
  record.seconds = 2;
  record.images_per_second = 18;
  ASSERT_TRUE(progress.OnEpoch("member0", record).ok());
  const std::string text = metrics.Scrape();
  // Resumed epochs were trained before: not observed again.
  EXPECT_EQ(MetricValue(text, "fedtune_site_epoch_seconds_count"), 1);
  EXPECT_EQ(MetricValue(text, "fedtune_site_epoch_seconds_sum"), 2);
  EXPECT_EQ(MetricValue(text, "fedtune_site_training_images_per_second"), 18);
  // Two of four epochs: 0.05 + 0.75 * 0.5.
  EXPECT_DOUBLE_EQ(MetricValue(text, "fedtune_site_training_progress_ratio"), 0.05 + 0.75 * 0.5);
  // Without PublishTo nothing is published.
  SiteMetrics other;
  TrainingProgress silent(1, 1);
  ASSERT_TRUE(silent.OnEpoch("member0", record).ok());
  EXPECT_EQ(MetricValue(other.Scrape(), "fedtune_site_epoch_seconds_count"), 0);
}

TEST(SiteMetricsTest, TheEndpointServesEveryFamilyAndPromtoolAcceptsIt) {
  fedtune::testing::TempDir tmp;
  SiteMetrics metrics;
  metrics.SetState(SiteState::kTraining);
  metrics.SetRound(2);
  metrics.ObserveEpoch(1.5, 30);
  metrics.AddDownloadedBytes(10);
  metrics.CountRetry("UploadUpdate");
  metrics.TaskEnded("train", "failed", absl::DeadlineExceededError("slow"));
  metrics.SetPrivacy(true, 0.7, 4);
  const std::string port_file = tmp.Join("metrics.port");
  auto server = metrics::MetricsServer::Start("127.0.0.1:0", metrics.registry(), port_file);
  ASSERT_TRUE(server.ok()) << server.status();
  auto written = io::ReadFile(port_file);
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(*written, absl::StrCat((*server)->port(), "\n"));

  const std::string text = testing::ScrapeMetrics((*server)->port());
  for (const char* name :
       {"fedtune_site_state", "fedtune_site_round", "fedtune_site_training_progress_ratio",
        "fedtune_site_epoch_seconds", "fedtune_site_training_images_per_second", "fedtune_site_downloaded_bytes_total",
        "fedtune_site_uploaded_bytes_total", "fedtune_site_rpc_retries_total", "fedtune_site_tasks_total",
        "fedtune_site_errors_total", "fedtune_site_last_error", "fedtune_site_privacy_epsilon_spent",
        "fedtune_site_privacy_epsilon_budget", "fedtune_process_resident_memory_bytes"}) {
    EXPECT_NE(text.find(absl::StrCat("\n# TYPE ", name, " ")), std::string::npos) << name << "\n" << text;
  }
  EXPECT_EQ(MetricValue(text, "fedtune_site_state{state=\"training\"}"), 1);
  EXPECT_EQ(MetricValue(text, "fedtune_site_round"), 2);
  EXPECT_EQ(MetricValue(text, "fedtune_site_last_error{class=\"DEADLINE_EXCEEDED\"}"), 1);
  std::string output;
  EXPECT_EQ(testing::PromtoolCheck(text, tmp.Join("scrape.txt"), &output), 0) << output << "\n" << text;
}

}  // namespace
}  // namespace fedtune::agent
