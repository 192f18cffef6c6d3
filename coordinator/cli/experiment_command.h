// The strategy-comparison commands of `fedtune` (cli::Command factories for coordinator/cli/main.cc):
//
//   experiment --config F [--out DIR]            one run per strategy (experiment.h), then the comparison report
//   report compare --runs R1,R2,... --out DIR    the comparison report of finished runs
//
// Both write DIR/comparison.json and DIR/comparison.html (comparison_report.h) and print the report's short table and
// the two paths. Both take the connection flags of admin_client.h. Exit codes follow cli::ExitCodeFor: 2 for a bad
// config, flag or unknown run; 1 when a run of the experiment failed or was aborted (the report is written all the
// same and shows what there is) or the coordinator could not be reached.
#ifndef FEDTUNE_COORDINATOR_CLI_EXPERIMENT_COMMAND_H_
#define FEDTUNE_COORDINATOR_CLI_EXPERIMENT_COMMAND_H_

#include <vector>

#include "common/cli/command.h"
#include "coordinator/cli/admin_commands.h"

namespace fedtune::admin {

// experiment --config F [--out DIR]: ReadExperimentConfig + ValidateExperimentConfig (InvalidArgument naming the file
// and field), RunExperiment with a progress line per run start and end, WriteComparisonReport into --out (default:
// the config's out_dir) even when the experiment stopped early (with the runs that ended), then ComparisonSummaryText.
// Returns the experiment's error, else Aborted naming the runs that did not complete, else OK.
cli::Command MakeExperimentCommand(CommandEnvironment environment = {});

// report compare --runs R1,R2,... --out DIR: GetRunReport of each run (1 to kMaxStrategies distinct ids), named by
// StrategyNames, then WriteComparisonReport and ComparisonSummaryText.
cli::Command MakeReportCompareCommand(CommandEnvironment environment = {});

// Both, in the order of this header.
std::vector<cli::Command> MakeExperimentCommands(const CommandEnvironment& environment = {});

}  // namespace fedtune::admin

#endif  // FEDTUNE_COORDINATOR_CLI_EXPERIMENT_COMMAND_H_
