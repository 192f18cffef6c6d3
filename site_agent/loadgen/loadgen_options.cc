#include "site_agent/loadgen/loadgen_options.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/pki/certificate.h"
#include "common/seed.h"
#include "common/status_macros.h"

namespace fedtune::loadgen {
namespace {

absl::Status Invalid(absl::string_view flag, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", what));
}

absl::Status CheckRange(absl::string_view flag, double value, double low, double high) {
  if (!std::isfinite(value) || value < low || value > high) {
    return Invalid(flag, absl::StrCat(value, " is not in [", low, ", ", high, "]"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int> GetIntFlag(const cli::ParsedFlags& flags, const std::string& name, int fallback) {
  ASSIGN_OR_RETURN(int64_t value, flags.GetInt(name, fallback));
  if (value < -(int64_t{1} << 30) || value > (int64_t{1} << 30)) {
    return Invalid(name, absl::StrCat(value, " is out of range"));
  }
  return static_cast<int>(value);
}

}  // namespace

std::vector<cli::FlagSpec> LoadgenFlags() {
  const LoadgenOptions d;
  return {
      {"coordinator", "the coordinator's host:port", false, true, std::nullopt, "HOST:PORT"},
      {"server-name", "TLS name of the coordinator's certificate (default: the host of --coordinator)", false, false,
       std::nullopt, "NAME"},
      {"certs", "directory of the sites' ID.pem and ID.key (sites missing here are enrolled with --ca-dir)", false,
       true, std::nullopt, "DIR"},
      {"ca-dir", "consortium CA directory: enrol the sites missing from --certs (key, CSR, pki sign)", false, false,
       std::nullopt, "DIR"},
      {"ca-cert", "the consortium CA certificate (default: CA_DIR/ca.pem, else CERTS/ca.pem)", false, false,
       std::nullopt, "ca.pem"},
      {"work-dir", "downloads and delta payloads (default: a temporary directory, removed at the end)", false, false,
       std::nullopt, "DIR"},
      {"sites", absl::StrCat("simulated sites, 1 to ", kMaxSites), false, false, std::to_string(d.sites), "N"},
      {"site-prefix", "site ids are PREFIX0000, PREFIX0001, ...", false, false, d.site_prefix, "PREFIX"},
      {"rounds", "TRAIN rounds each site takes part in; 0: until the run ends", false, false, std::to_string(d.rounds),
       "R"},
      {"encoding", "delta encoding: plan (the run's), fp32, fp16, int8 or topk", false, false, std::string("plan"),
       "E"},
      {"topk-fraction", "top-k fraction for topk (0: the plan's, else 0.01)", false, false, std::string("0"), "F"},
      {"variants", "delta variants: site i sends (i mod K) x DELTA in every floating element", false, false,
       std::to_string(d.variants), "K"},
      {"delta-value", "the step between the delta variants", false, false, std::string("0.25"), "DELTA"},
      {"dropout", "share of the sites that never upload in a round, in [0, 1]", false, false, std::string("0"), "P"},
      {"stragglers", "share of the sites that upload late, in [0, 1]", false, false, std::string("0"), "P"},
      {"straggler-delay", "how late stragglers upload (seconds)", false, false, std::string("10"), "S"},
      {"train-seconds", "simulated training time per round (seconds)", false, false, std::string("1"), "S"},
      {"seed", "seed of the dropout and straggler choices", false, false, std::to_string(d.seed), "N"},
      {"heartbeat-seconds", "heartbeat period while a task runs", false, false, std::to_string(d.heartbeat_seconds),
       "S"},
      {"task-wait", "GetTask long-poll (seconds)", false, false, std::to_string(d.task_wait_seconds), "S"},
      {"rpc-timeout", "deadline of unary calls (seconds)", false, false, std::to_string(d.rpc_timeout_seconds), "S"},
      {"timeout", "give up (exit 1) after this many seconds", false, false, std::string("3600"), "S"},
      {"ready-file", "written once every site is approved (then start the run)", false, false, std::nullopt, "FILE"},
  };
}

absl::StatusOr<LoadgenOptions> OptionsFromFlags(const cli::ParsedFlags& flags) {
  LoadgenOptions o;
  o.coordinator = flags.Get("coordinator").value_or("");
  o.server_name = flags.Get("server-name").value_or("");
  o.certs_dir = flags.Get("certs").value_or("");
  o.ca_dir = flags.Get("ca-dir").value_or("");
  o.ca_cert = flags.Get("ca-cert").value_or("");
  o.work_dir = flags.Get("work-dir").value_or("");
  o.ready_file = flags.Get("ready-file").value_or("");
  o.site_prefix = flags.Get("site-prefix").value_or(o.site_prefix);
  ASSIGN_OR_RETURN(o.sites, GetIntFlag(flags, "sites", o.sites));
  ASSIGN_OR_RETURN(o.rounds, GetIntFlag(flags, "rounds", o.rounds));
  ASSIGN_OR_RETURN(o.variants, GetIntFlag(flags, "variants", o.variants));
  ASSIGN_OR_RETURN(o.heartbeat_seconds, GetIntFlag(flags, "heartbeat-seconds", o.heartbeat_seconds));
  ASSIGN_OR_RETURN(o.task_wait_seconds, GetIntFlag(flags, "task-wait", o.task_wait_seconds));
  ASSIGN_OR_RETURN(o.rpc_timeout_seconds, GetIntFlag(flags, "rpc-timeout", o.rpc_timeout_seconds));
  ASSIGN_OR_RETURN(o.topk_fraction, flags.GetDouble("topk-fraction", o.topk_fraction));
  ASSIGN_OR_RETURN(o.delta_value, flags.GetDouble("delta-value", o.delta_value));
  ASSIGN_OR_RETURN(o.dropout, flags.GetDouble("dropout", o.dropout));
  ASSIGN_OR_RETURN(o.stragglers, flags.GetDouble("stragglers", o.stragglers));
  ASSIGN_OR_RETURN(o.straggler_delay_seconds, flags.GetDouble("straggler-delay", o.straggler_delay_seconds));
  ASSIGN_OR_RETURN(o.train_seconds, flags.GetDouble("train-seconds", o.train_seconds));
  ASSIGN_OR_RETURN(o.timeout_seconds, flags.GetDouble("timeout", o.timeout_seconds));
  if (std::optional<std::string> seed = flags.Get("seed")) {
    if (!absl::SimpleAtoi(*seed, &o.seed)) return Invalid("seed", absl::StrCat("'", *seed, "' is not an integer >= 0"));
  }
  const std::string encoding = flags.Get("encoding").value_or("plan");
  if (encoding != "plan") {
    absl::StatusOr<fl::Encoding> parsed = fl::ParseEncoding(encoding);
    if (!parsed.ok())
      return Invalid("encoding", absl::StrCat("'", encoding, "' is not plan, fp32, fp16, int8 or topk"));
    o.encoding = *parsed;
  }
  RETURN_IF_ERROR(ValidateLoadgenOptions(o));
  return o;
}

absl::Status ValidateLoadgenOptions(const LoadgenOptions& o) {
  if (o.coordinator.empty()) return Invalid("coordinator", "required (host:port)");
  const size_t colon = o.coordinator.rfind(':');
  int port = 0;
  if (colon == std::string::npos || colon == 0 || !absl::SimpleAtoi(o.coordinator.substr(colon + 1), &port) ||
      port < 1 || port > 65535) {
    return Invalid("coordinator", absl::StrCat("'", o.coordinator, "' is not host:port with a port in [1, 65535]"));
  }
  if (o.certs_dir.empty()) return Invalid("certs", "required (the sites' certificate directory)");
  if (o.sites < 1 || o.sites > kMaxSites) {
    return Invalid("sites", absl::StrCat(o.sites, " is not in [1, ", kMaxSites, "]"));
  }
  if (o.site_prefix.size() > 60) return Invalid("site-prefix", "longer than 60 characters");
  if (absl::Status id = pki::ValidateIdentityName(SiteId(o.site_prefix, 0), "site id"); !id.ok()) {
    return Invalid("site-prefix", id.message());
  }
  if (o.rounds < 0 || o.rounds > kMaxRounds) {
    return Invalid("rounds", absl::StrCat(o.rounds, " is not in [0, ", kMaxRounds, "]"));
  }
  if (o.variants < 1 || o.variants > kMaxVariants) {
    return Invalid("variants", absl::StrCat(o.variants, " is not in [1, ", kMaxVariants, "]"));
  }
  RETURN_IF_ERROR(CheckRange("delta-value", o.delta_value, -1000, 1000));
  RETURN_IF_ERROR(CheckRange("topk-fraction", o.topk_fraction, 0, 1));
  RETURN_IF_ERROR(CheckRange("dropout", o.dropout, 0, 1));
  RETURN_IF_ERROR(CheckRange("stragglers", o.stragglers, 0, 1));
  if (o.dropout + o.stragglers > 1 + 1e-9) {
    return Invalid("stragglers", absl::StrCat("--dropout ", o.dropout, " + --stragglers ", o.stragglers, " exceed 1"));
  }
  RETURN_IF_ERROR(CheckRange("straggler-delay", o.straggler_delay_seconds, 0, kMaxSeconds));
  RETURN_IF_ERROR(CheckRange("train-seconds", o.train_seconds, 0, kMaxSeconds));
  if (!(o.timeout_seconds > 0)) return Invalid("timeout", absl::StrCat(o.timeout_seconds, " is not > 0"));
  RETURN_IF_ERROR(CheckRange("timeout", o.timeout_seconds, 0, kMaxSeconds));
  RETURN_IF_ERROR(CheckRange("heartbeat-seconds", o.heartbeat_seconds, 1, 3600));
  RETURN_IF_ERROR(CheckRange("task-wait", o.task_wait_seconds, 1, 300));
  RETURN_IF_ERROR(CheckRange("rpc-timeout", o.rpc_timeout_seconds, 1, 3600));
  return absl::OkStatus();
}

std::string SiteId(const std::string& prefix, int i) { return absl::StrFormat("%s%04d", prefix, i); }

int64_t SiteNumSamples(int i) { return int64_t{i} + 1; }

int SiteVariant(int i, int variants) { return variants <= 1 ? 0 : i % variants; }

SiteRole RoleInRound(const LoadgenOptions& options, int i, int round, int attempt) {
  const int n = options.sites;
  const int dropped = std::min(n, static_cast<int>(std::lround(options.dropout * n)));
  const int late = std::min(n - dropped, static_cast<int>(std::lround(options.stragglers * n)));
  if (dropped == 0 && late == 0) return SiteRole::kUpload;
  // Fisher-Yates with SplitMix64 seeded by (seed, round, attempt): the same permutation for every site.
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  uint64_t state =
      MixSeed(MixSeed(MixSeed(options.seed) ^ static_cast<uint64_t>(round)) ^ static_cast<uint64_t>(attempt));
  for (int k = n - 1; k > 0; --k) {
    const int j = static_cast<int>(SplitMix64Next(&state) % static_cast<uint64_t>(k + 1));
    std::swap(order[k], order[j]);
  }
  const int position = static_cast<int>(std::find(order.begin(), order.end(), i) - order.begin());
  if (position < dropped) return SiteRole::kDropOut;
  if (position < dropped + late) return SiteRole::kStraggle;
  return SiteRole::kUpload;
}

}  // namespace fedtune::loadgen
