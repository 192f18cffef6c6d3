// The heartbeat of one task of the federated agent: a thread that sends Heartbeat (run, round, state, progress,
// training loss) every period while the task runs, and records a cancel from the coordinator. While a call of the
// task is retried, the state sent is "retrying: REASON" (SetRetrying) instead.
//
// Thread safety: thread-safe; the task's thread sets the state while the heartbeat thread reads it.
#ifndef FEDTUNE_SITE_AGENT_AGENT_HEARTBEATER_H_
#define FEDTUNE_SITE_AGENT_AGENT_HEARTBEATER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "site_agent/agent/coordinator_client.h"

namespace fedtune::agent {

class SiteMetrics;  // site_metrics.h

// Sends Heartbeat every `period` on its own thread until destroyed, with the latest state; records a cancel.
class Heartbeater {
 public:
  // Refines the state just before a heartbeat is sent (e.g. training progress); called on the heartbeat thread.
  using Probe = std::function<void(std::string* state, double* progress, double* train_loss)>;

  // Starts the thread. `client` (not owned) must outlive this object. `metrics` (nullable, not owned; must outlive
  // this object) gets each state set and its progress (SiteMetrics::SetTaskState).
  Heartbeater(CoordinatorClient* client, std::string run_id, int32_t round, absl::Duration period, std::string state,
              SiteMetrics* metrics = nullptr);
  // Sends the last state set, then stops and joins the thread.
  ~Heartbeater();

  // The state to send; `probe`, when set, refines it just before each heartbeat (it must stay callable until the
  // next SetState or the destructor). A new state is sent at once (then every period), and the last state set before
  // destruction is always sent.
  void SetState(std::string state, double progress, Probe probe = nullptr);
  // The training loss sent from now on (the latest epoch's mean BCE).
  void SetTrainLoss(double loss);
  // While set, heartbeats carry the state "retrying: REASON" (`reason` as given: the caller scrubs and bounds it)
  // instead of the state and its probe; sent at once. ClearRetrying goes back to the state; a retrying state that was
  // not sent yet is sent once first, so that a short retry still reaches the coordinator.
  void SetRetrying(std::string reason);
  void ClearRetrying();
  // Whether SetRetrying was called and ClearRetrying not since.
  bool retrying() const;
  // The last state given to SetState (or the constructor): not refined by the probe, not "retrying: ...".
  std::string state() const;
  // Whether a heartbeat answered cancel; whether it also said the run ended; the coordinator's reason.
  bool cancelled() const;
  bool run_ended() const;
  std::string reason() const;
  // The metrics given to the constructor (nullable): for the task's training progress (training_progress.h).
  SiteMetrics* metrics() const { return metrics_; }

 private:
  void Loop();

  CoordinatorClient* client_;
  const std::string run_id_;
  const int32_t round_;
  const absl::Duration period_;
  SiteMetrics* const metrics_;
  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool changed_ ABSL_GUARDED_BY(mu_) = false;  // A state not sent yet.
  std::string state_ ABSL_GUARDED_BY(mu_);
  double progress_ ABSL_GUARDED_BY(mu_) = 0;
  double train_loss_ ABSL_GUARDED_BY(mu_) = 0;
  Probe probe_ ABSL_GUARDED_BY(mu_);
  std::string retrying_ ABSL_GUARDED_BY(mu_);        // "" when not retrying.
  bool retry_sent_ ABSL_GUARDED_BY(mu_) = false;     // retrying_ went out in a heartbeat.
  bool retry_cleared_ ABSL_GUARDED_BY(mu_) = false;  // ClearRetrying came before it went out.
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool run_ended_ ABSL_GUARDED_BY(mu_) = false;
  std::string reason_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_AGENT_HEARTBEATER_H_
