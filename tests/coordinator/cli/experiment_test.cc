#include "coordinator/cli/experiment.h"

#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::admin {
namespace {

using ::testing::HasSubstr;

// Runs that go "running" for `polls_until_end` polls, then end in `end_state`; every run reports the base model it
// was started with, or "first-digest" when the config names none.
class FakeRunService final : public RunService {
 public:
  absl::StatusOr<std::string> StartRun(const v1::RunConfig& config) override {
    if (fail_start_at == static_cast<int>(started.size())) return absl::FailedPreconditionError("a run is active");
    started.push_back(config);
    return absl::StrCat("run-", started.size());
  }
  absl::StatusOr<v1::RunStatus> GetRunStatus(const std::string& run_id) override {
    ++polls;
    if (unavailable_polls > 0) {
      --unavailable_polls;
      return absl::UnavailableError("coordinator restarting");
    }
    const int index = std::stoi(run_id.substr(4)) - 1;
    const int seen = ++polls_of[run_id];
    v1::RunStatus status;
    status.set_run_id(run_id);
    status.set_state(seen < polls_until_end ? "running" : end_state(index));
    status.set_base_model_digest(started[index].base_model().empty() ? "first-digest" : started[index].base_model());
    *status.mutable_config() = started[index];
    status.set_started_ms(1000);
    if (seen >= polls_until_end) status.set_finished_ms(61000);
    return status;
  }
  absl::StatusOr<v1::RunReport> GetRunReport(const std::string& run_id) override {
    v1::RunReport report;
    ASSIGN_OR_RETURN(*report.mutable_status(), GetRunStatus(run_id));
    return report;
  }

  std::vector<v1::RunConfig> started;
  std::map<std::string, int> polls_of;
  int polls = 0;
  int polls_until_end = 3;
  int unavailable_polls = 0;
  int fail_start_at = -1;
  std::function<std::string(int)> end_state = [](int) { return "completed"; };
};

v1::ExperimentConfig Config(std::vector<std::string> strategies) {
  v1::ExperimentConfig config;
  config.mutable_base()->set_name("cmp");
  config.mutable_base()->set_rounds(1);
  for (const std::string& s : strategies) config.add_strategies(s);
  return config;
}

ExperimentOptions NoSleep(std::vector<absl::Duration>* sleeps = nullptr, std::vector<std::string>* lines = nullptr) {
  ExperimentOptions options;
  options.sleep = [sleeps](absl::Duration d) {
    if (sleeps != nullptr) sleeps->push_back(d);
  };
  options.progress = [lines](const std::string& line) {
    if (lines != nullptr) lines->push_back(line);
  };
  return options;
}

TEST(ParseStrategyTest, KnownNamesCaseInsensitive) {
  EXPECT_EQ(ParseStrategy("fedavg")->personalization, v1::RunConfig::NONE);
  EXPECT_EQ(ParseStrategy("FedBN")->personalization, v1::RunConfig::FEDBN);
  EXPECT_EQ(ParseStrategy("siloBN")->name, "silobn");
  EXPECT_EQ(ParseStrategy(" ditto ")->personalization, v1::RunConfig::DITTO);
  absl::StatusOr<Strategy> unknown = ParseStrategy("fedsgd");
  EXPECT_TRUE(absl::IsInvalidArgument(unknown.status()));
  EXPECT_THAT(unknown.status().message(), HasSubstr("'fedsgd'"));
  EXPECT_THAT(unknown.status().message(), HasSubstr("fedavg, fedbn, silobn, ditto"));
}

TEST(ValidateExperimentTest, Bounds) {
  EXPECT_TRUE(ValidateExperimentConfig(Config({"fedavg", "fedbn"})).ok());
  EXPECT_THAT(ValidateExperimentConfig(Config({})).message(), HasSubstr("'strategies' is empty"));
  EXPECT_THAT(ValidateExperimentConfig(Config({"fedavg", "FEDAVG"})).message(), HasSubstr("given twice"));
  EXPECT_THAT(ValidateExperimentConfig(Config({"fedavg", "fedbm"})).message(), HasSubstr("'fedbm'"));
  v1::ExperimentConfig many = Config({});
  for (int i = 0; i < 9; ++i) many.add_strategies("fedavg");
  EXPECT_THAT(ValidateExperimentConfig(many).message(), HasSubstr("at most 8"));
  v1::ExperimentConfig poll = Config({"fedavg"});
  poll.set_poll_seconds(0);
  EXPECT_THAT(ValidateExperimentConfig(poll).message(), HasSubstr("poll_seconds"));
  v1::ExperimentConfig bad_base = Config({"fedavg"});
  bad_base.mutable_base()->set_rounds(0);
  EXPECT_THAT(ValidateExperimentConfig(bad_base).message(), HasSubstr("'rounds'"));
  // Ditto needs a positive lambda; the base's is checked for the strategy that uses it.
  v1::ExperimentConfig ditto = Config({"fedavg", "ditto"});
  ditto.mutable_base()->set_ditto_lambda(0);
  EXPECT_THAT(ValidateExperimentConfig(ditto).message(), HasSubstr("ditto_lambda"));
  ditto.clear_strategies();
  ditto.add_strategies("fedavg");
  EXPECT_TRUE(ValidateExperimentConfig(ditto).ok());
  // final_evaluation: false is overridden, as the comparison needs it.
  v1::ExperimentConfig no_final = Config({"fedbn"});
  no_final.mutable_base()->set_final_evaluation(false);
  EXPECT_TRUE(ValidateExperimentConfig(no_final).ok());
}

TEST(ParseExperimentConfigTest, TextAndPaths) {
  fedtune::testing::TempDir dir;
  const std::string path = dir.WriteFile("exp.textproto", R"(
base { name: "x" rounds: 2 aggregation: "fedavg" }
strategies: "fedavg" strategies: "siloBN"
out_dir: "reports/cmp"
)");
  absl::StatusOr<v1::ExperimentConfig> config = ReadExperimentConfig(path);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->base().rounds(), 2);
  EXPECT_EQ(config->strategies_size(), 2);
  EXPECT_EQ(config->out_dir(), dir.path() + "/reports/cmp");
  EXPECT_EQ(config->poll_seconds(), 5);
  absl::StatusOr<v1::ExperimentConfig> bad = ParseExperimentConfig("strategy: \"fedavg\"", "e.textproto");
  EXPECT_TRUE(absl::IsInvalidArgument(bad.status()));
  EXPECT_THAT(bad.status().message(), HasSubstr("e.textproto:1"));
}

TEST(StrategyRunConfigTest, SetsPersonalizationBaselineAndName) {
  v1::RunConfig base;
  base.set_name("cmp");
  base.set_final_evaluation(false);
  const v1::RunConfig c = StrategyRunConfig(base, {"ditto", v1::RunConfig::DITTO}, "abcdef0123");
  EXPECT_EQ(c.personalization(), v1::RunConfig::DITTO);
  EXPECT_TRUE(c.final_evaluation());
  EXPECT_TRUE(c.local_only_baseline());
  EXPECT_EQ(c.base_model(), "abcdef0123");
  EXPECT_EQ(c.name(), "cmp [ditto]");
  EXPECT_EQ(StrategyRunConfig(v1::RunConfig(), {"fedavg", v1::RunConfig::NONE}, "").name(), "[fedavg]");
  EXPECT_FALSE(StrategyRunConfig(v1::RunConfig(), {"fedavg", v1::RunConfig::NONE}, "").has_base_model());
}

TEST(RunExperimentTest, RunsEachStrategyInOrderFromTheFirstRunsBaseModel) {
  FakeRunService service;
  std::vector<absl::Duration> sleeps;
  std::vector<std::string> lines;
  v1::ExperimentConfig config = Config({"fedavg", "FedBN", "siloBN", "ditto"});
  config.set_poll_seconds(7);
  const ExperimentResult result = RunExperiment(config, service, NoSleep(&sleeps, &lines));
  ASSERT_TRUE(result.status.ok()) << result.status;
  ASSERT_EQ(service.started.size(), 4u);
  const v1::RunConfig::Personalization expected[] = {v1::RunConfig::NONE, v1::RunConfig::FEDBN, v1::RunConfig::SILOBN,
                                                     v1::RunConfig::DITTO};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(service.started[i].personalization(), expected[i]);
    EXPECT_TRUE(service.started[i].local_only_baseline());
  }
  EXPECT_FALSE(service.started[0].has_base_model());
  for (int i = 1; i < 4; ++i) EXPECT_EQ(service.started[i].base_model(), "first-digest");
  ASSERT_EQ(result.runs.size(), 4u);
  EXPECT_EQ(result.runs[1].strategy, "fedbn");
  EXPECT_EQ(result.runs[2].strategy, "silobn");
  EXPECT_EQ(result.runs[3].report.status().run_id(), "run-4");
  // Each run polled until its third answer, with poll_seconds between.
  EXPECT_EQ(sleeps.size(), 8u);
  for (absl::Duration d : sleeps) EXPECT_EQ(d, absl::Seconds(7));
  EXPECT_THAT(lines, ::testing::Contains("fedbn: run run-2 completed in 60 s"));
}

TEST(RunExperimentTest, ConfiguredBaseModelIsKept) {
  FakeRunService service;
  v1::ExperimentConfig config = Config({"fedavg", "fedbn"});
  config.mutable_base()->set_base_model("0123456789abcdef");
  ASSERT_TRUE(RunExperiment(config, service, NoSleep()).status.ok());
  for (const v1::RunConfig& c : service.started) EXPECT_EQ(c.base_model(), "0123456789abcdef");
}

TEST(RunExperimentTest, AFailedRunDoesNotStopTheExperiment) {
  FakeRunService service;
  service.end_state = [](int index) { return index == 0 ? "failed" : "completed"; };
  const ExperimentResult result = RunExperiment(Config({"fedavg", "fedbn"}), service, NoSleep());
  ASSERT_TRUE(result.status.ok()) << result.status;
  ASSERT_EQ(result.runs.size(), 2u);
  EXPECT_EQ(result.runs[0].report.status().state(), "failed");
}

TEST(RunExperimentTest, TransientPollFailuresAreRiddenOut) {
  FakeRunService service;
  service.unavailable_polls = 5;
  EXPECT_TRUE(RunExperiment(Config({"fedavg"}), service, NoSleep()).status.ok());
  FakeRunService down;
  down.unavailable_polls = 1000;
  ExperimentOptions options = NoSleep();
  options.max_poll_failures = 4;
  const ExperimentResult result = RunExperiment(Config({"fedavg"}), down, options);
  EXPECT_TRUE(absl::IsUnavailable(result.status));
  EXPECT_THAT(result.status.message(), HasSubstr("strategy fedavg"));
  EXPECT_EQ(down.polls, 4);
}

TEST(RunExperimentTest, StartFailureStopsWithTheRunsSoFar) {
  FakeRunService service;
  service.fail_start_at = 1;
  const ExperimentResult result = RunExperiment(Config({"fedavg", "fedbn", "ditto"}), service, NoSleep());
  EXPECT_TRUE(absl::IsFailedPrecondition(result.status));
  EXPECT_THAT(result.status.message(), HasSubstr("strategy fedbn: a run is active"));
  ASSERT_EQ(result.runs.size(), 1u);
  EXPECT_EQ(result.runs[0].strategy, "fedavg");
}

TEST(RunExperimentTest, InvalidConfigStartsNothing) {
  FakeRunService service;
  const ExperimentResult result = RunExperiment(Config({"fedavg", "nope"}), service, NoSleep());
  EXPECT_TRUE(absl::IsInvalidArgument(result.status));
  EXPECT_TRUE(service.started.empty());
}

}  // namespace
}  // namespace fedtune::admin
