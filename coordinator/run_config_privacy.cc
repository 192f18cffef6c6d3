#include "coordinator/run_config_privacy.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace fedtune::coordinator {
namespace {

// The same form as the CLI's other run config messages (cli/run_config.cc).
absl::Status FieldError(absl::string_view field, absl::string_view value, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("run config field '", field, "' is ", value, ": ", why));
}

bool OrderStatistic(const std::string& aggregation) { return aggregation == "trimmed_mean" || aggregation == "median"; }

bool KeepsBatchNormAtSites(v1::RunConfig::Personalization p) {
  return p == v1::RunConfig::FEDBN || p == v1::RunConfig::SILOBN;
}

absl::string_view PersonalizationName(v1::RunConfig::Personalization p) {
  return p == v1::RunConfig::FEDBN ? "FEDBN" : p == v1::RunConfig::SILOBN ? "SILOBN" : "other";
}

absl::Status ValidateSecureAggregation(const v1::RunConfig& c) {
  if (!c.secure_aggregation()) return absl::OkStatus();
  if (OrderStatistic(c.aggregation())) {
    return FieldError("aggregation", absl::StrCat("'", c.aggregation(), "'"),
                      "secure_aggregation gives the coordinator only the sum of the deltas, which trimmed_mean and "
                      "median cannot use: use fedavg, fedprox or fedadam");
  }
  if (c.compression() != "fp32") {
    return FieldError("compression", absl::StrCat("'", c.compression(), "'"),
                      "secure_aggregation masks fp32 deltas; fp16, int8 and topk compression are not supported with "
                      "it: use fp32");
  }
  if (KeepsBatchNormAtSites(c.personalization())) {
    return FieldError("personalization", PersonalizationName(c.personalization()),
                      "secure_aggregation aggregates every floating tensor of the model; FEDBN and SILOBN keep "
                      "BatchNorm tensors at the sites: use NONE or DITTO");
  }
  if (c.clip_norm() > 0) {
    return FieldError("clip_norm", absl::StrCat(c.clip_norm()),
                      "the coordinator cannot clip a delta that secure_aggregation hides from it: set 0, or use dp "
                      "\"dp-fedavg\", whose sites clip their deltas to dp_clip_norm");
  }
  if (c.sites_size() == 1) {
    return FieldError("sites", "1 site", "secure_aggregation needs at least 2 sites");
  }
  return absl::OkStatus();
}

absl::Status ValidateSecAggParameters(const v1::RunConfig& c) {
  const int t = c.secagg_threshold();
  if (t < 0 || t == 1) {
    return FieldError("secagg_threshold", absl::StrCat(t),
                      "must be 0 (a majority of the sites that advertise keys) or at least 2");
  }
  if (t > 0 && c.sites_size() > 0 && t > c.sites_size()) {
    return FieldError("secagg_threshold", absl::StrCat(t),
                      absl::StrCat("is more than the ", c.sites_size(), " site(s) listed in 'sites'"));
  }
  if (t > 0 && t < c.min_sites()) {
    return FieldError("secagg_threshold", absl::StrCat(t),
                      absl::StrCat("must be at least min_sites (", c.min_sites(),
                                   "): a round closes with at least min_sites updates"));
  }
  if (!std::isfinite(c.secagg_range()) || !(c.secagg_range() > 0) || c.secagg_range() > kMaxSecAggRange) {
    return FieldError("secagg_range", absl::StrCat(c.secagg_range()), "must be a finite number in (0, 1e30]");
  }
  if (c.secagg_phase_seconds() < kMinSecAggPhaseSeconds || c.secagg_phase_seconds() > kMaxSecAggPhaseSeconds) {
    return FieldError("secagg_phase_seconds", absl::StrCat(c.secagg_phase_seconds()),
                      absl::StrCat("must be in [", kMinSecAggPhaseSeconds, ", ", kMaxSecAggPhaseSeconds, "]"));
  }
  return absl::OkStatus();
}

absl::Status ValidateDp(const v1::RunConfig& c) {
  const std::string& dp = c.dp();
  if (!dp.empty() && dp != kDpNone && dp != kDpSgd && dp != kDpFedAvg) {
    return FieldError("dp", absl::StrCat("'", dp, "'"), "must be one of none, dp-sgd, dp-fedavg");
  }
  if (dp.empty() || dp == kDpNone) return absl::OkStatus();
  const double sigma = c.dp_noise_multiplier();
  if (!std::isfinite(sigma) || sigma < kMinDpNoiseMultiplier || sigma > kMaxDpNoiseMultiplier) {
    return FieldError("dp_noise_multiplier", absl::StrCat(sigma),
                      absl::StrCat("must be in [0.1, 10000] with dp \"", dp, "\""));
  }
  if (!std::isfinite(c.dp_clip_norm()) || !(c.dp_clip_norm() > 0)) {
    return FieldError("dp_clip_norm", absl::StrCat(c.dp_clip_norm()),
                      absl::StrCat("must be a finite number greater than 0 with dp \"", dp, "\""));
  }
  if (dp == kDpSgd && KeepsBatchNormAtSites(c.personalization())) {
    return FieldError("personalization", PersonalizationName(c.personalization()),
                      "dp \"dp-sgd\" freezes BatchNorm (per-sample gradients), so FEDBN and SILOBN have nothing to "
                      "keep at the sites: use NONE or DITTO");
  }
  if (dp == kDpFedAvg && OrderStatistic(c.aggregation())) {
    return FieldError("aggregation", absl::StrCat("'", c.aggregation(), "'"),
                      "dp \"dp-fedavg\" calibrates its noise to the mean of clipped deltas: use fedavg, fedprox or "
                      "fedadam");
  }
  return absl::OkStatus();
}

}  // namespace

const char* DpMode(const v1::RunConfig& config) {
  if (config.dp() == kDpSgd) return kDpSgd;
  if (config.dp() == kDpFedAvg) return kDpFedAvg;
  return kDpNone;
}

absl::Status ValidatePrivacyConfig(const v1::RunConfig& config) {
  if (absl::Status s = ValidateSecureAggregation(config); !s.ok()) return s;
  if (absl::Status s = ValidateSecAggParameters(config); !s.ok()) return s;
  return ValidateDp(config);
}

}  // namespace fedtune::coordinator
