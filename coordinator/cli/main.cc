// build/bin/fedtune: the operator and research command line. Thin: registers
// the subsystems' commands and dispatches.
#include "common/cli/command.h"
#include "common/logging.h"
#include "common/stats/compare_command.h"

int main(int argc, char** argv) {
  fedtune::InitLogging(argv[0]);
  fedtune::cli::CommandSet commands("fedtune",
                                    "federated fine-tuning of chest-radiograph "
                                    "models (operator and research CLI)");
  commands.Add(fedtune::stats::MakeStatsCompareCommand());
  return commands.Main(argc, argv);
}
