// The coordinator's Prometheus metrics (CoordinatorConfig.metrics_listen_address; docs/operator-guide.md,
// "Monitoring", lists them with their types, labels and meaning). CoordinatorMetrics owns the prometheus::Registry and
// its families, and offers one small typed method per event, called where the coordinator already notes the event
// (RoundManager, SiteServiceImpl, the RPC interceptor of rpc_metrics_interceptor.h). What the database and the spool
// folder already hold is read at scrape time instead (StateCollector):
//   fedtune_coordinator_runs{state}                        gauge   (runs table, every state, 0 included)
//   fedtune_coordinator_site_last_seen_timestamp_seconds{site}  gauge   (sites.last_seen_ms; sites not revoked)
//   fedtune_coordinator_site_state{site,state}             gauge   (1 for the site's coarse state, 0 for the others)
//   fedtune_coordinator_spool_bytes                        gauge   (the size of <state_dir>/spool)
// and from the events:
//   fedtune_coordinator_runs_started_total, fedtune_coordinator_current_round, fedtune_coordinator_round_open,
//   fedtune_coordinator_rounds_total{state}, fedtune_coordinator_aggregation_seconds,
//   fedtune_coordinator_site_sent_bytes_total{site}, fedtune_coordinator_site_received_bytes_total{site},
//   fedtune_coordinator_uploads_total{site,result}, fedtune_coordinator_upload_resumes_total{site},
//   fedtune_coordinator_site_failures_total{site,stage}, fedtune_coordinator_rpcs_total{method,code},
//   fedtune_coordinator_rpc_duration_seconds{method}, fedtune_coordinator_open_streams{kind}.
// Counters start at 0 with each coordinator process (Prometheus' rate() handles the reset). A site's series exist, at
// 0, from the first heartbeat, GetTask or failure report of the site that this process sees.
//
// Label values are bounded: sites are authenticated certificate holders (the callers of these methods pass the
// certificate CN of an admitted site); states, stages, results, kinds and codes come from fixed lists (anything else
// is counted as "other"); methods are those of the registered services (rpc_metrics_interceptor.h).
//
// Thread safety: thread-safe. The methods take an internal mutex that is a leaf (they call nothing that locks), so
// they may be called under any lock (RoundManager calls them holding its own). StateCollector's Collect reads the
// database without holding that mutex.
#ifndef FEDTUNE_COORDINATOR_COORDINATOR_METRICS_H_
#define FEDTUNE_COORDINATOR_COORDINATOR_METRICS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace fedtune::coordinator {

class StateStore;

struct CoordinatorMetricsOptions {
  // Time source for "lost" (StateCollector). Default absl::Now.
  std::function<absl::Time()> clock;
  // A site not heard from for longer is in state "lost" (CoordinatorConfig.heartbeat_timeout_seconds). Default 60.
  int heartbeat_timeout_seconds = 60;
};

class CoordinatorMetrics {
 public:
  // The coarse site states of fedtune_coordinator_site_state, in this order.
  static constexpr const char* kSiteStates[] = {
      "idle", "downloading", "training", "evaluating", "uploading", "secure_aggregation", "retrying", "lost", "failed"};
  // The failure stages of fedtune_coordinator_site_failures_total.
  static constexpr const char* kFailureStages[] = {"download", "training", "evaluation", "upload", "other"};

  explicit CoordinatorMetrics(CoordinatorMetricsOptions options = {});
  ~CoordinatorMetrics();
  CoordinatorMetrics(const CoordinatorMetrics&) = delete;
  CoordinatorMetrics& operator=(const CoordinatorMetrics&) = delete;

  // The registry of the event-driven families (for MetricsServer::Start).
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // The families read at scrape time (see the file comment) from `store` (which must outlive every scrape: stop the
  // MetricsServer first) and from <state_dir>/spool. Its Collect runs a few SQL statements (one over runs, one over
  // sites) and lists the spool folder; a read error leaves the family out of that scrape (logged), never a made-up 0.
  std::shared_ptr<prometheus::Collectable> StateCollector(StateStore* store, const std::string& state_dir);

  // ---- Runs and rounds (RoundManager)
  void RunStarted();
  // The active run's round and whether an attempt is open (a round 0 / false: no active run, or evaluating).
  void SetCurrentRound(int round, bool open);
  // A round attempt ended: "closed", "failed" or "aborted" (else counted as "other").
  void RoundEnded(absl::string_view state);
  // Seconds a round's aggregation took (the aggregator's result, FedAdam's step, applying the delta and writing the
  // checkpoint: the close of the round; decoding and validating uploads happen as they arrive, not here).
  void AggregationFinished(double seconds);

  // ---- Sites (site = the authenticated certificate CN)
  // A heartbeat's free-text state ("downloading", "training member 1/3, epoch 2/5", "retrying: ...") becomes the
  // site's coarse state (CoarseSiteState).
  void SiteHeartbeat(const std::string& site, absl::string_view state);
  // The site asked for a task (GetTask): "idle", unless its last task failed (it stays "failed" until a heartbeat of
  // its next task).
  void SiteWaitingForTask(const std::string& site);
  // A failure report from the site: counts it under `stage` ("download", "training", "evaluation", "upload"; other
  // values "other") and puts the site in state "failed" until its next heartbeat. For SiteService/ReportFailure:
  // call it once the report is authorized and stored (SiteServiceOptions::metrics).
  void SiteFailure(const std::string& site, absl::string_view stage);
  // Model bytes sent to the site (a download stream, however it ended).
  void SiteSentBytes(const std::string& site, int64_t bytes);
  // Upload bytes received from the site (an upload stream, however it ended).
  void SiteReceivedBytes(const std::string& site, int64_t bytes);
  // An upload's fate: "accepted", "refused" or "declined" (else "other").
  void UploadResult(const std::string& site, absl::string_view result);
  // An upload stream that resumed from an offset > 0.
  void UploadResumed(const std::string& site);

  // ---- RPCs (rpc_metrics_interceptor.h)
  // A finished call: method "SiteService/Hello", code the gRPC code name ("OK", "UNAVAILABLE", ...).
  void RpcFinished(const std::string& method, absl::string_view code, double seconds);
  // A stream opened (+1) or ended (-1): kind "download" or "upload".
  void StreamOpened(absl::string_view kind);
  void StreamClosed(absl::string_view kind);

  // The coarse state of a heartbeat's free text (the site agent's states, federated_agent.cc): "retrying..." ->
  // retrying; "failed..." -> failed; "downloading..." -> downloading; "training..." -> training; "evaluating...",
  // "cross-site evaluation..." -> evaluating; "encoding" (the update, before its upload), "uploading", "sharing",
  // "reporting" -> uploading; "secure aggregation..." -> secure_aggregation; anything else ("", "done", "declined",
  // "cancelled", unknown text) -> idle.
  static const char* CoarseSiteState(absl::string_view heartbeat_state);

  // The coarse states of the sites heard from since start (site -> state).
  std::map<std::string, std::string> SiteStates() const;
  const CoordinatorMetricsOptions& options() const { return options_; }

 private:
  class Collector;

  // The site's coarse state (created "idle" on its first event, with its per-site series at 0).
  std::string& SiteStateLocked(const std::string& site) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const CoordinatorMetricsOptions options_;
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Counter* runs_started_;
  prometheus::Gauge* current_round_;
  prometheus::Gauge* round_open_;
  prometheus::Family<prometheus::Counter>* rounds_;
  prometheus::Histogram* aggregation_seconds_;
  prometheus::Family<prometheus::Counter>* sent_bytes_;
  prometheus::Family<prometheus::Counter>* received_bytes_;
  prometheus::Family<prometheus::Counter>* uploads_;
  prometheus::Family<prometheus::Counter>* upload_resumes_;
  prometheus::Family<prometheus::Counter>* site_failures_;
  prometheus::Family<prometheus::Counter>* rpcs_;
  prometheus::Family<prometheus::Histogram>* rpc_seconds_;
  prometheus::Family<prometheus::Gauge>* open_streams_;

  mutable absl::Mutex mu_;
  std::map<std::string, std::string> site_states_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_COORDINATOR_METRICS_H_
