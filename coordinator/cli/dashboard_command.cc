#include "coordinator/cli/dashboard_command.h"

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <iostream>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/io/file_util.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "coordinator/cli/admin_client.h"
#include "coordinator/cli/dashboard_server.h"

namespace fedtune::admin {
namespace {

cli::FlagSpec Flag(std::string name, std::string help, std::string metavar, std::optional<std::string> value) {
  cli::FlagSpec flag;
  flag.name = std::move(name);
  flag.help = std::move(help);
  flag.metavar = std::move(metavar);
  flag.value = std::move(value);
  return flag;
}

// Blocks SIGINT and SIGTERM in this thread (and the threads it starts from now on); restores the mask when destroyed.
class BlockedSignals {
 public:
  BlockedSignals() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set_, &old_);
  }
  ~BlockedSignals() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }
  int Wait() const {
    int signal = 0;
    while (sigwait(&set_, &signal) != 0) {
    }
    return signal;
  }

 private:
  sigset_t set_;
  sigset_t old_;
};

}  // namespace

absl::StatusOr<std::pair<std::string, int>> ParseListenAddress(const std::string& listen) {
  std::string host, port_text;
  if (!listen.empty() && listen[0] == '[') {
    const size_t close = listen.find(']');
    if (close == std::string::npos || close + 1 >= listen.size() || listen[close + 1] != ':') {
      return absl::InvalidArgumentError(absl::StrCat("--listen '", listen, "': expected [IPV6]:PORT"));
    }
    host = listen.substr(1, close - 1);
    port_text = listen.substr(close + 2);
  } else {
    const size_t colon = listen.rfind(':');
    if (colon == std::string::npos || listen.find(':') != colon) {
      return absl::InvalidArgumentError(
          absl::StrCat("--listen '", listen, "': expected HOST:PORT, e.g. 127.0.0.1:8080"));
    }
    host = listen.substr(0, colon);
    port_text = listen.substr(colon + 1);
  }
  if (host.empty()) host = "127.0.0.1";
  int port = -1;
  if (!absl::SimpleAtoi(port_text, &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--listen '", listen, "': the port must be a number from 0 to 65535"));
  }
  return std::make_pair(host, port);
}

absl::Duration DashboardPollTimeout(absl::Duration timeout, absl::Duration interval) {
  return std::min(timeout, std::max(absl::Seconds(5), interval));
}

absl::StatusOr<std::vector<std::string>> ParseAllowedHosts(const std::string& list) {
  std::vector<std::string> hosts;
  for (absl::string_view part : absl::StrSplit(list, ',')) {
    const std::string host(absl::StripAsciiWhitespace(part));
    const bool valid = !host.empty() && host.size() <= 253 && std::all_of(host.begin(), host.end(), [](char c) {
      return absl::ascii_isalnum(c) || c == '.' || c == '-' || c == ':' || c == '[' || c == ']';
    });
    if (!valid) {
      return absl::InvalidArgumentError(absl::StrCat("--allow-host '", list,
                                                     "': expected host names separated by commas (letters, digits, "
                                                     "'.', '-'; no port), e.g. dashboard.example.org"));
    }
    hosts.push_back(absl::AsciiStrToLower(host));
  }
  if (hosts.size() > 32) return absl::InvalidArgumentError("--allow-host: at most 32 names");
  return hosts;
}

std::string ListenWarning(const std::string& host, int port) {
  if (IsLoopbackHost(host)) return "";
  return absl::StrCat("warning: the dashboard listens on ", host, ":", port,
                      ", not on a loopback address. The page has no authentication: everyone who can reach this "
                      "address sees the consortium's sites, runs and failure reports (read-only; the operator "
                      "certificate stays in this process). Prefer 127.0.0.1 and an SSH tunnel.");
}

cli::Command MakeDashboardCommand(CommandEnvironment environment) {
  cli::Command command;
  command.path = {"dashboard"};
  command.summary = "serve a read-only, live web dashboard of the coordinator (sites, runs, reports)";
  command.max_positional = 0;
  command.flags = {
      Flag("listen", "address to serve the page on; a non-loopback address prints a warning (no authentication)",
           "HOST:PORT", "127.0.0.1:8080"),
      Flag("interval", "seconds between polls of the coordinator (0.5 to 3600)", "SECONDS", "2"),
      Flag("port-file", "write the port served on to this file once serving (for --listen HOST:0)", "FILE",
           std::nullopt),
      Flag("allow-host",
           "host names the page may be opened under besides localhost, IP addresses and the listen host (DNS "
           "rebinding guard), separated by commas",
           "NAME[,NAME...]", std::nullopt)};
  for (cli::FlagSpec& flag : ConnectionFlags()) command.flags.push_back(std::move(flag));
  command.run = [environment](const cli::ParsedFlags& flags) -> absl::Status {
    std::ostream& out = environment.out != nullptr ? *environment.out : std::cout;
    const EnvLookup env = environment.env ? environment.env : ProcessEnvironment();
    ASSIGN_OR_RETURN(auto listen, ParseListenAddress(flags.Get("listen").value_or("127.0.0.1:8080")));
    ASSIGN_OR_RETURN(double interval, flags.GetDouble("interval", 2));
    if (!(interval >= 0.5) || interval > 3600) {
      return absl::InvalidArgumentError(absl::StrCat("--interval is ", interval, ": must be 0.5 to 3600 seconds"));
    }
    std::vector<std::string> allowed_hosts;
    if (std::optional<std::string> allow = flags.Get("allow-host"); allow) {
      ASSIGN_OR_RETURN(allowed_hosts, ParseAllowedHosts(*allow));
    }
    ASSIGN_OR_RETURN(ConnectionSettings settings, ResolveConnection(flags, env));
    // Before any thread starts (gRPC's included): the signals go to the sigwait below, never to another thread.
    BlockedSignals signals;
    // Two clients: the poller's calls get a short deadline (a hung coordinator must not stall the page for 3 x
    // --timeout), a report may take the operator's full --timeout; both are cancelled on stop.
    ConnectionSettings poll_settings = settings;
    poll_settings.timeout_seconds =
        absl::ToDoubleSeconds(DashboardPollTimeout(absl::Seconds(settings.timeout_seconds), absl::Seconds(interval)));
    ASSIGN_OR_RETURN(std::unique_ptr<AdminClient> client, AdminClient::Connect(poll_settings));
    ASSIGN_OR_RETURN(std::unique_ptr<AdminClient> reports_client_owner, AdminClient::Connect(settings));
    const std::string warning = ListenWarning(listen.first, listen.second);
    if (!warning.empty()) LOG(WARNING) << warning;  // On stderr either way (a JSON line with --log-format json).
    SnapshotBoard board;
    DashboardServerOptions server_options;
    server_options.host = listen.first;
    server_options.port = listen.second;
    server_options.allowed_hosts = allowed_hosts;
    AdminClient* reports_client = reports_client_owner.get();
    ASSIGN_OR_RETURN(std::unique_ptr<DashboardServer> server,
                     DashboardServer::Start(
                         &board, [reports_client](const std::string& id) { return reports_client->GetRunReport(id); },
                         server_options));
    DashboardPollerOptions poller_options;
    poller_options.interval = absl::Seconds(interval);
    if (environment.now) poller_options.clock = environment.now;
    DashboardPoller poller(client.get(), &board, poller_options);
    const std::string shown_host =
        listen.first.find(':') != std::string::npos ? absl::StrCat("[", listen.first, "]") : listen.first;
    if (std::optional<std::string> port_file = flags.Get("port-file"); port_file && !port_file->empty()) {
      absl::Status written = io::WriteFileAtomically(*port_file, absl::StrCat(server->port(), "\n"));
      if (!written.ok()) {
        board.Close();
        return written;
      }
    }
    out << "dashboard: http://" << shown_host << ":" << server->port() << "/ (coordinator " << settings.coordinator
        << ", polled every " << interval << " s; Ctrl-C stops)" << std::endl;
    const int signal = signals.Wait();
    LOG(INFO) << "dashboard: stopping on signal " << signal;
    board.Close();
    // Bounded by the cancellations, not by a hung coordinator's deadlines.
    reports_client->CancelPendingCalls();
    poller.Stop();
    server->Stop();
    out << "dashboard stopped" << std::endl;
    return absl::OkStatus();
  };
  return command;
}

}  // namespace fedtune::admin
