#include "coordinator/coordinator_config.h"

#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::coordinator {
namespace {

using ::testing::HasSubstr;

TEST(CoordinatorConfigTest, ResolvesPathsAgainstTheConfigDirectory) {
  fedtune::testing::TempDir tmp;
  const std::string path = tmp.WriteFile("coordinator.textproto",
                                         "listen_address: \"127.0.0.1:7443\"\n"
                                         "port_file: \"run/port\"\n"
                                         "server_cert: \"pki/server.pem\"\n"
                                         "server_key: \"/etc/fedtune/server.key\"\n"
                                         "ca_dir: \"ca\"\n"
                                         "state_dir: \"state\"\n"
                                         "initial_model: \"../models/open.ckpt\"\n");
  auto config = LoadCoordinatorConfig(path);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->port_file(), tmp.Join("run/port"));
  EXPECT_EQ(config->server_cert(), tmp.Join("pki/server.pem"));
  EXPECT_EQ(config->server_key(), "/etc/fedtune/server.key");
  EXPECT_EQ(config->ca_dir(), tmp.Join("ca"));
  EXPECT_EQ(config->state_dir(), tmp.Join("state"));
  EXPECT_THAT(config->initial_model(), HasSubstr("models/open.ckpt"));
  EXPECT_EQ(config->chunk_bytes(), 1 << 20);  // Documented default.
  EXPECT_TRUE(ValidateCoordinatorConfig(*config).ok());
}

TEST(CoordinatorConfigTest, ErrorsNameTheLineOrField) {
  auto bad = ParseCoordinatorConfig("listen_address: \"x:1\"\nstate_dirr: \"s\"\n", "c.textproto", "/tmp");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("c.textproto:2"));

  v1::CoordinatorConfig config;
  EXPECT_THAT(ValidateCoordinatorConfig(config).message(), HasSubstr("listen_address"));
  config.set_listen_address("127.0.0.1");
  EXPECT_THAT(ValidateCoordinatorConfig(config).message(), HasSubstr("has no port"));
  config.set_listen_address("127.0.0.1:0");
  config.set_server_cert("a");
  config.set_server_key("b");
  config.set_ca_dir("c");
  EXPECT_THAT(ValidateCoordinatorConfig(config).message(), HasSubstr("state_dir"));
  config.set_state_dir("d");
  config.set_chunk_bytes(100);
  EXPECT_THAT(ValidateCoordinatorConfig(config).message(), HasSubstr("chunk_bytes"));
  config.set_chunk_bytes(2 << 20);
  EXPECT_TRUE(ValidateCoordinatorConfig(config).ok());
}

TEST(CoordinatorConfigTest, LimitsHaveValidDefaultsAndAreChecked) {
  v1::CoordinatorConfig config;
  config.set_listen_address("127.0.0.1:0");
  config.set_server_cert("a");
  config.set_server_key("b");
  config.set_ca_dir("c");
  config.set_state_dir("d");
  ASSERT_TRUE(ValidateCoordinatorConfig(config).ok());
  // Documented defaults.
  EXPECT_EQ(config.max_open_uploads_per_site(), 2);
  EXPECT_EQ(config.max_calls_per_site(), 8);
  EXPECT_EQ(config.max_streams_per_site(), 2);
  EXPECT_EQ(config.max_server_threads(), 64);
  EXPECT_EQ(config.max_concurrent_decodes(), 1);
  EXPECT_EQ(config.grpc_memory_quota_bytes(), int64_t{128} << 20);
  EXPECT_EQ(SpoolBytesPerSite(config), int64_t{4} << 30);    // 2 x max_upload_bytes.
  EXPECT_EQ(SpoolBytesPerRound(config), int64_t{16} << 30);  // 8 x max_upload_bytes.
  config.set_max_upload_bytes(1000);
  EXPECT_EQ(SpoolBytesPerSite(config), 2000);
  config.set_max_spool_bytes_per_round(5000);
  EXPECT_EQ(SpoolBytesPerRound(config), 5000);
  config.set_max_upload_bytes(std::numeric_limits<int64_t>::max() / 3);
  EXPECT_EQ(SpoolBytesPerSite(config), std::numeric_limits<int64_t>::max() / 3 * 2);
  config.clear_max_spool_bytes_per_round();
  EXPECT_EQ(SpoolBytesPerRound(config), std::numeric_limits<int64_t>::max());  // Saturates.
  config.clear_max_upload_bytes();

  struct Case {
    std::function<void(v1::CoordinatorConfig*)> edit;
    std::string field;
  };
  const std::vector<Case> cases = {
      {[](v1::CoordinatorConfig* c) { c->set_max_open_uploads_per_site(0); }, "max_open_uploads_per_site"},
      {[](v1::CoordinatorConfig* c) { c->set_max_spool_bytes_per_site(-1); }, "max_spool_bytes_per_site"},
      {[](v1::CoordinatorConfig* c) { c->set_max_spool_bytes_per_site(1000); }, "max_spool_bytes_per_site"},
      {[](v1::CoordinatorConfig* c) { c->set_max_spool_bytes_per_round(1000); }, "max_spool_bytes_per_round"},
      {[](v1::CoordinatorConfig* c) { c->set_max_calls_per_site(0); }, "max_calls_per_site"},
      {[](v1::CoordinatorConfig* c) { c->set_max_streams_per_site(0); }, "max_streams_per_site"},
      {[](v1::CoordinatorConfig* c) { c->set_max_streams_per_site(9); }, "max_streams_per_site"},
      {[](v1::CoordinatorConfig* c) { c->set_max_server_threads(3); }, "max_server_threads"},
      {[](v1::CoordinatorConfig* c) { c->set_max_concurrent_decodes(0); }, "max_concurrent_decodes"},
      {[](v1::CoordinatorConfig* c) { c->set_max_concurrent_decodes(17); }, "max_concurrent_decodes"},
      {[](v1::CoordinatorConfig* c) { c->set_grpc_memory_quota_bytes(1 << 20); }, "grpc_memory_quota_bytes"},
  };
  for (const Case& c : cases) {
    v1::CoordinatorConfig edited = config;
    c.edit(&edited);
    absl::Status status = ValidateCoordinatorConfig(edited);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(status.message(), HasSubstr(c.field));
  }
  config.set_max_upload_bytes(1000);
  config.set_max_spool_bytes_per_site(1000);
  EXPECT_TRUE(ValidateCoordinatorConfig(config).ok());
}

TEST(CoordinatorConfigTest, MetricsEndpointFieldsAreCheckedAndResolved) {
  auto parsed = ParseCoordinatorConfig(
      "listen_address: \"127.0.0.1:7443\" server_cert: \"a\" server_key: \"b\" ca_dir: \"c\" state_dir: \"d\"\n"
      "metrics_listen_address: \"127.0.0.1:9464\" metrics_port_file: \"run/metrics.port\"\n",
      "c.textproto", "/srv/fedtune");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->metrics_port_file(), "/srv/fedtune/run/metrics.port");
  EXPECT_TRUE(ValidateCoordinatorConfig(*parsed).ok()) << ValidateCoordinatorConfig(*parsed);

  v1::CoordinatorConfig config = *parsed;
  config.clear_metrics_listen_address();
  config.clear_metrics_port_file();
  EXPECT_TRUE(ValidateCoordinatorConfig(config).ok());  // Off by default.
  config.set_metrics_port_file("metrics.port");
  EXPECT_THAT(ValidateCoordinatorConfig(config).message(), HasSubstr("metrics_port_file"));
  for (const char* bad : {"127.0.0.1", "127.0.0.1:99999", "999.1.1.1:9464", "127.0.0.1:7443", "a b:1"}) {
    config.set_metrics_listen_address(bad);
    const absl::Status status = ValidateCoordinatorConfig(config);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(status.message(), HasSubstr("metrics_listen_address")) << bad;
  }
  config.set_metrics_listen_address("127.0.0.1:0");
  config.set_listen_address("127.0.0.1:0");  // Two free ports: allowed.
  EXPECT_TRUE(ValidateCoordinatorConfig(config).ok());
}

TEST(CoordinatorConfigTest, RunConfigChecksNameTheField) {
  v1::RunConfig config;
  EXPECT_TRUE(ValidateRunConfig(config).ok());  // The documented defaults are valid.
  struct Case {
    std::function<void(v1::RunConfig*)> edit;
    std::string field;
  };
  const std::vector<Case> cases = {
      {[](v1::RunConfig* c) { c->set_min_sites(0); }, "min_sites"},
      {[](v1::RunConfig* c) { c->set_round_deadline_seconds(0); }, "round_deadline_seconds"},
      {[](v1::RunConfig* c) { c->set_learning_rate(-1); }, "learning_rate"},
      {[](v1::RunConfig* c) { c->set_batch_size(0); }, "batch_size"},
      {[](v1::RunConfig* c) {
         c->set_aggregation("trimmed_mean");
         c->set_trim_fraction(0.5);
       },
       "trim_fraction"},
      {[](v1::RunConfig* c) {
         c->set_aggregation("fedadam");
         c->set_server_learning_rate(0);
       },
       "server_learning_rate"},
      {[](v1::RunConfig* c) { c->set_compression("zip"); }, "compression"},
      {[](v1::RunConfig* c) {
         c->set_compression("topk");
         c->set_topk_fraction(0);
       },
       "topk_fraction"},
      {[](v1::RunConfig* c) { c->set_clip_norm(-1); }, "clip_norm"},
      {[](v1::RunConfig* c) {
         c->add_sites("a");
         c->add_sites("a");
       },
       "listed twice"},
      {[](v1::RunConfig* c) {
         c->add_sites("a");
         c->set_min_sites(2);
       },
       "min_sites"},
      // Privacy (run_config_privacy.h: the same check as the CLI's).
      {[](v1::RunConfig* c) {
         c->set_secure_aggregation(true);
         c->set_aggregation("median");
       },
       "'aggregation'"},
      {[](v1::RunConfig* c) {
         c->set_secure_aggregation(true);
         c->set_compression("int8");
       },
       "int8 and topk"},
      {[](v1::RunConfig* c) { c->set_secagg_threshold(1); }, "'secagg_threshold'"},
      {[](v1::RunConfig* c) { c->set_secagg_range(0); }, "'secagg_range'"},
      {[](v1::RunConfig* c) { c->set_secagg_phase_seconds(5); }, "'secagg_phase_seconds'"},
      {[](v1::RunConfig* c) { c->set_dp("laplace"); }, "'dp'"},
      {[](v1::RunConfig* c) {
         c->set_dp("dp-fedavg");
         c->set_dp_noise_multiplier(0.01);
       },
       "'dp_noise_multiplier'"},
  };
  for (const Case& c : cases) {
    v1::RunConfig edited;
    c.edit(&edited);
    absl::Status status = ValidateRunConfig(edited);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(status.message(), HasSubstr(c.field));
  }
}

}  // namespace
}  // namespace fedtune::coordinator
