// build/bin/fedtune: the operator and research command line. Thin: registers
// the subsystems' commands and dispatches.
#include <iostream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/cli/command.h"
#include "common/logging.h"
#include "common/net/grpc_logging.h"
#include "common/pki/pki_commands.h"
#include "common/privacy/privacy_command.h"
#include "common/stats/compare_command.h"
#include "common/synth/synth_command.h"
#include "coordinator/cli/admin_commands.h"
#include "coordinator/cli/dashboard_command.h"
#include "coordinator/cli/experiment_command.h"

int main(int argc, char** argv) {
  fedtune::InitLogging(argv[0]);
  // --log-format anywhere on the command line (before or after the command's words).
  if (absl::Status format = fedtune::ConfigureLogFormat(&argc, argv); !format.ok()) {
    fedtune::PrintErrorLine(absl::StrCat("fedtune: error: ", format.message()));
    return fedtune::cli::kExitBadInput;
  }
  fedtune::net::RouteGrpcLogsForLogFormat();
  fedtune::cli::CommandSet commands("fedtune",
                                    "federated fine-tuning of chest-radiograph "
                                    "models (operator and research CLI)");
  commands.Add(fedtune::stats::MakeStatsCompareCommand(std::cout));
  commands.Add(fedtune::synth::MakeSynthCommand(std::cout));
  commands.Add(fedtune::privacy::MakePrivacyEpsilonCommand(std::cout));
  commands.Add(fedtune::privacy::MakePrivacyNoiseCommand(std::cout));
  commands.Add(fedtune::pki::MakePkiInitCommand(std::cout));
  commands.Add(fedtune::pki::MakePkiServerCertCommand(std::cout));
  commands.Add(
      fedtune::pki::MakePkiRequestCommand(std::cout));  // Operators make their own key and CSR (pki request --name).
  commands.Add(fedtune::pki::MakePkiSignCommand(std::cout));
  commands.Add(fedtune::pki::MakePkiRevokeCommand(std::cout));
  commands.Add(fedtune::pki::MakePkiCrlCommand(std::cout));
  commands.Add(fedtune::pki::MakePkiListCommand(std::cout));
  // Operator commands against the coordinator: sites, run, model export, report.
  for (fedtune::cli::Command& command : fedtune::admin::MakeAdminCommands()) commands.Add(std::move(command));
  // The read-only web dashboard (dashboard_command.h).
  commands.Add(fedtune::admin::MakeDashboardCommand());
  // Strategy comparison: experiment, report compare.
  for (fedtune::cli::Command& command : fedtune::admin::MakeExperimentCommands()) commands.Add(std::move(command));
  return commands.Main(argc, argv);
}
