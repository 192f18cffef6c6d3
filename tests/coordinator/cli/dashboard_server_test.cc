// The dashboard's HTTP server (coordinator/cli/dashboard_server.h) over real loopback HTTP with cpp-httplib's client:
// the page, the script, /api/state, the report route, refusals (method, Host header, bad run id), the event stream
// (a new snapshot arrives without asking, not compressed even when the client accepts gzip), its bound, a clean stop
// with a stream open; and PollCoordinator and DashboardPoller against an unreachable or hung coordinator.
#include "coordinator/cli/dashboard_server.h"

#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "coordinator/cli/consortium_report.h"
#include "coordinator/cli/dashboard_command.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/coordinator/cli/run_report_fixture.h"

namespace fedtune::admin {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

DashboardSnapshot Snapshot(int round) {
  DashboardSnapshot s;
  s.taken_ms = 1'700'000'000'000;
  s.coordinator = "localhost:1";
  v1::ListSitesResponse sites;
  sites.add_sites()->set_site_id("site-a");
  sites.add_sites()->set_site_id("site-b");
  s.sites = sites;
  v1::RunStatus run = testing::MakeRunReport().status();
  run.set_current_round(round);
  run.mutable_config()->set_rounds(5);
  s.run = run;
  s.runs = v1::ListRunsResponse();
  return s;
}

// Polls `done` until it holds or 20 s passed.
bool Eventually(const std::function<bool()>& done) {
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (!done()) {
    if (absl::Now() > give_up) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

class DashboardServerTest : public ::testing::Test {
 protected:
  void Start(DashboardServerOptions options = {}) {
    options.host = "127.0.0.1";
    options.port = 0;
    options.event_keepalive = absl::Milliseconds(100);
    auto server = DashboardServer::Start(
        &board_,
        [this](const std::string& id) -> absl::StatusOr<v1::RunReport> {
          reports_asked_.push_back(id);
          if (id != "run-7") return absl::NotFoundError(absl::StrCat("no run ", id, " <b>"));
          return testing::MakeRunReport();
        },
        options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ASSERT_GT(server_->port(), 0);
  }
  void TearDown() override {
    board_.Close();
    if (server_) server_->Stop();
  }
  httplib::Client Client() {
    httplib::Client client("127.0.0.1", server_->port());
    client.set_read_timeout(20);
    client.set_connection_timeout(5);
    return client;
  }

  SnapshotBoard board_;
  std::unique_ptr<DashboardServer> server_;
  std::vector<std::string> reports_asked_;
};

TEST_F(DashboardServerTest, ServesThePageScriptStateAndReports) {
  Start();
  board_.Publish(Snapshot(3));
  httplib::Client client = Client();
  auto page = client.Get("/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  EXPECT_THAT(page->get_header_value("Content-Type"), HasSubstr("text/html"));
  EXPECT_THAT(page->get_header_value("Content-Security-Policy"), HasSubstr("default-src 'none'; script-src 'self'"));
  EXPECT_EQ(page->get_header_value("X-Content-Type-Options"), "nosniff");
  EXPECT_THAT(page->body, HasSubstr("id=\"current-round\" data-round=\"3\" data-rounds=\"5\""));
  EXPECT_THAT(page->body, HasSubstr("data-site=\"site-b\""));
  EXPECT_THAT(page->body, HasSubstr("<body data-seq=\"1\">"));

  auto script = client.Get("/static/dashboard.js");
  ASSERT_TRUE(script);
  EXPECT_EQ(script->status, 200);
  EXPECT_THAT(script->get_header_value("Content-Type"), HasSubstr("text/javascript"));
  EXPECT_EQ(script->body, kDashboardScript);

  auto state = client.Get("/api/state");
  ASSERT_TRUE(state);
  EXPECT_EQ(state->status, 200);
  EXPECT_EQ(state->get_header_value("Content-Type"), "application/json");
  const nlohmann::json parsed = nlohmann::json::parse(state->body);
  EXPECT_EQ(parsed["seq"], 1);
  EXPECT_EQ(parsed["run"]["current_round"], 3);

  auto report = client.Get("/runs/run-7/report");
  ASSERT_TRUE(report);
  EXPECT_EQ(report->status, 200);
  EXPECT_EQ(report->body, ConsortiumReportHtml(testing::MakeRunReport()));
  EXPECT_THAT(report->get_header_value("Content-Security-Policy"), HasSubstr("default-src 'none'"));

  auto missing = client.Get("/runs/run-8/report");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  EXPECT_THAT(missing->body, HasSubstr("no run run-8 &lt;b&gt;"));
  EXPECT_EQ(reports_asked_, (std::vector<std::string>{"run-7", "run-8"}));
}

TEST_F(DashboardServerTest, RefusesWritesForeignHostsBadIdsAndUnknownPages) {
  Start();
  board_.Publish(Snapshot(1));
  httplib::Client client = Client();
  auto post = client.Post("/", "x", "text/plain");
  ASSERT_TRUE(post);
  EXPECT_EQ(post->status, 405);
  auto rebinding = client.Get("/", {{"Host", "evil.example:8080"}});
  ASSERT_TRUE(rebinding);
  EXPECT_EQ(rebinding->status, 403);
  EXPECT_THAT(rebinding->body, Not(HasSubstr("site-a")));
  for (const char* host : {"localhost:8080", "127.0.0.1", "[::1]:80"}) {
    auto ok = client.Get("/api/state", {{"Host", host}});
    ASSERT_TRUE(ok);
    EXPECT_EQ(ok->status, 200) << host;
  }
  // An attacker's name under .localhost, or any other IP literal, is no loopback name.
  for (const char* host : {"evil.localhost:8080", "10.0.0.1:8080", "dashboard.example.org"}) {
    auto refused = client.Get("/api/state", {{"Host", host}});
    ASSERT_TRUE(refused);
    EXPECT_EQ(refused->status, 403) << host;
  }
  auto bad_id = client.Get("/runs/..%2Fx/report");
  ASSERT_TRUE(bad_id);
  EXPECT_NE(bad_id->status, 200);
  auto bad_chars = client.Get("/runs/run%3Cb%3E/report");
  ASSERT_TRUE(bad_chars);
  EXPECT_EQ(bad_chars->status, 400);
  auto unknown = client.Get("/etc/passwd");
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->status, 404);
  EXPECT_TRUE(reports_asked_.empty());
}

// Reads an event stream on its own thread until told to stop.
class EventReader {
 public:
  EventReader(int port, httplib::Headers headers) {
    thread_ = std::thread([this, port, headers] {
      httplib::Client client("127.0.0.1", port);
      client.set_read_timeout(20);
      auto response = client.Get(
          "/events", headers,
          [this](const httplib::Response& r) {
            absl::MutexLock lock(&mu_);
            status_ = r.status;
            encoding_ = r.get_header_value("Content-Encoding");
            type_ = r.get_header_value("Content-Type");
            return true;
          },
          [this](const char* data, size_t n) {
            absl::MutexLock lock(&mu_);
            text_.append(data, n);
            return !stop_;
          });
      absl::MutexLock lock(&mu_);
      finished_ = true;
      if (response && status_ == 0) status_ = response->status;
    });
  }
  ~EventReader() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    thread_.join();
  }
  std::string text() {
    absl::MutexLock lock(&mu_);
    return text_;
  }
  int status() {
    absl::MutexLock lock(&mu_);
    return status_;
  }
  std::string encoding() {
    absl::MutexLock lock(&mu_);
    return encoding_;
  }
  std::string type() {
    absl::MutexLock lock(&mu_);
    return type_;
  }
  bool finished() {
    absl::MutexLock lock(&mu_);
    return finished_;
  }

 private:
  absl::Mutex mu_;
  std::string text_ ABSL_GUARDED_BY(mu_);
  int status_ ABSL_GUARDED_BY(mu_) = 0;
  std::string encoding_ ABSL_GUARDED_BY(mu_);
  std::string type_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

TEST_F(DashboardServerTest, AllowsTheHostNamesTheOperatorGave) {
  DashboardServerOptions options;
  options.allowed_hosts = {"dashboard.example.org"};
  Start(options);
  httplib::Client client = Client();
  auto allowed = client.Get("/api/state", {{"Host", "Dashboard.Example.org:8080"}});
  ASSERT_TRUE(allowed);
  EXPECT_EQ(allowed->status, 200);
  auto other = client.Get("/api/state", {{"Host", "evil.example.org:8080"}});
  ASSERT_TRUE(other);
  EXPECT_EQ(other->status, 403);
}

// A non-loopback listen address (the wildcard, so that the test reaches it over loopback): IP literals, the listen
// host and the allowed names pass; any other name (a rebinding attacker's) is refused.
TEST(DashboardServerNetworkTest, RefusesForeignNamesOnANetworkAddress) {
  SnapshotBoard board;
  DashboardServerOptions options;
  options.host = "0.0.0.0";
  options.port = 0;
  options.allowed_hosts = {"dashboard.example.org"};
  auto server = DashboardServer::Start(&board, nullptr, options);
  ASSERT_TRUE(server.ok()) << server.status();
  httplib::Client client("127.0.0.1", (*server)->port());
  client.set_read_timeout(20);
  for (const char* host : {"10.1.2.3:8080", "[2001:db8::1]:8080", "0.0.0.0", "dashboard.example.org", "localhost"}) {
    auto ok = client.Get("/api/state", {{"Host", host}});
    ASSERT_TRUE(ok);
    EXPECT_EQ(ok->status, 200) << host;
  }
  for (const char* host : {"evil.example:8080", "10.1.2.3.evil.example", "evil.localhost"}) {
    auto refused = client.Get("/api/state", {{"Host", host}});
    ASSERT_TRUE(refused);
    EXPECT_EQ(refused->status, 403) << host;
    EXPECT_THAT(refused->body, HasSubstr("--allow-host"));
  }
  board.Close();
}

TEST_F(DashboardServerTest, EventsPushEachNewSnapshotUncompressed) {
  Start();
  board_.Publish(Snapshot(1));
  // What a browser sends: compression would hold the events back in the compressor.
  EventReader reader(server_->port(), {{"Accept-Encoding", "gzip, deflate, br"}});
  ASSERT_TRUE(Eventually([&] { return absl::StrContains(reader.text(), "id: 1\ndata: {"); })) << reader.text();
  EXPECT_EQ(reader.status(), 200);
  EXPECT_EQ(reader.encoding(), "");
  EXPECT_THAT(reader.type(), HasSubstr("text/event-stream"));
  EXPECT_THAT(reader.text(), HasSubstr("retry: 3000"));
  EXPECT_THAT(reader.text(), HasSubstr("data-round=\\\"1\\\""));
  board_.Publish(Snapshot(2));
  ASSERT_TRUE(Eventually([&] { return absl::StrContains(reader.text(), "id: 2\ndata: {"); })) << reader.text();
  const std::string text = reader.text();
  const size_t at = text.find("id: 2\ndata: ");
  const std::string data = text.substr(at + 12, text.find('\n', at + 12) - at - 12);
  const nlohmann::json event = nlohmann::json::parse(data);
  EXPECT_EQ(event["seq"], 2);
  EXPECT_THAT(event["sections"]["run-section"].get<std::string>(), HasSubstr("data-round=\"2\""));
  // Nothing new: keep-alive comments only.
  ASSERT_TRUE(Eventually([&] { return absl::StrContains(reader.text(), ": keep-alive"); }));
  EXPECT_THAT(reader.text(), Not(HasSubstr("\nid: 3\ndata:")));
  // Each event carries only the sections that changed: a snapshot with the same content changes only the status
  // line (its number), ...
  auto event_of = [&](int seq) {
    const std::string t = reader.text();
    const std::string head = absl::StrCat("\nid: ", seq, "\ndata: ");
    const size_t at = t.find(head) + head.size();
    return nlohmann::json::parse(t.substr(at, t.find('\n', at) - at));
  };
  board_.Publish(Snapshot(2));
  ASSERT_TRUE(Eventually([&] { return absl::StrContains(reader.text(), "\nid: 3\ndata: {"); })) << reader.text();
  const nlohmann::json same = event_of(3);
  EXPECT_EQ(same["sections"].size(), 1u) << same.dump();
  EXPECT_TRUE(same["sections"].contains("snapshot-status")) << same.dump();
  // ... and one that changes the run also sends the run's section, not the unchanged sites and runs.
  board_.Publish(Snapshot(3));
  ASSERT_TRUE(Eventually([&] { return absl::StrContains(reader.text(), "\nid: 4\ndata: {"); })) << reader.text();
  const nlohmann::json changed = event_of(4);
  EXPECT_EQ(changed["seq"], 4);
  EXPECT_TRUE(changed["sections"].contains("run-section")) << changed.dump();
  EXPECT_FALSE(changed["sections"].contains("sites-section")) << changed.dump();
  EXPECT_FALSE(changed["sections"].contains("runs-section")) << changed.dump();
}

TEST_F(DashboardServerTest, EventStreamsAreBoundedAndEndWhenTheServerStops) {
  DashboardServerOptions options;
  options.max_event_clients = 1;
  options.threads = 4;
  Start(options);
  board_.Publish(Snapshot(1));
  auto first = std::make_unique<EventReader>(server_->port(), httplib::Headers{});
  ASSERT_TRUE(Eventually([&] { return absl::StrContains(first->text(), "id: 1"); }));
  httplib::Client client = Client();
  auto second = client.Get("/events");
  ASSERT_TRUE(second);
  EXPECT_EQ(second->status, 503);
  // The page itself still loads while a stream is open.
  auto page = client.Get("/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  // Stopping ends the open stream promptly.
  const absl::Time before = absl::Now();
  board_.Close();
  server_->Stop();
  EXPECT_TRUE(Eventually([&] { return first->finished(); }));
  EXPECT_LT(absl::Now() - before, absl::Seconds(15));
}

TEST_F(DashboardServerTest, StreamsEndAfterTheirMaximumAndTheSlotIsFreed) {
  DashboardServerOptions options;
  options.max_event_clients = 1;
  options.threads = 4;
  options.event_stream_max = absl::Milliseconds(300);
  Start(options);
  board_.Publish(Snapshot(1));
  auto first = std::make_unique<EventReader>(server_->port(), httplib::Headers{});
  ASSERT_TRUE(Eventually([&] { return first->finished(); }));
  EXPECT_THAT(first->text(), HasSubstr("id: 1"));
  EventReader second(server_->port(), httplib::Headers{});
  ASSERT_TRUE(Eventually([&] { return absl::StrContains(second.text(), "id: 1"); })) << second.status();
}

TEST(DashboardServerStartTest, RefusesBadOptionsAndABusyPort) {
  SnapshotBoard board;
  DashboardServerOptions options;
  options.port = 70000;
  EXPECT_TRUE(absl::IsInvalidArgument(DashboardServer::Start(&board, nullptr, options).status()));
  options.port = 0;
  options.max_event_clients = options.threads;
  EXPECT_TRUE(absl::IsInvalidArgument(DashboardServer::Start(&board, nullptr, options).status()));
  options = DashboardServerOptions();
  options.port = 0;
  auto first = DashboardServer::Start(&board, nullptr, options);
  ASSERT_TRUE(first.ok()) << first.status();
  options.port = (*first)->port();
  absl::Status busy = DashboardServer::Start(&board, nullptr, options).status();
  EXPECT_TRUE(absl::IsUnavailable(busy)) << busy;
  EXPECT_THAT(std::string(busy.message()), HasSubstr(absl::StrCat("127.0.0.1:", options.port)));
}

TEST(SnapshotBoardTest, NumbersSnapshotsAndWakesWaiters) {
  SnapshotBoard board;
  EXPECT_EQ(board.Latest()->seq, 0);
  board.Publish(DashboardSnapshot());
  board.Publish(DashboardSnapshot());
  EXPECT_EQ(board.Latest()->seq, 2);
  EXPECT_EQ(board.WaitNewer(0, absl::Seconds(10))->seq, 2);
  std::thread publisher([&] {
    absl::SleepFor(absl::Milliseconds(50));
    board.Publish(DashboardSnapshot());
  });
  EXPECT_EQ(board.WaitNewer(2, absl::Seconds(20))->seq, 3);
  publisher.join();
  EXPECT_EQ(board.WaitNewer(3, absl::Milliseconds(10))->seq, 3);  // Timed out: the latest.
  board.Close();
  EXPECT_TRUE(board.closed());
  EXPECT_EQ(board.WaitNewer(3, absl::Hours(1))->seq, 3);  // At once.
}

TEST(KeepLastGoodPartsTest, AFailedPollKeepsWhatTheCoordinatorLastAnswered) {
  DashboardSnapshot good = Snapshot(2);
  good.taken_ms = 1000;
  good = KeepLastGoodParts(good, DashboardSnapshot());
  EXPECT_EQ(good.last_ok_ms, 1000);
  DashboardSnapshot down;
  down.taken_ms = 2000;
  down.errors = {"coordinator unreachable: connection refused"};
  DashboardSnapshot shown = KeepLastGoodParts(down, good);
  shown.seq = 2;
  EXPECT_EQ(shown.errors, down.errors);
  EXPECT_EQ(shown.last_ok_ms, 1000);
  EXPECT_EQ(shown.taken_ms, 2000);
  ASSERT_TRUE(shown.sites.has_value());
  EXPECT_EQ(shown.sites->sites_size(), 2);
  ASSERT_TRUE(shown.run.has_value());
  EXPECT_EQ(shown.run->current_round(), 2);
  EXPECT_TRUE(shown.runs.has_value());
  const std::string page = DashboardPageHtml(shown);
  EXPECT_THAT(page, HasSubstr("coordinator unreachable: connection refused"));
  EXPECT_THAT(page, HasSubstr("showing what it last answered"));
  EXPECT_THAT(page, HasSubstr("data-round=\"2\""));
  // Back: the fresh answer wins, also "no run" over an old run.
  DashboardSnapshot back;
  back.taken_ms = 3000;
  back.no_run = true;
  back.sites = v1::ListSitesResponse();
  back.runs = v1::ListRunsResponse();
  const DashboardSnapshot fresh = KeepLastGoodParts(back, shown);
  EXPECT_EQ(fresh.last_ok_ms, 3000);
  EXPECT_FALSE(fresh.run.has_value());
  EXPECT_EQ(fresh.sites->sites_size(), 0);
}

TEST(IsLoopbackHostTest, Addresses) {
  for (const char* host : {"127.0.0.1", "127.1.2.3", "localhost", "LOCALHOST", "::1", "[::1]"}) {
    EXPECT_TRUE(IsLoopbackHost(host)) << host;
  }
  for (const char* host : {"0.0.0.0", "10.0.0.1", "127.0.0.1.evil.example", "evil.example", "", "::", "127.0.0.x",
                           "app.localhost", "localhost.", "127.1", "127.0.0.256"}) {
    EXPECT_FALSE(IsLoopbackHost(host)) << host;
  }
  for (const char* host : {"10.0.0.1", "::", "[2001:db8::1]", "127.0.0.1"}) EXPECT_TRUE(IsIpLiteral(host)) << host;
  for (const char* host : {"", "evil.example", "10.0.0.1.evil", "[10.0.0.1]x", "1.2.3"}) {
    EXPECT_FALSE(IsIpLiteral(host)) << host;
  }
}

// A port where nothing listens: bound, then closed.
int ClosedPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

TEST(PollCoordinatorTest, AnUnreachableCoordinatorIsOneErrorLine) {
  const std::string address = absl::StrCat("127.0.0.1:", ClosedPort());
  // No TLS is needed to find nobody listening (the command's client uses the operator certificate).
  AdminClient client(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()), address, absl::Seconds(5));
  const DashboardSnapshot s = PollCoordinator(client, 10, 1234);
  EXPECT_EQ(s.coordinator, address);
  EXPECT_EQ(s.taken_ms, 1234);
  ASSERT_EQ(s.errors.size(), 1u);
  EXPECT_THAT(s.errors[0], HasSubstr("coordinator unreachable: "));
  EXPECT_THAT(s.errors[0], HasSubstr(address));
  EXPECT_FALSE(s.sites.has_value());
  EXPECT_FALSE(s.run.has_value());
  EXPECT_FALSE(s.runs.has_value());
  const std::string page = DashboardPageHtml(s);
  EXPECT_THAT(page, HasSubstr("<p class=\"error\" id=\"error\">coordinator unreachable: "));
}

// An AdminService that hangs in ListSites (until the call is cancelled, or 60 s pass) and counts the calls.
class HungAdminService final : public v1::AdminService::Service {
 public:
  grpc::Status ListSites(grpc::ServerContext* context, const v1::ListSitesRequest*, v1::ListSitesResponse*) override {
    {
      absl::MutexLock lock(&mu_);
      ++list_sites_;
    }
    const absl::Time give_up = absl::Now() + absl::Seconds(60);
    while (!context->IsCancelled() && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(5));
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "hung");
  }
  grpc::Status GetRunStatus(grpc::ServerContext*, const v1::RunStatusRequest*, v1::RunStatus*) override {
    absl::MutexLock lock(&mu_);
    ++other_calls_;
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "no run");
  }
  grpc::Status ListRuns(grpc::ServerContext*, const v1::ListRunsRequest*, v1::ListRunsResponse*) override {
    absl::MutexLock lock(&mu_);
    ++other_calls_;
    return grpc::Status::OK;
  }
  int list_sites() {
    absl::MutexLock lock(&mu_);
    return list_sites_;
  }
  int other_calls() {
    absl::MutexLock lock(&mu_);
    return other_calls_;
  }

 private:
  absl::Mutex mu_;
  int list_sites_ ABSL_GUARDED_BY(mu_) = 0;
  int other_calls_ ABSL_GUARDED_BY(mu_) = 0;
};

class HungCoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_TRUE(server_ != nullptr);
    ASSERT_GT(port_, 0);
    address_ = absl::StrCat("127.0.0.1:", port_);
  }
  void TearDown() override { server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5))); }
  std::unique_ptr<AdminClient> Client(absl::Duration timeout) {
    return std::make_unique<AdminClient>(grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()), address_,
                                         timeout);
  }

  HungAdminService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::string address_;
};

TEST_F(HungCoordinatorTest, AHungCoordinatorCostsOneDeadlineAndOneErrorLine) {
  std::unique_ptr<AdminClient> client = Client(absl::Milliseconds(300));
  const DashboardSnapshot s = PollCoordinator(*client, 10, 1234);
  ASSERT_EQ(s.errors.size(), 1u);
  EXPECT_THAT(s.errors[0], HasSubstr("coordinator unreachable: "));
  EXPECT_EQ(service_.list_sites(), 1);
  EXPECT_EQ(service_.other_calls(), 0);  // GetRunStatus and ListRuns would each wait for the deadline too.
}

TEST_F(HungCoordinatorTest, StoppingThePollerCancelsTheCallInFlight) {
  // A deadline far beyond what the test waits: only the cancellation can end the call.
  std::unique_ptr<AdminClient> client = Client(absl::Minutes(10));
  SnapshotBoard board;
  auto poller = std::make_unique<DashboardPoller>(client.get(), &board, DashboardPollerOptions());
  ASSERT_TRUE(Eventually([&] { return service_.list_sites() == 1; }));
  const absl::Time before = absl::Now();
  poller->Stop();
  // The hung handler gives up after 60 s: without the cancellation Stop would wait for it.
  EXPECT_LT(absl::Now() - before, absl::Seconds(30));
  EXPECT_EQ(board.Latest()->seq, 0);  // Nothing published after the stop.
  // The client is cancelled for good: a later call fails at once.
  absl::StatusOr<v1::ListSitesResponse> later = client->ListSites();
  EXPECT_TRUE(absl::IsCancelled(later.status())) << later.status();
}

TEST(DashboardCommandTest, PollTimeoutAndAllowedHosts) {
  EXPECT_EQ(DashboardPollTimeout(absl::Seconds(30), absl::Seconds(2)), absl::Seconds(5));
  EXPECT_EQ(DashboardPollTimeout(absl::Seconds(30), absl::Seconds(20)), absl::Seconds(20));
  EXPECT_EQ(DashboardPollTimeout(absl::Seconds(30), absl::Seconds(600)), absl::Seconds(30));
  EXPECT_EQ(DashboardPollTimeout(absl::Seconds(2), absl::Seconds(2)), absl::Seconds(2));
  EXPECT_EQ(*ParseAllowedHosts("Dash.Example.org, other-host"),
            (std::vector<std::string>{"dash.example.org", "other-host"}));
  for (const char* bad : {"", "a,,b", "host:8080x/", "a b", "evil.example/x"}) {
    absl::StatusOr<std::vector<std::string>> parsed = ParseAllowedHosts(bad);
    EXPECT_TRUE(absl::IsInvalidArgument(parsed.status())) << bad;
    if (!parsed.ok()) {
      EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("--allow-host")) << bad;
    }
  }
}

TEST(DashboardCommandTest, ListenAddressesAndTheWarning) {
  EXPECT_EQ(*ParseListenAddress("127.0.0.1:8080"), std::make_pair(std::string("127.0.0.1"), 8080));
  EXPECT_EQ(*ParseListenAddress(":0"), std::make_pair(std::string("127.0.0.1"), 0));
  EXPECT_EQ(*ParseListenAddress("[::1]:9000"), std::make_pair(std::string("::1"), 9000));
  EXPECT_EQ(*ParseListenAddress("0.0.0.0:80"), std::make_pair(std::string("0.0.0.0"), 80));
  for (const char* bad : {"", "8080", "host:", "host:port", "host:70000", "host:-1", "[::1]", "[::1]9", "::1:80"}) {
    absl::StatusOr<std::pair<std::string, int>> parsed = ParseListenAddress(bad);
    EXPECT_TRUE(absl::IsInvalidArgument(parsed.status())) << bad;
    if (!parsed.ok()) {
      EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("--listen")) << bad;
    }
  }
  EXPECT_EQ(ListenWarning("127.0.0.1", 8080), "");
  EXPECT_EQ(ListenWarning("localhost", 8080), "");
  const std::string warning = ListenWarning("0.0.0.0", 8080);
  EXPECT_THAT(warning, HasSubstr("warning"));
  EXPECT_THAT(warning, HasSubstr("no authentication"));
  EXPECT_THAT(warning, HasSubstr("0.0.0.0:8080"));
}

}  // namespace
}  // namespace fedtune::admin
