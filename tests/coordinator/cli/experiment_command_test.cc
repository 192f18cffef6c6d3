#include "coordinator/cli/experiment_command.h"

#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::admin {
namespace {

using ::testing::HasSubstr;

// Runs `command` with `args`; the environment names a coordinator that nothing listens on, so a command that
// reaches the network fails with UNAVAILABLE.
absl::Status RunCommandWith(const cli::Command& command, const std::vector<std::string>& args) {
  absl::StatusOr<cli::ParsedFlags> flags = cli::ParseFlags(args, command.flags, command.max_positional);
  if (!flags.ok()) return flags.status();
  return command.run(*flags);
}

CommandEnvironment Environment(std::ostream* out) {
  CommandEnvironment environment;
  environment.out = out;
  environment.env = [](const std::string&) -> std::optional<std::string> { return std::nullopt; };
  return environment;
}

TEST(ExperimentCommandsTest, PathsAndConnectionFlags) {
  std::vector<std::string> paths;
  for (const cli::Command& c : MakeExperimentCommands()) {
    std::string path;
    for (const std::string& word : c.path) path += (path.empty() ? "" : " ") + word;
    paths.push_back(path);
    int connection = 0;
    for (const cli::FlagSpec& f : c.flags) {
      connection += f.name == "coordinator" || f.name == "cert" || f.name == "key" || f.name == "ca" ||
                    f.name == "server-name" || f.name == "timeout";
    }
    EXPECT_EQ(connection, 6) << path;
  }
  EXPECT_THAT(paths, ::testing::ElementsAre("experiment", "report compare"));
}

TEST(ExperimentCommandsTest, ABadConfigIsRefusedBeforeConnecting) {
  fedtune::testing::TempDir dir;
  std::ostringstream out;
  const cli::Command experiment = MakeExperimentCommand(Environment(&out));
  const std::string unknown = dir.WriteFile("unknown.textproto", "strategies: \"fedavg\" strategies: \"FedSGD\"\n");
  // No connection settings at all: the config's error comes first, naming the file and the value.
  absl::Status status = RunCommandWith(experiment, {"--config", unknown});
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_THAT(status.message(), HasSubstr(unknown));
  EXPECT_THAT(status.message(), HasSubstr("'FedSGD'"));
  const std::string many =
      dir.WriteFile("many.textproto",
                    "strategies: [\"fedavg\", \"fedbn\", \"silobn\", \"ditto\", \"a\", \"b\", \"c\", \"d\", \"e\"]");
  EXPECT_THAT(RunCommandWith(experiment, {"--config", many}).message(), HasSubstr("at most 8"));
  status = RunCommandWith(experiment, {"--config", dir.Join("missing.textproto")});
  EXPECT_TRUE(absl::IsNotFound(status)) << status;
  // A valid config then needs the connection settings.
  const std::string good = dir.WriteFile("good.textproto", "strategies: \"fedavg\"");
  EXPECT_THAT(RunCommandWith(experiment, {"--config", good}).message(), HasSubstr("--coordinator"));
}

TEST(ExperimentCommandsTest, ReportCompareChecksTheRunList) {
  std::ostringstream out;
  const cli::Command compare = MakeReportCompareCommand(Environment(&out));
  EXPECT_THAT(RunCommandWith(compare, {"--runs", "run-1,,run-2", "--out", "x"}).message(), HasSubstr("empty run id"));
  EXPECT_THAT(RunCommandWith(compare, {"--runs", "run-1,run-1", "--out", "x"}).message(),
              HasSubstr("run-1 is given twice"));
  EXPECT_THAT(RunCommandWith(compare, {"--runs", "1,2,3,4,5,6,7,8,9", "--out", "x"}).message(), HasSubstr("at most 8"));
  const absl::Status unreachable =
      RunCommandWith(compare, {"--runs", "run-1", "--out", "x", "--coordinator", "127.0.0.1:1"});
  EXPECT_FALSE(unreachable.ok());  // Missing certificates, or the coordinator unreachable: never a report.
}

}  // namespace
}  // namespace fedtune::admin
