// `fedtune-site run --config site.textproto`: the site agent's federated mode (federated_agent.h).
#ifndef FEDTUNE_SITE_AGENT_AGENT_RUN_COMMAND_H_
#define FEDTUNE_SITE_AGENT_AGENT_RUN_COMMAND_H_

#include "common/cli/command.h"

namespace fedtune::agent {

// run --config F.textproto [--exit-after-runs N]
// Exit codes (cli::ExitCodeFor): 0 after exit_after_runs finished runs; 2 for a bad config (the field named) or a
// certificate whose CN is not site_id; 3 when the coordinator refuses the site (UNAUTHENTICATED, PERMISSION_DENIED:
// the message names the coordinator); 1 for other failures.
cli::Command MakeRunCommand();

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_AGENT_RUN_COMMAND_H_
