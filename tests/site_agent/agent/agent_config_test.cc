#include "site_agent/agent/agent_config.h"

#include <sys/stat.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::agent {
namespace {

using ::testing::HasSubstr;

constexpr char kMinimal[] = R"(site_id: "site-a" coordinator: "coord.example:7443" site_cert: "pki/site-a.pem"
site_key: "pki/site-a.key" ca_cert: "pki/ca.pem" work_dir: "work"
finetune { manifest: "data/manifest.csv" })";

TEST(AgentConfigTest, DefaultsAndPathsRelativeToTheConfigFile) {
  auto c = ParseAgentConfig(kMinimal, "site.textproto", "/etc/fedtune");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->site_cert(), "/etc/fedtune/pki/site-a.pem");
  EXPECT_EQ(c->site_key(), "/etc/fedtune/pki/site-a.key");
  EXPECT_EQ(c->ca_cert(), "/etc/fedtune/pki/ca.pem");
  EXPECT_EQ(c->work_dir(), "/etc/fedtune/work");
  EXPECT_EQ(c->finetune().manifest(), "/etc/fedtune/data/manifest.csv");
  EXPECT_EQ(c->finetune().data_root(), "/etc/fedtune/data");
  EXPECT_EQ(c->finetune().cache_dir(), "/etc/fedtune/work/cache");
  EXPECT_EQ(c->heartbeat_seconds(), 10);
  EXPECT_EQ(c->rpc_timeout_seconds(), 30);
  EXPECT_FALSE(c->has_proxy());
  EXPECT_EQ(c->keepalive_seconds(), 20);
  EXPECT_EQ(c->keepalive_timeout_seconds(), 10);
  EXPECT_EQ(c->min_transfer_kib_per_second(), 256);
  EXPECT_EQ(c->retry_give_up_seconds(), 600);
  EXPECT_EQ(c->min_backoff_ms(), 500);
  EXPECT_EQ(c->max_backoff_ms(), 30000);
  EXPECT_EQ(c->exit_after_runs(), 0);
  EXPECT_TRUE(c->share_metrics());
  EXPECT_EQ(c->max_epsilon(), 0);  // No budget.
  EXPECT_DOUBLE_EQ(c->delta(), 1e-5);

  TrainingValues values;
  values.local_epochs = 3;
  values.learning_rate = 0.05;
  values.batch_size = 16;
  values.proximal_mu = 0.01;
  v1::FinetuneConfig f = TaskFinetuneConfig(*c, "/w/models/g.ckpt", "/w/runs/r/round-1-1", values);
  EXPECT_EQ(f.base_model(), "/w/models/g.ckpt");
  EXPECT_EQ(f.out_dir(), "/w/runs/r/round-1-1");
  EXPECT_EQ(f.cache_dir(), "/etc/fedtune/work/cache");
  EXPECT_EQ(f.max_epochs(), 3);
  EXPECT_DOUBLE_EQ(f.learning_rate(), 0.05);
  EXPECT_EQ(f.batch_size(), 16);
  EXPECT_DOUBLE_EQ(f.proximal_mu(), 0.01);
  EXPECT_TRUE(f.resume());
  EXPECT_EQ(f.manifest(), "/etc/fedtune/data/manifest.csv");
}

TEST(AgentConfigTest, SyntaxErrorsNameTheLine) {
  for (const auto& [text, expected] : std::vector<std::pair<std::string, std::string>>{
           {std::string(kMinimal) + "\nheartbeat_seconds: ", "site.textproto:4:"},
           {std::string(kMinimal) + " colour: 1", "site.textproto:3:"},
           {std::string(kMinimal) + " site_id: \"again\"", "site.textproto:3:"}}) {
    auto parsed = ParseAgentConfig(text, "site.textproto", "/x");
    ASSERT_FALSE(parsed.ok()) << text;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(parsed.status().message(), HasSubstr(expected)) << text;
  }
}

TEST(AgentConfigTest, ValueErrorsNameTheField) {
  auto valid = ParseAgentConfig(kMinimal, "site.textproto", "/x");
  ASSERT_TRUE(valid.ok()) << valid.status();
  struct Case {
    std::function<void(v1::SiteAgentConfig*)> edit;
    const char* expected;
  } cases[] = {
      {[](v1::SiteAgentConfig* c) { c->clear_site_id(); }, "config field 'site_id'"},
      {[](v1::SiteAgentConfig* c) { c->set_site_id("bad id!"); }, "config field 'site_id'"},
      {[](v1::SiteAgentConfig* c) { c->set_coordinator("no-port"); }, "config field 'coordinator'"},
      {[](v1::SiteAgentConfig* c) { c->set_coordinator("host:99999"); }, "config field 'coordinator'"},
      {[](v1::SiteAgentConfig* c) { c->clear_coordinator(); }, "config field 'coordinator'"},
      {[](v1::SiteAgentConfig* c) { c->clear_site_cert(); }, "config field 'site_cert'"},
      {[](v1::SiteAgentConfig* c) { c->clear_site_key(); }, "config field 'site_key'"},
      {[](v1::SiteAgentConfig* c) { c->clear_ca_cert(); }, "config field 'ca_cert'"},
      {[](v1::SiteAgentConfig* c) { c->clear_work_dir(); }, "config field 'work_dir'"},
      {[](v1::SiteAgentConfig* c) { c->set_heartbeat_seconds(0); }, "config field 'heartbeat_seconds'"},
      {[](v1::SiteAgentConfig* c) { c->set_rpc_timeout_seconds(0); }, "config field 'rpc_timeout_seconds'"},
      {[](v1::SiteAgentConfig* c) { c->set_max_backoff_ms(100); }, "config field 'max_backoff_ms'"},
      {[](v1::SiteAgentConfig* c) { c->set_proxy("proxy.example.org:3128"); }, "config field 'proxy'"},
      {[](v1::SiteAgentConfig* c) { c->set_proxy("https://proxy.example.org:3128"); }, "config field 'proxy'"},
      {[](v1::SiteAgentConfig* c) { c->set_proxy("http://proxy.example.org"); }, "config field 'proxy'"},
      {[](v1::SiteAgentConfig* c) { c->set_proxy("http://proxy.example.org:0"); }, "config field 'proxy'"},
      {[](v1::SiteAgentConfig* c) { c->set_proxy("http://proxy.example.org:3128/path"); }, "config field 'proxy'"},
      {[](v1::SiteAgentConfig* c) { c->set_keepalive_seconds(5); }, "config field 'keepalive_seconds'"},
      {[](v1::SiteAgentConfig* c) { c->set_keepalive_timeout_seconds(0); }, "config field 'keepalive_timeout_seconds'"},
      {[](v1::SiteAgentConfig* c) { c->set_min_transfer_kib_per_second(0); },
       "config field 'min_transfer_kib_per_second'"},
      {[](v1::SiteAgentConfig* c) { c->set_retry_give_up_seconds(0); }, "config field 'retry_give_up_seconds'"},
      {[](v1::SiteAgentConfig* c) { c->set_exit_after_runs(-1); }, "config field 'exit_after_runs'"},
      {[](v1::SiteAgentConfig* c) { c->set_gradcam_per_label(-1); }, "config field 'gradcam_per_label'"},
      {[](v1::SiteAgentConfig* c) { c->mutable_finetune()->clear_manifest(); }, "config field 'finetune.manifest'"},
      {[](v1::SiteAgentConfig* c) { c->mutable_finetune()->set_batch_size(0); }, "config field 'finetune.batch_size'"},
      {[](v1::SiteAgentConfig* c) { c->mutable_finetune()->mutable_split()->set_method("x"); },
       "config field 'finetune.split.method'"},
      {[](v1::SiteAgentConfig* c) { c->mutable_finetune()->set_max_image_pixels(0); },
       "config field 'finetune.max_image_pixels'"},
      {[](v1::SiteAgentConfig* c) { c->set_max_epsilon(-1); }, "config field 'max_epsilon'"},
      {[](v1::SiteAgentConfig* c) { c->set_max_epsilon(std::numeric_limits<double>::infinity()); },
       "config field 'max_epsilon'"},
      {[](v1::SiteAgentConfig* c) { c->set_max_epsilon(std::nan("")); }, "config field 'max_epsilon'"},
      {[](v1::SiteAgentConfig* c) { c->set_delta(0); }, "config field 'delta'"},
      {[](v1::SiteAgentConfig* c) { c->set_delta(-1e-5); }, "config field 'delta'"},
      {[](v1::SiteAgentConfig* c) { c->set_delta(0.2); }, "config field 'delta'"},
      {[](v1::SiteAgentConfig* c) { c->set_delta(std::nan("")); }, "config field 'delta'"},
  };
  for (const Case& c : cases) {
    v1::SiteAgentConfig config = *valid;
    c.edit(&config);
    absl::Status status = ValidateAgentConfig(config);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.expected;
    EXPECT_THAT(status.message(), HasSubstr(c.expected));
  }
  // Through the parser, the message also names the file.
  auto parsed = ParseAgentConfig(std::string(kMinimal) + " heartbeat_seconds: 0", "site.textproto", "/x");
  EXPECT_THAT(parsed.status().message(), HasSubstr("site.textproto: config field 'heartbeat_seconds'"));
}

TEST(AgentConfigTest, ProxyAcceptsHttpUrlsAndTheEmptyString) {
  for (const char* proxy : {"http://proxy.example.org:3128", "http://proxy.example.org:3128/", "HTTP://10.0.0.1:8080",
                            "http://user:secret@proxy:3128", "http://[::1]:3128", ""}) {
    auto c = ParseAgentConfig(absl::StrCat(kMinimal, " proxy: \"", proxy, "\""), "site.textproto", "/x");
    ASSERT_TRUE(c.ok()) << proxy << ": " << c.status();
    EXPECT_TRUE(c->has_proxy());
    EXPECT_EQ(c->proxy(), proxy);
  }
  auto bad = ParseAgentConfig(absl::StrCat(kMinimal, " proxy: \"socks5://p:1080\""), "site.textproto", "/x");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("site.textproto: config field 'proxy'"));
  EXPECT_THAT(bad.status().message(), HasSubstr("socks5://p:1080"));
}

TEST(AgentConfigTest, LoadResolvesAgainstTheFilesDirectory) {
  fedtune::testing::TempDir dir;
  const std::string path = dir.WriteFile("site.textproto", kMinimal);
  auto c = LoadAgentConfig(path);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->work_dir(), dir.Join("work"));
  EXPECT_EQ(LoadAgentConfig(dir.Join("missing.textproto")).status().code(), absl::StatusCode::kNotFound);
}

TEST(AgentConfigTest, LoadRefusesFifosAndOversizedFiles) {
  fedtune::testing::TempDir dir;
  const std::string fifo = dir.Join("site.textproto");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto c = LoadAgentConfig(fifo);  // Would block forever in open().
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("not a regular file"));
  c = LoadAgentConfig(dir.WriteFile("big.textproto", std::string(kMinimal) + std::string(2 << 20, ' ')));
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("above the limit of 1048576 bytes"));
}

TEST(AgentConfigTest, TaskConfigsKeepTheTemplatesPixelLimit) {
  const std::string text = absl::StrReplaceAll(kMinimal, {{"finetune {", "finetune { max_image_pixels: 1000000"}});
  auto c = ParseAgentConfig(text, "site.textproto", "/x");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(TaskFinetuneConfig(*c, "/m/base.ckpt", "/w/run", TrainingValues()).max_image_pixels(), 1000000);
}

TEST(AgentConfigTest, PrivacyBudgetBoundsAreAccepted) {
  auto c = ParseAgentConfig(std::string(kMinimal) + " max_epsilon: 8 delta: 0.1", "site.textproto", "/x");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->max_epsilon(), 8);
  EXPECT_DOUBLE_EQ(c->delta(), 0.1);
}

TEST(AgentConfigTest, DpSgdValuesComeFromTheDpSgdPlanOnly) {
  // The template's own DP-SGD fields never apply to a task.
  const std::string text =
      absl::StrReplaceAll(kMinimal, {{"finetune {", "finetune { dp_noise_multiplier: 5 dp_clip_norm: 3"}});
  auto c = ParseAgentConfig(text, "site.textproto", "/x");
  ASSERT_TRUE(c.ok()) << c.status();
  v1::TrainingPlan plan;
  plan.set_dp_noise_multiplier(1.3);
  plan.set_dp_clip_norm(0.7);
  for (const char* dp : {"", "none", "dp-fedavg"}) {
    plan.set_dp(dp);
    TrainingValues values;
    ASSERT_TRUE(SetPlanDp(plan, &values).ok()) << dp;
    const v1::FinetuneConfig f = TaskFinetuneConfig(*c, "/m/g.ckpt", "/w/run", values);
    EXPECT_EQ(f.dp_noise_multiplier(), 0) << dp;
    EXPECT_FALSE(f.has_dp_clip_norm()) << dp;
  }
  plan.set_dp("dp-sgd");
  TrainingValues values;
  ASSERT_TRUE(SetPlanDp(plan, &values).ok());
  const v1::FinetuneConfig f = TaskFinetuneConfig(*c, "/m/g.ckpt", "/w/run", values);
  EXPECT_DOUBLE_EQ(f.dp_noise_multiplier(), 1.3);
  EXPECT_DOUBLE_EQ(f.dp_clip_norm(), 0.7);
  // Existing callers (default TrainingValues) train without DP-SGD.
  EXPECT_EQ(TaskFinetuneConfig(*c, "/m/g.ckpt", "/w/run", TrainingValues()).dp_noise_multiplier(), 0);
}

TEST(AgentConfigTest, PlanDpErrorsNameTheField) {
  struct Case {
    const char* dp;
    double sigma;
    double clip;
    const char* expected;
  } cases[] = {
      {"dp_sgd", 1, 1, "task plan field 'dp': \"dp_sgd\""},
      {"DP-SGD", 1, 1, "task plan field 'dp'"},
      {"dp-sgd", 0, 1, "task plan field 'dp_noise_multiplier'"},
      {"dp-fedavg", 0.01, 1, "task plan field 'dp_noise_multiplier'"},
      {"dp-sgd", std::nan(""), 1, "task plan field 'dp_noise_multiplier'"},
      {"dp-sgd", 1, 0, "task plan field 'dp_clip_norm'"},
      {"dp-fedavg", 1, std::numeric_limits<double>::infinity(), "task plan field 'dp_clip_norm'"},
  };
  for (const Case& c : cases) {
    v1::TrainingPlan plan;
    plan.set_dp(c.dp);
    plan.set_dp_noise_multiplier(c.sigma);
    plan.set_dp_clip_norm(c.clip);
    TrainingValues values;
    const absl::Status status = SetPlanDp(plan, &values);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.expected;
    EXPECT_THAT(status.message(), HasSubstr(c.expected));
    EXPECT_EQ(values.dp_noise_multiplier, 0);
  }
  v1::TrainingPlan plan;  // "" reads as "none"; its (unset) noise multiplier is not checked.
  ASSERT_TRUE(ReadPlanDp(plan).ok());
  EXPECT_EQ(*ReadPlanDp(plan), PlanDp::kNone);
}

TEST(AgentConfigTest, MetricsEndpointFields) {
  // Off by default; a loopback or other HOST:PORT (port 0: a free one), the port file resolved like the other paths.
  auto off = ParseAgentConfig(kMinimal, "site.textproto", "/etc/fedtune");
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_EQ(off->metrics_listen_address(), "");
  EXPECT_EQ(off->metrics_port_file(), "");
  for (const char* address : {"127.0.0.1:9465", "127.0.0.1:0", "[::1]:9465", "localhost:9465", "10.1.2.3:9465"}) {
    auto c = ParseAgentConfig(
        absl::StrCat(kMinimal, " metrics_listen_address: \"", address, "\" metrics_port_file: \"run/metrics.port\""),
        "site.textproto", "/etc/fedtune");
    ASSERT_TRUE(c.ok()) << address << ": " << c.status();
    EXPECT_EQ(c->metrics_listen_address(), address);
    EXPECT_EQ(c->metrics_port_file(), "/etc/fedtune/run/metrics.port");
  }
  for (const std::string& address :
       {std::string("9465"), std::string(":9465"), std::string("127.0.0.1:"), std::string("127.0.0.1:65536"),
        std::string("127.0.0.1:-1"), std::string("127.0.0.1:http"), std::string("127.0.0.1:1,127.0.0.2:2"),
        std::string("http://127.0.0.1:9465"), std::string(300, 'a') + ":1"}) {
    auto c =
        ParseAgentConfig(absl::StrCat(kMinimal, " metrics_listen_address: \"", address, "\""), "site.textproto", "/x");
    ASSERT_FALSE(c.ok()) << address;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(c.status().message(), HasSubstr("config field 'metrics_listen_address'")) << address;
  }
  auto orphan =
      ParseAgentConfig(absl::StrCat(kMinimal, " metrics_port_file: \"metrics.port\""), "site.textproto", "/x");
  ASSERT_FALSE(orphan.ok());
  EXPECT_THAT(orphan.status().message(), HasSubstr("config field 'metrics_port_file'"));
}

}  // namespace
}  // namespace fedtune::agent
