// The options of `fedtune-loadgen`, the load generator that simulates N site agents against a real coordinator
// (load_generator.h), their command-line flags, and the rules that say which simulated site does what in a round:
// its id, its training-sample count, its delta variant, and whether it drops out or straggles.
//
// Sites are numbered i = 0 .. sites-1. Site i:
//   id           <site_prefix><i as 4 digits>, e.g. "loadgen-0007";
//   num_samples  i + 1 (its FedAvg weight);
//   variant      i mod variants: its delta has every floating element equal to variant * delta_value (integer
//                tensors 0), so with the defaults (2 variants) even sites send a zero delta and odd sites +delta_value.
// The aggregated FedAvg model is then predictable, and an update counted twice or not at all changes it
// (every site's weight differs from the others' and counts in the denominator).
//
// Thread safety: the functions are reentrant.
#ifndef FEDTUNE_SITE_AGENT_LOADGEN_LOADGEN_OPTIONS_H_
#define FEDTUNE_SITE_AGENT_LOADGEN_LOADGEN_OPTIONS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/cli/command.h"
#include "common/fl/encoding.h"

namespace fedtune::loadgen {

// Bounds of the options (ValidateLoadgenOptions).
inline constexpr int kMaxSites = 4096;
inline constexpr int kMaxRounds = 100000;
inline constexpr int kMaxVariants = 16;
inline constexpr double kMaxSeconds = 7 * 86400;  // Longest train time, straggler delay or timeout.

struct LoadgenOptions {
  // host:port of the coordinator. Required.
  std::string coordinator;
  // TLS name the coordinator's certificate must carry. Default "": the host of `coordinator`.
  std::string server_name;
  // Directory of the simulated sites' credentials: <site id>.pem and <site id>.key. Required. Sites missing here
  // are enrolled when ca_dir is set (see site_credentials.h), otherwise their absence is an error.
  std::string certs_dir;
  // The consortium CA directory (`fedtune pki init`). Default "": no enrolment (every site's files must exist).
  std::string ca_dir;
  // The consortium CA certificate the sites trust. Default "": <ca_dir>/ca.pem, else <certs_dir>/ca.pem.
  std::string ca_cert;
  // Downloads in progress and the shared delta payloads. Default "": a new directory under $TMPDIR (or /tmp),
  // removed at the end.
  std::string work_dir;
  // Simulated sites, 1 to kMaxSites. Default 1.
  int sites = 1;
  // Prefix of the site ids (the rest is 4 digits). Default "loadgen-".
  std::string site_prefix = "loadgen-";
  // TRAIN rounds each site takes part in (uploading, dropping out or refused); 0 (default): until the run ends.
  int rounds = 0;
  // Delta encoding; nullopt (default, flag value "plan"): the run's (TrainingPlan), as a real agent.
  std::optional<fl::Encoding> encoding;
  // Top-k fraction for the topk encoding; 0 (default): the plan's, else 0.01.
  double topk_fraction = 0;
  // Delta variants (1 to kMaxVariants) and the step between them (finite, |v| <= 1000). Defaults 2 and 0.25.
  int variants = 2;
  double delta_value = 0.25;
  // Share of the sites that never upload in a round (they take the task and go silent), in [0, 1]. Default 0.
  double dropout = 0;
  // Share of the sites that upload late by straggler_delay_seconds, in [0, 1]; dropout + stragglers <= 1.
  // Defaults 0 and 10 s.
  double stragglers = 0;
  double straggler_delay_seconds = 10;
  // Simulated training time between the download and the upload (heartbeats are sent meanwhile). Default 1 s.
  double train_seconds = 1;
  // Seed of the dropout and straggler choices and of the retry jitter. Default 1.
  uint64_t seed = 1;
  // Heartbeat period while a task runs, 1 to 3600 (the coordinator's Hello may shorten it). Default 10 s.
  int heartbeat_seconds = 10;
  // GetTask long-poll, 1 to 300 s. Default 20 s.
  int task_wait_seconds = 20;
  // Deadline of unary calls, 1 to 3600 s. Default 30 s.
  int rpc_timeout_seconds = 30;
  // The whole load test ends with an error after this long (> 0, at most kMaxSeconds). Default 3600 s.
  double timeout_seconds = 3600;
  // When set, written (atomically, "<sites>\n") once every site is approved: a script then starts the run.
  std::string ready_file;
};

// The flags of `fedtune-loadgen` (help text and defaults as above).
std::vector<cli::FlagSpec> LoadgenFlags();

// Options from parsed flags (InvalidArgument naming the flag for a malformed number or encoding), then
// ValidateLoadgenOptions.
absl::StatusOr<LoadgenOptions> OptionsFromFlags(const cli::ParsedFlags& flags);

// InvalidArgument naming the option (by its flag) for a missing required value, a value out of its bounds, an
// address without a port or a site prefix that makes invalid site ids.
absl::Status ValidateLoadgenOptions(const LoadgenOptions& options);

// Site i's id, training samples and delta variant (see the file comment). i must be >= 0.
std::string SiteId(const std::string& prefix, int i);
int64_t SiteNumSamples(int i);
int SiteVariant(int i, int variants);

// What site i does in one TRAIN attempt.
enum class SiteRole { kUpload, kStraggle, kDropOut };

// The role of site i (of `sites`) in (round, attempt): per attempt, round(dropout * sites) sites chosen by a
// permutation seeded with (seed, round, attempt) drop out, and the next round(stragglers * sites) of that
// permutation straggle; the others upload at once. Deterministic: the same for every call with the same arguments.
SiteRole RoleInRound(const LoadgenOptions& options, int i, int round, int attempt);

}  // namespace fedtune::loadgen

#endif  // FEDTUNE_SITE_AGENT_LOADGEN_LOADGEN_OPTIONS_H_
