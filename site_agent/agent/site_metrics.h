// The site agent's Prometheus metrics (SiteAgentConfig.metrics_listen_address; docs/hospital-it-guide.md,
// "Monitoring"): one prometheus::Registry holding exactly these families, which the agent's parts update through the
// small typed methods below:
//   fedtune_site_state{state}                  gauge: 1 for the current state, 0 for the others (SiteState)
//   fedtune_site_round                         gauge: round of the current task (0 when idle or a final evaluation)
//   fedtune_site_training_progress_ratio       gauge [0, 1]: progress within the current task
//   fedtune_site_epoch_seconds                 histogram: wall time of each training epoch (validation included)
//   fedtune_site_training_images_per_second    gauge: the last epoch's training throughput (validation excluded)
//   fedtune_site_downloaded_bytes_total        counter: model bytes received from the coordinator
//   fedtune_site_uploaded_bytes_total          counter: payload bytes sent to the coordinator (updates, adapted models)
//   fedtune_site_rpc_retries_total{rpc}        counter: retried coordinator calls, by RPC name ("DownloadModel", ...)
//   fedtune_site_tasks_total{kind,result}      counter: kind train|evaluate|cross_evaluate,
//                                                       result ok|failed|declined|cancelled
//   fedtune_site_errors_total{class}           counter: failed tasks by status code name ("UNAVAILABLE", ...)
//   fedtune_site_last_error{class}             gauge: 1 for the class of the latest failed task, 0 for the classes
//                                                     seen before it (no sample before the first failure)
//   fedtune_site_privacy_epsilon_spent         gauge: epsilon spent (all runs); only once the site accounts DP
//   fedtune_site_privacy_epsilon_budget        gauge: SiteAgentConfig.max_epsilon; only when set
// The series of the RPCs the agent retries and of every task kind and result exist from the start, at 0.
// The process metrics (fedtune_process_*) are added by common/metrics' MetricsServer, not here.
//
// A SiteMetrics is optional everywhere it is used: the agent's parts take a nullable SiteMetrics* (not owned), so
// that code and tests run without one.
//
// Thread safety: thread-safe (the task thread, the heartbeat thread and the scrapes of the endpoint share it).
#ifndef FEDTUNE_SITE_AGENT_AGENT_SITE_METRICS_H_
#define FEDTUNE_SITE_AGENT_AGENT_SITE_METRICS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace fedtune::agent {

// The coarse states of fedtune_site_state (the coordinator's site states use the same words).
enum class SiteState {
  kIdle,               // Waiting for a task (GetTask's long-poll), or between tasks.
  kHello,              // Saying Hello until approved.
  kDownloading,        // Downloading models.
  kTraining,           // Fine-tuning (and encoding the update).
  kEvaluating,         // Evaluating models, reporting metrics, cross-site evaluation.
  kUploading,          // Uploading an update or sharing the adapted model.
  kSecureAggregation,  // A secure aggregation phase (keys, shares, unmasking).
  kRetrying,           // Waiting in a backoff before retrying a coordinator call or the task loop.
};
inline constexpr int kNumSiteStates = 8;

// The label value: "idle", "hello", "downloading", "training", "evaluating", "uploading", "secure_aggregation",
// "retrying".
const char* SiteStateName(SiteState state);

// The coarse state of a heartbeat state text (heartbeater.h; "downloading", "training member 1/3, epoch 2/5",
// "encoding", "secure aggregation: keys", "evaluating", "reporting", "sharing", "cross-site evaluation 1/2", ...):
// kIdle for the end states ("done", "declined", "cancelled", "failed: ..."); nullopt for a text it does not know
// (the state then stays as it was).
std::optional<SiteState> SiteStateOfHeartbeat(absl::string_view state);

class SiteMetrics {
 public:
  // A new registry with every family above; state idle, round 0, progress 0.
  SiteMetrics();
  SiteMetrics(const SiteMetrics&) = delete;
  SiteMetrics& operator=(const SiteMetrics&) = delete;

  // What the endpoint serves (common/metrics/metrics_server.h).
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // The current state. While a retry wait is in progress (RetryWaitStarted) the state reads "retrying"; the state set
  // here shows again once the wait ends.
  void SetState(SiteState state);
  // A heartbeat state text and the task's progress (Heartbeater::SetState): the state per SiteStateOfHeartbeat (an
  // unknown text leaves it) and SetProgress(progress).
  void SetTaskState(absl::string_view heartbeat_state, double progress);
  // The round of the current task (0: none).
  void SetRound(int round);
  // Progress within the current task, clamped to [0, 1]; NaN is ignored.
  void SetProgress(double ratio);
  // One completed training epoch: its wall time (fedtune_site_epoch_seconds) and training throughput
  // (fedtune_site_training_images_per_second). Negative or non-finite values are ignored.
  void ObserveEpoch(double seconds, double images_per_second);
  // Transfer payload bytes (negative values are ignored).
  void AddDownloadedBytes(int64_t bytes);
  void AddUploadedBytes(int64_t bytes);
  // One retry of coordinator call `rpc` (fedtune_site_rpc_retries_total{rpc}).
  void CountRetry(absl::string_view rpc);
  // A backoff wait begins / ends: the state reads "retrying" in between (nests).
  void RetryWaitStarted();
  void RetryWaitEnded();
  // A task ended: kind "train", "evaluate" or "cross_evaluate" ("": a task of unknown kind, not counted as a task);
  // result "ok", "failed", "declined" or "cancelled". For "failed", `error`'s code name counts in
  // fedtune_site_errors_total and becomes fedtune_site_last_error's class.
  void TaskEnded(absl::string_view kind, absl::string_view result, const absl::Status& error = absl::OkStatus());
  // The site's privacy account: epsilon spent is exported once `accounts_dp` (the site has a budget or has
  // accounted DP steps); the budget when max_epsilon > 0.
  void SetPrivacy(bool accounts_dp, double epsilon_spent, double max_epsilon);

  // The registry in the text exposition format (what GET /metrics serves, without the process metrics).
  std::string Scrape() const;

 private:
  void PublishStateLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Gauge>* state_family_;
  prometheus::Gauge* state_gauges_[kNumSiteStates];
  prometheus::Gauge* round_;
  prometheus::Gauge* progress_;
  prometheus::Histogram* epoch_seconds_;
  prometheus::Gauge* images_per_second_;
  prometheus::Counter* downloaded_bytes_;
  prometheus::Counter* uploaded_bytes_;
  prometheus::Family<prometheus::Counter>* retries_;
  prometheus::Family<prometheus::Counter>* tasks_;
  prometheus::Family<prometheus::Counter>* errors_;
  prometheus::Family<prometheus::Gauge>* last_error_;
  prometheus::Family<prometheus::Gauge>* epsilon_spent_family_;
  prometheus::Family<prometheus::Gauge>* epsilon_budget_family_;

  absl::Mutex mu_;
  SiteState state_ ABSL_GUARDED_BY(mu_) = SiteState::kIdle;
  int retry_waits_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, prometheus::Gauge*> last_error_gauges_ ABSL_GUARDED_BY(mu_);
  prometheus::Gauge* epsilon_spent_ ABSL_GUARDED_BY(mu_) = nullptr;
  prometheus::Gauge* epsilon_budget_ ABSL_GUARDED_BY(mu_) = nullptr;
};

// A backoff's sleep (Backoff, coordinator_client.h) that, when `metrics` is set, shows the state "retrying" during each
// wait and, when `rpc` is not empty, counts each wait as one retry of `rpc`. `sleep` (absl::SleepFor when empty) does
// the waiting. `metrics` (nullable, not owned) must outlive the returned function.
std::function<void(absl::Duration)> RetrySleep(SiteMetrics* metrics, std::string rpc,
                                               std::function<void(absl::Duration)> sleep);

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_AGENT_SITE_METRICS_H_
