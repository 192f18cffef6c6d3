// The in-memory side of the coordinator's active run: what the database does not hold (the decoded global model,
// the round's aggregator, FedAdam's state, the partial uploads), rebuilt from it at start-up. RoundManager owns
// one and guards it with its mutex.
//
// Thread safety: thread-compatible (RoundManager serializes every access).
#ifndef FEDTUNE_COORDINATOR_ACTIVE_RUN_H_
#define FEDTUNE_COORDINATOR_ACTIVE_RUN_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/fl/aggregate.h"
#include "common/fl/tensor_map.h"
#include "common/model/checkpoint.h"
#include "coordinator/blob_store.h"
#include "coordinator/secure_aggregation.h"
#include "coordinator/state_store.h"
#include "fedtune/v1/federation.pb.h"

namespace fedtune::coordinator {

struct ActiveRun {
  // Where trimmed mean and median spill their deltas (fl::AggregatorOptions::spill_path): one file per aggregator,
  // <spill_dir>/<run>-r<round>-a<attempt>-<n>.spill. Empty: they keep them in memory.
  std::string spill_dir;
  int spill_files = 0;  // Made so far: n of the next one.
  RunRecord run;
  RoundRecord round;  // The open round (running) or the last closed one (evaluating).
  model::Checkpoint global_checkpoint;
  // The tensors of the global model that sites' deltas carry, validated and aggregated: every tensor, or for a run
  // whose personalization keeps tensors at the sites (FEDBN, SILOBN) the others only (a partial bundle). Shares
  // storage with global_checkpoint.
  std::shared_ptr<const fl::TensorMap> global;
  // The run's personalization and the tensors it keeps at the sites (fl::LocalTensorNames of the run's model; the
  // architecture does not change between rounds). A delta that carries one is refused; the next global model keeps
  // them as they are (the base model's).
  v1::Personalization personalization = v1::PERSONALIZATION_NONE;
  std::set<std::string> kept_local;
  std::unique_ptr<fl::Aggregator> aggregator;
  std::unique_ptr<fl::FedAdam> fedadam;
  // A failed close left FedAdam's state advanced and it could not be read back from run.fedadam_state_path yet:
  // the round must not close before it is (RoundManager::CloseRoundLocked).
  bool fedadam_stale = false;
  std::map<std::string, std::string> accepted;  // Site -> sha256 of its accepted update in the open attempt.
  // Sites that declined the open attempt (RoundManager::DeclineTask): not offered its task, not waited for.
  std::set<std::string> declined;
  // Secure aggregation (runs with secure_aggregation; round_manager.h): the open attempt's session, or null when it
  // could not start (secagg_error says why; the next Tick fails the attempt); the phase the sites were last told
  // about; the session's result once it is done (kept until the round closed, so that a failed close retries).
  std::unique_ptr<SecAggSession> secagg;
  int64_t secagg_vector_length = 0;  // secagg::MakeLayout(*global).length: the masked vectors' entries.
  std::string secagg_error;
  SecAggSession::Phase secagg_phase = SecAggSession::Phase::kKeys;
  std::optional<SecAggSession::Result> secagg_result;
  // Every public key accepted by the run's earlier sessions (SecAggSession::accepted_public_keys): refused in later
  // ones, so that no site's keys serve two sessions (a site dropped in one attempt, whose mask key was reconstructed,
  // and surviving the next with the same keys would lose both masks). In memory: a coordinator restart fails the
  // open session anyway, and sites make fresh keys per session.
  std::set<std::string> secagg_used_keys;
  std::set<std::string> finals;  // Sites that sent their final MetricsReport (evaluating).
  // Cross-site evaluation (round_manager.h): the run is in its cross-evaluation stage (evaluating), until
  // cross_deadline_ms; the sites that sent their "cross_site" report; the adapted models shared, by site.
  bool cross_stage = false;
  int64_t cross_deadline_ms = 0;
  std::set<std::string> cross_done;
  std::map<std::string, v1::SharedModel> shared;
  // A partial upload of the open attempt: a spool file not accepted, being received or kept for a resume.
  struct Partial {
    std::string site_id;
    int64_t bytes = 0;        // Announced total_bytes (after a restart: the file's size until it is resumed).
    bool superseded = false;  // Removed when the stream receiving it ends.
  };
  std::map<std::string, Partial> partials;  // By spool path.

  bool selected(const std::string& site) const;
  // True when `upload` (run, round) names the open round, and `attempt` is its attempt.
  bool IsOpenAttempt(const std::string& run_id, int round_number, int attempt) const;
  // True when every site of `sites` has an accepted update.
  bool AllAccepted(const std::set<std::string>& sites) const;
  // True for a run with secure aggregation.
  bool secure_aggregation() const { return run.config.secure_aggregation(); }
  // True for a run with DP-FedAvg without secure aggregation: the coordinator clips, weighs uniformly and adds noise.
  bool central_dp_fedavg() const;
  // The weight of an update with `num_samples` in the aggregator: 1 under DP-FedAvg (uniform), else num_samples.
  int64_t AggregationWeight(int64_t num_samples) const;
  // A fresh aggregator for the run's config; accepted, declined, partials and the secure aggregation session
  // cleared (a new attempt).
  absl::Status StartAttempt();
  // A fresh, empty aggregator for the run's config (the old one and its spill file go); accepted and partials stay.
  absl::Status ResetAggregator();
  // Adds the delta in the spool file `path` (validated before) to the aggregator, decoding it against the global
  // model tensor by tensor (memory for one tensor), with weight AggregationWeight(num_samples). `norm`: its L2 norm
  // from validation, or negative when unknown (the aggregator computes it when it clips). `what` names the update in
  // messages. Errors: the decoder's and the aggregator's (fl::Aggregator::AddFrom: on error the aggregator is as
  // before, or damaged()).
  absl::Status AddUpdateFile(const std::string& path, int64_t num_samples, double norm, const std::string& what);
  // Replaces the global model (after a round closed); `global` becomes its tensors minus kept_local.
  void SetGlobal(model::Checkpoint checkpoint);
};

// The active run `run` (running: `round` is its open round; evaluating: its last closed one, or null), with its
// global model loaded from `blobs` and, for FedAdam, the state from run.fedadam_state_path; its aggregators spill
// to `spill_dir` (an existing directory; empty: in memory); kept_local from the run's personalization. The loaders'
// errors; fl::LocalTensorNames' (InvalidArgument when the model's networks do not build).
absl::StatusOr<std::unique_ptr<ActiveRun>> LoadActiveRun(const BlobStore& blobs, const RunRecord& run,
                                                         const RoundRecord* round, const std::string& spill_dir);

// Gives the memory that the allocator holds free back to the system (glibc's malloc_trim; nothing elsewhere).
// Called after a delta was decoded and after a round closed, whose freed buffers glibc would otherwise keep.
void ReleaseFreeMemory();

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_ACTIVE_RUN_H_
