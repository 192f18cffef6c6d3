// `fedtune experiment --config F`: the same consortium trained once per strategy (FedAvg, FedBN, SiloBN, Ditto), one
// run after the other through the coordinator's AdminService, every run from the same base model and with the
// local-only baseline, so that one comparison report (comparison_report.h) can set the strategies side by side.
//
// The experiment only uses what an operator can: StartRun, GetRunStatus and GetRunReport (the RunService seam below;
// AdminClient in production, a fake in tests). It knows nothing of how a site applies a strategy: a strategy is a
// RunConfig.personalization value.
//
// Thread safety: the functions are reentrant; a RunService is used from one thread.
#ifndef FEDTUNE_COORDINATOR_CLI_EXPERIMENT_H_
#define FEDTUNE_COORDINATOR_CLI_EXPERIMENT_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "coordinator/cli/admin_client.h"
#include "coordinator/cli/comparison_report.h"
#include "fedtune/v1/federation.pb.h"
#include "fedtune/v1/federation_config.pb.h"

namespace fedtune::admin {

// Most strategies one experiment runs (each is a whole federated run).
inline constexpr int kMaxStrategies = 8;

// One strategy: its canonical (lower-case) name and the personalization its runs use.
struct Strategy {
  std::string name;  // "fedavg", "fedbn", "silobn" or "ditto".
  v1::RunConfig::Personalization personalization = v1::RunConfig::NONE;
};

// "fedavg" -> NONE, "fedbn" -> FEDBN, "silobn" -> SILOBN, "ditto" -> DITTO; case-insensitive, surrounding blanks
// ignored. InvalidArgument naming the value and the known names otherwise.
absl::StatusOr<Strategy> ParseStrategy(absl::string_view name);

// Parses ExperimentConfig text ("SOURCE:LINE:COLUMN: problem" on a syntax error or unknown field).
absl::StatusOr<v1::ExperimentConfig> ParseExperimentConfig(absl::string_view text, absl::string_view source);

// Reads and parses a file and resolves out_dir against the file's directory. NotFound / PermissionDenied naming the
// path, or the parse errors.
absl::StatusOr<v1::ExperimentConfig> ReadExperimentConfig(const std::string& path);

// Checks an experiment: 1 to kMaxStrategies strategies, each known (ParseStrategy) and given once; poll_seconds in
// [1, 600]; out_dir not empty; base valid (ValidateRunConfig) for every strategy's run config. InvalidArgument
// naming the field and the value.
absl::Status ValidateExperimentConfig(const v1::ExperimentConfig& config);

// The run config of one strategy: `base` with personalization set, final_evaluation and local_only_baseline true,
// base_model = `base_model` when not empty, and the name "BASE NAME [STRATEGY]" ("[STRATEGY]" alone without one).
v1::RunConfig StrategyRunConfig(const v1::RunConfig& base, const Strategy& strategy, const std::string& base_model);

// What an experiment needs of the coordinator.
class RunService {
 public:
  virtual ~RunService() = default;
  virtual absl::StatusOr<std::string> StartRun(const v1::RunConfig& config) = 0;  // The run id.
  virtual absl::StatusOr<v1::RunStatus> GetRunStatus(const std::string& run_id) = 0;
  virtual absl::StatusOr<v1::RunReport> GetRunReport(const std::string& run_id) = 0;
};

// The AdminService through `client`, which must outlive the result.
std::unique_ptr<RunService> AdminRunService(AdminClient* client);

struct ExperimentOptions {
  // Waits between polls. Default: absl::SleepFor.
  std::function<void(absl::Duration)> sleep;
  // Progress lines ("fedbn: run R started", "fedbn: run R completed in 312 s"), without newline. Default: none.
  std::function<void(const std::string&)> progress;
  // Polls in a row that may fail with UNAVAILABLE / DEADLINE_EXCEEDED (the coordinator restarting) before the
  // experiment gives up. Default 30.
  int max_poll_failures = 30;
};

// What an experiment produced.
struct ExperimentResult {
  std::vector<StrategyRun> runs;  // One per strategy that ran to its end, in the config's order.
  // OK when every strategy's run ended (completed, failed or aborted); else why the experiment stopped early (the
  // runs before it are in `runs`).
  absl::Status status;
};

// Runs the experiment: per strategy in order, StartRun with StrategyRunConfig (when the base config names no base
// model, the runs after the first use the first run's RunStatus.base_model_digest, so every run starts from the same
// model), then GetRunStatus every poll_seconds until the run is completed, failed or aborted, then GetRunReport. A
// run that failed or was aborted does not stop the experiment: its report holds what there is. result.status:
// InvalidArgument from ValidateExperimentConfig (nothing started); the RPC's error, prefixed with the strategy, when a
// run cannot be started, polled (after max_poll_failures transient failures in a row, or at once for any other
// error) or reported.
ExperimentResult RunExperiment(const v1::ExperimentConfig& config, RunService& service,
                               const ExperimentOptions& options = {});

}  // namespace fedtune::admin

#endif  // FEDTUNE_COORDINATOR_CLI_EXPERIMENT_H_
