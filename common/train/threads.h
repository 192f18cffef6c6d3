// LibTorch's intra-op thread count. It is process-wide state, so library code (the trainer, the fine-tuning
// pipeline) never sets it: a program's entry point (a command, the agent's `run`) does, once, with these.
#ifndef FEDTUNE_COMMON_TRAIN_THREADS_H_
#define FEDTUNE_COMMON_TRAIN_THREADS_H_

namespace fedtune::train {

// The thread count a configured value means: `configured` when > 0, else every core (std::thread's
// hardware_concurrency, at least 1). The value FinetuneConfig.threads documents.
int EffectiveThreads(int configured);

// Sets LibTorch's intra-op thread count for the whole process to EffectiveThreads(configured) and returns it. Call
// from one thread before training starts (torch::set_num_threads is not meant to race with running operators).
int SetIntraOpThreads(int configured);

}  // namespace fedtune::train

#endif  // FEDTUNE_COMMON_TRAIN_THREADS_H_
