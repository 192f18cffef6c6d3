// What a site says about its failures (docs/hospital-it-guide.md, "Failure reports"):
//  - the failure report of a failed task (SiteService.ReportFailure, FailureReport in federation.proto): the stage, the
//    status code and its name, the message and, with SiteAgentConfig.share_diagnostics, the agent's last log lines,
//    all scrubbed by a diagnostics::Scrubber that knows the site's own patient and study ids;
//  - the heartbeat's "retrying: REASON" while a call to the coordinator is retried (RetryReporter), so that a site
//    stuck in a retry loop does not go silent.
//
// Thread safety: the functions are reentrant; RetryReporter is thread-safe.
#ifndef FEDTUNE_SITE_AGENT_AGENT_FAILURE_REPORT_H_
#define FEDTUNE_SITE_AGENT_AGENT_FAILURE_REPORT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/data/manifest.h"
#include "common/diagnostics/scrub.h"
#include "fedtune/v1/federation.pb.h"
#include "site_agent/agent/coordinator_client.h"

namespace fedtune::agent {

class Heartbeater;

// FailureReport's bounds (federation.proto).
inline constexpr size_t kMaxFailureMessageBytes = 2048;
inline constexpr int kMaxFailureLogLines = 20;
inline constexpr size_t kMaxFailureLogLineBytes = 512;
inline constexpr size_t kMaxErrorClassBytes = 64;
// The longest reason of a "retrying: REASON" or "failed: REASON" heartbeat state.
inline constexpr size_t kMaxStateReasonBytes = 200;

// The identifiers of the site's manifest that no message may carry: every patient id, every study id (as the
// manifest has it, "<patient>/<study>", and its study part alone, e.g. "study1").
diagnostics::SiteIdentifiers SiteIdentifiersOf(const data::Manifest& manifest);
// The same, and the site's own paths (SiteIdentifiers::paths, replaced as literal text: a path with spaces or
// apostrophes goes as a whole): each of `folders` (data_root, the manifest's folder, work_dir) as given and made
// absolute, and each image path of the manifest as written and resolved against `data_root` (data::ResolveImagePath),
// up to diagnostics::kMaxSitePaths in all.
diagnostics::SiteIdentifiers SiteIdentifiersOf(const data::Manifest& manifest, const std::string& data_root,
                                               const std::vector<std::string>& folders);

// The stage of a task from the heartbeat state it was in when it failed (Heartbeater::state()): "downloading" ->
// DOWNLOAD (also loading the model), "training ..." -> TRAINING, "evaluating ..." and "cross-site evaluation ..." ->
// EVALUATION, "encoding", "uploading", "sharing" and "reporting" -> UPLOAD, anything else (secure aggregation) ->
// OTHER. An error of a transfer is the transfer's stage, whatever the state: a message naming DownloadModel (or
// "download of model") -> DOWNLOAD, UploadUpdate, GetUploadOffset or ReportMetrics -> UPLOAD.
v1::FailureStage StageOf(absl::string_view heartbeat_state, const absl::Status& error);

// A task's error for an image of the site that cannot be read (the image loader's "image 'ID': ..." errors: NOT_FOUND,
// PERMISSION_DENIED or INVALID_ARGUMENT from the decoder, in training or evaluation) as DATA_LOSS with the message
// "the site's images cannot be read: image 'ID': ...": one clear class for the operator, and never PERMISSION_DENIED,
// which the agent's loop takes for the coordinator refusing the site (it would stop). Out of memory
// (RESOURCE_EXHAUSTED), INTERNAL, CANCELLED and every other error are returned unchanged.
absl::Status SiteDataError(const absl::Status& error);

// "DOWNLOAD", "TRAINING", ...: for logs.
std::string StageName(v1::FailureStage stage);

// The report of `error` (not OK): run, round (0 for EVALUATE and CROSS_EVALUATE tasks), attempt and kind from
// `task`, the stage, error_class = the status code's name ("DATA_LOSS"), status_code, the message scrubbed and cut to
// kMaxFailureMessageBytes, with `share_diagnostics` the last kMaxFailureLogLines of `log_lines` each scrubbed and cut
// to kMaxFailureLogLineBytes (none otherwise), failed_ms = `now`, will_retry for the transient codes (IsRetryable:
// the agent takes the task again when the coordinator offers it again).
v1::FailureReport MakeFailureReport(const v1::Task& task, v1::FailureStage stage, const absl::Status& error,
                                    const diagnostics::Scrubber& scrubber, bool share_diagnostics,
                                    const std::vector<std::string>& log_lines, absl::Time now);

// What makes two failure reports the same failure (the agent reports a task that fails again the same way once):
// run, kind, round, attempt, stage, status code and message, the message without the retry's varying
// " (gave up after N attempts in D)" at its end.
std::string FailureReportKey(const v1::FailureReport& report);

// "LABEL: CODE: message" (the call's label: "hello", "download", "upload", "metrics report", "decline",
// "secure aggregation", "task poll", or the call's name), scrubbed and cut to kMaxStateReasonBytes: the REASON of the
// heartbeat state "retrying: REASON".
std::string RetryReason(absl::string_view call, const absl::Status& error, const diagnostics::Scrubber& scrubber);

// The agent's RetryObserver (CoordinatorClient::set_retry_observer): while a task runs, a retried call of the task
// sets its heartbeat's "retrying: REASON" (Heartbeater::SetRetrying, the latest reason) until the last of the calls
// being retried ends (calls are told apart by thread and name: a retried call notifies on its own thread); outside a
// task (Hello, the GetTask loop: the agent calls OnRetry / OnRetryEnd itself for GetTask) it sends one Heartbeat of
// its own (no run) per retry with that state, and one with the state "idle" once the last retried call ended after
// such a heartbeat got through. These heartbeats are single attempts with a short deadline (`idle_timeout`), sent on
// the retried call's thread; once one fails with UNAVAILABLE or DEADLINE_EXCEEDED (the coordinator is unreachable:
// each would wait out its deadline) none is sent until the retried calls ended. Their failures are not logged (the
// retried call's own warning says what is wrong).
class RetryReporter : public RetryObserver {
 public:
  // `client` (not owned) must outlive this object; `scrubber` (not owned) too.
  RetryReporter(CoordinatorClient* client, const diagnostics::Scrubber* scrubber, absl::Duration idle_timeout);

  // The heartbeat of the task now running (not owned; nullptr: none). Attach before the task's calls, detach (nullptr)
  // before the Heartbeater is destroyed.
  void Attach(Heartbeater* heartbeat);

  void OnRetry(absl::string_view call, const absl::Status& error, absl::Duration delay) override;
  void OnRetryEnd(absl::string_view call) override;

 private:
  CoordinatorClient* const client_;
  const diagnostics::Scrubber* const scrubber_;
  const absl::Duration idle_timeout_;
  absl::Mutex mu_;
  Heartbeater* heartbeat_ ABSL_GUARDED_BY(mu_) = nullptr;
  // The calls being retried: (thread, call name).
  absl::flat_hash_set<std::pair<std::thread::id, std::string>> retrying_ ABSL_GUARDED_BY(mu_);
  bool idle_retrying_sent_ ABSL_GUARDED_BY(mu_) = false;  // An idle "retrying: ..." heartbeat got through.
  bool idle_unreachable_ ABSL_GUARDED_BY(mu_) = false;    // An idle heartbeat found the coordinator unreachable.
};

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_AGENT_FAILURE_REPORT_H_
