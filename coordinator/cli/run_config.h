// The run configuration an operator hands to `fedtune run start --config run.textproto`: parsing of the RunConfig
// text proto (federation_config.proto) and the local checks done before it is sent to the coordinator, so that a
// typo is reported with the file, line and field instead of as a failed run.
//
// Thread safety: the functions are reentrant.
#ifndef FEDTUNE_COORDINATOR_CLI_RUN_CONFIG_H_
#define FEDTUNE_COORDINATOR_CLI_RUN_CONFIG_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "fedtune/v1/federation_config.pb.h"

namespace fedtune::admin {

// The aggregation and compression names RunConfig accepts.
inline constexpr const char* kAggregations[] = {"fedavg", "fedprox", "fedadam", "trimmed_mean", "median"};
inline constexpr const char* kCompressions[] = {"fp32", "fp16", "int8", "topk"};

// Parses RunConfig text format. InvalidArgument "SOURCE:LINE:COLUMN: MESSAGE" on a syntax error or an unknown field.
// `source` names the text in messages (normally the file path).
absl::StatusOr<v1::RunConfig> ParseRunConfig(absl::string_view text, absl::string_view source);

// Reads and parses a file: NotFound / PermissionDenied naming the path, or ParseRunConfig's errors.
absl::StatusOr<v1::RunConfig> ReadRunConfig(const std::string& path);

// Checks the values (set or defaulted) of a RunConfig. InvalidArgument naming the first bad field and its value:
// rounds, min_sites, round_deadline_seconds, max_round_attempts, local_epochs, batch_size >= 1; learning_rate > 0;
// aggregation and compression among the names above; proximal_mu >= 0; server_learning_rate > 0;
// trim_fraction in [0, 0.5); clip_norm, max_update_norm >= 0; topk_fraction in (0, 1]; all reals finite; sites
// non-empty, unique, without whitespace, and at least min_sites of them when given; base_model empty or 8 to 64
// lowercase hex digits (a digest or a unique prefix of one); cross_site_evaluation and local_only_baseline only with
// final_evaluation; ditto_lambda finite and, with personalization DITTO, > 0; local_only_epochs in [0, 1000]; the
// privacy fields and their combinations as coordinator/run_config_privacy.h says (the coordinator runs the same
// check).
absl::Status ValidateRunConfig(const v1::RunConfig& config);

}  // namespace fedtune::admin

#endif  // FEDTUNE_COORDINATOR_CLI_RUN_CONFIG_H_
