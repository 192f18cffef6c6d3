#include "site_agent/agent/site_metrics.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "prometheus/text_serializer.h"

namespace fedtune::agent {
namespace {

// The coordinator calls the agent retries (coordinator_client.h, the task loop) and the task kinds and results: their
// series exist from the start at 0, so that dashboards and increase() see them before the first retry or task.
constexpr const char* kRetriedRpcs[] = {"Hello",
                                        "GetTask",
                                        "DownloadModel",
                                        "UploadUpdate",
                                        "ReportMetrics",
                                        "DeclineTask",
                                        "ReportFailure",
                                        "SecAggAdvertiseKeys",
                                        "SecAggGetRoster",
                                        "SecAggShareKeys",
                                        "SecAggGetInbox",
                                        "SecAggGetUnmaskRequest",
                                        "SecAggRevealShares"};
constexpr const char* kTaskKinds[] = {"train", "evaluate", "cross_evaluate"};
constexpr const char* kTaskResults[] = {"ok", "failed", "declined", "cancelled"};

constexpr SiteState kAllStates[kNumSiteStates] = {
    SiteState::kIdle,       SiteState::kHello,     SiteState::kDownloading,       SiteState::kTraining,
    SiteState::kEvaluating, SiteState::kUploading, SiteState::kSecureAggregation, SiteState::kRetrying};

// Epochs of tiny test models take well under a second, of a DenseNet-121 on a hospital's CPU hours.
const prometheus::Histogram::BucketBoundaries& EpochBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{0.1, 0.5, 1,   2,    5,    10,   30,   60,
                                                                           120, 300, 600, 1800, 3600, 7200, 14400};
  return *buckets;
}

}  // namespace

const char* SiteStateName(SiteState state) {
  switch (state) {
    case SiteState::kIdle:
      return "idle";
    case SiteState::kHello:
      return "hello";
    case SiteState::kDownloading:
      return "downloading";
    case SiteState::kTraining:
      return "training";
    case SiteState::kEvaluating:
      return "evaluating";
    case SiteState::kUploading:
      return "uploading";
    case SiteState::kSecureAggregation:
      return "secure_aggregation";
    case SiteState::kRetrying:
      return "retrying";
  }
  return "idle";
}

std::optional<SiteState> SiteStateOfHeartbeat(absl::string_view state) {
  if (absl::StartsWith(state, "download")) return SiteState::kDownloading;
  // "training", "training member 1/3, epoch 2/5", "training the local-only baseline"; encoding follows training.
  if (absl::StartsWith(state, "training") || absl::StartsWith(state, "encoding")) return SiteState::kTraining;
  if (absl::StartsWith(state, "secure aggregation")) return SiteState::kSecureAggregation;
  if (absl::StartsWith(state, "evaluating") || absl::StartsWith(state, "reporting") ||
      absl::StartsWith(state, "cross-site evaluation")) {
    return SiteState::kEvaluating;
  }
  if (absl::StartsWith(state, "uploading") || absl::StartsWith(state, "sharing")) return SiteState::kUploading;
  if (absl::StartsWith(state, "retrying")) return SiteState::kRetrying;
  if (state == "done" || state == "declined" || state == "cancelled" || absl::StartsWith(state, "failed")) {
    return SiteState::kIdle;
  }
  return std::nullopt;
}

SiteMetrics::SiteMetrics() : registry_(std::make_shared<prometheus::Registry>()) {
  prometheus::Registry& r = *registry_;
  state_family_ = &prometheus::BuildGauge()
                       .Name("fedtune_site_state")
                       .Help("1 for the site agent's current state, 0 for the others.")
                       .Register(r);
  for (int i = 0; i < kNumSiteStates; ++i) {
    state_gauges_[i] = &state_family_->Add({{"state", SiteStateName(kAllStates[i])}});
  }
  round_ = &prometheus::BuildGauge()
                .Name("fedtune_site_round")
                .Help("Round of the current task (0 when idle or in a final evaluation).")
                .Register(r)
                .Add({});
  progress_ = &prometheus::BuildGauge()
                   .Name("fedtune_site_training_progress_ratio")
                   .Help("Progress within the current task, 0 to 1.")
                   .Register(r)
                   .Add({});
  epoch_seconds_ = &prometheus::BuildHistogram()
                        .Name("fedtune_site_epoch_seconds")
                        .Help("Wall time of each training epoch in seconds (validation included).")
                        .Register(r)
                        .Add({}, EpochBuckets());
  images_per_second_ = &prometheus::BuildGauge()
                            .Name("fedtune_site_training_images_per_second")
                            .Help("Training throughput of the last epoch in images per second.")
                            .Register(r)
                            .Add({});
  downloaded_bytes_ = &prometheus::BuildCounter()
                           .Name("fedtune_site_downloaded_bytes_total")
                           .Help("Model bytes received from the coordinator.")
                           .Register(r)
                           .Add({});
  uploaded_bytes_ = &prometheus::BuildCounter()
                         .Name("fedtune_site_uploaded_bytes_total")
                         .Help("Update and adapted-model bytes sent to the coordinator.")
                         .Register(r)
                         .Add({});
  retries_ = &prometheus::BuildCounter()
                  .Name("fedtune_site_rpc_retries_total")
                  .Help("Retried coordinator calls by RPC name.")
                  .Register(r);
  tasks_ = &prometheus::BuildCounter()
                .Name("fedtune_site_tasks_total")
                .Help(
                    "Tasks ended by kind (train, evaluate, cross_evaluate) and result (ok, failed, declined, "
                    "cancelled).")
                .Register(r);
  for (const char* rpc : kRetriedRpcs) retries_->Add({{"rpc", rpc}});
  for (const char* kind : kTaskKinds) {
    for (const char* result : kTaskResults) tasks_->Add({{"kind", kind}, {"result", result}});
  }
  errors_ = &prometheus::BuildCounter()
                 .Name("fedtune_site_errors_total")
                 .Help("Failed tasks by error class (status code name).")
                 .Register(r);
  last_error_ = &prometheus::BuildGauge()
                     .Name("fedtune_site_last_error")
                     .Help("1 for the error class of the latest failed task, 0 for classes seen before it.")
                     .Register(r);
  epsilon_spent_family_ = &prometheus::BuildGauge()
                               .Name("fedtune_site_privacy_epsilon_spent")
                               .Help("Differential privacy epsilon this site's training has spent (all runs).")
                               .Register(r);
  epsilon_budget_family_ = &prometheus::BuildGauge()
                                .Name("fedtune_site_privacy_epsilon_budget")
                                .Help("The site's privacy budget (SiteAgentConfig.max_epsilon).")
                                .Register(r);
  absl::MutexLock lock(&mu_);
  PublishStateLocked();
}

void SiteMetrics::PublishStateLocked() {
  const SiteState shown = retry_waits_ > 0 ? SiteState::kRetrying : state_;
  for (int i = 0; i < kNumSiteStates; ++i) state_gauges_[i]->Set(kAllStates[i] == shown ? 1 : 0);
}

void SiteMetrics::SetState(SiteState state) {
  absl::MutexLock lock(&mu_);
  state_ = state;
  PublishStateLocked();
}

void SiteMetrics::SetTaskState(absl::string_view heartbeat_state, double progress) {
  if (const std::optional<SiteState> state = SiteStateOfHeartbeat(heartbeat_state)) SetState(*state);
  SetProgress(progress);
}

void SiteMetrics::SetRound(int round) { round_->Set(round); }

void SiteMetrics::SetProgress(double ratio) {
  if (std::isnan(ratio)) return;
  progress_->Set(std::clamp(ratio, 0.0, 1.0));
}

void SiteMetrics::ObserveEpoch(double seconds, double images_per_second) {
  if (std::isfinite(seconds) && seconds >= 0) epoch_seconds_->Observe(seconds);
  if (std::isfinite(images_per_second) && images_per_second >= 0) images_per_second_->Set(images_per_second);
}

void SiteMetrics::AddDownloadedBytes(int64_t bytes) {
  if (bytes > 0) downloaded_bytes_->Increment(static_cast<double>(bytes));
}

void SiteMetrics::AddUploadedBytes(int64_t bytes) {
  if (bytes > 0) uploaded_bytes_->Increment(static_cast<double>(bytes));
}

void SiteMetrics::CountRetry(absl::string_view rpc) { retries_->Add({{"rpc", std::string(rpc)}}).Increment(); }

void SiteMetrics::RetryWaitStarted() {
  absl::MutexLock lock(&mu_);
  ++retry_waits_;
  PublishStateLocked();
}

void SiteMetrics::RetryWaitEnded() {
  absl::MutexLock lock(&mu_);
  retry_waits_ = std::max(0, retry_waits_ - 1);
  PublishStateLocked();
}

void SiteMetrics::TaskEnded(absl::string_view kind, absl::string_view result, const absl::Status& error) {
  if (!kind.empty()) tasks_->Add({{"kind", std::string(kind)}, {"result", std::string(result)}}).Increment();
  if (error.ok() || result != "failed") return;
  const std::string error_class = absl::StatusCodeToString(error.code());
  errors_->Add({{"class", error_class}}).Increment();
  absl::MutexLock lock(&mu_);
  auto [it, added] = last_error_gauges_.emplace(error_class, nullptr);
  if (added) it->second = &last_error_->Add({{"class", error_class}});
  for (const auto& [name, gauge] : last_error_gauges_) gauge->Set(name == error_class ? 1 : 0);
}

void SiteMetrics::SetPrivacy(bool accounts_dp, double epsilon_spent, double max_epsilon) {
  absl::MutexLock lock(&mu_);
  if (accounts_dp) {
    if (epsilon_spent_ == nullptr) epsilon_spent_ = &epsilon_spent_family_->Add({});
    epsilon_spent_->Set(epsilon_spent);
  }
  if (max_epsilon > 0) {
    if (epsilon_budget_ == nullptr) epsilon_budget_ = &epsilon_budget_family_->Add({});
    epsilon_budget_->Set(max_epsilon);
  }
}

std::string SiteMetrics::Scrape() const {
  const std::vector<prometheus::MetricFamily> families = registry_->Collect();
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

std::function<void(absl::Duration)> RetrySleep(SiteMetrics* metrics, std::string rpc,
                                               std::function<void(absl::Duration)> sleep) {
  if (!sleep) sleep = [](absl::Duration d) { absl::SleepFor(d); };
  if (metrics == nullptr) return sleep;
  return [metrics, rpc = std::move(rpc), sleep = std::move(sleep)](absl::Duration d) {
    if (!rpc.empty()) metrics->CountRetry(rpc);
    metrics->RetryWaitStarted();
    sleep(d);
    metrics->RetryWaitEnded();
  };
}

}  // namespace fedtune::agent
