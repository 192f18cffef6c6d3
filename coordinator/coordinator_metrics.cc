#include "coordinator/coordinator_metrics.h"

#include <algorithm>
#include <filesystem>
#include <optional>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "common/federation/states.h"
#include "common/logging.h"
#include "coordinator/state_store.h"
#include "prometheus/client_metric.h"
#include "prometheus/metric_family.h"

namespace fedtune::coordinator {
namespace {

using federation::RunState;

// RPCs range from a unary call (milliseconds) to a long-poll (task_wait_seconds) and a model transfer (minutes).
const prometheus::Histogram::BucketBoundaries kRpcBuckets = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                             2.5,   5,     10,   30,    60,   120, 300,  600};
// A round's close: from a tiny model's milliseconds to a large model's minutes (trimmed mean and median over spill).
const prometheus::Histogram::BucketBoundaries kAggregationBuckets = {0.01, 0.05, 0.1, 0.25, 0.5, 1,   2.5,
                                                                     5,    10,   30,  60,   120, 300, 600};

// `value` when it is one of `allowed`, else "other".
template <size_t N>
std::string OneOf(absl::string_view value, const char* const (&allowed)[N]) {
  for (const char* a : allowed) {
    if (value == a) return a;
  }
  return "other";
}

constexpr const char* kRoundStates[] = {"closed", "failed", "aborted"};
constexpr const char* kUploadResults[] = {"accepted", "refused", "declined"};
constexpr const char* kStreamKinds[] = {"download", "upload"};
constexpr RunState kRunStates[] = {RunState::kRunning, RunState::kEvaluating, RunState::kCompleted, RunState::kFailed,
                                   RunState::kAborted};

prometheus::MetricFamily GaugeFamily(const char* name, const char* help) {
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = prometheus::MetricType::Gauge;
  return family;
}

void AddGauge(prometheus::MetricFamily* family, std::vector<prometheus::ClientMetric::Label> labels, double value) {
  prometheus::ClientMetric metric;
  metric.label = std::move(labels);
  metric.gauge.value = value;
  family->metric.push_back(std::move(metric));
}

// Bytes of the regular files under `dir` (recursively); nullopt when it cannot be listed. A file removed while it is
// being listed is skipped.
std::optional<double> FolderBytes(const std::string& dir) {
  std::error_code ec;
  std::filesystem::recursive_directory_iterator it(dir, ec);
  if (ec) return std::nullopt;
  double bytes = 0;
  for (; it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) return std::nullopt;
    std::error_code size_ec;
    if (it->is_regular_file(size_ec)) {
      const uintmax_t size = it->file_size(size_ec);
      if (!size_ec) bytes += static_cast<double>(size);
    }
  }
  return bytes;
}

}  // namespace

// The families read at scrape time (see the header).
class CoordinatorMetrics::Collector final : public prometheus::Collectable {
 public:
  Collector(const CoordinatorMetrics* owner, StateStore* store, std::string spool_dir)
      : owner_(owner), store_(store), spool_dir_(std::move(spool_dir)) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    std::vector<prometheus::MetricFamily> families;
    absl::StatusOr<std::map<RunState, int64_t>> runs = store_->CountRunsByState();
    if (runs.ok()) {
      prometheus::MetricFamily family =
          GaugeFamily("fedtune_coordinator_runs", "Runs in the coordinator's database by state.");
      for (RunState state : kRunStates) {
        auto it = runs->find(state);
        AddGauge(&family, {{"state", std::string(federation::Text(state))}},
                 it == runs->end() ? 0.0 : static_cast<double>(it->second));
      }
      families.push_back(std::move(family));
    } else {
      LOG(WARNING) << "metrics: counting runs: " << runs.status();
    }
    absl::StatusOr<std::vector<SiteRecord>> sites = store_->ListSites();
    if (sites.ok()) {
      const CoordinatorMetricsOptions& options = owner_->options();
      const int64_t now_ms = absl::ToUnixMillis(options.clock ? options.clock() : absl::Now());
      const std::map<std::string, std::string> states = owner_->SiteStates();
      prometheus::MetricFamily seen =
          GaugeFamily("fedtune_coordinator_site_last_seen_timestamp_seconds",
                      "When the site last made an authorized call (Unix time in seconds); sites not revoked.");
      prometheus::MetricFamily state =
          GaugeFamily("fedtune_coordinator_site_state",
                      "1 for the site's coarse state, 0 for the others (lost: not heard from within "
                      "heartbeat_timeout_seconds); sites not revoked.");
      for (const SiteRecord& site : *sites) {
        if (site.status == federation::SiteStatus::kRevoked) continue;
        if (site.last_seen_ms > 0) AddGauge(&seen, {{"site", site.site_id}}, site.last_seen_ms / 1000.0);
        std::string current = "idle";
        if (auto it = states.find(site.site_id); it != states.end()) current = it->second;
        if (site.last_seen_ms == 0 || now_ms - site.last_seen_ms > int64_t{options.heartbeat_timeout_seconds} * 1000) {
          current = "lost";
        }
        for (const char* s : kSiteStates) {
          AddGauge(&state, {{"site", site.site_id}, {"state", s}}, current == s ? 1.0 : 0.0);
        }
      }
      families.push_back(std::move(seen));
      families.push_back(std::move(state));
    } else {
      LOG(WARNING) << "metrics: listing sites: " << sites.status();
    }
    if (std::optional<double> bytes = FolderBytes(spool_dir_)) {
      prometheus::MetricFamily spool =
          GaugeFamily("fedtune_coordinator_spool_bytes",
                      "Bytes of upload files in the spool folder: partial uploads (being received or waiting for a "
                      "resume) and accepted updates kept until their round closes.");
      AddGauge(&spool, {}, *bytes);
      families.push_back(std::move(spool));
    }
    return families;
  }

 private:
  const CoordinatorMetrics* const owner_;
  StateStore* const store_;
  const std::string spool_dir_;
};

CoordinatorMetrics::CoordinatorMetrics(CoordinatorMetricsOptions options)
    : options_(std::move(options)), registry_(std::make_shared<prometheus::Registry>()) {
  prometheus::Registry& r = *registry_;
  runs_started_ = &prometheus::BuildCounter()
                       .Name("fedtune_coordinator_runs_started_total")
                       .Help("Runs started by this coordinator process.")
                       .Register(r)
                       .Add({});
  current_round_ = &prometheus::BuildGauge()
                        .Name("fedtune_coordinator_current_round")
                        .Help("The active run's round (0 when no run is active).")
                        .Register(r)
                        .Add({});
  round_open_ = &prometheus::BuildGauge()
                     .Name("fedtune_coordinator_round_open")
                     .Help("1 while a round attempt is open (taking updates), else 0.")
                     .Register(r)
                     .Add({});
  rounds_ = &prometheus::BuildCounter()
                 .Name("fedtune_coordinator_rounds_total")
                 .Help("Round attempts ended, by how: closed (aggregated), failed (too few updates), aborted.")
                 .Register(r);
  for (const char* state : kRoundStates) rounds_->Add({{"state", state}});
  aggregation_seconds_ = &prometheus::BuildHistogram()
                              .Name("fedtune_coordinator_aggregation_seconds")
                              .Help(
                                  "Time to close a round: the aggregate, FedAdam's step, the new global model and "
                                  "its checkpoint (the uploads' decoding and validation excluded).")
                              .Register(r)
                              .Add({}, kAggregationBuckets);
  sent_bytes_ = &prometheus::BuildCounter()
                     .Name("fedtune_coordinator_site_sent_bytes_total")
                     .Help("Model bytes sent to the site (downloads).")
                     .Register(r);
  received_bytes_ = &prometheus::BuildCounter()
                         .Name("fedtune_coordinator_site_received_bytes_total")
                         .Help("Upload bytes received from the site.")
                         .Register(r);
  uploads_ = &prometheus::BuildCounter()
                  .Name("fedtune_coordinator_uploads_total")
                  .Help("Updates of sites by result: accepted, refused (recorded with the reason), declined.")
                  .Register(r);
  upload_resumes_ = &prometheus::BuildCounter()
                         .Name("fedtune_coordinator_upload_resumes_total")
                         .Help("Upload streams that resumed from an offset > 0 (a retried upload).")
                         .Register(r);
  site_failures_ = &prometheus::BuildCounter()
                        .Name("fedtune_coordinator_site_failures_total")
                        .Help("Failure reports received from the site, by stage.")
                        .Register(r);
  rpcs_ = &prometheus::BuildCounter()
               .Name("fedtune_coordinator_rpcs_total")
               .Help("Finished RPCs by method and gRPC status code.")
               .Register(r);
  rpc_seconds_ = &prometheus::BuildHistogram()
                      .Name("fedtune_coordinator_rpc_duration_seconds")
                      .Help("Duration of finished RPCs by method (GetTask is a long-poll; transfers are streams).")
                      .Register(r);
  open_streams_ = &prometheus::BuildGauge()
                       .Name("fedtune_coordinator_open_streams")
                       .Help("Open transfer streams: download (DownloadModel, ExportModel), upload (UploadUpdate).")
                       .Register(r);
  for (const char* kind : kStreamKinds) open_streams_->Add({{"kind", kind}});
}

CoordinatorMetrics::~CoordinatorMetrics() = default;

std::shared_ptr<prometheus::Collectable> CoordinatorMetrics::StateCollector(StateStore* store,
                                                                            const std::string& state_dir) {
  return std::make_shared<Collector>(this, store, state_dir + "/spool");
}

void CoordinatorMetrics::RunStarted() { runs_started_->Increment(); }

void CoordinatorMetrics::SetCurrentRound(int round, bool open) {
  current_round_->Set(round);
  round_open_->Set(open ? 1 : 0);
}

void CoordinatorMetrics::RoundEnded(absl::string_view state) {
  rounds_->Add({{"state", OneOf(state, kRoundStates)}}).Increment();
}

void CoordinatorMetrics::AggregationFinished(double seconds) { aggregation_seconds_->Observe(std::max(0.0, seconds)); }

const char* CoordinatorMetrics::CoarseSiteState(absl::string_view s) {
  if (absl::StartsWith(s, "retrying")) return "retrying";
  if (absl::StartsWith(s, "failed")) return "failed";
  if (absl::StartsWith(s, "downloading")) return "downloading";
  if (absl::StartsWith(s, "training")) return "training";
  if (absl::StartsWith(s, "evaluating") || absl::StartsWith(s, "cross-site evaluation")) return "evaluating";
  if (absl::StartsWith(s, "secure aggregation")) return "secure_aggregation";
  if (absl::StartsWith(s, "encoding") || absl::StartsWith(s, "uploading") || absl::StartsWith(s, "sharing") ||
      absl::StartsWith(s, "reporting")) {
    return "uploading";
  }
  return "idle";
}

std::string& CoordinatorMetrics::SiteStateLocked(const std::string& site) {
  auto [it, inserted] = site_states_.try_emplace(site, "idle");
  if (inserted) {
    // The site's counters exist from its first call, at 0, so that increase() and alerts see their first event.
    sent_bytes_->Add({{"site", site}});
    received_bytes_->Add({{"site", site}});
    upload_resumes_->Add({{"site", site}});
    for (const char* result : kUploadResults) uploads_->Add({{"site", site}, {"result", result}});
    for (const char* stage : kFailureStages) site_failures_->Add({{"site", site}, {"stage", stage}});
  }
  return it->second;
}

void CoordinatorMetrics::SiteHeartbeat(const std::string& site, absl::string_view state) {
  absl::MutexLock lock(&mu_);
  SiteStateLocked(site) = CoarseSiteState(state);
}

void CoordinatorMetrics::SiteWaitingForTask(const std::string& site) {
  absl::MutexLock lock(&mu_);
  std::string& state = SiteStateLocked(site);
  if (state != "failed") state = "idle";
}

void CoordinatorMetrics::SiteFailure(const std::string& site, absl::string_view stage) {
  absl::MutexLock lock(&mu_);
  SiteStateLocked(site) = "failed";
  site_failures_->Add({{"site", site}, {"stage", OneOf(stage, kFailureStages)}}).Increment();
}

void CoordinatorMetrics::SiteSentBytes(const std::string& site, int64_t bytes) {
  sent_bytes_->Add({{"site", site}}).Increment(static_cast<double>(std::max<int64_t>(0, bytes)));
}

void CoordinatorMetrics::SiteReceivedBytes(const std::string& site, int64_t bytes) {
  received_bytes_->Add({{"site", site}}).Increment(static_cast<double>(std::max<int64_t>(0, bytes)));
}

void CoordinatorMetrics::UploadResult(const std::string& site, absl::string_view result) {
  uploads_->Add({{"site", site}, {"result", OneOf(result, kUploadResults)}}).Increment();
}

void CoordinatorMetrics::UploadResumed(const std::string& site) { upload_resumes_->Add({{"site", site}}).Increment(); }

void CoordinatorMetrics::RpcFinished(const std::string& method, absl::string_view code, double seconds) {
  rpcs_->Add({{"method", method}, {"code", std::string(code)}}).Increment();
  rpc_seconds_->Add({{"method", method}}, kRpcBuckets).Observe(std::max(0.0, seconds));
}

void CoordinatorMetrics::StreamOpened(absl::string_view kind) {
  open_streams_->Add({{"kind", OneOf(kind, kStreamKinds)}}).Increment();
}

void CoordinatorMetrics::StreamClosed(absl::string_view kind) {
  open_streams_->Add({{"kind", OneOf(kind, kStreamKinds)}}).Decrement();
}

std::map<std::string, std::string> CoordinatorMetrics::SiteStates() const {
  absl::MutexLock lock(&mu_);
  return site_states_;
}

}  // namespace fedtune::coordinator
