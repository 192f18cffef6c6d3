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
        BadCase{"base_model: \"abc\"", "base_model"}, BadCase{"base_model: \"ABCDEF0123\"", "base_model"}));

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
