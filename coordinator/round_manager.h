// The federation's rounds: runs, rounds and attempts, deadlines, update acceptance and aggregation, without gRPC,
// so that tests drive it directly with an injected clock.
//
// Life of a run (state in StateStore, see state_store.h):
//   StartRun -> run "running", round 1 attempt 1 "open" with model_digest = the run's base model and
//   deadline = now + round_deadline_seconds. Every selected site without an accepted update in the open attempt
//   gets a TRAIN task. An upload is accepted (AcceptUpload) after its SHA-256, decoding against the round's global
//   model and ValidateUpdate; it is added to the attempt's aggregator at once (FedAvg/FedAdam: O(model) memory) and
//   recorded in one transaction.
//   The round closes when every selected, non-revoked, non-declined site has an accepted update (and at least
//   min_sites did; secure aggregation: when its session is done, see "Privacy"), or
//   at the deadline with >= min_sites accepted updates: aggregator result (+ the FedAdam step), global = ApplyDelta,
//   the checkpoint is saved into the blob store and, in ONE transaction, the model version is recorded, the round
//   closed and the next round opened (or the run moved to "evaluating" / "completed"). With fewer than min_sites at
//   the deadline the attempt "failed" and attempt + 1 opens with the same model, up to max_round_attempts; then the
//   run "failed". "evaluating": every selected site gets an EVALUATE task (round 0, the final global model) until
//   it sends its MetricsReport of kind "final"; the run completes when all have, or at the evaluation deadline
//   (now + round_deadline_seconds when evaluation began, plus round_deadline_seconds per local_epochs of the
//   local-only baseline's training when the run has one). AbortRun marks the run and its open round "aborted".
//
// Privacy (RunConfig fields 25-31; run_config_privacy.h checks them; secagg_round.cc):
//   Declined rounds. A site may decline the TRAIN task of the open attempt (DeclineTask, e.g. its privacy budget):
//   an update row with status "declined" (UPLOAD_STATUS_DECLINED, no payload, message = the reason and the site's
//   privacy account) is recorded, the site gets no task and no upload is taken from it in that attempt, and the round
//   closes when every selected, non-revoked, non-declined site has an accepted update (and at least min_sites did).
//   When declines leave fewer than min_sites such sites the attempt fails AT ONCE (message "N site(s) declined
//   [...]: M site(s) left, min_sites is K"), not at the deadline; the next attempt offers the task to every site
//   again. Declines are rows of the database: a restart keeps them.
//   Secure aggregation (secure_aggregation: true). Every attempt that opens gets a SecAggSession
//   (secure_aggregation.h: expected = the selected, non-revoked sites; vector length = secagg::MakeLayout(global)
//   .length; threshold secagg_threshold; min_sites; range secagg_range; phase timeout secagg_phase_seconds; the
//   masked-input phase ends at the attempt's deadline). The SecAgg* calls drive it; Tick drives its phase deadlines
//   (and fails an attempt still unfinished at deadline + 3 x secagg_phase_seconds). An upload of such an attempt must
//   be a masked bundle (secagg::ReadMaskedBundle) from a site of U2, else it is refused (InvalidArgument); it goes into
//   the session, never to the aggregator, and its spool file (the masked vector only) stays until the round ends.
//   The attempt does not close through accepted updates or the round deadline but when the session is done: the
//   mean delta is the recovered sum x max_num_samples / total_samples (FedAvg; the sites pre-scaled by num_samples /
//   max_num_samples) or / |U3| (dp-fedavg), checked (finite; max_update_norm on the mean), FedAdam's step when
//   configured, ApplyDelta (integer tensors keep their values), and the round closes through the usual close. A
//   failed session fails the attempt with the session's failure as the round's message; the next attempt starts a
//   new session. GetRunStatus shows the open attempt's session (SecAggSession::Describe) as its round's message.
//   DP-FedAvg (dp: "dp-fedavg"). Without secure aggregation the aggregator clips every delta to dp_clip_norm
//   (AggregatorOptions::clip_norm; the smaller of clip_norm and dp_clip_norm when both are set), weights are uniform
//   (num_samples taken as 1), and the mean gets Gaussian noise of standard deviation dp_noise_multiplier x
//   dp_clip_norm / n per value (n updates: sigma x C on the sum), from a generator seeded by RAND_bytes
//   (round_transitions.h AddGaussianNoise), before FedAdam. With secure aggregation the sites clip and add the noise;
//   the coordinator only divides the sum by |U3|. dp-sgd is the sites' business (TrainingPlan).
//   TRAIN tasks carry secure_aggregation, secagg_range, dp, dp_noise_multiplier and dp_clip_norm in their plan.
//
// Cross-site evaluation (RunConfig.cross_site_evaluation; shared_model_intake.cc, cross_evaluation_stage.cc): while
// the run is "evaluating", a consenting site uploads its adapted model (UploadHeader.kind UPLOAD_KIND_ADAPTED_MODEL,
// round 0) through the same spool, claim and resume machinery as updates (spool file r0-a0-<site>-<sha256>.upload).
// It is accepted when it is a fedtune checkpoint with the final global model's tensors (names, shapes, dtypes;
// finite values), at most max_upload_bytes; it becomes a blob and a model version (run_id = the run, round 0, parent
// = the final global model), so that the run's sites may download it (CheckModelAccess), and a row of
// shared_models: one per site and run (the same payload again is accepted, another one AlreadyExists).
// When every eligible site has sent its "final" report, or the evaluation deadline passes, a run with
// cross_site_evaluation enters its cross-evaluation STAGE instead of completing: RunState stays "evaluating"; the
// stage is recorded in cross_evaluations (started, deadline = start + round_deadline_seconds) and survives a
// restart. Each eligible site that sent its final report and has not sent its "cross_site" report gets a
// CROSS_EVALUATE task (model_digest = final global model, the base model, shared_models = the OTHER sites' shared
// models); a site with nothing to evaluate (no other site shared) gets no task and is not waited for. The run
// completes when no site is left to wait for, or at the stage's deadline. Shared models are accepted until the
// stage begins (FailedPrecondition afterwards).
//
// Files under state_dir:
//   spool/<run>/r<round>-a<attempt>-<site>-<sha256>.upload  an upload being received or accepted; kept (fsynced)
//       while its round is open so that a restart can rebuild the aggregator, removed when the round closes or
//       fails, and at once when the upload is refused; at start-up, files of any other round are removed.
//   spill/<run>-r<round>-a<attempt>-<n>.spill  the deltas of the open attempt as float32, with trimmed mean and
//       median (fl::AggregatorOptions::spill_path); removed with its aggregator (the attempt closes or fails, the
//       run ends, the coordinator stops); at start-up every file there is removed and the open attempt's rebuilt.
//
// Partial uploads (spool files of the open attempt not accepted yet) are limited (RoundManagerOptions, from
// CoordinatorConfig): per site in number and in announced bytes, and per round in announced bytes. A stream claims
// its spool file (BeginUpload) until it ends (EndUpload: the bytes stay for a resume) or the payload is accepted or
// refused (AcceptUpload); a resumed upload of the same payload counts once. A site's partial upload of another
// payload is superseded (removed) when the site starts a new one or has one accepted, at once when no stream is
// receiving it, otherwise when that stream ends; a stream that ends holding no bytes leaves no file. Every refusal
// of an upload into an open round removes its spool file and records a "refused" update; a malformed header
// (ranges, unknown run, site not selected) is refused before any file exists.
//   fedadam/<run>-round-<r>.bundle  FedAdam's m/v after round r (a TensorBundle, fp32), written before the
//       transaction that closes round r names it in runs.fedadam_state_path.
//
// Recovery (Create): an open attempt of a secure-aggregation run cannot be resumed (the session's keys, shares and
// running sum were in memory only): it fails with the message "coordinator restarted during secure aggregation" and
// the next attempt opens (or, past max_round_attempts, the run fails). Otherwise:
// the active run (running/evaluating) is reloaded from the database: the open round's global
// model from its blob, FedAdam's state from fedadam_state_path, and the aggregator rebuilt by decoding and adding
// the spool file of every update accepted in the open attempt (DataLoss if one is missing: an accepted update
// must never be silently dropped). Deadlines continue from their stored times. A crash between writing a
// checkpoint blob / FedAdam file and the closing transaction leaves an unreferenced file and the round open; it
// closes again with the same updates.
//
// Rounds a peer sends are range-checked against the run: InvalidArgument naming the field below its range (1 for
// uploads and round metrics, 0 for heartbeats), OutOfRange above the run's rounds.
//
// Parts: run_views.h (the operator's views), upload_intake.cc (uploads), round_transitions.h (the state machine's
// steps), active_run.h (the in-memory side of the active run), spool_dir.h (spool files); this class ties them
// together under one mutex.
//
// Memory: the global model, the aggregator (FedAvg: one running sum; trimmed mean and median spill the deltas to
// <state_dir>/spill/, see ActiveRun) and one decoded tensor of one upload at a time: a delta is validated, then
// added, tensor by tensor from its spool file, never whole in memory (upload_intake.cc). A shared adapted model is
// loaded whole (one model) while it is checked against the global model (shared_model_intake.cc).
//
// Thread safety: thread-safe. Uploads are decoded one at a time (an internal mutex).
#ifndef FEDTUNE_COORDINATOR_ROUND_MANAGER_H_
#define FEDTUNE_COORDINATOR_ROUND_MANAGER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/fl/tensor_map.h"
#include "coordinator/active_run.h"
#include "coordinator/blob_store.h"
#include "coordinator/round_transitions.h"
#include "coordinator/run_views.h"
#include "coordinator/secure_aggregation.h"
#include "coordinator/spool_dir.h"
#include "coordinator/state_store.h"
#include "fedtune/v1/federation.pb.h"

namespace fedtune::coordinator {

class CoordinatorMetrics;

struct RoundManagerOptions {
  // Required: spool/ and fedadam/ are made here.
  std::string state_dir;
  // Time source. Default: absl::Now. Tests inject a fake clock and call Tick().
  std::function<absl::Time()> clock;
  // A site not heard from for longer is shown "lost" in GetRunStatus. Default 60.
  int heartbeat_timeout_seconds = 60;
  // Largest upload (UploadHeader.total_bytes). Default 2 GiB (CoordinatorConfig.max_upload_bytes).
  int64_t max_upload_bytes = int64_t{2} << 30;
  // Limits on partial uploads (see the header comment; CoordinatorConfig's fields of the same names). Defaults:
  // 2 per site, 4 GiB per site, 16 GiB per round (2x and 8x the default max_upload_bytes).
  int max_open_uploads_per_site = 2;
  int64_t max_spool_bytes_per_site = int64_t{4} << 30;
  int64_t max_spool_bytes_per_round = int64_t{16} << 30;
  // Where runs, rounds, uploads and site states are counted (coordinator_metrics.h; must outlive the manager).
  // Default nullptr: not counted.
  CoordinatorMetrics* metrics = nullptr;
};

// Where an upload goes (PrepareUpload, BeginUpload).
struct UploadTarget {
  bool accepted = false;  // This payload was accepted before: nothing to receive.
  int attempt = 0;
  std::string spool_path;
  bool claimed = false;  // BeginUpload: the caller's stream holds spool_path until EndUpload / AcceptUpload.
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

  // ---- Cross-site evaluation: the upload of a site's adapted model (UploadKind UPLOAD_KIND_ADAPTED_MODEL), with the
  // contracts of PrepareUpload, BeginUpload, EndUpload and AcceptUpload, except: round must be 0 (InvalidArgument);
  // num_samples and the losses are not read; FailedPrecondition unless the run is active, "evaluating", has
  // cross_site_evaluation and has not entered its cross-evaluation stage; accepted = true when this payload was
  // shared before; AlreadyExists when the site shared another payload in this run; Aborted when another stream of
  // the site is receiving an adapted model; InvalidArgument for a payload that is not a fedtune checkpoint with the
  // final global model's tensor names, shapes and dtypes, or holds NaN/Inf. A site keeps one partial upload: a new
  // payload supersedes the others. Messages name site and run, never a server path.
  absl::StatusOr<UploadTarget> PrepareSharedModelUpload(const std::string& site_id, const std::string& run_id,
                                                        int round, const std::string& sha256);
  absl::StatusOr<UploadTarget> BeginSharedModelUpload(const std::string& site_id, const v1::UploadHeader& header);
  absl::Status EndSharedModelUpload(const std::string& site_id, const v1::UploadHeader& header,
                                    const UploadTarget& target, absl::Status why);
  absl::StatusOr<v1::UploadResponse> AcceptSharedModel(const std::string& site_id, const v1::UploadHeader& header,
                                                       const UploadTarget& target, const std::string& received_sha256);

  // ---- Sites (site_id is the authenticated certificate CN)
  // The site's task now (kind NONE when there is nothing to do). Every task also lists in ended_runs the ended
  // runs (completed, failed, aborted) among the 20 most recent that selected the site.
  absl::StatusOr<v1::Task> NextTask(const std::string& site_id);
  // Long-poll: waits up to `wait` for a task, returning early when `cancelled` says so or at Shutdown.
  absl::StatusOr<v1::Task> WaitForTask(const std::string& site_id, absl::Duration wait,
                                       const std::function<bool()>& cancelled);
  // Records the site's state; cancel = true when the task of (run, round) is no longer wanted, with run_ended = true
  // when the whole run ended (a round of a completed run whose update counted is not cancelled: its round metrics
  // are still wanted). InvalidArgument naming the field for a negative round, a progress outside [0, 1] or a
  // train_loss that is not finite; OutOfRange for a round beyond the active run's rounds.
  absl::StatusOr<v1::HeartbeatResponse> Heartbeat(const std::string& site_id, const v1::HeartbeatRequest& request);
  // Stores a MetricsReport. PermissionDenied when the site is not selected for the run; NotFound for an unknown
  // run; InvalidArgument for a kind other than "round" / "final" / "cross_site", a round < 1 ("round") or < 0
  // ("final"), or a "cross_site" report with a round other than 0 or of a run without cross_site_evaluation;
  // OutOfRange for a round beyond the run's rounds. "final" and "cross_site" reports are stored as round 0. A "final"
  // report can complete the run or start its cross-evaluation stage; a "cross_site" report can complete the run.
  absl::Status ReportMetrics(const std::string& site_id, const v1::MetricsReport& report);
  // Whether `site_id` may download model version `digest`: OK when the digest is the base model of, or was made by,
  // a run the site is selected for; PermissionDenied naming site and digest otherwise (unknown digests included).
  absl::Status CheckModelAccess(const std::string& site_id, const std::string& digest);

  // Where the upload of `sha256` for (run, round) by `site_id` goes (read-only: GetUploadOffset). InvalidArgument
  // for a malformed sha256 or a round < 1; NotFound for an unknown run; PermissionDenied when the site is not
  // selected for the run; OutOfRange for a round beyond the run's rounds; accepted = true when this payload was
  // accepted for (run, round) before (idempotent); FailedPrecondition naming run and round when the round is not
  // open; AlreadyExists when another payload was accepted for this site in the open attempt.
  absl::StatusOr<UploadTarget> PrepareUpload(const std::string& site_id, const std::string& run_id, int round,
                                             const std::string& sha256);
  // Starts receiving the upload stream whose first message is `header`. InvalidArgument naming the field for
  // total_bytes outside [1, max_upload_bytes], offset outside [0, total_bytes], num_samples <= 0, a loss that is
  // not finite; then PrepareUpload's errors. When the payload was accepted before, returns accepted = true and
  // claims nothing. Otherwise supersedes the site's other partial uploads of the round (see the header comment),
  // checks the limits and claims the spool file for the caller's stream (claimed = true): Aborted when another
  // stream holds it; ResourceExhausted naming the site and max_open_uploads_per_site, max_spool_bytes_per_site or
  // max_spool_bytes_per_round (a refusal: recorded, this payload's spool file removed). A claim must be ended by
  // exactly one EndUpload or AcceptUpload.
  absl::StatusOr<UploadTarget> BeginUpload(const std::string& site_id, const v1::UploadHeader& header);
  // Ends a claimed stream that did not deliver its whole payload, for the reason `why`, which is returned. With
  // InvalidArgument (the peer broke the protocol) the upload is refused (spool file removed, refusal recorded);
  // otherwise what arrived stays for a resume, unless it is nothing, the payload was superseded meanwhile or its
  // attempt ended.
  absl::Status EndUpload(const std::string& site_id, const v1::UploadHeader& header, const UploadTarget& target,
                         absl::Status why);
  // Takes the complete spool file of an upload (header.total_bytes received in target.spool_path, whose SHA-256
  // the receiver computed while the bytes arrived: `received_sha256`) and accepts it (status "accepted"), or
  // refuses it, removes the spool file and records the refusal: DataLoss when received_sha256 differs from
  // header.sha256 ("tampered"); InvalidArgument for a payload that does not decode against
  // the global model (names, shapes, dtypes, NaN/Inf) or num_samples <= 0; FailedPrecondition for a norm above
  // max_update_norm, or when the round closed meanwhile; PrepareUpload's errors. Ends the claim of a target from
  // BeginUpload. Messages name site, run and round, never a server path.
  absl::StatusOr<v1::UploadResponse> AcceptUpload(const std::string& site_id, const v1::UploadHeader& header,
                                                  const UploadTarget& target, const std::string& received_sha256);

  // ---- Privacy (see "Privacy" in the header comment; site_id is the authenticated certificate CN)
  // The site declines the TRAIN task of (run, round, attempt): its update of that attempt is recorded as "declined"
  // with the reason and its privacy account, it is no longer offered the task nor waited for, and the round may
  // close (or fail at once when min_sites can no longer be reached). Idempotent. InvalidArgument for a reason over
  // kMaxDeclineReasonBytes, a round < 1 or an attempt < 1; NotFound for an unknown run; PermissionDenied when the
  // site is not selected; OutOfRange for a round beyond the run's rounds; FailedPrecondition once the site's update of
  // that attempt was accepted, or when the attempt is not the open one.
  absl::Status DeclineTask(const std::string& site_id, const v1::DeclineRequest& request);
  static constexpr size_t kMaxDeclineReasonBytes = 1024;

  // Secure aggregation: the open attempt's SecAggSession (secure_aggregation.h) behind the SecAgg* RPCs. Each call
  // names (run, round, attempt): NotFound for an unknown run; PermissionDenied when the site is not selected (or,
  // from the session, not in the phase's set); FailedPrecondition when the run has no secure aggregation, the
  // attempt is not the open one, the site declined it, or the session is in another phase; InvalidArgument naming
  // the field from the session. The Get* calls answer at once (ready = false before the phase ended): the server
  // long-polls them (site_service.h), woken by the task listener whenever the session's phase changes.
  // `certificate_pem`: the certificate the site authenticated with on this call (its keys' signature is checked
  // against it and relayed to the peers with the roster).
  absl::Status SecAggAdvertiseKeys(const std::string& site_id, const std::string& certificate_pem,
                                   const v1::SecAggKeys& keys);
  absl::StatusOr<v1::SecAggRoster> SecAggGetRoster(const std::string& site_id, const v1::SecAggPhaseRequest& request);
  absl::Status SecAggShareKeys(const std::string& site_id, const v1::SecAggShareUpload& upload);
  absl::StatusOr<v1::SecAggInbox> SecAggGetInbox(const std::string& site_id, const v1::SecAggPhaseRequest& request);
  absl::StatusOr<v1::SecAggUnmaskRequest> SecAggGetUnmaskRequest(const std::string& site_id,
                                                                 const v1::SecAggPhaseRequest& request);
  absl::Status SecAggRevealShares(const std::string& site_id, const v1::SecAggReveal& reveal);

  // Applies deadlines at the clock's now (closing, failing or retrying rounds; ending the evaluation; the secure
  // aggregation session's phase deadlines). Called periodically by the server; errors (e.g. a failed checkpoint
  // write) leave the round open for the next tick.
  absl::Status Tick();

  // Wakes and ends every WaitForTask; later waits return at once.
  void Shutdown();

  // Called (under the manager's lock: it must not call back into the manager, only note the change) whenever
  // sites' tasks may have changed: a run started, a round opened or closed, the run ended, Shutdown. Replaces the
  // previous listener; set it before sites call. TaskWaiters (task_waiters.h) answers long-polls with it.
  void SetTaskListener(std::function<void()> listener);

  // The active run's id, or "" when none.
  std::string ActiveRunId();

 private:
  // A delta (in its spool file) that passed validation: its L2 norm.
  struct ValidatedDelta {
    double l2_norm = 0;
  };
  RoundManager(StateStore* store, BlobStore* blobs, RoundManagerOptions options);
  static constexpr int kEndedRunsSent = 20;
  // InvalidArgument below `min`, OutOfRange beyond the run's rounds, naming the field.
  static absl::Status CheckRound(int round, int min, const RunRecord& run);
  int64_t NowMs() const;
  absl::Time Now() const;
  // <state_dir>/spill: the aggregators' spill files.
  std::string SpillDir() const;
  RunViewOptions ViewOptions() const;
  absl::Status AddEndedRuns(const std::string& site_id, v1::Task* task);
  absl::StatusOr<v1::Task> NextTaskLocked(const std::string& site_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::set<std::string>> EligibleSitesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // ---- Recovery (round_manager.cc)
  absl::Status Recover();
  absl::Status RebuildAggregatorLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Lists the partial uploads of the open attempt from the spool folder.
  absl::Status RebuildPartialsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // ---- Upload intake (upload_intake.cc)
  absl::StatusOr<UploadTarget> PrepareUploadLocked(const std::string& site_id, const std::string& run_id, int round,
                                                   const std::string& sha256) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // ResourceExhausted when claiming `path` for header would exceed a limit on partial uploads.
  absl::Status CheckSpoolLimitsLocked(const std::string& site_id, const v1::UploadHeader& header,
                                      const std::string& path) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether the upload's attempt is still the open one: false when the site has no accepted update in it, true
  // when this payload was accepted meanwhile; FailedPrecondition (round not open, attempt ended) or AlreadyExists
  // (another payload accepted) otherwise.
  absl::StatusOr<bool> CheckStillOpenLocked(const std::string& site_id, const v1::UploadHeader& header,
                                            const UploadTarget& target, const std::string& what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Decodes the spool file against `global` tensor by tensor and validates it (fl::UpdateValidator, memory for one
  // tensor); errors keep their codes, with the upload named instead of the spool file. Called without mu_ (takes it
  // only to explain a read failure).
  absl::StatusOr<ValidatedDelta> DecodeAndValidate(const std::string& site_id, const v1::UploadHeader& header,
                                                   const UploadTarget& target, const fl::TensorMap& global,
                                                   double max_norm, const std::string& what) ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status RecordRefusal(const std::string& site_id, const v1::UploadHeader& header, int attempt,
                             const absl::Status& why);
  // Removes the spool file at `path` and forgets its partial upload.
  void DropPartialLocked(const std::string& path) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Supersedes `site_id`'s partial uploads of the open attempt other than `keep_path`.
  void SupersedeLocked(const std::string& site_id, const std::string& keep_path) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records an accepted update (its delta is in the aggregator), maybe closing the round.
  absl::StatusOr<v1::UploadResponse> RecordAcceptedLocked(const std::string& site_id, const v1::UploadHeader& header,
                                                          const UploadTarget& target, double l2_norm,
                                                          const std::string& what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // ---- The round state machine (round_manager.cc; the transitions in round_transitions.h)
  // Moves active_ along a committed transition: the next round or attempt, or no active run.
  absl::Status AdvanceLocked(const RunTransition& transition) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status MaybeCloseLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CloseRoundLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CloseRoundOnceLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Fails the open attempt; `why` (when not empty) is the round's message instead of "deadline passed ...".
  absl::Status FailAttemptLocked(const std::string& why = "") ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The open attempt's eligible sites (EligibleSitesLocked) that did not decline it.
  absl::StatusOr<std::set<std::string>> ExpectedSitesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // ---- Secure aggregation (secagg_round.cc)
  // The attempt just opened gets its session (runs with secure_aggregation); when it cannot start, the reason is
  // kept in ActiveRun::secagg_error and the next Tick fails the attempt.
  void StartSecAggLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The session of the open attempt named by a SecAgg* call (errors: see the public SecAgg* methods).
  absl::StatusOr<SecAggSession*> SecAggSessionLocked(const std::string& site_id, const std::string& run_id, int round,
                                                     int attempt) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After a call or a tick moved the session: tells waiting sites of a new phase, closes the round when the session
  // is done, fails the attempt when it failed. Errors of the close (the round stays open for the next tick).
  absl::Status SecAggProgressLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The round's mean delta from the session's result (FedAvg: sum * max_num_samples / total_samples; DP-FedAvg:
  // sum / |U3|), validated (finite; max_update_norm on the mean when set). InvalidArgument when refused.
  absl::StatusOr<SecAggStep> SecAggStepLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The masked vector of a secure-aggregation upload (complete spool file), read without mu_ (under decode_mu_):
  // InvalidArgument when it is not a masked bundle of `length` entries.
  absl::StatusOr<std::vector<uint32_t>> ReadMaskedUpload(const UploadTarget& target, int64_t length,
                                                         const std::string& what) ABSL_LOCKS_EXCLUDED(mu_);
  // Adds a read masked vector to the open attempt's session and records the update as accepted.
  absl::StatusOr<v1::UploadResponse> AcceptMaskedLocked(const std::string& site_id, const v1::UploadHeader& header,
                                                        const UploadTarget& target, const SecAggSession* session,
                                                        const std::vector<uint32_t>& masked, const std::string& what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The phase of the open attempt's session for the round's message in status views ("" without one).
  std::string SecAggStatusLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status FinishEvaluationLocked(const std::string& message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // ---- Cross-site evaluation (shared_model_intake.cc, cross_evaluation_stage.cc)
  absl::StatusOr<UploadTarget> PrepareSharedModelLocked(const std::string& site_id, const std::string& run_id,
                                                        int round, const std::string& sha256)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Checks a complete spool file: a checkpoint with the global model's tensors (called without mu_).
  absl::Status ValidateSharedModel(const std::string& path, const model::Checkpoint& global, const std::string& what)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The final evaluation ended (every site reported, or its deadline): the cross-evaluation stage begins when the run
  // has cross_site_evaluation, otherwise the run completes.
  absl::Status EndFinalEvaluationLocked(const std::string& message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status StartCrossEvaluationLocked(const std::string& message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Completes the run when no site is left to wait for in the stage.
  absl::Status MaybeFinishCrossEvaluationLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The shared models `site_id` evaluates in the stage (the other sites'); empty when it has nothing to do.
  std::vector<v1::SharedModel> CrossModelsForLocked(const std::string& site_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `task` (run fields filled) as the site's CROSS_EVALUATE task, or NONE.
  absl::StatusOr<v1::Task> CrossEvaluateTaskLocked(const std::string& site_id, v1::Task task)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reloads the stage, the shared models and the sites done from the database (Recover).
  absl::Status RecoverCrossEvaluationLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  StateStore* const store_;
  BlobStore* const blobs_;
  const RoundManagerOptions options_;
  const SpoolDir spool_;

  // Serializes decoding (one decoded delta at a time). Acquired before mu_, never while holding it.
  absl::Mutex decode_mu_;
  absl::Mutex mu_ ABSL_ACQUIRED_AFTER(decode_mu_);
  absl::CondVar task_cv_;  // Signalled when tasks may have changed (SignalTasksLocked).
  std::function<void()> task_listener_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<ActiveRun> active_ ABSL_GUARDED_BY(mu_);
  // Spool files claimed by a stream (BeginUpload until EndUpload / AcceptUpload), of any attempt.
  std::set<std::string> receiving_ ABSL_GUARDED_BY(mu_);
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;

  // Wakes WaitForTask and tells the task listener.
  void SignalTasksLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets the metrics' current round and round_open from active_ (options_.metrics).
  void PublishRoundLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
};

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_ROUND_MANAGER_H_
