// The checks of a RunConfig's privacy fields (secure_aggregation, secagg_*, dp, dp_*; federation_config.proto,
// "Privacy") and of how they combine with the rest of the run. ONE definition, called by both run config validators:
// the coordinator's (coordinator_config.h, at StartRun) and the operator CLI's (cli/run_config.h, before `fedtune run
// start` sends the config), so that a refused combination reads the same wherever it is caught. A small library
// without LibTorch, so that the CLI links it.
//
// Thread safety: reentrant.
#ifndef FEDTUNE_COORDINATOR_RUN_CONFIG_PRIVACY_H_
#define FEDTUNE_COORDINATOR_RUN_CONFIG_PRIVACY_H_

#include "absl/status/status.h"
#include "fedtune/v1/federation_config.pb.h"

namespace fedtune::coordinator {

// Bounds of the privacy fields.
inline constexpr int kMinSecAggPhaseSeconds = 10;
inline constexpr int kMaxSecAggPhaseSeconds = 3600;
inline constexpr double kMaxSecAggRange = 1e30;  // secagg::kMaxClip.
inline constexpr double kMinDpNoiseMultiplier = 0.1;
inline constexpr double kMaxDpNoiseMultiplier = 10000;

// "none" (also for ""), "dp-sgd", "dp-fedavg".
inline constexpr char kDpNone[] = "none";
inline constexpr char kDpSgd[] = "dp-sgd";
inline constexpr char kDpFedAvg[] = "dp-fedavg";
// The run's dp mode with "" read as "none".
const char* DpMode(const v1::RunConfig& config);

// InvalidArgument "run config field 'FIELD' is VALUE: WHY" for the first of:
//  - secure_aggregation with aggregation trimmed_mean or median (order statistics need every delta; secure
//    aggregation gives the coordinator only their sum), with compression other than fp32 (sites mask fp32 deltas:
//    fp16, int8 and topk are not supported), with personalization FEDBN or SILOBN (the masked layout is every
//    floating tensor of the model), with clip_norm > 0 (the coordinator cannot clip a delta it cannot see: use
//    dp-fedavg, whose sites clip to dp_clip_norm), with fewer than 2 listed sites;
//  - secagg_threshold negative, 1, above the number of listed sites, or set (> 0) below min_sites;
//  - secagg_range not finite, <= 0 or above 1e30; secagg_phase_seconds outside [10, 3600];
//  - dp not one of "none", "dp-sgd", "dp-fedavg";
//  - with dp other than "none": dp_noise_multiplier outside [0.1, 10000] (or not finite), dp_clip_norm not finite
//    or <= 0;
//  - dp-sgd with personalization FEDBN or SILOBN (BatchNorm is frozen under DP-SGD: nothing for them to keep);
//  - dp-fedavg with aggregation trimmed_mean or median (DP-FedAvg's noise is calibrated to the clipped mean).
absl::Status ValidatePrivacyConfig(const v1::RunConfig& config);

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_RUN_CONFIG_PRIVACY_H_
