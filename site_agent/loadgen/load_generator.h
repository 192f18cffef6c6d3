// fedtune-loadgen's engine: N simulated site agents against a real coordinator, over the site agent's own
// CoordinatorClient (site_agent/agent/coordinator_client.h: mTLS channel, deadlines, retries, resumable transfers)
// and Heartbeater, so the coordinator sees exactly the protocol of `fedtune-site run`, without the training.
//
// Each simulated site (one thread, its own certificate and channel; see site_credentials.h):
//   1. Hello until approved (a pending site asks again with backoff: the operator approves it, or the coordinator
//      has auto_approve). Once every site is approved the generator is "ready" (ready_file, AwaitReady).
//   2. GetTask long-polls. The first TRAIN task's run is the site's run; the site is done when it took part in
//      `rounds` TRAIN rounds (rounds > 0), sent its final evaluation, or learnt that the run ended (Task.ended_runs).
//   3. TRAIN (round r, attempt a), by RoleInRound:
//        drop out  take the task and go silent for that attempt (no download, heartbeat or upload; GetTask is asked
//                  again every second until another task comes);
//        upload    heartbeats start; DownloadModel of the round's model (into the site's own download directory; the
//                  file is removed once downloaded and hashed); `train_seconds` of simulated training (plus
//                  straggler_delay_seconds for a straggler), stopping early on a heartbeat cancel; GetUploadOffset +
//                  UploadUpdate of the shared payload of the site's variant (delta_payloads.h) with num_samples =
//                  SiteNumSamples(i); ReportMetrics kind "round" (losses only, no test split).
//      An upload refused because the round is no longer open (FAILED_PRECONDITION) and a task cancelled by the
//      coordinator are counted, not errors.
//   4. EVALUATE: DownloadModel of the base and the final model, ReportMetrics kind "final" (no test split).
// A site fails on an error the client does not retry (UNAUTHENTICATED, PERMISSION_DENIED, a refused payload,
// local I/O) or when its run is aborted or failed (a heartbeat answering cancel with run_ended and a state other than
// "completed"); the first failure stops every site. Transient errors (UNAVAILABLE, DEADLINE_EXCEEDED,
// RESOURCE_EXHAUSTED from a coordinator over a limit) are retried by the client; when it gives up, the site
// backs off and works the task again when the coordinator offers it again, as the agent's loop does.
//
// Memory: the generator holds no model: the payload files are shared (one per variant), downloads go to disk and are
// removed, and each site keeps one channel and one thread (plus its heartbeat thread while a task runs).
//
// Thread safety: Create, Run once; Stop and AwaitReady from any thread.
#ifndef FEDTUNE_SITE_AGENT_LOADGEN_LOAD_GENERATOR_H_
#define FEDTUNE_SITE_AGENT_LOADGEN_LOAD_GENERATOR_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/fl/encoding.h"
#include "fedtune/v1/federation.pb.h"
#include "site_agent/loadgen/delta_payloads.h"
#include "site_agent/loadgen/loadgen_options.h"

namespace fedtune::loadgen {

// What the sites did in one attempt of one round.
struct RoundStats {
  int round = 0;
  int attempt = 0;
  int tasks = 0;       // Sites that took the TRAIN task.
  int dropped = 0;     // Sites that dropped out.
  int stragglers = 0;  // Sites that uploaded late on purpose.
  int uploads = 0;     // Uploads the coordinator accepted.
  int refused = 0;     // Uploads refused because the round was no longer open.
  int cancelled = 0;   // Tasks the coordinator cancelled (heartbeat).
  int64_t bytes_down = 0;
  int64_t bytes_up = 0;
  absl::Time first_task = absl::InfiniteFuture();  // The first site took the task.
  absl::Time last_upload = absl::InfinitePast();   // The last accepted upload.
  double upload_seconds = 0;  // Sum over accepted uploads of GetUploadOffset + UploadUpdate wall time.
  int64_t upload_bytes = 0;   // Their payload bytes.
};

struct LoadReport {
  absl::Status status;  // OK when every site finished its work; the first failure or the timeout otherwise.
  int sites = 0;
  std::string run_id;              // The run the sites took part in ("" when none got a task).
  std::string encoding;            // Of the payloads sent ("" before any upload).
  int64_t payload_bytes = 0;       // Of one upload (variant 1's file; variant 0's when there is one variant).
  std::vector<RoundStats> rounds;  // By (round, attempt).
  int evaluations = 0;             // Final reports sent.
  int retried_tasks = 0;           // Tasks worked again after a transient error the client gave up on.
  int64_t evaluation_bytes_down = 0;
  int64_t bytes_down = 0;  // Every transfer together.
  int64_t bytes_up = 0;
  absl::Duration setup;  // Credentials and channels.
  absl::Duration ready;  // From the start of Run until every site was approved.
  absl::Duration wall;   // The whole Run.
  // Payload of each variant (for checks of the aggregated model).
  std::vector<DeltaPayload> payloads;
};

// The report as text: one line per (round, attempt) with tasks, uploads, dropped, stragglers, refused, cancelled,
// MB down and up, wall time (first task to last accepted upload) and the mean upload rate, then the evaluation and
// the totals.
std::string FormatReport(const LoadReport& report, const LoadgenOptions& options);

class LoadGenerator {
 public:
  // Validates `options` (ValidateLoadgenOptions), prepares the sites' credentials (EnsureSiteCredentials: enrols
  // the missing ones when options.ca_dir is set) and their clients, and the work directory. Nothing is connected yet.
  static absl::StatusOr<std::unique_ptr<LoadGenerator>> Create(const LoadgenOptions& options);
  // Stops the sites (if Run is still going) and removes a temporary work directory.
  ~LoadGenerator();

  // Runs every site until all are done, one fails, Stop is called or options.timeout_seconds pass
  // (DEADLINE_EXCEEDED listing sites that had not finished). Returns the report (its status says which).
  LoadReport Run();

  // Asks every site to stop at its next step (a long-poll in progress ends first). Idempotent.
  void Stop();
  // True once every site is approved; false when `timeout` passed first or the generator stopped.
  bool AwaitReady(absl::Duration timeout);

 private:
  struct Site;
  explicit LoadGenerator(LoadgenOptions options);

  void SiteMain(Site& site);
  absl::Status RunSite(Site& site);
  absl::Status SayHello(Site& site);
  // again: the same attempt after a transient failure (not counted again in the round's tasks).
  absl::Status RunTrain(Site& site, const v1::Task& task, bool again);
  // True (logged, counted) when a task that failed with `status` is to be worked again: a retryable code
  // (agent::IsRetryable) the client gave up on, and no Stop.
  bool RetryTask(const Site& site, const absl::Status& status);
  absl::Status RunEvaluate(Site& site, const v1::Task& task);
  absl::StatusOr<std::string> Download(Site& site, const std::string& digest, int64_t bytes, int64_t* moved,
                                       const std::function<bool()>& cancelled);
  // After a heartbeat cancel: OK when the run did not end, or ended completed (then the site's work is over);
  // FailedPrecondition naming the run and the coordinator's reason when it was aborted or failed.
  absl::Status RunEndedStatus(Site& site, bool run_ended, const std::string& reason);
  // Waits `d` unless Stop is called first (then returns false).
  bool Wait(absl::Duration d);
  RoundStats& StatsLocked(int round, int attempt) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Fail(const Site& site, const absl::Status& status);

  const LoadgenOptions options_;
  std::string work_dir_;
  bool remove_work_dir_ = false;
  std::unique_ptr<DeltaPayloads> payloads_;
  std::vector<std::unique_ptr<Site>> sites_;
  absl::Notification stop_;
  absl::Duration setup_;

  absl::Mutex mu_;
  int approved_ ABSL_GUARDED_BY(mu_) = 0;
  int finished_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<int, int>, RoundStats> rounds_ ABSL_GUARDED_BY(mu_);
  std::string run_id_ ABSL_GUARDED_BY(mu_);
  std::string encoding_ ABSL_GUARDED_BY(mu_);
  std::optional<fl::Encoding> used_encoding_ ABSL_GUARDED_BY(mu_);  // Of the first upload.
  double used_topk_ ABSL_GUARDED_BY(mu_) = 0;
  int evaluations_ ABSL_GUARDED_BY(mu_) = 0;
  int retried_tasks_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t evaluation_bytes_down_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time ready_at_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
};

}  // namespace fedtune::loadgen

#endif  // FEDTUNE_SITE_AGENT_LOADGEN_LOAD_GENERATOR_H_
