// The agent publishes its metrics (site_agent/agent/site_metrics.h) and its log context while it works: a real
// agent with its metrics endpoint on 127.0.0.1:0 (metrics_port_file) against the fake coordinator
// (fake_coordinator.h) over real mTLS, one TRAIN task on a tiny model and 60 synthetic 32-px images with a broken
// download, then an EVALUATE task that fails. The endpoint is scraped with cpp-httplib and checked by promtool.
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "common/logging.h"
#include "common/model/checkpoint.h"
#include "common/synth/generator.h"
#include "common/synth/profile.h"
#include "common/train/threads.h"
#include "gtest/gtest.h"
#include "site_agent/agent/agent_config.h"
#include "site_agent/agent/federated_agent.h"
#include "site_agent/agent/site_metrics.h"
#include "site_agent/commands/model_init.h"
#include "tests/site_agent/agent/fake_coordinator.h"
#include "tests/site_agent/agent/metrics_scrape.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::agent {
namespace {

namespace fs = std::filesystem;
using testing::MetricValue;

// What the agent showed during one backoff wait.
struct Wait {
  std::string scrape;
  LogContext log;
};

TEST(AgentMetricsTest, TheAgentPublishesItsWorkAndItsLogContext) {
  fedtune::testing::TempDir tmp;
  testing::FakeCoordinator coordinator(tmp, "site-a");
  synth::SynthOptions data;
  auto profile = synth::LoadProfile("site-a");
  ASSERT_TRUE(profile.ok()) << profile.status();
  data.profile = *profile;
  data.count = 60;
  data.size = 32;
  data.seed = 3;
  data.out_dir = tmp.Join("data");
  ASSERT_TRUE(synth::GenerateDataset(data).ok());
  auto init = InitCheckpoint({"densenet_tiny"}, 32, 0.2, 0);
  ASSERT_TRUE(init.ok()) << init.status();
  const std::string model_path = tmp.Join("init.ckpt");
  ASSERT_TRUE(model::SaveCheckpoint(&*init, model_path).ok());
  const std::string model_bytes = *io::ReadFile(model_path);
  const std::string digest = io::Sha256Hex(model_bytes);
  coordinator.service().AddModel(model_bytes);

  // The endpoint on a free loopback port, its port written next to the config (a relative metrics_port_file).
  const std::string config_text = absl::StrCat(
      "site_id: \"site-a\" coordinator: \"", coordinator.address(), "\" site_cert: \"", coordinator.site_tls().cert,
      "\" site_key: \"", coordinator.site_tls().key, "\" ca_cert: \"", coordinator.site_tls().ca,
      "\" work_dir: \"work\" heartbeat_seconds: 1 rpc_timeout_seconds: 20 min_backoff_ms: 1 max_backoff_ms: 20 "
      "exit_after_runs: 1 gradcam_per_label: 0 "
      "metrics_listen_address: \"127.0.0.1:0\" metrics_port_file: \"metrics.port\" "
      "finetune { manifest: \"data/manifest.csv\" device: \"cpu\" threads: 2 loader_threads: 1 batch_size: 16 "
      "patience: 2 augment: false split { train: 0.6 validation: 0.2 test: 0.2 } }");
  auto config = LoadAgentConfig(tmp.WriteFile("site.textproto", config_text));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->metrics_port_file(), tmp.Join("metrics.port"));
  train::SetIntraOpThreads(config->finetune().threads());

  v1::Task train;
  train.set_kind(v1::Task::TRAIN);
  train.set_run_id("run-1");
  train.set_round(1);
  train.set_attempt(1);
  train.set_model_digest(digest);
  train.set_model_bytes(static_cast<int64_t>(model_bytes.size()));
  train.set_base_model_digest(digest);
  train.set_base_model_bytes(static_cast<int64_t>(model_bytes.size()));
  train.set_total_rounds(1);
  train.mutable_plan()->set_local_epochs(2);
  train.mutable_plan()->set_learning_rate(0.05);
  train.mutable_plan()->set_batch_size(16);
  v1::Task ended;  // Then the coordinator says the run ended: Run returns.
  ended.set_kind(v1::Task::NONE);
  ended.add_ended_runs("run-1");
  coordinator.service().AddTask(train);
  coordinator.service().AddTask(ended);
  coordinator.service().FailNext("Hello", 1);    // Retried by the client: one Hello retry.
  coordinator.service().FailNext("GetTask", 1);  // Retried by the task loop: one GetTask retry.
  coordinator.service().CutNextDownloadAfter(3000);

  // Every backoff wait (the test's sleep) scrapes the endpoint and notes the log context of the waiting thread.
  absl::Mutex mu;
  std::vector<Wait> waits;
  int port = 0;
  AgentOptions options;
  options.task_wait_seconds = 1;
  options.sleep = [&](absl::Duration) {
    Wait wait{testing::ScrapeMetrics(port), CurrentLogContext()};
    absl::MutexLock lock(&mu);
    waits.push_back(std::move(wait));
  };

  auto agent = FederatedAgent::Create(*config, options);
  ASSERT_TRUE(agent.ok()) << agent.status();
  port = (*agent)->metrics_port();
  ASSERT_GT(port, 0);
  EXPECT_EQ(*io::ReadFile(config->metrics_port_file()), absl::StrCat(port, "\n"));
  EXPECT_EQ(CurrentLogContext().site, "site-a");
  std::string text = testing::ScrapeMetrics(port);
  EXPECT_EQ(MetricValue(text, "fedtune_site_state{state=\"idle\"}"), 1);
  EXPECT_EQ(MetricValue(text, "fedtune_site_round"), 0);

  const absl::Status run = (*agent)->Run();
  ASSERT_TRUE(run.ok()) << run;
  EXPECT_EQ((*agent)->finished_runs(), 1);

  text = testing::ScrapeMetrics(port);
  EXPECT_EQ(MetricValue(text, "fedtune_site_tasks_total{kind=\"train\",result=\"ok\"}"), 1) << text;
  EXPECT_EQ(MetricValue(text, "fedtune_site_rpc_retries_total{rpc=\"Hello\"}"), 1);
  EXPECT_EQ(MetricValue(text, "fedtune_site_rpc_retries_total{rpc=\"GetTask\"}"), 1);
  EXPECT_EQ(MetricValue(text, "fedtune_site_rpc_retries_total{rpc=\"DownloadModel\"}"), 1);
  // The model once (3000 bytes before the cut, the rest after the resume), the update once.
  EXPECT_EQ(MetricValue(text, "fedtune_site_downloaded_bytes_total"), static_cast<double>(model_bytes.size()));
  const fs::path update = tmp.Join("work/runs/run-1/round-1-1/update.bin");
  ASSERT_TRUE(fs::exists(update));
  EXPECT_EQ(MetricValue(text, "fedtune_site_uploaded_bytes_total"), static_cast<double>(fs::file_size(update)));
  EXPECT_EQ(coordinator.service().accepted_upload("run-1", 1).size(), fs::file_size(update));
  // Two epochs of one network (densenet_tiny has one member and no DuoNet).
  EXPECT_EQ(MetricValue(text, "fedtune_site_epoch_seconds_count"), 2);
  EXPECT_GT(MetricValue(text, "fedtune_site_epoch_seconds_sum"), 0);
  EXPECT_GT(MetricValue(text, "fedtune_site_training_images_per_second"), 0);
  // Idle again: no round, no progress. No failure, no DP accounted.
  EXPECT_EQ(MetricValue(text, "fedtune_site_state{state=\"idle\"}"), 1);
  EXPECT_EQ(MetricValue(text, "fedtune_site_round"), 0);
  EXPECT_EQ(MetricValue(text, "fedtune_site_training_progress_ratio"), 0);
  EXPECT_EQ(text.find("fedtune_site_errors_total{"), std::string::npos);
  EXPECT_TRUE(std::isnan(MetricValue(text, "fedtune_site_privacy_epsilon_spent")));
  EXPECT_EQ(CurrentLogContext().run_id, "");  // The task's context ends with it.
  EXPECT_EQ(CurrentLogContext().round, 0);

  // The waits: Hello's retry, the loop's GetTask retry (state "retrying", no run), and the download's retry inside the
  // task (state "retrying", round 1, the task's run and round in the log context).
  {
    absl::MutexLock lock(&mu);
    ASSERT_EQ(waits.size(), 3u);
    int in_task = 0;
    for (const Wait& wait : waits) {
      EXPECT_EQ(MetricValue(wait.scrape, "fedtune_site_state{state=\"retrying\"}"), 1) << wait.scrape;
      EXPECT_EQ(wait.log.site, "site-a");
      if (wait.log.run_id.empty()) {
        EXPECT_EQ(MetricValue(wait.scrape, "fedtune_site_round"), 0);
        continue;
      }
      ++in_task;
      EXPECT_EQ(wait.log.run_id, "run-1");
      EXPECT_EQ(wait.log.round, 1);
      EXPECT_EQ(MetricValue(wait.scrape, "fedtune_site_round"), 1);
      EXPECT_EQ(MetricValue(wait.scrape, "fedtune_site_rpc_retries_total{rpc=\"DownloadModel\"}"), 1);
    }
    EXPECT_EQ(in_task, 1);
  }

  // A task that fails: the final model is unknown to the coordinator (NOT_FOUND).
  v1::Task evaluate;
  evaluate.set_kind(v1::Task::EVALUATE);
  evaluate.set_run_id("run-2");
  evaluate.set_model_digest(std::string(64, 'a'));
  evaluate.set_model_bytes(1000);
  evaluate.set_base_model_digest(digest);
  evaluate.set_base_model_bytes(static_cast<int64_t>(model_bytes.size()));
  const absl::Status failed = (*agent)->RunTask(evaluate);
  EXPECT_EQ(failed.code(), absl::StatusCode::kNotFound) << failed;
  text = testing::ScrapeMetrics(port);
  EXPECT_EQ(MetricValue(text, "fedtune_site_tasks_total{kind=\"evaluate\",result=\"failed\"}"), 1) << text;
  EXPECT_EQ(MetricValue(text, "fedtune_site_errors_total{class=\"NOT_FOUND\"}"), 1);
  EXPECT_EQ(MetricValue(text, "fedtune_site_last_error{class=\"NOT_FOUND\"}"), 1);
  EXPECT_EQ(MetricValue(text, "fedtune_site_state{state=\"idle\"}"), 1);

  // The whole exposition (the process metrics included) passes promtool's checks.
  EXPECT_NE(text.find("fedtune_process_resident_memory_bytes"), std::string::npos);
  std::string output;
  EXPECT_EQ(testing::PromtoolCheck(text, tmp.Join("scrape.txt"), &output), 0) << output << "\n" << text;
}

TEST(AgentMetricsTest, AnEndpointThatCannotBindFailsCreate) {
  fedtune::testing::TempDir tmp;
  testing::FakeCoordinator coordinator(tmp, "site-a");
  synth::SynthOptions data;
  auto profile = synth::LoadProfile("site-a");
  ASSERT_TRUE(profile.ok()) << profile.status();
  data.profile = *profile;
  data.count = 20;
  data.size = 32;
  data.out_dir = tmp.Join("data");
  ASSERT_TRUE(synth::GenerateDataset(data).ok());
  // 192.0.2.1 (TEST-NET-1) is no address of this machine.
  const std::string config_text = absl::StrCat(
      "site_id: \"site-a\" coordinator: \"", coordinator.address(), "\" site_cert: \"", coordinator.site_tls().cert,
      "\" site_key: \"", coordinator.site_tls().key, "\" ca_cert: \"", coordinator.site_tls().ca,
      "\" work_dir: \"work\" metrics_listen_address: \"192.0.2.1:0\" "
      "finetune { manifest: \"data/manifest.csv\" device: \"cpu\" threads: 1 loader_threads: 1 }");
  auto config = LoadAgentConfig(tmp.WriteFile("site.textproto", config_text));
  ASSERT_TRUE(config.ok()) << config.status();
  auto agent = FederatedAgent::Create(*config);
  ASSERT_FALSE(agent.ok());
  EXPECT_EQ(agent.status().code(), absl::StatusCode::kUnavailable) << agent.status();
  EXPECT_NE(agent.status().message().find("192.0.2.1:0"), std::string::npos) << agent.status();
}

}  // namespace
}  // namespace fedtune::agent
