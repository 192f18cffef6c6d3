// The federation's rounds: runs, rounds and attempts, deadlines, update acceptance and aggregation, without gRPC,
// so that tests drive it directly with an injected clock.
//
// Life of a run (state in StateStore, see state_store.h):
//   StartRun -> run "running", round 1 attempt 1 "open" with model_digest = the run's base model and
//   deadline = now + round_deadline_seconds. Every selected site without an accepted update in the open attempt
//   gets a TRAIN task. An upload is accepted (AcceptUpload) after its SHA-256, decoding against the round's global
//   model and ValidateUpdate; it is added to the attempt's aggregator at once (FedAvg/FedAdam: O(model) memory) and
//   recorded in one transaction.
//   The round closes when every selected, non-revoked site has an accepted update (and at least min_sites did), or
//   at the deadline with >= min_sites accepted updates: aggregator result (+ the FedAdam step), global = ApplyDelta,
//   the checkpoint is saved into the blob store and, in ONE transaction, the model version is recorded, the round
//   closed and the next round opened (or the run moved to "evaluating" / "completed"). With fewer than min_sites at
//   the deadline the attempt "failed" and attempt + 1 opens with the same model, up to max_round_attempts; then the
//   run "failed". "evaluating": every selected site gets an EVALUATE task (round 0, the final global model) until
//   it sends its MetricsReport of kind "final"; the run completes when all have, or at the evaluation deadline
//   (now + round_deadline_seconds when evaluation began). AbortRun marks the run and its open round "aborted".
//
// Files under state_dir:
//   spool/<run>/r<round>-a<attempt>-<site>-<sha256>.upload  an upload being received or accepted; kept (fsynced)
//       while its round is open so that a restart can rebuild the aggregator, removed when the round closes or
//       fails, and at once when the upload is refused; at start-up, files of any other round are removed.
//   fedadam/<run>-round-<r>.bundle  FedAdam's m/v after round r (a TensorBundle, fp32), written before the
//       transaction that closes round r names it in runs.fedadam_state_path.
//
// Recovery (Create): the active run (running/evaluating) is reloaded from the database: the open round's global
// model from its blob, FedAdam's state from fedadam_state_path, and the aggregator rebuilt by decoding and adding
// the spool file of every update accepted in the open attempt (DataLoss if one is missing: an accepted update
// must never be silently dropped). Deadlines continue from their stored times. A crash between writing a
// checkpoint blob / FedAdam file and the closing transaction leaves an unreferenced file and the round open; it
// closes again with the same updates.
//
// Thread safety: thread-safe. Uploads are decoded one at a time (an internal mutex), so the coordinator holds at
// most one decoded delta besides the global model and the aggregator.
#ifndef FEDTUNE_COORDINATOR_ROUND_MANAGER_H_
#define FEDTUNE_COORDINATOR_ROUND_MANAGER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/blob_store.h"
#include "coordinator/state_store.h"
#include "fedtune/v1/federation.pb.h"

namespace fedtune::coordinator {

struct RoundManagerOptions {
  // Required: spool/ and fedadam/ are made here.
  std::string state_dir;
  // Time source. Default: absl::Now. Tests inject a fake clock and call Tick().
  std::function<absl::Time()> clock;
  // A site not heard from for longer is shown "lost" in GetRunStatus. Default 60.
  int heartbeat_timeout_seconds = 60;
};

// Where an upload goes (PrepareUpload).
struct UploadTarget {
  bool accepted = false;  // This payload was accepted before: nothing to receive.
  int attempt = 0;
  std::string spool_path;
};

class RoundManager {
 public:
  // Recovers the active run from `store` (see the header comment). `store` and `blobs` must outlive the manager.
  // Errors: DataLoss for an inconsistent state (open round missing, spool file of an accepted update missing),
  // the loaders' errors for the global model or FedAdam state.
  static absl::StatusOr<std::unique_ptr<RoundManager>> Create(StateStore* store, BlobStore* blobs,
                                                              RoundManagerOptions options);
  ~RoundManager();

  // ---- Operator
  // Starts a run. InvalidArgument naming the field (ValidateRunConfig; "sites: unknown site 'x'"; base_model not a
  // model version or an ambiguous prefix); FailedPrecondition when a run is active, a listed site is not approved,
  // fewer approved sites than min_sites, or no model exists. Returns the run id.
  absl::StatusOr<std::string> StartRun(const v1::RunConfig& config);
  // Aborts `run_id` (empty: the active run). NotFound for an unknown run; FailedPrecondition when it is not active.
  absl::StatusOr<v1::RunStatus> AbortRun(const std::string& run_id, const std::string& reason);
  // `run_id` empty: the latest run. NotFound when there is none.
  absl::StatusOr<v1::RunStatus> GetRunStatus(const std::string& run_id);
  absl::StatusOr<v1::RunReport> GetRunReport(const std::string& run_id);

  // ---- Sites (site_id is the authenticated certificate CN)
  // The site's task now (kind NONE when there is nothing to do). Every task also lists in ended_runs the ended
  // runs (completed, failed, aborted) among the 20 most recent that selected the site.
  absl::StatusOr<v1::Task> NextTask(const std::string& site_id);
  // Long-poll: waits up to `wait` for a task, returning early when `cancelled` says so or at Shutdown.
  absl::StatusOr<v1::Task> WaitForTask(const std::string& site_id, absl::Duration wait,
                                       const std::function<bool()>& cancelled);
  // Records the site's state; cancel = true when the task of (run, round) is no longer wanted, with run_ended = true
  // when the whole run ended (a round of a completed run whose update counted is not cancelled: its round metrics
  // are still wanted).
  absl::StatusOr<v1::HeartbeatResponse> Heartbeat(const std::string& site_id, const v1::HeartbeatRequest& request);
  // Stores a MetricsReport. PermissionDenied when the site is not selected for the run; NotFound for an unknown
  // run; InvalidArgument for a kind other than "round" / "final". A "final" report can complete the run.
  absl::Status ReportMetrics(const std::string& site_id, const v1::MetricsReport& report);

  // Where the upload of `sha256` for (run, round) by `site_id` goes. InvalidArgument for a malformed sha256;
  // NotFound for an unknown run; PermissionDenied when the site is not selected for the run; accepted = true when
  // this payload was accepted for (run, round) before (idempotent); FailedPrecondition naming run and round when
  // the round is not open; AlreadyExists when another payload was accepted for this site in the open attempt.
  absl::StatusOr<UploadTarget> PrepareUpload(const std::string& site_id, const std::string& run_id, int round,
                                             const std::string& sha256);
  // Takes the complete spool file of an upload (header.total_bytes received in target.spool_path) and accepts it
  // (status "accepted"), or refuses it, removes the spool file and records the refusal: DataLoss when the file's
  // SHA-256 differs from header.sha256 ("tampered"); InvalidArgument for a payload that does not decode against
  // the global model (names, shapes, dtypes, NaN/Inf) or num_samples <= 0; FailedPrecondition for a norm above
  // max_update_norm, or when the round closed meanwhile; PrepareUpload's errors.
  absl::StatusOr<v1::UploadResponse> AcceptUpload(const std::string& site_id, const v1::UploadHeader& header,
                                                  const UploadTarget& target);

  // Applies deadlines at the clock's now (closing, failing or retrying rounds; ending the evaluation). Called
  // periodically by the server; errors (e.g. a failed checkpoint write) leave the round open for the next tick.
  absl::Status Tick();

  // Wakes and ends every WaitForTask; later waits return at once.
  void Shutdown();

  // The active run's id, or "" when none.
  std::string ActiveRunId();

 private:
  struct Active;
  RoundManager(StateStore* store, BlobStore* blobs, RoundManagerOptions options);
  static constexpr int kEndedRunsSent = 20;
  int64_t NowMs() const;
  absl::Status AddEndedRuns(const std::string& site_id, v1::Task* task);
  absl::Status Recover();
  absl::StatusOr<std::unique_ptr<Active>> LoadActive(const RunRecord& run, const RoundRecord* round);
  absl::Status RebuildAggregatorLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<v1::Task> NextTaskLocked(const std::string& site_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<UploadTarget> PrepareUploadLocked(const std::string& site_id, const std::string& run_id, int round,
                                                   const std::string& sha256) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status MaybeCloseLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CloseRoundLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CloseRoundOnceLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status FailAttemptLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status FinishEvaluationLocked(const std::string& message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::set<std::string>> EligibleSitesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemoveSpoolFiles(const std::string& run_id, int round, int attempt);
  // Removes every spool file except those of `keep_run` whose name starts with `keep_prefix`.
  void RemoveStaleSpoolFiles(const std::string& keep_run, const std::string& keep_prefix);
  std::string SpoolPath(const std::string& run_id, int round, int attempt, const std::string& site_id,
                        const std::string& sha256) const;
  absl::Status RecordRefusal(const std::string& site_id, const v1::UploadHeader& header, int attempt,
                             const absl::Status& why);

  StateStore* const store_;
  BlobStore* const blobs_;
  const RoundManagerOptions options_;

  // Serializes decoding (one decoded delta at a time). Acquired before mu_, never while holding it.
  absl::Mutex decode_mu_;
  absl::Mutex mu_ ABSL_ACQUIRED_AFTER(decode_mu_);
  absl::CondVar task_cv_;  // Signalled when tasks may have changed.
  std::unique_ptr<Active> active_ ABSL_GUARDED_BY(mu_);
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_ROUND_MANAGER_H_
