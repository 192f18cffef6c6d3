// The heartbeat's view of a fine-tuning in progress, pushed by the pipeline as it trains (a train::FinetuneObserver
// attached to the TRAIN task's train::RunFinetune): state "training member K/N, epoch E/M" (K: the network now
// training, in training order; E: its epoch in progress), the fraction of the N * M epochs done (resumed epochs
// included; early stopping makes it a lower bound) and the latest epoch's training loss. Before any epoch: member
// 1, epoch 1, fraction 0. With PublishTo, each new epoch also goes to the site's metrics (site_metrics.h).
//
// Thread safety: thread-safe; the pipeline's thread reports while the heartbeat thread reads.
#ifndef FEDTUNE_SITE_AGENT_AGENT_TRAINING_PROGRESS_H_
#define FEDTUNE_SITE_AGENT_AGENT_TRAINING_PROGRESS_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "common/train/finetune_pipeline.h"

namespace fedtune::agent {

class SiteMetrics;  // site_metrics.h

class TrainingProgress : public train::FinetuneObserver {
 public:
  // `networks` trained one after the other, `epochs_per_network` epochs each at most (values below 1 count as 1).
  TrainingProgress(int networks, int epochs_per_network);

  absl::Status OnResume(const std::string& network, const std::vector<train::EpochRecord>& history) override;
  absl::Status OnEpoch(const std::string& network, const train::EpochRecord& record) override;

  struct View {
    std::string state;
    double fraction = 0;
    double train_loss = 0;  // The latest epoch's mean training BCE (0 before the first epoch).
  };
  View Describe() const;

  // From now on each new epoch (OnEpoch; not resumed ones) goes to `metrics` (nullable, not owned; must outlive this
  // object): its wall time and training throughput (SiteMetrics::ObserveEpoch), and the task's progress
  // fraction_from + fraction_span x Describe().fraction (the heartbeat's mapping of this fine-tuning into the task).
  void PublishTo(SiteMetrics* metrics, double fraction_from, double fraction_span);

 private:
  // Records that `network` has completed `epochs` epochs (counts never go down).
  void Count(const std::string& network, int64_t epochs, double train_loss);

  const int networks_;
  const int epochs_per_network_;
  mutable absl::Mutex mu_;
  std::vector<std::pair<std::string, int64_t>> done_ ABSL_GUARDED_BY(mu_);  // Epochs per network, in training order.
  double train_loss_ ABSL_GUARDED_BY(mu_) = 0;
  SiteMetrics* metrics_ ABSL_GUARDED_BY(mu_) = nullptr;
  double fraction_from_ ABSL_GUARDED_BY(mu_) = 0;
  double fraction_span_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_AGENT_TRAINING_PROGRESS_H_
