#include "coordinator/cli/experiment_command.h"

#include <iostream>
#include <memory>
#include <set>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/federation/states.h"
#include "common/status_macros.h"
#include "coordinator/cli/comparison_report.h"
#include "coordinator/cli/experiment.h"
#include "coordinator/cli/terminal_text.h"

namespace fedtune::admin {
namespace {

cli::FlagSpec Flag(std::string name, std::string help, std::string metavar, bool required) {
  cli::FlagSpec flag;
  flag.name = std::move(name);
  flag.help = std::move(help);
  flag.metavar = std::move(metavar);
  flag.required = required;
  return flag;
}

// A command with `flags` plus the connection flags. `run` gets the flags, a way to connect (called once the
// command's own input is checked) and the output stream.
using Connector = std::function<absl::StatusOr<std::unique_ptr<AdminClient>>()>;
using Run =
    std::function<absl::Status(const cli::ParsedFlags&, const Connector&, std::ostream&, const CommandEnvironment&)>;

cli::Command ConnectedCommand(std::vector<std::string> path, std::string summary, std::vector<cli::FlagSpec> flags,
                              const CommandEnvironment& environment, Run run) {
  cli::Command command;
  command.path = std::move(path);
  command.summary = std::move(summary);
  command.flags = std::move(flags);
  for (cli::FlagSpec& flag : ConnectionFlags()) command.flags.push_back(std::move(flag));
  command.run = [environment, run = std::move(run)](const cli::ParsedFlags& flags) -> absl::Status {
    const EnvLookup env = environment.env ? environment.env : ProcessEnvironment();
    Connector connect = [&flags, env]() -> absl::StatusOr<std::unique_ptr<AdminClient>> {
      ASSIGN_OR_RETURN(ConnectionSettings settings, ResolveConnection(flags, env));
      return AdminClient::Connect(settings);
    };
    std::ostream& out = environment.out != nullptr ? *environment.out : std::cout;
    return run(flags, connect, out, environment);
  };
  return command;
}

// Writes the report of `runs` and prints its table and paths.
absl::Status WriteAndPrint(const std::vector<StrategyRun>& runs, const std::string& out_dir, std::ostream& out) {
  ASSIGN_OR_RETURN(ComparisonFiles files, WriteComparisonReport(runs, out_dir));
  out << ComparisonSummaryText(runs) << "\ncomparison report: " << files.html_path << "\n                   "
      << files.json_path << "\n"
      << std::flush;
  return absl::OkStatus();
}

absl::Status RunExperimentCommand(const cli::ParsedFlags& flags, const Connector& connect, std::ostream& out,
                                  const CommandEnvironment& environment) {
  const std::string path = flags.GetOrDie("config");
  ASSIGN_OR_RETURN(v1::ExperimentConfig config, ReadExperimentConfig(path));
  if (std::optional<std::string> dir = flags.Get("out")) config.set_out_dir(*dir);
  if (absl::Status valid = ValidateExperimentConfig(config); !valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", valid.message()));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<AdminClient> client, connect());
  std::unique_ptr<RunService> service = AdminRunService(client.get());
  ExperimentOptions options;
  if (environment.sleep) options.sleep = environment.sleep;
  options.progress = [&out](const std::string& line) { out << TerminalSafe(line) << "\n" << std::flush; };
  out << "experiment: " << config.strategies_size() << " strateg" << (config.strategies_size() == 1 ? "y" : "ies")
      << " (" << TerminalSafe(absl::StrJoin(config.strategies(), ", ")) << "), one run after the other\n"
      << std::flush;
  ExperimentResult result = RunExperiment(config, *service, options);
  if (!result.runs.empty()) RETURN_IF_ERROR(WriteAndPrint(result.runs, config.out_dir(), out));
  RETURN_IF_ERROR(result.status);
  std::vector<std::string> incomplete;
  for (const StrategyRun& run : result.runs) {
    const absl::StatusOr<federation::RunState> state = federation::GetState(run.report.status());
    if (!state.ok() || *state != federation::RunState::kCompleted) {
      incomplete.push_back(absl::StrCat(run.strategy, " (run ", run.report.status().run_id(), ": ",
                                        federation::DisplayText(run.report.status()), ")"));
    }
  }
  if (!incomplete.empty()) {
    return absl::AbortedError(absl::StrCat("not every run completed: ", absl::StrJoin(incomplete, ", "),
                                           "; the comparison report shows what there is"));
  }
  return absl::OkStatus();
}

absl::Status RunReportCompareCommand(const cli::ParsedFlags& flags, const Connector& connect, std::ostream& out,
                                     const CommandEnvironment&) {
  std::vector<std::string> ids;
  std::set<std::string> seen;
  for (absl::string_view id : absl::StrSplit(flags.GetOrDie("runs"), ',')) {
    id = absl::StripAsciiWhitespace(id);
    if (id.empty()) return absl::InvalidArgumentError("--runs: an empty run id (write R1,R2,...)");
    if (!seen.insert(std::string(id)).second) {
      return absl::InvalidArgumentError(absl::StrCat("--runs: run ", id, " is given twice"));
    }
    ids.emplace_back(id);
  }
  if (ids.size() > static_cast<size_t>(kMaxStrategies)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--runs: ", ids.size(), " runs; at most ", kMaxStrategies, " can be compared"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<AdminClient> client, connect());
  std::vector<v1::RunReport> reports;
  for (const std::string& id : ids) {
    ASSIGN_OR_RETURN(v1::RunReport report, client->GetRunReport(id));
    reports.push_back(std::move(report));
  }
  const std::vector<std::string> names = StrategyNames(reports);
  std::vector<StrategyRun> runs;
  for (size_t i = 0; i < reports.size(); ++i) runs.push_back({names[i], std::move(reports[i])});
  return WriteAndPrint(runs, flags.GetOrDie("out"), out);
}

}  // namespace

cli::Command MakeExperimentCommand(CommandEnvironment environment) {
  return ConnectedCommand(
      {"experiment"}, "run the same consortium once per strategy and write one comparison report",
      {Flag("config", "ExperimentConfig text proto (federation_config.proto)", "experiment.textproto", true),
       Flag("out", "report directory (default: the config's out_dir)", "DIR", false)},
      environment, RunExperimentCommand);
}

cli::Command MakeReportCompareCommand(CommandEnvironment environment) {
  return ConnectedCommand({"report", "compare"}, "compare finished runs (one per strategy) in one report",
                          {Flag("runs", "comma-separated run ids (1 to 8)", "R1,R2,...", true),
                           Flag("out", "output directory (created if missing)", "DIR", true)},
                          environment, RunReportCompareCommand);
}

std::vector<cli::Command> MakeExperimentCommands(const CommandEnvironment& environment) {
  return {MakeExperimentCommand(environment), MakeReportCompareCommand(environment)};
}

}  // namespace fedtune::admin
