#include "coordinator/worker_pool.h"

#include <atomic>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace fedtune::coordinator {
namespace {

// At most `threads` closures run at once; the others wait in order.
TEST(WorkerPoolTest, RunsAtMostItsThreadsAtOnce) {
  WorkerPool pool(2);
  std::atomic<int> running{0}, most{0}, done{0};
  absl::Notification release;
  for (int i = 0; i < 6; ++i) {
    pool.Submit([&] {
      const int now = ++running;
      int seen = most.load();
      while (now > seen && !most.compare_exchange_weak(seen, now)) {
      }
      release.WaitForNotification();
      --running;
      ++done;
    });
  }
  // Two start; the other four stay queued while the first two block.
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (running.load() < 2 && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(1));
  EXPECT_EQ(running.load(), 2);
  EXPECT_EQ(pool.pending(), 6);
  release.Notify();
  pool.Shutdown();
  EXPECT_EQ(done.load(), 6);
  EXPECT_EQ(most.load(), 2);
  EXPECT_EQ(pool.pending(), 0);
}

// Shutdown runs what is queued; a closure submitted afterwards runs on the caller's thread (a call must always be
// answered).
TEST(WorkerPoolTest, ShutdownDrainsAndLaterWorkRunsInline) {
  WorkerPool pool(1);
  std::atomic<int> done{0};
  for (int i = 0; i < 10; ++i) pool.Submit([&] { ++done; });
  pool.Shutdown();
  EXPECT_EQ(done.load(), 10);
  std::thread::id ran_on;
  pool.Submit([&] { ran_on = std::this_thread::get_id(); });
  EXPECT_EQ(ran_on, std::this_thread::get_id());
  pool.Shutdown();  // Idempotent.
}

}  // namespace
}  // namespace fedtune::coordinator
