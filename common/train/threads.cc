#include "common/train/threads.h"

#include <torch/torch.h>

#include <algorithm>
#include <thread>

namespace fedtune::train {

int EffectiveThreads(int configured) {
  if (configured > 0) return configured;
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

int SetIntraOpThreads(int configured) {
  const int threads = EffectiveThreads(configured);
  torch::set_num_threads(threads);
  return threads;
}

}  // namespace fedtune::train
