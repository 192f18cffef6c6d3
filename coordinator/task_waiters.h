// GetTask long-polls (and secure aggregation's phase long-polls, Waiter::poll) without a thread each. SiteService's
// callback handler registers a waiting call here; one thread answers them all: a call is answered with the site's task
// as soon as there is one (RoundManager reports every change through its task listener), with an empty task (kind NONE)
// at its deadline, and at once when the call is cancelled or the coordinator shuts down. So thousands of sites can wait
// for work at the cost of one thread and a small record each.
//
// Thread safety: thread-safe. The answering thread calls RoundManager::NextTask without holding the waiters' lock,
// so the listener (called under RoundManager's lock) never waits for it.
#ifndef FEDTUNE_COORDINATOR_TASK_WAITERS_H_
#define FEDTUNE_COORDINATOR_TASK_WAITERS_H_

#include <functional>
#include <list>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/round_manager.h"
#include "fedtune/v1/federation.pb.h"

namespace fedtune::coordinator {

struct TaskWaiterOptions {
  // How often waiting calls are checked for cancellation (a site that hung up). Default 500 ms.
  absl::Duration cancel_check = absl::Milliseconds(500);
};

class TaskWaiters {
 public:
  struct Waiter {
    std::string site_id;
    absl::Time deadline;              // Answered with an empty task (kind NONE) from then on.
    std::function<bool()> cancelled;  // The call was cancelled: answer it now. Required.
    // Answers the call (called exactly once, on the answering thread or in Shutdown): the site's task (kind NONE
    // at the deadline, on cancellation or shutdown) or RoundManager::NextTask's error. Required.
    std::function<void(absl::StatusOr<v1::Task>)> answer;
    // Optional: a long-poll of another kind (secure aggregation's phases, site_service.h) instead of GetTask's. When
    // set, it is called instead of NextTask and `answer`, on the answering thread, whenever the call is checked
    // (every change the task listener reports, the deadline, cancellation), with due = true at the deadline, on
    // cancellation and at shutdown; it returns true when it answered the call (it must when due).
    std::function<bool(bool due)> poll;
  };

  // Starts the answering thread. `rounds` must outlive this object; the caller installs Notify as its task
  // listener (RoundManager::SetTaskListener).
  TaskWaiters(RoundManager* rounds, TaskWaiterOptions options = {});
  // Shuts down (see Shutdown).
  ~TaskWaiters();

  // Registers a waiting call; it is first checked at once (on the answering thread). After Shutdown, answered
  // at once on the caller's thread.
  void Add(Waiter waiter);
  // Tasks may have changed: every waiting call is checked again.
  void Notify();
  // Answers every waiting call with the task now and stops the thread. Idempotent.
  void Shutdown();
  // Calls waiting now (tests, diagnostics).
  int waiting();

 private:
  void Loop();
  // Answers `w` when it is due (task, deadline, cancellation, shutdown); true when answered.
  bool CheckOne(Waiter& w, absl::Time now, bool final);

  RoundManager* const rounds_;
  const TaskWaiterOptions options_;
  absl::Mutex mu_;
  std::vector<Waiter> incoming_ ABSL_GUARDED_BY(mu_);
  bool changed_ ABSL_GUARDED_BY(mu_) = false;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  int waiting_ ABSL_GUARDED_BY(mu_) = 0;
  std::list<Waiter> waiting_list_;  // Owned by the answering thread (and Shutdown after it joined).
  std::thread thread_;
};

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_TASK_WAITERS_H_
