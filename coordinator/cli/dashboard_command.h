// `fedtune dashboard`: the read-only web dashboard of a consortium, run on the operator's machine.
//
//   fedtune dashboard [--listen HOST:PORT (default 127.0.0.1:8080)] [--interval SECONDS (default 2)]
//                     [--port-file FILE] [--allow-host NAME[,NAME...]] + the connection flags of admin_client.h
//
// It talks to the coordinator's AdminService with the operator's certificate, like every other operator command, and
// serves what it sees over plain HTTP (dashboard_server.h): the browser never holds a certificate. The page has no
// authentication, so it binds to 127.0.0.1 unless --listen names another address; then it prints a warning. It runs
// until SIGINT or SIGTERM (Ctrl-C), then stops cleanly and returns OK, without waiting for a hung coordinator (the
// calls in flight are cancelled). The poller's calls have the deadline DashboardPollTimeout, so a hung coordinator
// shows as "coordinator unreachable" after a few seconds. Against DNS rebinding the page answers only to localhost,
// IP addresses, the listen host and the names given with --allow-host (dashboard_server.h).
//
// Thread safety: the command's run blocks the calling thread; it blocks SIGINT and SIGTERM in it (and in the threads
// it starts) and waits for them with sigwait, restoring the signal mask when it returns.
#ifndef FEDTUNE_COORDINATOR_CLI_DASHBOARD_COMMAND_H_
#define FEDTUNE_COORDINATOR_CLI_DASHBOARD_COMMAND_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/cli/command.h"
#include "coordinator/cli/admin_commands.h"

namespace fedtune::admin {

// --listen's value: "HOST:PORT", "[IPV6]:PORT" or ":PORT" (host 127.0.0.1); port 0 to 65535 (0: any free port).
// InvalidArgument naming --listen otherwise.
absl::StatusOr<std::pair<std::string, int>> ParseListenAddress(const std::string& listen);

// The deadline of the poller's calls: min(timeout, max(5 s, interval)).
absl::Duration DashboardPollTimeout(absl::Duration timeout, absl::Duration interval);

// --allow-host's value: host names separated by commas (no port; letters, digits, '.', '-', or an IPv6 literal),
// lowercased; at most 32. InvalidArgument naming --allow-host otherwise.
absl::StatusOr<std::vector<std::string>> ParseAllowedHosts(const std::string& list);

// The warning printed when the dashboard listens on a non-loopback address; "" for loopback.
std::string ListenWarning(const std::string& host, int port);

// The `dashboard` command. It prints one line "dashboard: http://HOST:PORT/ ..." once serving (and writes PORT to
// --port-file atomically), then blocks until SIGINT or SIGTERM. Errors: InvalidArgument for bad flags, the
// connection settings' errors, Unavailable when the address cannot be bound.
cli::Command MakeDashboardCommand(CommandEnvironment environment = {});

}  // namespace fedtune::admin

#endif  // FEDTUNE_COORDINATOR_CLI_DASHBOARD_COMMAND_H_
