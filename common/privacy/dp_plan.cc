#include "common/privacy/dp_plan.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace fedtune::privacy {

absl::StatusOr<DpSgdPlan> PlanDpSgd(int64_t train_images, int64_t batch_size, int64_t epochs) {
  if (train_images < 1 || train_images > kMaxTrainImages) {
    return absl::InvalidArgumentError(
        absl::StrCat("DP-SGD plan: training images ", train_images, " outside [1, ", kMaxTrainImages, "]"));
  }
  if (batch_size < 1 || batch_size > kMaxTrainImages) {
    return absl::InvalidArgumentError(
        absl::StrCat("DP-SGD plan: batch size ", batch_size, " outside [1, ", kMaxTrainImages, "]"));
  }
  if (epochs < 1 || epochs > 100000) {
    return absl::InvalidArgumentError(absl::StrCat("DP-SGD plan: epochs ", epochs, " outside [1, 100000]"));
  }
  DpSgdPlan plan;
  plan.sample_rate = std::min(1.0, static_cast<double>(batch_size) / static_cast<double>(train_images));
  plan.steps_per_epoch = std::max<int64_t>(1, std::llround(1.0 / plan.sample_rate));
  plan.max_steps = epochs * plan.steps_per_epoch;
  return plan;
}

}  // namespace fedtune::privacy
