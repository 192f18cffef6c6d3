// The Prometheus metrics endpoint of the coordinator and the site agent (CoordinatorConfig / SiteAgentConfig
// metrics_listen_address): plain HTTP served by cpp-httplib (Debian's libcpp-httplib, 2 threads), GET /metrics in
// prometheus-cpp's text exposition format, from one prometheus::Registry, the process's own metrics
// (ProcessCollector) and collectables computed at scrape time.
//
// Not prometheus-cpp's Exposer: Debian's civetweb, under it, starts its threads with 100 KiB stacks, and a program
// linking LibTorch (both daemons) needs more than that for its static thread-local storage, so pthread_create fails
// ("null context when constructing CivetServer"); its shutdown also waits up to 2 s for its poll.
//
// Metric names follow Prometheus' conventions: the prefix "fedtune_", counters end in "_total", durations are in
// seconds ("_seconds"), sizes in bytes ("_bytes"). The lists of what each program exports are in
// docs/operator-guide.md and docs/hospital-it-guide.md ("Monitoring").
//
// Thread safety: prometheus-cpp's metrics are thread-safe; MetricsServer is immutable after Start.
#ifndef FEDTUNE_COMMON_METRICS_METRICS_SERVER_H_
#define FEDTUNE_COMMON_METRICS_METRICS_SERVER_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "prometheus/collectable.h"
#include "prometheus/registry.h"

namespace httplib {
class Server;
}

namespace fedtune::metrics {

// The process metrics of the calling process, read from /proc/self at each scrape:
//   fedtune_process_resident_memory_bytes, fedtune_process_virtual_memory_bytes (gauges),
//   fedtune_process_cpu_seconds_total (counter: user + system), fedtune_process_open_fds (gauge),
//   fedtune_process_threads (gauge), fedtune_process_start_time_seconds (gauge, Unix time).
// A value that cannot be read is left out of the scrape (never a made-up 0).
class ProcessCollector : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override;
};

// True for the loopback hosts: "127.0.0.1" (any 127/8 address), "::1", "[::1]", "localhost".
bool IsLoopbackHost(const std::string& host);

// Checks a metrics_listen_address without binding it: "host:port" (host an IPv4 address such as 127.0.0.1, or a
// name such as localhost) or "[v6]:port", with a decimal port 0-65535. InvalidArgument naming the address and what
// is expected otherwise (e.g. "127.0.0.1", "999.1.1.1:80", "127.0.0.1:+80", "a:1,b:2"). The config checks of both
// programs call it; Start does too.
absl::Status CheckListenAddress(const std::string& listen_address);

class MetricsServer {
 public:
  // Serves `registry`, the process metrics and `collectables` (metrics computed at each scrape, e.g. from a
  // database; the server keeps them alive and calls their Collect on its HTTP threads, concurrently with the
  // program: they must be thread-safe) at http://listen_address/metrics. `listen_address` as CheckListenAddress
  // (port 0: a free port); InvalidArgument naming the address otherwise. A non-loopback host logs a WARNING (the
  // endpoint has no authentication). Unavailable naming the address when it cannot be bound (port taken, an address
  // of no interface here, a name that does not resolve). A host name binds the first address it resolves to that can
  // be bound (localhost: ::1 or 127.0.0.1). When `port_file` is set, the bound port is written to it atomically once
  // the endpoint serves (its I/O errors, prefixed "metrics_port_file: "). Other paths answer 404. The destructor stops
  // the endpoint (waiting for a scrape in progress).
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& listen_address, std::shared_ptr<prometheus::Registry> registry,
      const std::string& port_file = "", std::vector<std::shared_ptr<prometheus::Collectable>> collectables = {});
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  int port() const { return port_; }

 private:
  MetricsServer() = default;
  // The text exposition of everything served (a GET /metrics).
  std::string Scrape() const;
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<ProcessCollector> process_;
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables_;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;                        // Runs http_'s accept loop.
  std::atomic<bool> listen_returned_{false};  // The accept loop has ended.
  int port_ = 0;
};

}  // namespace fedtune::metrics

#endif  // FEDTUNE_COMMON_METRICS_METRICS_SERVER_H_
