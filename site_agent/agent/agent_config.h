// Loading and validating the site agent's configuration (`fedtune-site run --config site.textproto`, text-format
// fedtune.v1.SiteAgentConfig; see protos/fedtune/v1/federation_config.proto for every field and its default).
#ifndef FEDTUNE_SITE_AGENT_AGENT_AGENT_CONFIG_H_
#define FEDTUNE_SITE_AGENT_AGENT_AGENT_CONFIG_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "fedtune/v1/federation.pb.h"
#include "fedtune/v1/federation_config.pb.h"

namespace fedtune::agent {

// Parses text-format `text` (from `source`, used in messages), resolves relative paths (site_cert, site_key,
// ca_cert, work_dir, metrics_port_file, finetune.manifest, finetune.data_root, finetune.cache_dir) against `base_dir`,
// fills finetune.data_root's default (the manifest's directory) and finetune.cache_dir's default (<work_dir>/cache),
// and validates every field (ValidateAgentConfig). InvalidArgument naming the source and line/column (syntax) or the
// field (values).
absl::StatusOr<v1::SiteAgentConfig> ParseAgentConfig(absl::string_view text, absl::string_view source,
                                                     const std::string& base_dir);

// Reads the file (io::ReadTextProtoFile: InvalidArgument for a non-regular file or one above io::kMaxTextProtoBytes)
// and parses it with base_dir = the file's directory (made absolute). NotFound when the file does not exist.
absl::StatusOr<v1::SiteAgentConfig> LoadAgentConfig(const std::string& path);

// Checks values (paths already resolved): the required fields (site_id, a valid identity name; coordinator as
// host:port; site_cert, site_key, ca_cert, work_dir; finetune.manifest), proxy (when set and not empty:
// net::ValidateProxyUrl), keepalive_seconds >= 10, positive periods, timeouts and rates,
// min_backoff_ms <= max_backoff_ms, exit_after_runs >= 0, gradcam_per_label >= 0, and the finetune template's
// values (ValidateFinetuneConfig; its base_model and out_dir are set per task and need not be given).
// share_adapted_model (consent to cross-site evaluation, default false; cross_evaluation.h) and share_metrics are
// plain flags with nothing to check. The privacy budget (privacy_budget.h): max_epsilon finite and >= 0 (0: no
// budget), delta in (0, 0.1]. The metrics endpoint: metrics_listen_address empty or HOST:PORT / [IPv6]:PORT with a
// port in [0, 65535] (at most 256 bytes); metrics_port_file only with metrics_listen_address. InvalidArgument
// "config field 'NAME': problem".
absl::Status ValidateAgentConfig(const v1::SiteAgentConfig& config);

// The differential privacy of a task's plan (TrainingPlan.dp; RunConfig.dp).
enum class PlanDp {
  kNone,      // "none" or "": no differential privacy.
  kDpSgd,     // "dp-sgd": sample-level DP-SGD in the site's fine-tuning (FinetuneConfig.dp_*).
  kDpFedAvg,  // "dp-fedavg": client-level DP-FedAvg (the delta clipped, Gaussian noise added to the sum).
};

// The plan's dp, with its parameters checked where they are used: dp-sgd and dp-fedavg need dp_noise_multiplier in
// [privacy::kMinNoiseMultiplier, privacy::kMaxNoiseMultiplier] and dp_clip_norm finite and > 0. InvalidArgument
// "task plan field 'dp': ..." for unknown text (quoted, cut to 32 bytes), or naming dp_noise_multiplier /
// dp_clip_norm.
absl::StatusOr<PlanDp> ReadPlanDp(const v1::TrainingPlan& plan);
// "none", "dp-sgd", "dp-fedavg".
const char* PlanDpText(PlanDp dp);

// The FinetuneConfig of one TRAIN task: the config's template with base_model, out_dir, cache_dir (when the template
// has none: <work_dir>/cache), resume = true, and the plan's values (max_epochs = local_epochs, learning_rate,
// batch_size, proximal_mu, and DP-SGD's dp_noise_multiplier and dp_clip_norm) set. The template's own DP-SGD
// fields never apply to a task: with dp_noise_multiplier 0 (the default: no DP-SGD) both are cleared (noise 0, clip
// norm its default). The caller validates it (ValidateFinetuneConfig).
struct TrainingValues {
  int local_epochs = 1;
  double learning_rate = 0.001;
  int batch_size = 88;
  double proximal_mu = 0;
  // DP-SGD (FinetuneConfig.dp_noise_multiplier / dp_clip_norm); 0 (default): ordinary training. SetPlanDp fills
  // them from a "dp-sgd" plan.
  double dp_noise_multiplier = 0;
  double dp_clip_norm = 1.0;
};
v1::FinetuneConfig TaskFinetuneConfig(const v1::SiteAgentConfig& config, const std::string& base_model,
                                      const std::string& out_dir, const TrainingValues& values);

// Sets values->dp_noise_multiplier and dp_clip_norm from the plan when its dp is "dp-sgd"; leaves them 0 / 1 for
// "none" and "dp-fedavg" (DP-FedAvg's clipping and noise apply to the update, not to the fine-tuning). Errors of
// ReadPlanDp (values unchanged).
absl::Status SetPlanDp(const v1::TrainingPlan& plan, TrainingValues* values);

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_AGENT_AGENT_CONFIG_H_
