#include "site_agent/agent/agent_config.h"

#include <cmath>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/io/text_proto.h"
#include "common/metrics/metrics_server.h"
#include "common/net/tls.h"
#include "common/pki/certificate.h"
#include "common/privacy/rdp_accountant.h"
#include "common/status_macros.h"
#include "common/train/finetune_config.h"

namespace fedtune::agent {
namespace {

absl::Status Field(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat("config field '", field, "': ", problem));
}

}  // namespace

absl::Status ValidateAgentConfig(const v1::SiteAgentConfig& c) {
  if (c.site_id().empty()) return Field("site_id", "required (the CN of site_cert)");
  if (absl::Status s = pki::ValidateIdentityName(c.site_id(), "site_id"); !s.ok()) {
    return Field("site_id", s.message());
  }
  if (c.coordinator().empty()) return Field("coordinator", "required (host:port of the coordinator)");
  {
    const size_t colon = c.coordinator().rfind(':');
    int port = 0;
    if (colon == std::string::npos || colon == 0 ||
        !absl::SimpleAtoi(absl::string_view(c.coordinator()).substr(colon + 1), &port) || port < 1 || port > 65535) {
      return Field("coordinator",
                   absl::StrCat("must be host:port with a port in [1, 65535], got \"", c.coordinator(), "\""));
    }
  }
  if (c.site_cert().empty()) return Field("site_cert", "required (the certificate signed from this site's CSR)");
  if (c.site_key().empty()) return Field("site_key", "required (this site's private key)");
  if (c.ca_cert().empty()) return Field("ca_cert", "required (the consortium's ca.pem)");
  if (c.work_dir().empty()) return Field("work_dir", "required (site.db, models, rounds, reports)");
  if (!c.has_finetune() || c.finetune().manifest().empty()) {
    return Field("finetune.manifest", "required (the site's CheXpert-format CSV)");
  }
  if (c.heartbeat_seconds() < 1) return Field("heartbeat_seconds", "must be >= 1");
  if (c.rpc_timeout_seconds() < 1) return Field("rpc_timeout_seconds", "must be >= 1");
  if (c.min_backoff_ms() < 1) return Field("min_backoff_ms", "must be >= 1");
  if (c.max_backoff_ms() < c.min_backoff_ms()) return Field("max_backoff_ms", "must be >= min_backoff_ms");
  if (c.has_proxy() && !c.proxy().empty()) {
    if (absl::Status s = net::ValidateProxyUrl(c.proxy()); !s.ok()) return Field("proxy", s.message());
  }
  if (c.keepalive_seconds() < 10) {
    return Field("keepalive_seconds", "must be >= 10 (the coordinator refuses pings that come more often)");
  }
  if (c.keepalive_timeout_seconds() < 1) return Field("keepalive_timeout_seconds", "must be >= 1");
  if (c.min_transfer_kib_per_second() < 1) return Field("min_transfer_kib_per_second", "must be >= 1");
  if (c.retry_give_up_seconds() < 1) return Field("retry_give_up_seconds", "must be >= 1");
  if (c.exit_after_runs() < 0) return Field("exit_after_runs", "must be >= 0 (0 = serve forever)");
  if (c.gradcam_per_label() < 0) return Field("gradcam_per_label", "must be >= 0");
  if (!std::isfinite(c.max_epsilon()) || c.max_epsilon() < 0) {
    return Field("max_epsilon", absl::StrCat("must be finite and >= 0 (0: no privacy budget), got ", c.max_epsilon()));
  }
  if (!(c.delta() > 0 && c.delta() <= 0.1)) {
    return Field("delta", absl::StrCat("must be in (0, 0.1] (typically below 1 / training images), got ", c.delta()));
  }
  // The metrics endpoint: the address as common/metrics checks it (again when it binds).
  if (c.metrics_listen_address().size() > 256) {
    return Field("metrics_listen_address", "longer than 256 bytes (HOST:PORT, e.g. \"127.0.0.1:9465\")");
  }
  if (!c.metrics_listen_address().empty()) {
    if (absl::Status s = metrics::CheckListenAddress(c.metrics_listen_address()); !s.ok()) {
      return Field("metrics_listen_address", s.message());
    }
  }
  if (!c.metrics_port_file().empty() && c.metrics_listen_address().empty()) {
    return Field("metrics_port_file", "needs metrics_listen_address (the port of which endpoint?)");
  }
  // The template's own values; base_model and out_dir are the agent's, per task.
  v1::FinetuneConfig probe = c.finetune();
  if (probe.base_model().empty()) probe.set_base_model("<global model of the task>");
  if (probe.out_dir().empty()) probe.set_out_dir("<round directory of the task>");
  if (absl::Status s = train::ValidateFinetuneConfig(probe); !s.ok()) {
    // ValidateFinetuneConfig says "config field 'x': ..."; name it as finetune.x.
    std::string message(s.message());
    const std::string prefix = "config field '";
    if (message.rfind(prefix, 0) == 0) message.insert(prefix.size(), "finetune.");
    return absl::InvalidArgumentError(message);
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::SiteAgentConfig> ParseAgentConfig(absl::string_view text, absl::string_view source,
                                                     const std::string& base_dir) {
  v1::SiteAgentConfig config;
  RETURN_IF_ERROR(io::ParseTextProto(text, source, &config));
  config.set_site_cert(io::ResolveConfigPath(base_dir, config.site_cert()));
  config.set_site_key(io::ResolveConfigPath(base_dir, config.site_key()));
  config.set_ca_cert(io::ResolveConfigPath(base_dir, config.ca_cert()));
  config.set_work_dir(io::ResolveConfigPath(base_dir, config.work_dir()));
  if (!config.metrics_port_file().empty()) {
    config.set_metrics_port_file(io::ResolveConfigPath(base_dir, config.metrics_port_file()));
  }
  v1::FinetuneConfig* f = config.mutable_finetune();
  f->set_manifest(io::ResolveConfigPath(base_dir, f->manifest()));
  if (f->has_data_root()) {
    f->set_data_root(io::ResolveConfigPath(base_dir, f->data_root()));
  } else if (!f->manifest().empty()) {
    f->set_data_root(std::filesystem::path(f->manifest()).parent_path().string());
  }
  if (f->has_cache_dir()) {
    f->set_cache_dir(io::ResolveConfigPath(base_dir, f->cache_dir()));
  } else if (!config.work_dir().empty()) {
    f->set_cache_dir((std::filesystem::path(config.work_dir()) / "cache").string());
  }
  absl::Status valid = ValidateAgentConfig(config);
  if (!valid.ok()) return absl::InvalidArgumentError(absl::StrCat(source, ": ", valid.message()));
  return config;
}

absl::StatusOr<v1::SiteAgentConfig> LoadAgentConfig(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, io::ReadTextProtoFile(path));
  // Absolute, so that the paths recorded in site.db do not depend on the directory the agent was started from.
  std::error_code ec;
  const std::filesystem::path absolute = std::filesystem::absolute(path, ec);
  const std::string base_dir = (ec ? std::filesystem::path(path) : absolute).parent_path().lexically_normal().string();
  return ParseAgentConfig(text, path, base_dir);
}

v1::FinetuneConfig TaskFinetuneConfig(const v1::SiteAgentConfig& config, const std::string& base_model,
                                      const std::string& out_dir, const TrainingValues& values) {
  v1::FinetuneConfig f = config.finetune();
  f.set_base_model(base_model);
  f.set_out_dir(out_dir);
  if (!f.has_cache_dir()) f.set_cache_dir((std::filesystem::path(config.work_dir()) / "cache").string());
  f.set_resume(true);
  f.set_max_epochs(values.local_epochs);
  f.set_learning_rate(values.learning_rate);
  f.set_batch_size(values.batch_size);
  f.set_proximal_mu(values.proximal_mu);
  if (values.dp_noise_multiplier > 0) {
    f.set_dp_noise_multiplier(values.dp_noise_multiplier);
    f.set_dp_clip_norm(values.dp_clip_norm);
  } else {
    f.clear_dp_noise_multiplier();
    f.clear_dp_clip_norm();
  }
  return f;
}

absl::StatusOr<PlanDp> ReadPlanDp(const v1::TrainingPlan& plan) {
  PlanDp dp;
  if (plan.dp().empty() || plan.dp() == "none") {
    return PlanDp::kNone;
  } else if (plan.dp() == "dp-sgd") {
    dp = PlanDp::kDpSgd;
  } else if (plan.dp() == "dp-fedavg") {
    dp = PlanDp::kDpFedAvg;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("task plan field 'dp': \"", plan.dp().substr(0, 32), "\" is not one of none, dp-sgd, dp-fedavg"));
  }
  const double sigma = plan.dp_noise_multiplier();
  if (!(sigma >= privacy::kMinNoiseMultiplier && sigma <= privacy::kMaxNoiseMultiplier)) {
    return absl::InvalidArgumentError(absl::StrCat("task plan field 'dp_noise_multiplier': ", sigma, " must be in [",
                                                   privacy::kMinNoiseMultiplier, ", ", privacy::kMaxNoiseMultiplier,
                                                   "] with dp \"", plan.dp(), "\""));
  }
  if (!std::isfinite(plan.dp_clip_norm()) || plan.dp_clip_norm() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("task plan field 'dp_clip_norm': ", plan.dp_clip_norm(),
                                                   " must be finite and > 0 with dp \"", plan.dp(), "\""));
  }
  return dp;
}

const char* PlanDpText(PlanDp dp) {
  switch (dp) {
    case PlanDp::kNone:
      return "none";
    case PlanDp::kDpSgd:
      return "dp-sgd";
    case PlanDp::kDpFedAvg:
      return "dp-fedavg";
  }
  return "none";
}

absl::Status SetPlanDp(const v1::TrainingPlan& plan, TrainingValues* values) {
  ASSIGN_OR_RETURN(const PlanDp dp, ReadPlanDp(plan));
  if (dp == PlanDp::kDpSgd) {
    values->dp_noise_multiplier = plan.dp_noise_multiplier();
    values->dp_clip_norm = plan.dp_clip_norm();
  } else {
    values->dp_noise_multiplier = 0;
    values->dp_clip_norm = 1.0;
  }
  return absl::OkStatus();
}

}  // namespace fedtune::agent
