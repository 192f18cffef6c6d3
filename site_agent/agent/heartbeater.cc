#include "site_agent/agent/heartbeater.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "site_agent/agent/site_metrics.h"

namespace fedtune::agent {

Heartbeater::Heartbeater(CoordinatorClient* client, std::string run_id, int32_t round, absl::Duration period,
                         std::string state, SiteMetrics* metrics)
    : client_(client),
      run_id_(std::move(run_id)),
      round_(round),
      period_(period),
      metrics_(metrics),
      state_(std::move(state)) {
  if (metrics_ != nullptr) metrics_->SetTaskState(state_, 0);
  thread_ = std::thread([this] { Loop(); });
}

Heartbeater::~Heartbeater() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void Heartbeater::SetState(std::string state, double progress, Probe probe) {
  absl::MutexLock lock(&mu_);
  if (metrics_ != nullptr) metrics_->SetTaskState(state, progress);
  state_ = std::move(state);
  progress_ = progress;
  probe_ = std::move(probe);
  changed_ = true;
}

void Heartbeater::SetTrainLoss(double loss) {
  absl::MutexLock lock(&mu_);
  train_loss_ = loss;
}

void Heartbeater::SetRetrying(std::string reason) {
  absl::MutexLock lock(&mu_);
  retrying_ = reason.empty() ? std::string("(no reason given)") : std::move(reason);
  retry_sent_ = false;
  retry_cleared_ = false;
  changed_ = true;
}

void Heartbeater::ClearRetrying() {
  absl::MutexLock lock(&mu_);
  if (retrying_.empty()) return;
  if (!retry_sent_) {
    retry_cleared_ = true;  // Loop sends it once, then the state.
    return;
  }
  retrying_.clear();
  changed_ = true;
}

bool Heartbeater::retrying() const {
  absl::MutexLock lock(&mu_);
  return !retrying_.empty() && !retry_cleared_;
}

std::string Heartbeater::state() const {
  absl::MutexLock lock(&mu_);
  return state_;
}

bool Heartbeater::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

bool Heartbeater::run_ended() const {
  absl::MutexLock lock(&mu_);
  return run_ended_;
}

std::string Heartbeater::reason() const {
  absl::MutexLock lock(&mu_);
  return reason_;
}

void Heartbeater::Loop() {
  while (true) {
    v1::HeartbeatRequest request;
    Probe probe;
    bool last = false;
    {
      absl::MutexLock lock(&mu_);
      request.set_run_id(run_id_);
      request.set_round(round_);
      request.set_progress(progress_);
      request.set_train_loss(train_loss_);
      changed_ = false;
      if (retrying_.empty()) {
        request.set_state(state_);
        probe = probe_;
      } else {
        request.set_state(absl::StrCat("retrying: ", retrying_));
        retry_sent_ = true;
        if (retry_cleared_) {
          // The retry ended before this heartbeat: the state follows at once.
          retrying_.clear();
          retry_cleared_ = false;
          changed_ = true;
        }
      }
      last = stop_ && !changed_;
    }
    if (probe) {
      double progress = request.progress();
      double train_loss = request.train_loss();
      probe(request.mutable_state(), &progress, &train_loss);
      request.set_progress(progress);
      request.set_train_loss(train_loss);
    }
    absl::StatusOr<v1::HeartbeatResponse> response = client_->Heartbeat(request);
    if (!response.ok()) {
      LOG(WARNING) << "heartbeat (" << request.state() << "): " << response.status();
    } else if (response->cancel()) {
      absl::MutexLock lock(&mu_);
      if (!cancelled_) {
        LOG(WARNING) << "the coordinator cancelled the task of run " << run_id_ << " round " << round_ << ": "
                     << response->reason();
      }
      cancelled_ = true;
      run_ended_ = run_ended_ || response->run_ended();
      reason_ = response->reason();
    }
    if (last) return;
    absl::MutexLock lock(&mu_);
    auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || changed_; };
    mu_.AwaitWithTimeout(absl::Condition(&wake), period_);
    if (stop_ && !changed_) return;
  }
}

}  // namespace fedtune::agent
