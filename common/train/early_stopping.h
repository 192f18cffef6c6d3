// Early stopping on validation loss, as in the study: stop after `patience` epochs without improvement of the best
// validation BCE, keeping the best epoch's weights.
#ifndef FEDTUNE_COMMON_TRAIN_EARLY_STOPPING_H_
#define FEDTUNE_COMMON_TRAIN_EARLY_STOPPING_H_

#include <cstdint>
#include <limits>

namespace fedtune::train {

// Value type; copyable so that it can be checkpointed and restored for resume. Not thread-safe.
class EarlyStopping {
 public:
  // patience >= 1: epochs without improvement tolerated. min_delta >= 0: an improvement must lower the best loss by
  // more than this.
  explicit EarlyStopping(int patience, double min_delta = 0.0) : patience_(patience), min_delta_(min_delta) {}

  // Records an epoch's validation loss; returns true when it is a new best (the caller keeps those weights).
  bool Update(int64_t epoch, double validation_loss) {
    if (validation_loss < best_loss_ - min_delta_) {
      best_loss_ = validation_loss;
      best_epoch_ = epoch;
      epochs_without_improvement_ = 0;
      return true;
    }
    ++epochs_without_improvement_;
    return false;
  }
  bool ShouldStop() const { return epochs_without_improvement_ >= patience_; }

  double best_loss() const { return best_loss_; }
  int64_t best_epoch() const { return best_epoch_; }  // -1 before any Update.
  int epochs_without_improvement() const { return epochs_without_improvement_; }
  // For resume: restores the counters saved from best_loss()/best_epoch()/epochs_without_improvement().
  void Restore(double best_loss, int64_t best_epoch, int epochs_without_improvement) {
    best_loss_ = best_loss;
    best_epoch_ = best_epoch;
    epochs_without_improvement_ = epochs_without_improvement;
  }

 private:
  int patience_;
  double min_delta_;
  double best_loss_ = std::numeric_limits<double>::infinity();
  int64_t best_epoch_ = -1;
  int epochs_without_improvement_ = 0;
};

}  // namespace fedtune::train

#endif  // FEDTUNE_COMMON_TRAIN_EARLY_STOPPING_H_
