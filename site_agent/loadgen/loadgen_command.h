// The command line of `fedtune-loadgen` (main.cc is a thin wrapper): parses the flags (loadgen_options.h), runs the
// LoadGenerator until its sites are done and prints the per-round report (FormatReport) to `out`.
//
// Exit codes (common/cli/command.h): 0 when every simulated site finished its work; 2 for bad flags or input;
// 3 when the coordinator refused the sites' certificates; 1 otherwise (a site failed, the run ended early, the
// timeout passed). Errors are printed to `err` as "fedtune-loadgen: error: MESSAGE"; the report is printed either way
// once the sites ran.
//
// Thread safety: call once per process (SIGINT/SIGTERM stop the sites when install_signal_handler is true).
#ifndef FEDTUNE_SITE_AGENT_LOADGEN_LOADGEN_COMMAND_H_
#define FEDTUNE_SITE_AGENT_LOADGEN_LOADGEN_COMMAND_H_

#include <ostream>
#include <string>
#include <vector>

namespace fedtune::loadgen {

// `args` without the program name. --help prints the usage to `out` (exit 0).
int RunLoadgenCommand(const std::vector<std::string>& args, std::ostream& out, std::ostream& err,
                      bool install_signal_handler = false);

// The usage text.
std::string LoadgenUsage();

}  // namespace fedtune::loadgen

#endif  // FEDTUNE_SITE_AGENT_LOADGEN_LOADGEN_COMMAND_H_
