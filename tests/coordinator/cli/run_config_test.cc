#include "coordinator/cli/run_config.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::admin {
namespace {

using ::testing::HasSubstr;

TEST(ParseRunConfigTest, ParsesAndKeepsDefaults) {
  absl::StatusOr<v1::RunConfig> c = ParseRunConfig(
      "name: \"demo\"\nrounds: 4\nsites: \"site-a\"\nsites: \"site-b\"\naggregation: \"fedprox\"\n", "run.textproto");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->name(), "demo");
  EXPECT_EQ(c->rounds(), 4);
  EXPECT_EQ(c->sites_size(), 2);
  EXPECT_EQ(c->min_sites(), 2);  // Default.
  EXPECT_EQ(c->compression(), "fp32");
  EXPECT_TRUE(ValidateRunConfig(*c).ok());
}

TEST(ParseRunConfigTest, SyntaxErrorNamesFileLineAndField) {
  absl::StatusOr<v1::RunConfig> c = ParseRunConfig("rounds: 3\nround: 4\n", "cfg/run.textproto");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("cfg/run.textproto:2:"));
  EXPECT_THAT(c.status().message(), HasSubstr("round"));
  c = ParseRunConfig("rounds: \"three\"\n", "r.textproto");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("r.textproto:1:"));
}

TEST(ReadRunConfigTest, MissingFileIsNotFound) {
  fedtune::testing::TempDir tmp;
  absl::StatusOr<v1::RunConfig> c = ReadRunConfig(tmp.Join("absent.textproto"));
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr("absent.textproto"));
  const std::string path = tmp.WriteFile("run.textproto", "rounds: 2\n");
  c = ReadRunConfig(path);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rounds(), 2);
}

struct BadCase {
  const char* text;
  const char* field;
};

class ValidateRunConfigTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(ValidateRunConfigTest, NamesTheField) {
  absl::StatusOr<v1::RunConfig> c = ParseRunConfig(GetParam().text, "run.textproto");
  ASSERT_TRUE(c.ok()) << c.status();
  absl::Status status = ValidateRunConfig(*c);
  ASSERT_FALSE(status.ok()) << GetParam().text;
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr(absl::StrCat("'", GetParam().field, "'")));
}

INSTANTIATE_TEST_SUITE_P(
    Fields, ValidateRunConfigTest,
    ::testing::Values(
        BadCase{"rounds: 0", "rounds"}, BadCase{"min_sites: -1", "min_sites"},
        BadCase{"round_deadline_seconds: 0", "round_deadline_seconds"},
        BadCase{"max_round_attempts: 0", "max_round_attempts"}, BadCase{"local_epochs: 0", "local_epochs"},
        BadCase{"batch_size: 0", "batch_size"}, BadCase{"learning_rate: 0", "learning_rate"},
        BadCase{"learning_rate: nan", "learning_rate"}, BadCase{"aggregation: \"fedsgd\"", "aggregation"},
        BadCase{"proximal_mu: -0.1", "proximal_mu"}, BadCase{"server_learning_rate: 0", "server_learning_rate"},
        BadCase{"trim_fraction: 0.5", "trim_fraction"}, BadCase{"clip_norm: -1", "clip_norm"},
        BadCase{"max_update_norm: inf", "max_update_norm"}, BadCase{"compression: \"zip\"", "compression"},
        BadCase{"topk_fraction: 0", "topk_fraction"}, BadCase{"topk_fraction: 1.5", "topk_fraction"},
        BadCase{"sites: \"\"", "sites[0]"}, BadCase{"sites: \"a\" sites: \"b c\"", "sites[1]"},
        BadCase{"sites: \"a\" sites: \"a\"", "sites[1]"}, BadCase{"sites: \"a\" min_sites: 2", "min_sites"},
        BadCase{"base_model: \"abc\"", "base_model"}, BadCase{"base_model: \"ABCDEF0123\"", "base_model"},
        // Privacy (coordinator/run_config_privacy.h).
        BadCase{"secure_aggregation: true aggregation: \"trimmed_mean\"", "aggregation"},
        BadCase{"secure_aggregation: true aggregation: \"median\"", "aggregation"},
        BadCase{"secure_aggregation: true compression: \"int8\"", "compression"},
        BadCase{"secure_aggregation: true compression: \"topk\"", "compression"},
        BadCase{"secure_aggregation: true compression: \"fp16\"", "compression"},
        BadCase{"secure_aggregation: true personalization: FEDBN", "personalization"},
        BadCase{"secure_aggregation: true personalization: SILOBN", "personalization"},
        BadCase{"secure_aggregation: true clip_norm: 5", "clip_norm"},
        BadCase{"secure_aggregation: true sites: \"a\" min_sites: 1", "sites"},
        BadCase{"secagg_threshold: -1", "secagg_threshold"}, BadCase{"secagg_threshold: 1", "secagg_threshold"},
        BadCase{"secagg_threshold: 3 sites: \"a\" sites: \"b\"", "secagg_threshold"},
        BadCase{"secagg_threshold: 2 min_sites: 3", "secagg_threshold"}, BadCase{"secagg_range: 0", "secagg_range"},
        BadCase{"secagg_range: inf", "secagg_range"}, BadCase{"secagg_range: nan", "secagg_range"},
        BadCase{"secagg_phase_seconds: 9", "secagg_phase_seconds"},
        BadCase{"secagg_phase_seconds: 3601", "secagg_phase_seconds"}, BadCase{"dp: \"dp\"", "dp"},
        BadCase{"dp: \"dp-sgd\" dp_noise_multiplier: 0.05", "dp_noise_multiplier"},
        BadCase{"dp: \"dp-sgd\" dp_noise_multiplier: 10001", "dp_noise_multiplier"},
        BadCase{"dp: \"dp-fedavg\" dp_noise_multiplier: nan", "dp_noise_multiplier"},
        BadCase{"dp: \"dp-fedavg\" dp_clip_norm: 0", "dp_clip_norm"},
        BadCase{"dp: \"dp-fedavg\" dp_clip_norm: inf", "dp_clip_norm"},
        BadCase{"dp: \"dp-sgd\" personalization: FEDBN", "personalization"},
        BadCase{"dp: \"dp-sgd\" personalization: SILOBN", "personalization"},
        BadCase{"dp: \"dp-fedavg\" aggregation: \"median\"", "aggregation"},
        BadCase{"dp: \"dp-fedavg\" aggregation: \"trimmed_mean\"", "aggregation"}));

TEST(ValidateRunConfigTest, PrivacyRefusalsSayWhy) {
  absl::StatusOr<v1::RunConfig> c = ParseRunConfig("secure_aggregation: true compression: \"int8\"", "r");
  ASSERT_TRUE(c.ok());
  absl::Status status = ValidateRunConfig(*c);
  EXPECT_THAT(status.message(), HasSubstr("int8"));
  EXPECT_THAT(status.message(), HasSubstr("topk"));
  EXPECT_THAT(status.message(), HasSubstr("secure_aggregation"));
  c = ParseRunConfig("dp: \"dp-sgd\" personalization: FEDBN", "r");
  ASSERT_TRUE(c.ok());
  EXPECT_THAT(ValidateRunConfig(*c).message(), HasSubstr("BatchNorm"));
}

TEST(ValidateRunConfigTest, AcceptsPrivacyEdgeValues) {
  for (const char* text :
       {"secure_aggregation: true aggregation: \"fedadam\" dp: \"dp-fedavg\" secagg_threshold: 2 "
        "sites: \"a\" sites: \"b\" min_sites: 2 secagg_phase_seconds: 10 dp_noise_multiplier: 0.1",
        "secure_aggregation: true aggregation: \"fedprox\" personalization: DITTO secagg_phase_seconds: 3600 "
        "secagg_range: 0.001",
        "dp: \"dp-sgd\" dp_noise_multiplier: 10000 dp_clip_norm: 0.01 aggregation: \"median\"",
        "dp: \"none\" dp_noise_multiplier: 0 dp_clip_norm: 0", "dp: \"\"",
        "dp: \"dp-fedavg\" aggregation: \"fedadam\" clip_norm: 3"}) {
    absl::StatusOr<v1::RunConfig> c = ParseRunConfig(text, "r");
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_TRUE(ValidateRunConfig(*c).ok()) << text << ": " << ValidateRunConfig(*c);
  }
}

TEST(ValidateRunConfigTest, AcceptsEdgeValues) {
  v1::RunConfig c;
  c.set_trim_fraction(0);
  c.set_topk_fraction(1);
  c.set_base_model("0123abcd");
  c.add_sites("site-a");
  c.set_min_sites(1);
  c.set_compression("topk");
  c.set_aggregation("median");
  EXPECT_TRUE(ValidateRunConfig(c).ok()) << ValidateRunConfig(c);
  EXPECT_TRUE(ValidateRunConfig(v1::RunConfig()).ok());  // All defaults.
}

}  // namespace
}  // namespace fedtune::admin
