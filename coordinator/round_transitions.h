// The round state machine's steps, as the transitions StateStore::ApplyTransition commits (see round_manager.h for
// the life of a run): closing a round (aggregation, FedAdam's step, the next global model into the blob store),
// failing an attempt, finishing the final evaluation, aborting. Each function computes; RoundManager commits the
// transition and then moves its ActiveRun along.
//
// Thread safety: thread-compatible (the caller holds the ActiveRun exclusively).
#ifndef FEDTUNE_COORDINATOR_ROUND_TRANSITIONS_H_
#define FEDTUNE_COORDINATOR_ROUND_TRANSITIONS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "common/model/checkpoint.h"
#include "coordinator/active_run.h"
#include "coordinator/blob_store.h"
#include "coordinator/state_store.h"

namespace fedtune::coordinator {

// The next global model of a round that closes, saved in the blob store.
struct AggregatedRound {
  model::Checkpoint checkpoint;
  std::string digest;
  std::string path;  // Its blob.
  int64_t bytes = 0;
  std::string fedadam_state_path;  // FedAdam's m/v after this round ("" without FedAdam).
  std::string summary;             // The closed round's message, e.g. "3 update(s), 120 samples: fedavg".
};

// The aggregated step of a round whose sum came from secure aggregation (the aggregator bypassed): the mean delta
// of the shared floating tensors, how it was made (for provenance and the round's message).
struct SecAggStep {
  fl::TensorMap mean;  // Float tensors of the layout (integer tensors absent: they keep the global model's values).
  std::string description;
  int64_t updates = 0;
  int64_t samples = 0;
};

// Adds Gaussian noise of standard deviation `stddev` to every coordinate of every floating tensor of `step` (in
// place), from secagg::SecureStandardNormals (a fresh RAND_bytes key per call: the noise of DP-FedAvg must not be
// predictable), and zeroes its integer tensors (BatchNorm's counters would otherwise carry the largest site's batch
// count without noise). InvalidArgument for a stddev that is negative or not finite; Internal when RAND_bytes fails.
absl::Status AddGaussianNoise(fl::TensorMap& step, double stddev);

// DP-FedAvg's noise on the mean of n clipped updates (McMahan et al., ICLR 2018, with uniform weights): standard
// deviation dp_noise_multiplier * dp_clip_norm / n per coordinate (sigma * C on the sum).
double DpFedAvgNoiseStddev(const v1::RunConfig& config, int64_t updates);

// Aggregates the open attempt's updates (fl::Aggregator::TakeResult: a FedAvg aggregator is spent afterwards, and
// must be rebuilt if the round stays open); with FedAdam, takes the server step (FedAdam's state advances: the caller
// restores it when the round then fails to close) and writes its state to <state_dir>/fedadam/<run>-round-<r>.bundle;
// applies the step to the global model and saves the checkpoint (provenance: parent, run, round, aggregator) into
// `blobs`. Runs with DP-FedAvg without secure aggregation (ActiveRun::central_dp_fedavg): the aggregator's mean of
// clipped, uniformly weighted deltas gets DpFedAvgNoiseStddev noise before FedAdam. Errors of the aggregator, the
// FedAdam file and the checkpoint writer.
absl::StatusOr<AggregatedRound> AggregateRound(ActiveRun& active, BlobStore* blobs, const std::string& state_dir,
                                               int64_t now_ms);
// AggregateRound for a secure-aggregation round: `step` instead of the aggregator's result (zero deltas are added
// for the global model's tensors it lacks: integer tensors stay as they are). InvalidArgument when `step` has a
// tensor the global model lacks or of another shape; then the errors of AggregateRound.
absl::StatusOr<AggregatedRound> AggregateSecAggRound(ActiveRun& active, SecAggStep step, BlobStore* blobs,
                                                     const std::string& state_dir, int64_t now_ms);

// Closes the open round with `result` as its model version; opens the next round, or moves the run to
// "evaluating" (final_evaluation) or "completed".
RunTransition CloseRoundTransition(const ActiveRun& active, const AggregatedRound& result, int64_t now_ms);
// Fails the open attempt (too few updates at the deadline, or `why` when not empty: e.g. secure aggregation failed,
// too few sites left that did not decline): attempt + 1 opens with the same model, or after max_round_attempts the
// run fails.
RunTransition FailAttemptTransition(const ActiveRun& active, int64_t now_ms, const std::string& why = "");
// Completes an evaluating run; `message` says why (every site reported, or the deadline).
RunTransition FinishEvaluationTransition(const ActiveRun& active, const std::string& message, int64_t now_ms);
// Aborts the run, and its open round when running.
RunTransition AbortTransition(const ActiveRun& active, const std::string& reason, int64_t now_ms);

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_ROUND_TRANSITIONS_H_
