// A fixed number of worker threads running submitted closures in order: the coordinator's bound on concurrent
// upload decodes (CoordinatorConfig.max_concurrent_decodes). A decode (read the spool file, decode, validate,
// aggregate) takes a model's worth of memory and CPU; callback handlers hand it here instead of running it on
// gRPC's threads, so at most `threads` run at once and gRPC's threads stay free for transfers.
//
// Thread safety: thread-safe.
#ifndef FEDTUNE_COORDINATOR_WORKER_POOL_H_
#define FEDTUNE_COORDINATOR_WORKER_POOL_H_

#include <deque>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace fedtune::coordinator {

class WorkerPool {
 public:
  // Starts `threads` (at least 1) workers.
  explicit WorkerPool(int threads);
  // Shutdown().
  ~WorkerPool();

  // Queues `work`. After Shutdown began, runs it on the caller's thread (a call must always be answered).
  void Submit(std::function<void()> work);
  // Runs what is queued, then stops the workers. Idempotent.
  void Shutdown();
  // Closures queued or running (tests, diagnostics).
  int pending();

 private:
  void Loop();

  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_WORKER_POOL_H_
