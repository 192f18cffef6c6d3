// build/bin/fedtune-site: the hospital-side program. Thin: registers the subsystems' commands and dispatches.

#include <iostream>

#include "absl/strings/str_cat.h"
#include "common/cli/command.h"
#include "common/data/data_check_command.h"
#include "common/data/index_command.h"
#include "common/imaging/convert_command.h"
#include "common/logging.h"
#include "common/model/model_command.h"
#include "common/net/grpc_logging.h"
#include "common/pki/pki_commands.h"
#include "site_agent/agent/run_command.h"
#include "site_agent/commands/evaluate.h"
#include "site_agent/commands/finetune.h"
#include "site_agent/commands/model_init.h"
#include "site_agent/commands/predict.h"

int main(int argc, char** argv) {
  fedtune::InitLogging(argv[0]);
  // --log-format anywhere on the command line (before or after the command's words).
  if (absl::Status format = fedtune::ConfigureLogFormat(&argc, argv); !format.ok()) {
    fedtune::PrintErrorLine(absl::StrCat("fedtune-site: error: ", format.message()));
    return fedtune::cli::kExitBadInput;
  }
  fedtune::net::RouteGrpcLogsForLogFormat();
  fedtune::cli::CommandSet commands("fedtune-site", "the fedtune site agent and local tools of a hospital");
  // data check decodes every image with the decoder training uses (and its --max-image-pixels), so it accepts
  // exactly what training reads.
  commands.Add(fedtune::data::MakeDataCheckCommand(std::cout));
  // data index writes manifests from PACS export folders (DICOM headers + a labels CSV) or public collections.
  commands.Add(fedtune::data::MakeDataIndexCommand(std::cout));
  commands.Add(fedtune::imaging::MakeDataConvertCommand(std::cout));
  commands.Add(fedtune::model::MakeModelImportCommand(std::cout));
  commands.Add(fedtune::model::MakeModelInfoCommand(std::cout));
  commands.Add(fedtune::agent::MakeModelInitCommand());
  commands.Add(fedtune::agent::MakeFinetuneCommand());
  commands.Add(fedtune::agent::MakePredictCommand());
  commands.Add(fedtune::agent::MakeEvaluateCommand());
  commands.Add(fedtune::agent::MakeRunCommand());                // The federated mode: dials out to the coordinator.
  commands.Add(fedtune::pki::MakePkiRequestCommand(std::cout));  // The site's key is made here and never leaves it.
  return commands.Main(argc, argv);
}
