#include "coordinator/task_waiters.h"

#include <algorithm>
#include <utility>

#include "absl/time/clock.h"

namespace fedtune::coordinator {

TaskWaiters::TaskWaiters(RoundManager* rounds, TaskWaiterOptions options)
    : rounds_(rounds), options_(options), thread_([this] { Loop(); }) {}

TaskWaiters::~TaskWaiters() { Shutdown(); }

void TaskWaiters::Add(Waiter waiter) {
  {
    absl::MutexLock lock(&mu_);
    if (!shutdown_) {
      incoming_.push_back(std::move(waiter));
      ++waiting_;
      return;
    }
  }
  CheckOne(waiter, absl::Now(), /*final=*/true);
}

void TaskWaiters::Notify() {
  absl::MutexLock lock(&mu_);
  changed_ = true;
}

int TaskWaiters::waiting() {
  absl::MutexLock lock(&mu_);
  return waiting_;
}

bool TaskWaiters::CheckOne(Waiter& w, absl::Time now, bool final) {
  const bool due = final || now >= w.deadline || w.cancelled();
  if (w.poll) return w.poll(due);
  absl::StatusOr<v1::Task> task = rounds_->NextTask(w.site_id);
  if (!task.ok() || task->kind() != v1::Task::NONE || due) {
    w.answer(std::move(task));
    return true;
  }
  return false;
}

void TaskWaiters::Loop() {
  while (true) {
    std::vector<Waiter> added;
    bool changed = false;
    bool stop = false;
    {
      absl::MutexLock lock(&mu_);
      absl::Time wake = absl::Now() + options_.cancel_check;
      for (const Waiter& w : waiting_list_) wake = std::min(wake, w.deadline);
      auto ready = [this] { return changed_ || shutdown_ || !incoming_.empty(); };
      mu_.AwaitWithDeadline(absl::Condition(&ready), wake);
      added.swap(incoming_);
      changed = changed_;
      changed_ = false;
      stop = shutdown_;
    }
    if (stop) {
      // Shutdown answers what is left, after this thread ended.
      for (Waiter& w : added) waiting_list_.push_back(std::move(w));
      return;
    }
    const absl::Time now = absl::Now();
    int answered = 0;
    // Without a change, only the new calls and the ones past their deadline or cancelled are looked at; the
    // cancellation check is a flag read, NextTask is called only for those (a database read each).
    for (auto it = waiting_list_.begin(); it != waiting_list_.end();) {
      const bool look = changed || now >= it->deadline || it->cancelled();
      if (look && CheckOne(*it, now, false)) {
        it = waiting_list_.erase(it);
        ++answered;
      } else {
        ++it;
      }
    }
    for (Waiter& w : added) {
      if (CheckOne(w, now, false)) {
        ++answered;
      } else {
        waiting_list_.push_back(std::move(w));
      }
    }
    if (answered > 0) {
      absl::MutexLock lock(&mu_);
      waiting_ -= answered;
    }
  }
}

void TaskWaiters::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (shutdown_ && !thread_.joinable()) return;
    shutdown_ = true;
  }
  if (thread_.joinable()) thread_.join();
  std::vector<Waiter> added;
  {
    absl::MutexLock lock(&mu_);
    added.swap(incoming_);
  }
  for (Waiter& w : added) waiting_list_.push_back(std::move(w));
  const absl::Time now = absl::Now();
  for (Waiter& w : waiting_list_) CheckOne(w, now, /*final=*/true);
  waiting_list_.clear();
  absl::MutexLock lock(&mu_);
  waiting_ = 0;
}

}  // namespace fedtune::coordinator
