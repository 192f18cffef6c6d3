#include "coordinator/coordinator_config.h"

#include <cmath>
#include <filesystem>
#include <limits>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/fl/encoding.h"
#include "common/io/file_util.h"
#include "common/io/text_proto.h"
#include "common/metrics/metrics_server.h"
#include "common/status_macros.h"
#include "coordinator/run_config_privacy.h"

namespace fedtune::coordinator {
namespace {

absl::Status Invalid(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

}  // namespace

absl::StatusOr<v1::CoordinatorConfig> ParseCoordinatorConfig(absl::string_view text, absl::string_view source,
                                                             const std::string& base_dir) {
  v1::CoordinatorConfig config;
  RETURN_IF_ERROR(io::ParseTextProto(text, source, &config));
  if (config.has_port_file()) config.set_port_file(io::ResolveConfigPath(base_dir, config.port_file()));
  if (config.has_metrics_port_file()) {
    config.set_metrics_port_file(io::ResolveConfigPath(base_dir, config.metrics_port_file()));
  }
  if (config.has_server_cert()) config.set_server_cert(io::ResolveConfigPath(base_dir, config.server_cert()));
  if (config.has_server_key()) config.set_server_key(io::ResolveConfigPath(base_dir, config.server_key()));
  if (config.has_ca_dir()) config.set_ca_dir(io::ResolveConfigPath(base_dir, config.ca_dir()));
  if (config.has_state_dir()) config.set_state_dir(io::ResolveConfigPath(base_dir, config.state_dir()));
  if (config.has_initial_model()) config.set_initial_model(io::ResolveConfigPath(base_dir, config.initial_model()));
  return config;
}

absl::StatusOr<v1::CoordinatorConfig> LoadCoordinatorConfig(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, io::ReadTextProtoFile(path));
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  return ParseCoordinatorConfig(text, path, dir);
}

absl::Status ValidateCoordinatorConfig(const v1::CoordinatorConfig& config) {
  if (config.listen_address().empty()) return Invalid("listen_address", "required (host:port)");
  const size_t colon = config.listen_address().rfind(':');
  if (colon == std::string::npos || colon + 1 == config.listen_address().size()) {
    return Invalid("listen_address", absl::StrCat("'", config.listen_address(), "' has no port (host:port)"));
  }
  if (config.server_cert().empty()) return Invalid("server_cert", "required");
  if (config.server_key().empty()) return Invalid("server_key", "required");
  if (config.ca_dir().empty()) return Invalid("ca_dir", "required");
  if (config.state_dir().empty()) return Invalid("state_dir", "required");
  if (config.chunk_bytes() < (1 << 20) || config.chunk_bytes() > (4 << 20)) {
    return Invalid("chunk_bytes", absl::StrCat(config.chunk_bytes(), " is outside [1048576, 4194304]"));
  }
  if (config.task_wait_seconds() < 1) return Invalid("task_wait_seconds", "must be >= 1");
  if (config.heartbeat_timeout_seconds() < 1) return Invalid("heartbeat_timeout_seconds", "must be >= 1");
  if (config.max_upload_bytes() < 1) return Invalid("max_upload_bytes", "must be >= 1");
  if (config.max_open_uploads_per_site() < 1) {
    return Invalid("max_open_uploads_per_site", absl::StrCat(config.max_open_uploads_per_site(), " must be >= 1"));
  }
  for (const auto& [field, value] :
       {std::pair<const char*, int64_t>{"max_spool_bytes_per_site", config.max_spool_bytes_per_site()},
        {"max_spool_bytes_per_round", config.max_spool_bytes_per_round()}}) {
    if (value < 0 || (value > 0 && value < config.max_upload_bytes())) {
      return Invalid(field, absl::StrCat(value, " must be 0 (a multiple of max_upload_bytes) or >= max_upload_bytes ",
                                         config.max_upload_bytes()));
    }
  }
  if (config.max_calls_per_site() < 1) {
    return Invalid("max_calls_per_site", absl::StrCat(config.max_calls_per_site(), " must be >= 1"));
  }
  if (config.max_streams_per_site() < 1 || config.max_streams_per_site() > config.max_calls_per_site()) {
    return Invalid("max_streams_per_site",
                   absl::StrCat(config.max_streams_per_site(), " is outside [1, max_calls_per_site ",
                                config.max_calls_per_site(), "]"));
  }
  // gRPC's synchronous server needs a polling thread per completion queue besides the calls (2 queues).
  if (config.max_server_threads() < 4) {
    return Invalid("max_server_threads", absl::StrCat(config.max_server_threads(), " must be >= 4"));
  }
  if (config.max_concurrent_decodes() < 1 || config.max_concurrent_decodes() > 16) {
    return Invalid("max_concurrent_decodes", absl::StrCat(config.max_concurrent_decodes(), " is outside [1, 16]"));
  }
  if (config.grpc_memory_quota_bytes() < (int64_t{64} << 20)) {
    return Invalid("grpc_memory_quota_bytes",
                   absl::StrCat(config.grpc_memory_quota_bytes(), " must be >= 67108864 (64 MiB)"));
  }
  if (!config.metrics_listen_address().empty()) {
    // InvalidArgument "metrics_listen_address \"...\": expected ..." (the field named).
    RETURN_IF_ERROR(metrics::CheckListenAddress(config.metrics_listen_address()));
    if (config.metrics_listen_address() == config.listen_address() && !absl::EndsWith(config.listen_address(), ":0")) {
      return Invalid("metrics_listen_address",
                     absl::StrCat("'", config.metrics_listen_address(),
                                  "' is the gRPC listen_address: the metrics endpoint needs a port of its own"));
    }
  } else if (!config.metrics_port_file().empty()) {
    return Invalid("metrics_port_file", "is set but metrics_listen_address is empty (no metrics endpoint to name)");
  }
  return absl::OkStatus();
}

namespace {

int64_t MultipleOrValue(int64_t value, int64_t max_upload_bytes, int64_t multiple) {
  if (value > 0) return value;
  if (max_upload_bytes > std::numeric_limits<int64_t>::max() / multiple) return std::numeric_limits<int64_t>::max();
  return max_upload_bytes * multiple;
}

}  // namespace

int64_t SpoolBytesPerSite(const v1::CoordinatorConfig& config) {
  return MultipleOrValue(config.max_spool_bytes_per_site(), config.max_upload_bytes(), 2);
}

int64_t SpoolBytesPerRound(const v1::CoordinatorConfig& config) {
  return MultipleOrValue(config.max_spool_bytes_per_round(), config.max_upload_bytes(), 8);
}

absl::Status ValidateRunConfig(const v1::RunConfig& c) {
  if (c.rounds() < 1) return Invalid("rounds", absl::StrCat(c.rounds(), " must be >= 1"));
  if (c.min_sites() < 1) return Invalid("min_sites", absl::StrCat(c.min_sites(), " must be >= 1"));
  if (c.round_deadline_seconds() < 1) {
    return Invalid("round_deadline_seconds", absl::StrCat(c.round_deadline_seconds(), " must be >= 1"));
  }
  if (c.max_round_attempts() < 1) {
    return Invalid("max_round_attempts", absl::StrCat(c.max_round_attempts(), " must be >= 1"));
  }
  if (c.local_epochs() < 1) return Invalid("local_epochs", absl::StrCat(c.local_epochs(), " must be >= 1"));
  if (!std::isfinite(c.learning_rate()) || c.learning_rate() <= 0) {
    return Invalid("learning_rate", absl::StrCat(c.learning_rate(), " must be > 0"));
  }
  if (c.batch_size() < 1) return Invalid("batch_size", absl::StrCat(c.batch_size(), " must be >= 1"));
  const std::string& agg = c.aggregation();
  if (agg != "fedavg" && agg != "fedprox" && agg != "fedadam" && agg != "trimmed_mean" && agg != "median") {
    return Invalid("aggregation", absl::StrCat("unknown '", agg, "' (fedavg, fedprox, fedadam, trimmed_mean, median)"));
  }
  if (agg == "fedprox" && (!std::isfinite(c.proximal_mu()) || c.proximal_mu() < 0)) {
    return Invalid("proximal_mu", absl::StrCat(c.proximal_mu(), " must be >= 0"));
  }
  if (agg == "fedadam" && (!std::isfinite(c.server_learning_rate()) || c.server_learning_rate() <= 0)) {
    return Invalid("server_learning_rate", absl::StrCat(c.server_learning_rate(), " must be > 0"));
  }
  if (agg == "trimmed_mean" && !(c.trim_fraction() >= 0 && c.trim_fraction() < 0.5)) {
    return Invalid("trim_fraction", absl::StrCat(c.trim_fraction(), " is outside [0, 0.5)"));
  }
  if (!std::isfinite(c.clip_norm()) || c.clip_norm() < 0) {
    return Invalid("clip_norm", absl::StrCat(c.clip_norm(), " must be >= 0"));
  }
  if (!std::isfinite(c.max_update_norm()) || c.max_update_norm() < 0) {
    return Invalid("max_update_norm", absl::StrCat(c.max_update_norm(), " must be >= 0"));
  }
  const std::string& comp = c.compression();
  const absl::StatusOr<fl::Encoding> encoding = fl::ParseEncoding(comp);
  if (!encoding.ok()) {
    return Invalid("compression", absl::StrCat("unknown '", comp, "' (fp32, fp16, int8, topk)"));
  }
  if (*encoding == fl::Encoding::kTopK && !(c.topk_fraction() > 0 && c.topk_fraction() <= 1)) {
    return Invalid("topk_fraction", absl::StrCat(c.topk_fraction(), " is outside (0, 1]"));
  }
  if (c.cross_site_evaluation() && !c.final_evaluation()) {
    return Invalid("cross_site_evaluation", "needs final_evaluation: true");
  }
  if (c.local_only_baseline() && !c.final_evaluation()) {
    return Invalid("local_only_baseline", "needs final_evaluation: true");
  }
  if (!std::isfinite(c.ditto_lambda()) || (c.personalization() == v1::RunConfig::DITTO && c.ditto_lambda() <= 0)) {
    return Invalid("ditto_lambda", absl::StrCat(c.ditto_lambda(), " must be > 0 with personalization DITTO"));
  }
  if (c.local_only_epochs() < 0 || c.local_only_epochs() > 1000) {
    return Invalid("local_only_epochs", absl::StrCat(c.local_only_epochs(), " is outside [0, 1000]"));
  }
  if (c.local_only_baseline() && c.local_only_epochs() == 0 && int64_t{c.rounds()} * c.local_epochs() > 1000) {
    return Invalid("local_only_epochs", "0 means rounds x local_epochs, which is over 1000: set it");
  }
  std::set<std::string> seen;
  for (const std::string& site : c.sites()) {
    if (site.empty()) return Invalid("sites", "empty site id");
    if (!seen.insert(site).second) return Invalid("sites", absl::StrCat("site '", site, "' is listed twice"));
  }
  if (!c.sites().empty() && c.min_sites() > c.sites_size()) {
    return Invalid("min_sites", absl::StrCat(c.min_sites(), " is more than the ", c.sites_size(), " listed sites"));
  }
  // The privacy fields: one definition with the CLI's check (run_config_privacy.h).
  return ValidatePrivacyConfig(c);
}

}  // namespace fedtune::coordinator
