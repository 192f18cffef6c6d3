// The read-only web dashboard's moving parts (`fedtune dashboard`, dashboard_command.h):
//   - SnapshotBoard: the latest DashboardSnapshot (dashboard_page.h), published by the poller, read by the server;
//   - PollCoordinator / DashboardPoller: one background thread that polls the coordinator's AdminService (ListSites,
//     GetRunStatus of the latest run, ListRuns) with the operator's AdminClient every few seconds;
//   - DashboardServer: the HTTP server (cpp-httplib), serving
//       GET /                    the page, rendered from the latest snapshot (a usable static snapshot without JS)
//       GET /static/dashboard.js the page's script (compiled in; no external file, CDN or font)
//       GET /events              server-sent events: the sections each new snapshot changed on that page
//                                (DashboardChangedEventJson; none sent when nothing changed)
//       GET /api/state           the snapshot as JSON (DashboardStateJson)
//       GET /runs/ID/report      the run's consortium report (GetRunReport, ConsortiumReportHtml: the same page as
//                                `fedtune report`, with the cross-site matrix when the run has one)
//     Anything else is 404; methods other than GET/HEAD 405. Responses carry a Content-Security-Policy that allows
//     only the dashboard's own script and the pages' inline style (no external resource can load).
// The browser never holds a certificate: only this process talks to the coordinator. The page has no authentication,
// so the server binds to loopback by default (dashboard_command.h warns about any other address). Against DNS
// rebinding it refuses requests whose Host header names another host: on a loopback address it answers only to
// loopback names and literals (IsLoopbackHost) and `allowed_hosts`; on another address also to any IP literal and to
// the listen host itself.
//
// Bounds: at most `max_event_clients` event streams at once (503 beyond), each closed after `event_stream_seconds`
// (browsers reconnect by themselves), at most `max_report_fetches` report requests at once (503 beyond), request
// bodies refused, one thread pool of `threads` threads.
//
// Thread safety: SnapshotBoard is thread-safe; DashboardPoller and DashboardServer are thread-compatible (one owner
// starts and stops them; they run their own threads).
#ifndef FEDTUNE_COORDINATOR_CLI_DASHBOARD_SERVER_H_
#define FEDTUNE_COORDINATOR_CLI_DASHBOARD_SERVER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/cli/admin_client.h"
#include "coordinator/cli/dashboard_page.h"
#include "fedtune/v1/federation.pb.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace fedtune::admin {

class SnapshotBoard {
 public:
  SnapshotBoard();

  // Numbers `snapshot` (seq = the previous one's + 1), makes it the latest and wakes the waiters.
  void Publish(DashboardSnapshot snapshot);
  // The latest snapshot (seq 0 with no content before the first Publish). Never null.
  std::shared_ptr<const DashboardSnapshot> Latest() const;
  // Waits until a snapshot with seq > `seq` is published, `timeout` passes or Close() is called; returns the latest.
  std::shared_ptr<const DashboardSnapshot> WaitNewer(int64_t seq, absl::Duration timeout) const;
  // Wakes every waiter for good: WaitNewer returns at once from now on.
  void Close();
  bool closed() const;

 private:
  mutable absl::Mutex mu_;
  std::shared_ptr<const DashboardSnapshot> latest_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

// One poll: ListSites, GetRunStatus("") (the latest run; NOT_FOUND means no run yet) and ListRuns(runs_limit); when
// ListSites fails with UNAVAILABLE or DEADLINE_EXCEEDED (unreachable or hung) the other two are not tried. A
// failed call leaves its part empty and adds an error line: "coordinator unreachable: ..." for UNAVAILABLE and
// DEADLINE_EXCEEDED, "certificate refused: ..." for UNAUTHENTICATED and PERMISSION_DENIED, "coordinator does not
// support ListRuns (older version)" for UNIMPLEMENTED, the error otherwise. seq is left 0 (SnapshotBoard numbers).
DashboardSnapshot PollCoordinator(AdminClient& client, int runs_limit, int64_t now_ms);

// `fresh` with each part its calls could not get (nullopt) taken from `previous`, so that a coordinator briefly down
// leaves the page showing what it last answered, under the error lines; last_ok_ms is fresh.taken_ms when fresh has
// no error, else previous.last_ok_ms.
DashboardSnapshot KeepLastGoodParts(DashboardSnapshot fresh, const DashboardSnapshot& previous);

struct DashboardPollerOptions {
  absl::Duration interval = absl::Seconds(2);  // Between the end of one poll and the start of the next. Default 2 s.
  int runs_limit = kDashboardMaxRuns;          // ListRuns limit. Default kDashboardMaxRuns.
  std::function<absl::Time()> clock;           // Default absl::Now.
};

class DashboardPoller {
 public:
  // Polls at once, then every options.interval, on its own thread, publishing each snapshot (KeepLastGoodParts of
  // the previous one) to `board`. `client` and `board` must outlive the poller. The client's deadline bounds each
  // call: give the poller a client with a short one (the command's is DashboardPollTimeout).
  DashboardPoller(AdminClient* client, SnapshotBoard* board, DashboardPollerOptions options);
  // Stops: cancels the client's calls in flight and later (AdminClient::CancelPendingCalls, so the client is of no
  // further use) and joins the thread; nothing is published after it returns. Idempotent.
  ~DashboardPoller();
  void Stop();

 private:
  void Loop();

  AdminClient* const client_;
  SnapshotBoard* const board_;
  const DashboardPollerOptions options_;
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// The consortium report of a run for /runs/ID/report (AdminClient::GetRunReport in the command; a fake in tests).
using ReportFetcher = std::function<absl::StatusOr<v1::RunReport>(const std::string& run_id)>;

struct DashboardServerOptions {
  std::string host = "127.0.0.1";  // Address to bind. Default loopback.
  int port = 8080;                 // 0: any free port (DashboardServer::port() says which).
  int threads = 16;                // HTTP worker threads. Default 16.
  int max_event_clients = 8;       // Concurrent /events streams. Default 8 (must stay below `threads`).
  absl::Duration event_stream_max = absl::Minutes(5);  // An /events stream is closed after this. Default 5 min.
  absl::Duration event_keepalive = absl::Seconds(15);  // A comment line when nothing new. Default 15 s.
  int max_report_fetches = 2;                          // Concurrent /runs/ID/report requests. Default 2.
  // Host names (no port) the Host header may name besides the defaults above (--allow-host). Default none.
  std::vector<std::string> allowed_hosts;
};

class DashboardServer {
 public:
  // Binds options.host:options.port and serves on its own thread. `board` must outlive the server. InvalidArgument
  // for bad options; Unavailable naming the address when it cannot be bound.
  static absl::StatusOr<std::unique_ptr<DashboardServer>> Start(SnapshotBoard* board, ReportFetcher reports,
                                                                DashboardServerOptions options);
  // Stops (Stop()).
  ~DashboardServer();

  // Stops accepting, ends the event streams and joins the server thread (after the requests in flight: cancel the
  // report fetcher's calls first). Idempotent. Call board->Close() first, or event streams end only at their next
  // keep-alive.
  void Stop();
  int port() const { return port_; }

 private:
  DashboardServer(SnapshotBoard* board, ReportFetcher reports, DashboardServerOptions options);
  void Route();
  bool HostAllowed(const std::string& host_header) const;

  SnapshotBoard* const board_;
  const ReportFetcher reports_;
  const DashboardServerOptions options_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
  bool loopback_ = true;
  std::atomic<int> event_clients_{0};
  std::atomic<int> report_fetches_{0};
  std::atomic<bool> stopping_{false};
  std::atomic<bool> listen_returned_{false};
};

// True for "localhost", 127.0.0.0/8 literals (dotted quad) and ::1 (also "[::1]"); any case. Not "*.localhost".
bool IsLoopbackHost(const std::string& host);

// True for an IPv4 dotted quad or an IPv6 literal (bare or in brackets).
bool IsIpLiteral(const std::string& host);

}  // namespace fedtune::admin

#endif  // FEDTUNE_COORDINATOR_CLI_DASHBOARD_SERVER_H_
