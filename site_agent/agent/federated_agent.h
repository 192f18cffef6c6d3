// The site agent's federated mode (`fedtune-site run --config site.textproto`): dial out to the coordinator, say
// Hello until approved, then take tasks with a long-poll GetTask and work them:
//
//  TRAIN (run r, round n, attempt a; round dir <work_dir>/runs/<r>/round-<n>-<a>):
//   1. download the global model (resumable, SHA-256 checked) to <work_dir>/models/<digest>.ckpt;
//   2. fine-tune it with train::RunFinetune (the config's finetune template; out_dir = the round dir, max_epochs = the
//      plan's local_epochs, its learning rate, batch size and proximal mu; cache_dir <work_dir>/cache; resume):
//      a killed agent resumes training from the round dir's state;
//   3. delta = fine-tuned - global over fl::CheckpointTensors, encoded with the plan's encoding (lossy ones with
//      fl::ErrorFeedback: the residual lives in <work_dir>/runs/<r>/residual.bin, fp32-encoded, and the residual a
//      round started from in <round dir>/residual.before.bin so a re-encoding after a crash is identical); the
//      payload is written atomically to <round dir>/update.bin and its SHA-256 recorded in site.db BEFORE the
//      upload, so a restarted agent uploads the same bytes, resuming from the coordinator's offset;
//      Under the plan's dp "dp-fedavg" the delta's L2 norm is first clipped to dp_clip_norm (the coordinator adds
//      the noise; with secure aggregation, see below, the sites add it);
//   4. upload (num_samples = training images of the split);
//   5. evaluate the global vs the fine-tuned model on the local test split (<round dir>/report.html, report.json,
//      predictions.csv: these stay at the site);
//   6. keep the adapted checkpoint <work_dir>/adapted/<r>/model.ckpt = the run's fine-tuned model with the lowest
//      validation BCE so far (mean of the members' best validation BCE), recorded in adapted_models;
//   7. ReportMetrics kind "round": models "global" and "local", comparison local vs global.
//  Personalization (the plan's; personalization.h has the files): FEDBN/SILOBN fine-tune the global model with the
//   site's kept BatchNorm tensors put back (step 2), keep the fine-tuned ones in <work_dir>/runs/<r>/local_bn.bin, and
//   upload the delta of the shared tensors only (step 3); no adapted model is kept per round (step 6). DITTO, after
//   the upload, also fine-tunes the site's personal model toward the round's global model (runs/<r>/personal.ckpt),
//   and the adapted model of step 6 is the personal model.
//  EVALUATE (final): download the open-source (base) and final global models, evaluate open-source vs global,
//   open-source vs adapted and global vs adapted on the test split (reports under <work_dir>/reports/<r>/), and
//   ReportMetrics kind "final", round 0, with the models "open-source", "global", "adapted" (the adapted model is
//   left out when the site never trained in this run). Under FEDBN/SILOBN the adapted model is made first: the final
//   global model with the site's kept BatchNorm tensors (PrepareAdapted). With the plan's local_only_baseline, also
//   the model "local-only" (local_baseline.h: the base model fine-tuned on the site's data alone) and the comparisons
//   of the open-source, global and adapted models with it. The run is then finished for the site, unless the run has
//   cross-site evaluation: then the site shares its adapted model first when it consents (adapted_model_shared in
//   the final report) and the run is finished after its CROSS_EVALUATE task (cross_evaluation.h) or when the
//   coordinator lists it in Task.ended_runs.
//  CROSS_EVALUATE: the other sites' shared adapted models evaluated against the final global model on the test split,
//   reported as kind "cross_site" (cross_evaluation.h).
//
// Privacy budget (privacy_budget.h; SiteAgentConfig.max_epsilon and delta): a TRAIN task starts with the budget
//   check, before anything is downloaded (with one network, the least a round trains) and again once the global
//   model is loaded (with its networks at the sample rates the trainer uses: SoloNet members at batch / training
//   images, the DuoNet at batch / training study pairs, DITTO's personal copies), before the secure-aggregation
//   session is joined and before the site's data is touched. A round over budget is declined: a WARNING names
//   max_epsilon, delta and the epsilons, DeclineTask tells the coordinator (with the PrivacyAccount), the task is
//   recorded in site.db as "declined" and RunTask returns OK (the loop asks for the next task). A site with a budget
//   also declines dp "dp-fedavg" without secure aggregation (the coordinator would add the noise, which the site
//   cannot verify); a site without one trains such rounds and accounts them at sigma (a guarantee against everyone
//   but the coordinator, said in the log). Otherwise the round's planned phase is recorded in privacy_ledger before
//   training and replaced by what training did (train::DpSgdPhases of the round's fine-tuning, and of DITTO's
//   personal model) after it. A TRAIN task whose plan (dp fields, secure_aggregation, local_epochs, batch_size,
//   personalization) or model differs from the one stored for its (run, round, attempt) is refused with
//   FailedPrecondition (logged; the stored task and its state are left alone). Every round and final MetricsReport
//   carries the site's PrivacyAccount (kept with share_metrics = false), and the local report.json / report.html a
//   "Privacy: epsilon X at delta D (budget M)" line.
//   Losses outside the ledger: in a DP round (plan dp not "none") or when the site has a budget (max_epsilon > 0) the
//   training and validation losses are not sent: UploadHeader.train_loss / validation_loss, the heartbeat's
//   train_loss and the round MetricsReport's train_loss / validation_loss are 0 (they stay in site.db). The final
//   evaluation's local-only baseline (trained without DP) is not trained when the site has a budget: the final
//   report has no "local-only" model and a WARNING says why.
// Secure aggregation (the plan's secure_aggregation; secure_aggregation.h has the protocol): after the download and
//   the exact budget check the agent joins the round attempt's session (phase 1 keys, phase 2 shares; heartbeat "secure
//   aggregation: keys", "secure aggregation: shares"), fine-tunes, and step 3 becomes the masked update (phase 3: the
//   shared tensors' delta, DP-FedAvg-clipped and noised under dp "dp-fedavg", pre-scaled, fixed-point encoded and
//   masked, written to update.bin and recorded as any update, no error feedback); after the upload, phase 4 reveals the
//   shares the coordinator may have ("secure aggregation: unmasking"). Refused with InvalidArgument: a lossy delta
//   encoding (only fp32) and personalization FEDBN/SILOBN. A restarted agent that finds the round's masked update
//   recorded uploads it and completes the round without the session (it cannot unmask: the secrets were in memory
//   only).
//
// Heartbeats: a thread sends Heartbeat every heartbeat_seconds while a task runs, with the state ("downloading",
// "training member 1/3, epoch 2/5", "uploading", "evaluating") and progress; training progress comes from the
// pipeline's epoch callbacks (training_progress.h). When the answer says cancel, the task stops at the next step
// boundary or transfer chunk (fine-tuning itself is not interrupted: train::RunFinetune has no cancellation hook).
//
// Restart: a TRAIN task is resumable at every step (download from the .part file, fine-tuning from the round dir's
// state, the recorded update re-used and its upload resumed from the coordinator's offset). The coordinator offers
// a task again until it accepted the update; a task interrupted after that (state "update-written" or "uploaded" in
// site.db) is completed by the restarted agent before it asks for new tasks (GetUploadOffset then answers
// "accepted", and the round evaluation, adapted model and round report follow).
//
// A run is finished for the site when it sent its final report, when GetTask lists it in Task.ended_runs (for a
// run the site took part in), or when a heartbeat answers cancel with run_ended. The agent returns after
// exit_after_runs finished runs (0: never).
//
// Only summary metrics leave the site (metrics_report.h); with share_metrics = false even those are stripped.
//
// Failure reports (failure_report.h): a task that fails (RunTask returns an error other than CANCELLED) is reported
// with SiteService.ReportFailure: the stage it failed in (from its heartbeat state), the status code and its name, the
// message and, with share_diagnostics, the agent's last 20 log lines, scrubbed of paths, the manifest's patient and
// study ids, DICOM UIDs and long digit runs. The same failure of the same task attempt is reported once. Sending is
// best effort (at most AgentOptions::failure_report_give_up; a failure to send is logged) and never changes what
// RunTask returns. The heartbeat's last state of a failed task, "failed: MESSAGE", is scrubbed the same way. A manifest
// that cannot be read at start-up is reported too (no run, stage TRAINING) before Create returns its error.
// Retries: while a call of a task is retried (download, upload, metrics report, secure aggregation), the task's
// heartbeats say "retrying: CALL: CODE: MESSAGE" (scrubbed); outside a task, a failing Hello or GetTask sends a
// heartbeat without a run with that state at each retry, and "idle" once the call goes through again.
// Monitoring (site_metrics.h; docs/hospital-it-guide.md, "Monitoring"): the agent keeps its Prometheus metrics (state,
// round, progress, epochs, bytes, retries, task results and error classes, privacy budget) and, with
// SiteAgentConfig.metrics_listen_address, serves them (common/metrics/metrics_server.h) from Create on; the bound port
// goes to metrics_port_file. Its log lines carry the site (from Create on) and, while a task runs, its run and round
// (common/logging.h, SetLogSite / SetLogRun: the JSON log format's keys).
//
// Thread safety: Run is called once, from one thread; the agent starts and joins its heartbeat threads itself.
#ifndef FEDTUNE_SITE_AGENT_AGENT_FEDERATED_AGENT_H_
#define FEDTUNE_SITE_AGENT_AGENT_FEDERATED_AGENT_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/diagnostics/scrub.h"
#include "common/train/site_data.h"
#include "fedtune/v1/federation.pb.h"
#include "fedtune/v1/federation_config.pb.h"
#include "site_agent/agent/agent_database.h"
#include "site_agent/agent/coordinator_client.h"
#include "site_agent/agent/privacy_budget.h"

namespace fedtune::metrics {
class MetricsServer;  // common/metrics/metrics_server.h
}

namespace fedtune::agent {

class SiteMetrics;        // site_metrics.h: the agent's Prometheus metrics.
class Heartbeater;        // heartbeater.h: the heartbeat thread of one task.
class RetryReporter;      // failure_report.h: "retrying: REASON" heartbeats.
class SiteSecAggSession;  // secure_aggregation.h: one round attempt's secure aggregation session.

// The agent's version string sent in Capabilities.
inline constexpr char kAgentVersion[] = "fedtune-site/1";

struct AgentOptions {
  // Longest GetTask long-poll. Default 20 s.
  int task_wait_seconds = 20;
  // Waits of the backoffs (the client's and the loop's); default absl::SleepFor. Test seam.
  std::function<void(absl::Duration)> sleep;
  // Attempts per client call before the loop's own backoff takes over. Default 0: no count, a call (a transfer
  // included) is retried until SiteAgentConfig.retry_give_up_seconds have passed since its first failure, so that a
  // link down for a minute costs a minute, not a failed task and the loop's longer backoff.
  int max_attempts_per_call = 0;
  // The longest a failure report is tried for (CoordinatorClient::ReportFailure). Default 10 s.
  absl::Duration failure_report_give_up = absl::Seconds(10);
  // Where the agent's metrics go (not owned; must outlive the agent). Default null: the agent keeps its own.
  SiteMetrics* metrics = nullptr;
};

class FederatedAgent {
 public:
  // Checks that site_cert is a site certificate whose CN equals config.site_id (InvalidArgument naming both),
  // not expired (FailedPrecondition), resolves the training device (train::ResolveDevice errors), reads and splits
  // the manifest (LoadSiteData errors), opens <work_dir>/site.db and creates the channel (CoordinatorClient::Create
  // errors). `config` must be validated (LoadAgentConfig does).
  static absl::StatusOr<std::unique_ptr<FederatedAgent>> Create(const v1::SiteAgentConfig& config,
                                                                const AgentOptions& options = {});
  ~FederatedAgent();

  // Hello until approved (a "pending" site keeps saying Hello with backoff and logs the command the operator must
  // run), then the task loop, until exit_after_runs runs are finished. Returns OK then; the coordinator's
  // UNAUTHENTICATED / PERMISSION_DENIED (named, e.g. "coordinator HOST:PORT: Hello: ...") at once; transient
  // errors are retried forever with backoff; a failed task is logged, recorded and the loop goes on.
  absl::Status Run();

  // One task, as the loop runs it (exposed for tests). Errors of the steps (an image of the site that cannot be read:
  // DATA_LOSS, failure_report.h's SiteDataError); CANCELLED when the coordinator cancelled it. Any other error is
  // reported to the coordinator (a failure report, see above) before it returns.
  absl::Status RunTask(const v1::Task& task);

  // The Hello request (capabilities and dataset summary) this agent sends.
  const v1::HelloRequest& hello_request() const { return hello_; }
  int finished_runs() const { return finished_runs_; }
  // The agent's metrics (AgentOptions.metrics, or its own); the port of its metrics endpoint (0: none).
  SiteMetrics& metrics() const { return *metrics_; }
  int metrics_port() const;

 private:
  FederatedAgent(const v1::SiteAgentConfig& config, const AgentOptions& options);

  struct TrainRound;  // federated_agent.cc: one TRAIN task's paths, models and results, step to step.

  absl::Status SayHello();
  // RunTask without the failure report; sets failure_stage_.
  absl::Status WorkTask(const v1::Task& task);
  // Sends the failure report of `task`'s `error` (once per task attempt and failure; best effort, logged).
  void ReportFailure(const v1::Task& task, const absl::Status& error);
  absl::Status RunTrain(const v1::Task& task, Heartbeater& heartbeat);
  // RunTrain's steps after the download, in order: fine-tune (progress to the heartbeat), write and record the
  // encoded update (error feedback for lossy encodings), upload it, evaluate global vs local, keep the adapted model.
  absl::Status FinetuneRound(TrainRound& round, Heartbeater& heartbeat);
  // DITTO, after the upload: fine-tunes the site's personal model toward the round's global model
  // (personalization.h), kept in <run_dir>/personal.ckpt.
  absl::Status TrainPersonal(TrainRound& round, Heartbeater& heartbeat);
  absl::Status WriteUpdate(TrainRound& round);
  // Secure aggregation: phases 1 and 2 (secure_aggregation.h) for the round, before fine-tuning.
  absl::StatusOr<std::unique_ptr<SiteSecAggSession>> BeginSecureAggregation(const TrainRound& round,
                                                                            Heartbeater& heartbeat);
  // Secure aggregation's step 3 instead of WriteUpdate: the masked update (phase 3) written to update.bin and
  // recorded; a recorded one is reused (then `session` may be null).
  absl::Status WriteMaskedUpdate(TrainRound& round, SiteSecAggSession* session);
  absl::Status UploadRoundUpdate(const TrainRound& round, Heartbeater& heartbeat);
  absl::StatusOr<v1::MetricsReport> EvaluateRound(const TrainRound& round);
  absl::Status KeepAdapted(const TrainRound& round);
  absl::Status RunEvaluateTask(const v1::Task& task, Heartbeater& heartbeat);
  // FEDBN/SILOBN, at the final evaluation: the adapted model = the final global model (`global_path`) with the
  // site's kept tensors, written to <work_dir>/adapted/<run>/model.ckpt and recorded. Nothing for NONE and DITTO.
  absl::Status PrepareAdapted(const v1::Task& task, const std::string& global_path);
  // The final evaluation's local-only baseline (local_baseline.h): trains (or reuses) it, evaluates it against the
  // open-source model and compares the global and (when `adapted_path` is set) adapted models with it on the test
  // split of RunEvaluateTask (reports under <work_dir>/reports/<run>/): adds the model "local-only" and the
  // comparisons open-source vs local-only, local-only vs global and local-only vs adapted to `report`.
  absl::Status EvaluateLocalOnly(const v1::Task& task, const std::string& base_path, const std::string& base_digest,
                                 const std::string& global_path, const std::string& adapted_path,
                                 Heartbeater& heartbeat, v1::MetricsReport* report);
  // The privacy budget check of a TRAIN task (`when`: for the log) with the networks of `shape`: false when the
  // round may be trained; true when it was declined (logged, DeclineTask sent, the task recorded "declined"). An
  // attempt whose update was already written (state update-written, uploaded or done: trained by an agent older
  // than the budget) is never declined. Errors of the check and of DeclineTask (the task then fails and is declined
  // again when offered again).
  absl::StatusOr<bool> DeclineOverBudget(const v1::Task& task, const TaskKey& key, const RoundShape& shape,
                                         const char* when);
  // Declines the TRAIN task for `reason` (WARNING, DeclineTask with the site's account, recorded "declined").
  absl::Status Decline(const v1::Task& task, const TaskKey& key, const std::string& reason,
                       const v1::PrivacyAccount& account);
  // Records the privacy spent by the round's training: every DP-SGD mechanism the round's fine-tunings ran
  // (train::DpSgdPhases). Under DITTO only once the personal model is trained too.
  absl::Status RecordPrivacySpent(const TrainRound& round);
  // The site's PrivacyAccount into `report` and the PrivacyLine into the local reports in `report_dirs`.
  absl::Status AddPrivacy(const std::vector<std::string>& report_dirs, v1::MetricsReport* report);
  // Records the run as finished (once) and counts it.
  absl::Status FinishRun(const std::string& run_id, const std::string& how);

  v1::SiteAgentConfig config_;
  AgentOptions options_;
  // Scrubs what the site says about its failures; knows the manifest's patient and study ids.
  diagnostics::Scrubber scrubber_;
  std::unique_ptr<CoordinatorClient> client_;
  std::unique_ptr<RetryReporter> retry_reporter_;             // The client's RetryObserver.
  v1::FailureStage failure_stage_ = v1::FAILURE_STAGE_OTHER;  // Of the task WorkTask last ran.
  std::string reported_failure_;  // The last failure reported (ReportFailure): not sent twice in a row.
  std::unique_ptr<AgentDatabase> db_;
  std::unique_ptr<PrivacyBudget> budget_;
  std::string declined_reason_;  // Set when the current task was declined (RunTask records it).
  train::SiteData site_;
  v1::HelloRequest hello_;
  absl::Duration heartbeat_period_;
  int finished_runs_ = 0;
  std::unique_ptr<SiteMetrics> own_metrics_;  // When AgentOptions.metrics is null.
  SiteMetrics* metrics_ = nullptr;            // Never null once created.
  std::unique_ptr<metrics::MetricsServer> metrics_server_;
};

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_AGENT_FEDERATED_AGENT_H_
