// How many DP-SGD steps, at which sample rate, a site's local training takes: the one definition the trainer
// (common/train/dp_sgd.h) runs and the site's privacy budget (site_agent/agent/privacy_budget.h) accounts, so that
// what is accounted before a round is what training then does.
//
// Poisson sampling with expected batch size B over N training images: q = min(1, B / N); an epoch is
// max(1, round(1 / q)) steps (as Opacus's DPDataLoader: len(loader) batches); `epochs` epochs at most (early stopping
// may end training sooner; the accountant then records the steps actually taken).
//
// Bounds: N in [1, kMaxTrainImages], B in [1, kMaxTrainImages] (B > N gives q = 1), epochs in [1, 100000]; otherwise
// InvalidArgument naming the parameter. Pure and thread-safe.
#ifndef FEDTUNE_COMMON_PRIVACY_DP_PLAN_H_
#define FEDTUNE_COMMON_PRIVACY_DP_PLAN_H_

#include <cstdint>

#include "absl/status/statusor.h"

namespace fedtune::privacy {

inline constexpr int64_t kMaxTrainImages = int64_t{1} << 31;

struct DpSgdPlan {
  double sample_rate = 0;  // q
  int64_t steps_per_epoch = 0;
  int64_t max_steps = 0;  // epochs * steps_per_epoch
};

absl::StatusOr<DpSgdPlan> PlanDpSgd(int64_t train_images, int64_t batch_size, int64_t epochs);

}  // namespace fedtune::privacy

#endif  // FEDTUNE_COMMON_PRIVACY_DP_PLAN_H_
