#include "site_agent/agent/run_command.h"

#include <optional>
#include <string>

#include "common/logging.h"
#include "common/status_macros.h"
#include "common/train/threads.h"
#include "site_agent/agent/agent_config.h"
#include "site_agent/agent/federated_agent.h"

namespace fedtune::agent {
namespace {

absl::Status RunAgent(const cli::ParsedFlags& flags) {
  ASSIGN_OR_RETURN(v1::SiteAgentConfig config, LoadAgentConfig(flags.GetOrDie("config")));
  ASSIGN_OR_RETURN(int64_t exit_after, flags.GetInt("exit-after-runs", config.exit_after_runs()));
  if (exit_after < 0) return absl::InvalidArgumentError("--exit-after-runs must be >= 0");
  config.set_exit_after_runs(static_cast<int>(exit_after));
  // LibTorch's thread count is process-wide: set here, by the program, for every task's fine-tuning.
  train::SetIntraOpThreads(config.finetune().threads());
  ASSIGN_OR_RETURN(std::unique_ptr<FederatedAgent> agent, FederatedAgent::Create(config));
  LOG(INFO) << "site " << config.site_id() << " (" << agent->hello_request().capabilities().device() << ", "
            << agent->hello_request().dataset().images() << " images) connecting to coordinator "
            << config.coordinator();
  return agent->Run();
}

}  // namespace

cli::Command MakeRunCommand() {
  cli::Command c;
  c.path = {"run"};
  c.summary = "take part in federated runs: connect to the coordinator, fine-tune, upload deltas, report metrics";
  c.flags = {
      {"config", "text-format fedtune.v1.SiteAgentConfig (see docs/config-reference.md)", false, true, std::nullopt,
       "F.textproto"},
      {"exit-after-runs", "override the config's exit_after_runs (0: serve forever)", false, false, std::nullopt, "N"},
  };
  c.run = RunAgent;
  return c;
}

}  // namespace fedtune::agent
