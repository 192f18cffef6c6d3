// The coordinator daemon's configuration (fedtune.v1.CoordinatorConfig, a text proto) and the checks of an
// operator's run configuration (fedtune.v1.RunConfig) before a run starts.
//
// Thread safety: the functions are reentrant.
#ifndef FEDTUNE_COORDINATOR_COORDINATOR_CONFIG_H_
#define FEDTUNE_COORDINATOR_COORDINATOR_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "fedtune/v1/federation_config.pb.h"

namespace fedtune::coordinator {

// Parses a CoordinatorConfig text proto. Relative paths (port_file, metrics_port_file, server_cert, server_key, ca_dir,
// state_dir, initial_model) are resolved against `base_dir` (the config file's directory). InvalidArgument with
// `source`, line and column for a syntax error. The result is not validated (see ValidateCoordinatorConfig).
absl::StatusOr<v1::CoordinatorConfig> ParseCoordinatorConfig(absl::string_view text, absl::string_view source,
                                                             const std::string& base_dir);

// Reads `path` and parses it with its directory as base_dir. NotFound / PermissionDenied naming the file.
absl::StatusOr<v1::CoordinatorConfig> LoadCoordinatorConfig(const std::string& path);

// InvalidArgument naming the field for: a missing listen_address (or one without a port), server_cert,
// server_key, ca_dir or state_dir; chunk_bytes outside [1 MiB, 4 MiB]; task_wait_seconds < 1;
// heartbeat_timeout_seconds < 1; max_upload_bytes < 1; max_open_uploads_per_site < 1; max_spool_bytes_per_site or
// max_spool_bytes_per_round negative, or set (> 0) below max_upload_bytes (no upload of the allowed size could
// ever be received); max_calls_per_site < 1; max_streams_per_site < 1 or above max_calls_per_site;
// max_server_threads < 4; a metrics_listen_address that is not HOST:PORT / [IPv6]:PORT with a port 0-65535
// (metrics::CheckListenAddress) or that equals listen_address (port other than 0); metrics_port_file set without
// metrics_listen_address.
absl::Status ValidateCoordinatorConfig(const v1::CoordinatorConfig& config);

// The spool limits in effect: the configured value, or for 0 the documented multiple of max_upload_bytes
// (2x per site, 8x per round; saturating at INT64_MAX).
int64_t SpoolBytesPerSite(const v1::CoordinatorConfig& config);
int64_t SpoolBytesPerRound(const v1::CoordinatorConfig& config);

// InvalidArgument naming the field for: rounds < 1; min_sites < 1; round_deadline_seconds < 1;
// max_round_attempts < 1; local_epochs < 1; learning_rate not finite or <= 0; batch_size < 1; an unknown
// aggregation; proximal_mu < 0 (fedprox); server_learning_rate <= 0 (fedadam); trim_fraction outside [0, 0.5)
// (trimmed_mean); clip_norm or max_update_norm negative or not finite; an unknown compression; topk_fraction
// outside (0, 1] (topk); a site id listed twice; min_sites larger than the number of listed sites; the privacy
// fields and their combinations (ValidatePrivacyConfig, run_config_privacy.h: the same check as the CLI's).
absl::Status ValidateRunConfig(const v1::RunConfig& config);

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_COORDINATOR_CONFIG_H_
