#include "site_agent/agent/failure_report.h"

#include <algorithm>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "site_agent/agent/heartbeater.h"

namespace fedtune::agent {

diagnostics::SiteIdentifiers SiteIdentifiersOf(const data::Manifest& manifest) {
  diagnostics::SiteIdentifiers ids;
  absl::flat_hash_set<std::string> studies;
  for (const data::Patient& patient : manifest.patients()) ids.patients.push_back(patient.patient_id);
  for (const data::Study& study : manifest.studies()) {
    studies.insert(study.study_id);
    const size_t slash = study.study_id.rfind('/');
    if (slash != std::string::npos) studies.insert(study.study_id.substr(slash + 1));
  }
  ids.studies.assign(studies.begin(), studies.end());
  std::sort(ids.studies.begin(), ids.studies.end());
  return ids;
}

diagnostics::SiteIdentifiers SiteIdentifiersOf(const data::Manifest& manifest, const std::string& data_root,
                                               const std::vector<std::string>& folders) {
  diagnostics::SiteIdentifiers ids = SiteIdentifiersOf(manifest);
  std::error_code error;
  for (const std::string& folder : folders) {
    if (folder.empty()) continue;
    ids.paths.push_back(folder);
    const std::filesystem::path absolute = std::filesystem::absolute(folder, error);
    if (!error) ids.paths.push_back(absolute.lexically_normal().string());
  }
  for (const data::ManifestEntry& entry : manifest.entries()) {
    if (ids.paths.size() + 2 > diagnostics::kMaxSitePaths) break;
    ids.paths.push_back(entry.path);
    ids.paths.push_back(data::ResolveImagePath(data_root, entry.path));
  }
  return ids;
}

v1::FailureStage StageOf(absl::string_view heartbeat_state, const absl::Status& error) {
  const absl::string_view message = error.message();
  if (absl::StrContains(message, "DownloadModel") || absl::StrContains(message, "download of model")) {
    return v1::FAILURE_STAGE_DOWNLOAD;
  }
  if (absl::StrContains(message, "UploadUpdate") || absl::StrContains(message, "GetUploadOffset") ||
      absl::StrContains(message, "ReportMetrics")) {
    return v1::FAILURE_STAGE_UPLOAD;
  }
  if (absl::StartsWith(heartbeat_state, "downloading")) return v1::FAILURE_STAGE_DOWNLOAD;
  if (absl::StartsWith(heartbeat_state, "training")) return v1::FAILURE_STAGE_TRAINING;
  if (absl::StartsWith(heartbeat_state, "evaluating") || absl::StartsWith(heartbeat_state, "cross-site evaluation")) {
    return v1::FAILURE_STAGE_EVALUATION;
  }
  for (const char* upload : {"encoding", "uploading", "sharing", "reporting"}) {
    if (absl::StartsWith(heartbeat_state, upload)) return v1::FAILURE_STAGE_UPLOAD;
  }
  return v1::FAILURE_STAGE_OTHER;
}

absl::Status SiteDataError(const absl::Status& error) {
  const absl::StatusCode code = error.code();
  if (code == absl::StatusCode::kOk || code == absl::StatusCode::kResourceExhausted ||
      code == absl::StatusCode::kInternal || code == absl::StatusCode::kCancelled ||
      code == absl::StatusCode::kDataLoss || !absl::StartsWith(error.message(), "image '")) {
    return error;
  }
  return absl::DataLossError(absl::StrCat("the site's images cannot be read: ", error.message()));
}

std::string StageName(v1::FailureStage stage) {
  const std::string& name = v1::FailureStage_Name(stage);
  return absl::StartsWith(name, "FAILURE_STAGE_") ? name.substr(14) : name;
}

v1::FailureReport MakeFailureReport(const v1::Task& task, v1::FailureStage stage, const absl::Status& error,
                                    const diagnostics::Scrubber& scrubber, bool share_diagnostics,
                                    const std::vector<std::string>& log_lines, absl::Time now) {
  v1::FailureReport report;
  report.set_run_id(task.run_id());
  report.set_round(task.kind() == v1::Task::TRAIN ? task.round() : 0);
  report.set_attempt(task.attempt());
  report.set_task_kind(task.kind());
  report.set_stage(stage);
  std::string error_class = absl::StatusCodeToString(error.code());
  if (error_class.size() > kMaxErrorClassBytes) error_class.resize(kMaxErrorClassBytes);
  report.set_error_class(error_class);
  report.set_status_code(static_cast<int32_t>(error.code()));
  report.set_message(scrubber.Scrub(error.message(), kMaxFailureMessageBytes));
  if (share_diagnostics) {
    const size_t first = log_lines.size() > static_cast<size_t>(kMaxFailureLogLines)
                             ? log_lines.size() - static_cast<size_t>(kMaxFailureLogLines)
                             : 0;
    for (size_t i = first; i < log_lines.size(); ++i) {
      report.add_log_lines(scrubber.Scrub(log_lines[i], kMaxFailureLogLineBytes));
    }
  }
  report.set_failed_ms(absl::ToUnixMillis(now));
  report.set_will_retry(IsRetryable(error));
  return report;
}

std::string FailureReportKey(const v1::FailureReport& report) {
  absl::string_view message = report.message();
  // Backoff's " (gave up after N attempts in D)": the count and the time vary from one failure to the next.
  const size_t at = message.rfind(" (gave up after ");
  if (at != absl::string_view::npos && absl::EndsWith(message, ")") &&
      absl::StrContains(message.substr(at), " attempts in ")) {
    message = message.substr(0, at);
  }
  return absl::StrCat(report.run_id(), "\n", report.task_kind(), "\n", report.round(), "\n", report.attempt(), "\n",
                      report.stage(), "\n", report.status_code(), "\n", message);
}

namespace {

bool Unreachable(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnavailable || status.code() == absl::StatusCode::kDeadlineExceeded;
}

absl::string_view CallLabel(absl::string_view call) {
  if (call == "Hello") return "hello";
  if (call == "DownloadModel") return "download";
  if (call == "UploadUpdate" || call == "GetUploadOffset") return "upload";
  if (call == "ReportMetrics") return "metrics report";
  if (call == "DeclineTask") return "decline";
  if (call == "GetTask") return "task poll";
  if (absl::StartsWith(call, "SecAgg")) return "secure aggregation";
  return call;
}

}  // namespace

std::string RetryReason(absl::string_view call, const absl::Status& error, const diagnostics::Scrubber& scrubber) {
  return scrubber.Scrub(
      absl::StrCat(CallLabel(call), ": ", absl::StatusCodeToString(error.code()), ": ", error.message()),
      kMaxStateReasonBytes);
}

RetryReporter::RetryReporter(CoordinatorClient* client, const diagnostics::Scrubber* scrubber,
                             absl::Duration idle_timeout)
    : client_(client), scrubber_(scrubber), idle_timeout_(idle_timeout) {}

void RetryReporter::Attach(Heartbeater* heartbeat) {
  absl::MutexLock lock(&mu_);
  heartbeat_ = heartbeat;
}

void RetryReporter::OnRetry(absl::string_view call, const absl::Status& error, absl::Duration /*delay*/) {
  std::string reason = RetryReason(call, error, *scrubber_);
  {
    absl::MutexLock lock(&mu_);
    retrying_.emplace(std::this_thread::get_id(), std::string(call));
    if (heartbeat_ != nullptr) {
      heartbeat_->SetRetrying(std::move(reason));
      return;
    }
    if (idle_unreachable_) return;
  }
  // No task: a heartbeat of its own, without a run (the coordinator keeps the state of an approved site).
  v1::HeartbeatRequest request;
  request.set_state(absl::StrCat("retrying: ", reason));
  const absl::Status sent = client_->Heartbeat(request, idle_timeout_).status();
  absl::MutexLock lock(&mu_);
  idle_retrying_sent_ = idle_retrying_sent_ || sent.ok();
  idle_unreachable_ = idle_unreachable_ || Unreachable(sent);
}

void RetryReporter::OnRetryEnd(absl::string_view call) {
  {
    absl::MutexLock lock(&mu_);
    retrying_.erase(std::make_pair(std::this_thread::get_id(), std::string(call)));
    if (!retrying_.empty()) return;  // Another call is still retried: its "retrying" stays.
    idle_unreachable_ = false;
    if (heartbeat_ != nullptr) {
      heartbeat_->ClearRetrying();
      return;
    }
    if (!idle_retrying_sent_) return;
    idle_retrying_sent_ = false;
  }
  v1::HeartbeatRequest request;
  request.set_state("idle");
  // Best effort: a failure leaves the "retrying" state until the next heartbeat, which the next task sends.
  (void)client_->Heartbeat(request, idle_timeout_);
}

}  // namespace fedtune::agent
