#include "site_agent/agent/training_progress.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "site_agent/agent/site_metrics.h"

namespace fedtune::agent {

TrainingProgress::TrainingProgress(int networks, int epochs_per_network)
    : networks_(std::max(1, networks)), epochs_per_network_(std::max(1, epochs_per_network)) {}

absl::Status TrainingProgress::OnResume(const std::string& network, const std::vector<train::EpochRecord>& history) {
  if (!history.empty()) Count(network, static_cast<int64_t>(history.size()), history.back().train_loss);
  return absl::OkStatus();
}

absl::Status TrainingProgress::OnEpoch(const std::string& network, const train::EpochRecord& record) {
  Count(network, record.epoch + 1, record.train_loss);
  SiteMetrics* metrics = nullptr;
  double from = 0, span = 1;
  {
    absl::MutexLock lock(&mu_);
    metrics = metrics_;
    from = fraction_from_;
    span = fraction_span_;
  }
  if (metrics != nullptr) {
    // EpochRecord::images_per_second is the epoch's training images over its training time (trainer.cc).
    metrics->ObserveEpoch(record.seconds, record.images_per_second);
    metrics->SetProgress(from + span * Describe().fraction);
  }
  return absl::OkStatus();
}

void TrainingProgress::PublishTo(SiteMetrics* metrics, double fraction_from, double fraction_span) {
  absl::MutexLock lock(&mu_);
  metrics_ = metrics;
  fraction_from_ = fraction_from;
  fraction_span_ = fraction_span;
}

void TrainingProgress::Count(const std::string& network, int64_t epochs, double train_loss) {
  absl::MutexLock lock(&mu_);
  train_loss_ = train_loss;
  for (auto& [name, count] : done_) {
    if (name == network) {
      count = std::max(count, epochs);
      return;
    }
  }
  done_.emplace_back(network, epochs);
}

TrainingProgress::View TrainingProgress::Describe() const {
  absl::MutexLock lock(&mu_);
  int64_t total = 0;
  for (const auto& [name, count] : done_) total += std::min<int64_t>(count, epochs_per_network_);
  // A network that completed all its epochs is finished: the next one is training.
  int current = std::max<int>(1, static_cast<int>(done_.size()));
  int64_t epoch = done_.empty() ? 1 : done_.back().second + 1;
  if (!done_.empty() && done_.back().second >= epochs_per_network_ && current < networks_) {
    ++current;
    epoch = 1;
  }
  View view;
  view.state = absl::StrCat("training member ", current, "/", networks_, ", epoch ",
                            std::min<int64_t>(epoch, epochs_per_network_), "/", epochs_per_network_);
  view.fraction = std::min(1.0, static_cast<double>(total) / (networks_ * epochs_per_network_));
  view.train_loss = train_loss_;
  return view;
}

}  // namespace fedtune::agent
