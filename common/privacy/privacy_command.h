// `fedtune privacy epsilon` and `fedtune privacy noise`: the RDP accountant (rdp_accountant.h) on the command line.
#ifndef FEDTUNE_COMMON_PRIVACY_PRIVACY_COMMAND_H_
#define FEDTUNE_COMMON_PRIVACY_PRIVACY_COMMAND_H_

#include <ostream>

#include "common/cli/command.h"

namespace fedtune::privacy {

// --noise-multiplier S --sample-rate Q --steps T --delta D [--json]. Prints epsilon and the best order to `out` (which
// must outlive the command); with --json exactly {"epsilon": E, "best_order": A}. Bad flags or out-of-bound values:
// InvalidArgument (exit code 2).
cli::Command MakePrivacyEpsilonCommand(std::ostream& out);

// --target-epsilon E --sample-rate Q --steps T --delta D [--tolerance R] [--json]. Solves for the smallest noise
// multiplier reaching E (SolveNoiseMultiplier); with --json prints exactly
// {"noise_multiplier": S, "epsilon": E, "best_order": A}. Bad flags: InvalidArgument (exit 2); unreachable target:
// OutOfRange (exit 2).
cli::Command MakePrivacyNoiseCommand(std::ostream& out);

}  // namespace fedtune::privacy

#endif  // FEDTUNE_COMMON_PRIVACY_PRIVACY_COMMAND_H_
