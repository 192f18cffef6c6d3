#include "coordinator/cli/dashboard_server.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <map>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/html/html.h"
#include "common/logging.h"
#include "coordinator/cli/consortium_report.h"
#include "coordinator/cli/terminal_text.h"

namespace fedtune::admin {
namespace {

constexpr char kHtml[] = "text/html; charset=utf-8";
constexpr char kPageCsp[] =
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

std::string CallError(const absl::Status& status, absl::string_view rpc) {
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return absl::StrCat("coordinator unreachable: ", status.message());
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied:
      return absl::StrCat("certificate refused: ", status.message());
    case absl::StatusCode::kUnimplemented:
      return absl::StrCat("coordinator does not support ", rpc, " (older version): ", status.message());
    default:
      return absl::StrCat(rpc, " failed: ", status.ToString());
  }
}

// A small HTML page for errors (the message is escaped).
std::string ErrorPage(int code, absl::string_view message) {
  return absl::StrCat(html::PageStart(absl::StrCat("Error ", code), html::ReportStyle(60)), "<p>",
                      html::Escape(TerminalSafe(message, kDashboardMaxText)),
                      "</p>\n<p><a href=\"/\">Back to the dashboard</a></p>\n", html::PageEnd());
}

void SendError(httplib::Response& res, int code, absl::string_view message) {
  res.status = code;
  res.set_content(ErrorPage(code, message), kHtml);
}

int HttpCodeFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kInvalidArgument:
      return 400;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return 502;
    default:
      return 500;
  }
}

// The host part of a Host header or listen address: "[::1]:80" -> "::1", "localhost:8080" -> "localhost".
std::string HostPart(absl::string_view host_port) {
  if (absl::StartsWith(host_port, "[")) {
    const size_t close = host_port.find(']');
    return std::string(host_port.substr(1, close == absl::string_view::npos ? absl::string_view::npos : close - 1));
  }
  const size_t colon = host_port.rfind(':');
  if (colon != absl::string_view::npos && host_port.find(':') == colon) return std::string(host_port.substr(0, colon));
  return std::string(host_port);
}

}  // namespace

bool IsLoopbackHost(const std::string& host) {
  const std::string h = absl::AsciiStrToLower(host);
  // Not "*.localhost": a resolver need not map those to loopback (RFC 6761 only asks it to).
  if (h == "localhost" || h == "::1" || h == "[::1]") return true;
  return absl::StartsWith(h, "127.") && IsIpLiteral(h);
}

bool IsIpLiteral(const std::string& host) {
  std::string h = host;
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  in_addr v4;
  in6_addr v6;
  return inet_pton(AF_INET, h.c_str(), &v4) == 1 || inet_pton(AF_INET6, h.c_str(), &v6) == 1;
}

// ---- SnapshotBoard

SnapshotBoard::SnapshotBoard() : latest_(std::make_shared<DashboardSnapshot>()) {}

void SnapshotBoard::Publish(DashboardSnapshot snapshot) {
  absl::MutexLock lock(&mu_);
  snapshot.seq = latest_->seq + 1;
  latest_ = std::make_shared<const DashboardSnapshot>(std::move(snapshot));
}

std::shared_ptr<const DashboardSnapshot> SnapshotBoard::Latest() const {
  absl::MutexLock lock(&mu_);
  return latest_;
}

std::shared_ptr<const DashboardSnapshot> SnapshotBoard::WaitNewer(int64_t seq, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto ready = [this, seq]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closed_ || latest_->seq > seq; };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  return latest_;
}

void SnapshotBoard::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
}

bool SnapshotBoard::closed() const {
  absl::MutexLock lock(&mu_);
  return closed_;
}

// ---- Polling

DashboardSnapshot PollCoordinator(AdminClient& client, int runs_limit, int64_t now_ms) {
  DashboardSnapshot s;
  s.coordinator = client.address();
  absl::StatusOr<v1::ListSitesResponse> sites = client.ListSites();
  if (sites.ok()) {
    s.sites = *std::move(sites);
  } else {
    s.errors.push_back(CallError(sites.status(), "ListSites"));
  }
  // An unreachable or hung coordinator fails every call the same way: one line says it, and a hung one does not
  // cost a deadline per call.
  const bool unreachable =
      !s.errors.empty() && (absl::IsUnavailable(sites.status()) || absl::IsDeadlineExceeded(sites.status()));
  if (!unreachable) {
    absl::StatusOr<v1::RunStatus> run = client.GetRunStatus("");
    if (run.ok()) {
      s.run = *std::move(run);
    } else if (absl::IsNotFound(run.status())) {
      s.no_run = true;
    } else {
      s.errors.push_back(CallError(run.status(), "GetRunStatus"));
    }
    absl::StatusOr<v1::ListRunsResponse> runs = client.ListRuns(runs_limit);
    if (runs.ok()) {
      s.runs = *std::move(runs);
    } else {
      s.errors.push_back(CallError(runs.status(), "ListRuns"));
    }
  }
  s.taken_ms = now_ms;
  return s;
}

DashboardSnapshot KeepLastGoodParts(DashboardSnapshot fresh, const DashboardSnapshot& previous) {
  if (fresh.errors.empty()) {
    fresh.last_ok_ms = fresh.taken_ms;
    return fresh;
  }
  fresh.last_ok_ms = previous.last_ok_ms;
  if (!fresh.sites) fresh.sites = previous.sites;
  if (!fresh.run && !fresh.no_run) {
    fresh.run = previous.run;
    fresh.no_run = previous.no_run;
  }
  if (!fresh.runs) fresh.runs = previous.runs;
  return fresh;
}

DashboardPoller::DashboardPoller(AdminClient* client, SnapshotBoard* board, DashboardPollerOptions options)
    : client_(client), board_(board), options_(std::move(options)) {
  thread_ = std::thread([this] { Loop(); });
}

DashboardPoller::~DashboardPoller() { Stop(); }

void DashboardPoller::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  // A hung coordinator would hold the poll in flight until its deadline.
  client_->CancelPendingCalls();
  if (thread_.joinable()) thread_.join();
}

void DashboardPoller::Loop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
    }
    DashboardSnapshot snapshot = PollCoordinator(*client_, options_.runs_limit, 0);
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return;  // The calls were cancelled: nothing worth showing.
    }
    snapshot.taken_ms = absl::ToUnixMillis(options_.clock ? options_.clock() : absl::Now());
    for (const std::string& e : snapshot.errors) LOG(WARNING) << "dashboard: " << e;
    board_->Publish(KeepLastGoodParts(std::move(snapshot), *board_->Latest()));
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&stop_), options_.interval);
    if (stop_) return;
  }
}

// ---- DashboardServer

DashboardServer::DashboardServer(SnapshotBoard* board, ReportFetcher reports, DashboardServerOptions options)
    : board_(board), reports_(std::move(reports)), options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<DashboardServer>> DashboardServer::Start(SnapshotBoard* board, ReportFetcher reports,
                                                                        DashboardServerOptions options) {
  if (options.host.empty()) return absl::InvalidArgumentError("dashboard listen address: empty host");
  if (options.port < 0 || options.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("dashboard listen port ", options.port, ": must be 0 to 65535"));
  }
  if (options.threads < 2 || options.threads > 256 || options.max_event_clients < 1 ||
      options.max_event_clients >= options.threads || options.max_report_fetches < 1) {
    return absl::InvalidArgumentError(absl::StrCat("dashboard server: ", options.threads, " threads for ",
                                                   options.max_event_clients,
                                                   " event streams: need 2 to 256 threads, more than the streams"));
  }
  std::unique_ptr<DashboardServer> server(new DashboardServer(board, std::move(reports), std::move(options)));
  server->loopback_ = IsLoopbackHost(server->options_.host);
  server->server_ = std::make_unique<httplib::Server>();
  server->Route();
  const std::string host = server->options_.host;
  if (server->options_.port == 0) {
    server->port_ = server->server_->bind_to_any_port(host);
  } else {
    server->port_ = server->server_->bind_to_port(host, server->options_.port) ? server->options_.port : -1;
  }
  if (server->port_ <= 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", host, ":", server->options_.port,
                                               " (address in use, or not an address of this machine)"));
  }
  httplib::Server* raw = server->server_.get();
  DashboardServer* self = server.get();
  server->thread_ = std::thread([self, raw] {
    if (!self->stopping_) raw->listen_after_bind();
    self->listen_returned_ = true;
  });
  // Until the accept loop runs, httplib's stop() would not end it: Stop() must find it running.
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (!raw->is_running()) {
    if (absl::Now() > give_up) return absl::InternalError("the dashboard's HTTP server did not start within 30 s");
    absl::SleepFor(absl::Milliseconds(1));
  }
  return server;
}

DashboardServer::~DashboardServer() { Stop(); }

void DashboardServer::Stop() {
  stopping_ = true;
  if (!thread_.joinable()) return;
  // httplib's stop() does nothing until the accept loop runs (is_running()), which may be after Start gave up
  // waiting for it: stop it once it runs, unless the thread saw stopping_ and never listened.
  bool stopped = false;
  while (!listen_returned_) {
    if (!stopped && server_->is_running()) {
      server_->stop();
      stopped = true;
    }
    absl::SleepFor(absl::Milliseconds(1));
  }
  thread_.join();
}

bool DashboardServer::HostAllowed(const std::string& host_header) const {
  if (host_header.empty()) return true;  // HTTP/1.0 clients; a browser always sends Host.
  const std::string host = absl::AsciiStrToLower(HostPart(host_header));
  if (IsLoopbackHost(host)) return true;
  for (const std::string& allowed : options_.allowed_hosts) {
    if (host == absl::AsciiStrToLower(allowed)) return true;
  }
  if (loopback_) return false;
  // Served to the network on purpose (with a warning). A rebinding attack reaches us under the attacker's DNS name,
  // never under an IP literal, so literals pass; names only when the operator named them (or listens on that name).
  return IsIpLiteral(host) || host == absl::AsciiStrToLower(HostPart(options_.host));
}

void DashboardServer::Route() {
  httplib::Server& svr = *server_;
  const int threads = options_.threads;
  svr.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  // SO_REUSEADDR only: httplib's default also sets SO_REUSEPORT, with which a second dashboard on the same port
  // would start "fine" and share the connections with the first.
  svr.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  svr.set_payload_max_length(1 << 16);
  svr.set_keep_alive_timeout(2);
  svr.set_read_timeout(10);
  svr.set_write_timeout(10);
  svr.set_default_headers({{"X-Content-Type-Options", "nosniff"},
                           {"Referrer-Policy", "no-referrer"},
                           {"X-Frame-Options", "DENY"},
                           {"Cache-Control", "no-store"}});
  svr.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (req.method != "GET" && req.method != "HEAD") {
      res.set_header("Allow", "GET, HEAD");
      SendError(res, 405, "the dashboard is read-only: GET only");
      return httplib::Server::HandlerResponse::Handled;
    }
    if (!HostAllowed(req.get_header_value("Host"))) {
      SendError(res, 403,
                loopback_ ? "the dashboard answers only to localhost (Host header refused)"
                          : "the dashboard answers only to IP addresses, its listen host and the names given with "
                            "--allow-host (Host header refused)");
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });

  svr.Get("/", [this](const httplib::Request&, httplib::Response& res) {
    res.set_header("Content-Security-Policy", kPageCsp);
    res.set_content(DashboardPageHtml(*board_->Latest()), kHtml);
  });
  svr.Get("/static/dashboard.js", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(kDashboardScript, "text/javascript; charset=utf-8");
  });
  svr.Get("/api/state", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(DashboardStateJson(*board_->Latest()), "application/json");
  });
  svr.Get("/events", [this](const httplib::Request&, httplib::Response& res) {
    if (event_clients_.fetch_add(1) >= options_.max_event_clients) {
      --event_clients_;
      res.set_header("Retry-After", "10");
      SendError(res, 503, "too many live pages are open on this dashboard; reload later");
      return;
    }
    struct Stream {
      int64_t sent_seq = 0;
      bool started = false;
      absl::Time end;
      std::map<std::string, std::string> sections;  // What this page shows: the sections sent (DashboardChanged...).
    };
    auto stream = std::make_shared<Stream>();
    stream->end = absl::Now() + options_.event_stream_max;
    res.set_header("X-Accel-Buffering", "no");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, stream](size_t, httplib::DataSink& sink) {
          if (stopping_ || board_->closed()) {
            sink.done();
            return true;
          }
          std::string chunk;
          if (!stream->started) {
            chunk = "retry: 3000\n\n";  // Reconnect after 3 s when the stream ends.
            stream->started = true;
          }
          // Only the sections that changed since the last event are sent: most polls change nothing but the status
          // line, and a snapshot that changes nothing at all sends nothing.
          const absl::Time keepalive_at = absl::Now() + options_.event_keepalive;
          while (true) {
            std::shared_ptr<const DashboardSnapshot> snapshot = board_->Latest();
            if (snapshot->seq <= stream->sent_seq && chunk.empty()) {
              snapshot = board_->WaitNewer(stream->sent_seq, keepalive_at - absl::Now());
            }
            if (stopping_ || board_->closed()) break;
            if (snapshot->seq > stream->sent_seq) {
              stream->sent_seq = snapshot->seq;
              const std::string data = DashboardChangedEventJson(*snapshot, &stream->sections);
              if (!data.empty()) absl::StrAppend(&chunk, "id: ", snapshot->seq, "\ndata: ", data, "\n\n");
            }
            if (!chunk.empty()) break;
            if (absl::Now() >= keepalive_at) {
              chunk = ": keep-alive\n\n";  // Finds a closed connection.
              break;
            }
          }
          if (chunk.empty()) {  // Stopping.
            sink.done();
            return true;
          }
          if (!sink.write(chunk.data(), chunk.size())) return false;
          if (absl::Now() >= stream->end || stopping_) sink.done();
          return true;
        },
        [this](bool) { --event_clients_; });
  });
  svr.Get(R"(/runs/([^/]{1,200})/report)", [this](const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.matches[1];
    if (!RunReportUrl(id)) {
      SendError(res, 400, "a run id is 1 to 64 letters, digits, '.', '_' or '-'");
      return;
    }
    if (report_fetches_.fetch_add(1) >= options_.max_report_fetches) {
      --report_fetches_;
      res.set_header("Retry-After", "5");
      SendError(res, 503, "other reports are being fetched; try again in a few seconds");
      return;
    }
    absl::StatusOr<v1::RunReport> report = reports_(id);
    --report_fetches_;
    if (!report.ok()) {
      SendError(res, HttpCodeFor(report.status()),
                absl::StrCat("the report of run ", id, " is not available: ", report.status().message()));
      return;
    }
    // The consortium report (the same page as `fedtune report`): inline style only, no script.
    res.set_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:");
    res.set_content(ConsortiumReportHtml(*report), kHtml);
  });
  svr.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;  // Our own error page.
    SendError(res, res.status, res.status == 404 ? "no such page" : "error");
    return httplib::Server::HandlerResponse::Handled;
  }));
}

}  // namespace fedtune::admin
