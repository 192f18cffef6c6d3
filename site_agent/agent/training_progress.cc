#include "site_agent/agent/training_progress.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace fedtune::agent {

TrainingProgress::TrainingProgress(int networks, int epochs_per_network)
    : networks_(std::max(1, networks)), epochs_per_network_(std::max(1, epochs_per_network)) {}

absl::Status TrainingProgress::OnResume(const std::string& network, const std::vector<train::EpochRecord>& history) {
  if (!history.empty()) Count(network, static_cast<int64_t>(history.size()), history.back().train_loss);
  return absl::OkStatus();
}

absl::Status TrainingProgress::OnEpoch(const std::string& network, const train::EpochRecord& record) {
  Count(network, record.epoch + 1, record.train_loss);
  return absl::OkStatus();
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
