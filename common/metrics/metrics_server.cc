#include "common/metrics/metrics_server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/io/file_util.h"
#include "common/logging.h"
#include "prometheus/text_serializer.h"

namespace fedtune::metrics {
namespace {

prometheus::MetricFamily Family(const char* name, const char* help, prometheus::MetricType type, double value) {
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  prometheus::ClientMetric metric;
  if (type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(metric);
  return family;
}

// The fields of /proc/self/stat after the command name (which may hold spaces and parentheses): field 3 (state) is
// at index 0.
bool ReadStatFields(std::vector<std::string>* fields) {
  std::ifstream in("/proc/self/stat");
  std::string line;
  if (!std::getline(in, line)) return false;
  const size_t close = line.rfind(')');
  if (close == std::string::npos || close + 2 > line.size()) return false;
  *fields = absl::StrSplit(line.substr(close + 2), ' ', absl::SkipEmpty());
  return fields->size() > 20;
}

// Seconds since the epoch at which the system booted (/proc/stat "btime").
bool BootTime(double* seconds) {
  std::ifstream in("/proc/stat");
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "btime ")) return absl::SimpleAtod(line.substr(6), seconds);
  }
  return false;
}

}  // namespace

std::vector<prometheus::MetricFamily> ProcessCollector::Collect() const {
  std::vector<prometheus::MetricFamily> families;
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  {
    std::ifstream statm("/proc/self/statm");
    double size = 0, resident = 0;
    if (statm >> size >> resident) {
      families.push_back(Family("fedtune_process_virtual_memory_bytes", "Virtual memory size in bytes.",
                                prometheus::MetricType::Gauge, size * page));
      families.push_back(Family("fedtune_process_resident_memory_bytes", "Resident memory size in bytes.",
                                prometheus::MetricType::Gauge, resident * page));
    }
  }
  std::vector<std::string> stat;
  if (ReadStatFields(&stat) && ticks > 0) {
    // Fields (1-based, man proc): 14 utime, 15 stime, 20 num_threads, 22 starttime; index = field - 3.
    double utime = 0, stime = 0, threads = 0, start = 0, boot = 0;
    if (absl::SimpleAtod(stat[11], &utime) && absl::SimpleAtod(stat[12], &stime)) {
      families.push_back(Family("fedtune_process_cpu_seconds_total", "User and system CPU time spent in seconds.",
                                prometheus::MetricType::Counter, (utime + stime) / ticks));
    }
    if (absl::SimpleAtod(stat[17], &threads)) {
      families.push_back(
          Family("fedtune_process_threads", "Threads of the process.", prometheus::MetricType::Gauge, threads));
    }
    if (absl::SimpleAtod(stat[19], &start) && BootTime(&boot)) {
      families.push_back(Family("fedtune_process_start_time_seconds",
                                "Start time of the process since the Unix epoch in seconds.",
                                prometheus::MetricType::Gauge, boot + start / ticks));
    }
  }
  if (DIR* dir = opendir("/proc/self/fd"); dir != nullptr) {
    double fds = 0;
    while (dirent* entry = readdir(dir)) {
      if (entry->d_name[0] != '.') ++fds;
    }
    closedir(dir);
    families.push_back(Family("fedtune_process_open_fds", "Open file descriptors (the scrape's own included).",
                              prometheus::MetricType::Gauge, fds));
  }
  return families;
}

bool IsLoopbackHost(const std::string& host) {
  const std::string h = absl::AsciiStrToLower(host);
  if (h == "localhost" || h == "::1" || h == "[::1]") return true;
  // Only a numeric 127/8 address: a name such as "127.example.org" may resolve anywhere.
  in_addr v4{};
  return inet_pton(AF_INET, h.c_str(), &v4) == 1 && (ntohl(v4.s_addr) >> 24) == 127;
}

absl::Status CheckListenAddress(const std::string& listen_address) {
  const absl::Status invalid = absl::InvalidArgumentError(
      absl::StrCat("metrics_listen_address \"", listen_address,
                   "\": expected HOST:PORT (an IPv4 address or a host name) or [IPv6]:PORT, with a port 0-65535"));
  const size_t colon = listen_address.rfind(':');
  if (colon == std::string::npos || colon == 0 || listen_address.size() > 255) return invalid;
  const std::string host = listen_address.substr(0, colon);
  const std::string port_text = listen_address.substr(colon + 1);
  int port = -1;
  // Digits only: absl::SimpleAtoi would take "+80" and " 80", which civetweb then reads its own way.
  if (port_text.empty() || port_text.size() > 5 || port_text.find_first_not_of("0123456789") != std::string::npos ||
      !absl::SimpleAtoi(port_text, &port) || port > 65535) {
    return invalid;
  }
  if (host.front() == '[') {
    in6_addr v6;
    if (host.size() < 3 || host.back() != ']' ||
        inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &v6) != 1) {
      return invalid;
    }
    return absl::OkStatus();
  }
  // civetweb reads a host of digits and dots as an IPv4 address without range checks ("999.1.1.1" bound an address
  // of its own making): such a host must be a valid dotted quad.
  if (host.find_first_not_of("0123456789.") == std::string::npos) {
    in_addr v4;
    return inet_pton(AF_INET, host.c_str(), &v4) == 1 ? absl::OkStatus() : invalid;
  }
  // A host name (resolved by civetweb when it binds): letters, digits, '-' and '.'.
  if (host.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.") != std::string::npos) {
    return invalid;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& listen_address, std::shared_ptr<prometheus::Registry> registry, const std::string& port_file,
    std::vector<std::shared_ptr<prometheus::Collectable>> collectables) {
  if (absl::Status valid = CheckListenAddress(listen_address); !valid.ok()) return valid;
  if (registry == nullptr) return absl::InvalidArgumentError("metrics endpoint: no registry");
  const size_t colon = listen_address.rfind(':');
  std::string host = listen_address.substr(0, colon);
  int port = 0;
  if (!absl::SimpleAtoi(listen_address.substr(colon + 1), &port)) {
    return absl::InternalError(absl::StrCat("metrics_listen_address \"", listen_address, "\": unchecked port"));
  }
  if (!IsLoopbackHost(host)) {
    LOG(WARNING) << "metrics endpoint on " << listen_address
                 << ": not a loopback address, so anyone who reaches it can read the metrics (no authentication); "
                    "restrict it with a firewall or bind 127.0.0.1";
  }
  const std::string bind_host = host.front() == '[' ? host.substr(1, host.size() - 2) : host;

  std::unique_ptr<MetricsServer> server(new MetricsServer());
  server->registry_ = std::move(registry);
  server->process_ = std::make_shared<ProcessCollector>();
  for (std::shared_ptr<prometheus::Collectable>& collectable : collectables) {
    if (collectable != nullptr) server->collectables_.push_back(std::move(collectable));
  }
  server->http_ = std::make_unique<httplib::Server>();
  httplib::Server& http = *server->http_;
  // httplib's default sets SO_REUSEPORT, with which a second process could bind the same port and take half the
  // scrapes: SO_REUSEADDR only, so that a taken port is an error.
  http.set_socket_options([](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  http.new_task_queue = [] { return new httplib::ThreadPool(2); };
  // One request per connection and short timeouts: a scraper's idle keep-alive connection would hold one of the two
  // workers (and the destructor's stop) for its whole timeout.
  http.set_keep_alive_max_count(1);
  http.set_read_timeout(5);
  http.set_write_timeout(5);
  http.set_payload_max_length(64 << 10);
  MetricsServer* self = server.get();  // Outlives http_: the destructor stops it first.
  http.Get("/metrics", [self](const httplib::Request&, httplib::Response& response) {
    response.set_content(self->Scrape(), "text/plain; version=0.0.4; charset=utf-8");
  });
  bool bound = false;
  if (port == 0) {
    port = http.bind_to_any_port(bind_host);
    bound = port > 0;
  } else {
    bound = http.bind_to_port(bind_host, port);
  }
  if (!bound) {
    return absl::UnavailableError(absl::StrCat("metrics_listen_address \"", listen_address,
                                               "\": cannot listen (the port is taken, the host is no address of "
                                               "this machine or its name does not resolve)"));
  }
  server->port_ = port;
  server->thread_ = std::thread([self] {
    self->http_->listen_after_bind();
    self->listen_returned_.store(true);
  });
  // Serving before Start returns: stop() is a no-op until the accept loop runs, so the destructor must not come first.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!http.is_running() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
  if (!http.is_running()) {
    return absl::InternalError(absl::StrCat("metrics_listen_address \"", listen_address, "\": did not start"));
  }
  if (!port_file.empty()) {
    absl::Status written = io::WriteFileAtomically(port_file, absl::StrCat(server->port_, "\n"));
    if (!written.ok()) return absl::Status(written.code(), absl::StrCat("metrics_port_file: ", written.message()));
  }
  LOG(INFO) << "metrics endpoint: http://" << host << ":" << server->port_ << "/metrics";
  return server;
}

std::string MetricsServer::Scrape() const {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  std::vector<const prometheus::Collectable*> others = {process_.get()};
  for (const std::shared_ptr<prometheus::Collectable>& collectable : collectables_) others.push_back(collectable.get());
  for (const prometheus::Collectable* collectable : others) {
    std::vector<prometheus::MetricFamily> more = collectable->Collect();
    families.insert(families.end(), std::make_move_iterator(more.begin()), std::make_move_iterator(more.end()));
  }
  return prometheus::TextSerializer().Serialize(families);
}

MetricsServer::~MetricsServer() {
  if (http_ != nullptr) http_->stop();
  if (thread_.joinable()) {
    // On Start's "did not start" path the accept loop may begin after the first stop(), which it then ignores: stop
    // until it has run and ended.
    while (http_ != nullptr && !http_->is_running() && !listen_returned_.load()) absl::SleepFor(absl::Milliseconds(1));
    if (http_ != nullptr) http_->stop();
    thread_.join();
  }
}

}  // namespace fedtune::metrics
