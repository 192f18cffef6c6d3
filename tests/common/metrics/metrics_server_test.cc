#include "common/metrics/metrics_server.h"

#include <httplib.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/io/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/counter.h"
#include "prometheus/registry.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::metrics {
namespace {

using ::testing::HasSubstr;

// GET http://127.0.0.1:port/path; status -1 when the connection failed.
struct Reply {
  int status = -1;
  std::string body;
  std::string content_type;
};
Reply Get(int port, const std::string& path = "/metrics", const std::string& host = "127.0.0.1") {
  httplib::Client client(host, port);
  client.set_connection_timeout(5);
  client.set_read_timeout(10);
  Reply reply;
  if (httplib::Result result = client.Get(path.c_str())) {
    reply.status = result->status;
    reply.body = result->body;
    reply.content_type = result->get_header_value("Content-Type");
  }
  return reply;
}

// The value of the sample line that starts with `series` followed by a space (-1 when absent).
double Sample(const std::string& body, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    if (absl::StartsWith(line, series + " ")) {
      double value = -1;
      if (absl::SimpleAtod(line.substr(series.size() + 1), &value)) return value;
    }
  }
  return -1;
}

std::shared_ptr<prometheus::Registry> RegistryWithCounter(double value) {
  auto registry = std::make_shared<prometheus::Registry>();
  prometheus::BuildCounter()
      .Name("fedtune_test_events_total")
      .Help("Events of the test.")
      .Register(*registry)
      .Add({{"kind", "a"}})
      .Increment(value);
  return registry;
}

// A collectable of one gauge computed when scraped.
class ScrapeCounter : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override {
    prometheus::MetricFamily family;
    family.name = "fedtune_test_scrapes";
    family.help = "Scrapes seen by the collectable.";
    family.type = prometheus::MetricType::Gauge;
    prometheus::ClientMetric metric;
    metric.gauge.value = ++scrapes_;
    family.metric.push_back(metric);
    return {family};
  }

 private:
  mutable std::atomic<int> scrapes_{0};
};

TEST(MetricsServerTest, ServesTheRegistryAndTheProcessMetricsOverHttp) {
  absl::StatusOr<std::unique_ptr<MetricsServer>> server = MetricsServer::Start("127.0.0.1:0", RegistryWithCounter(3));
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  ASSERT_GT(port, 0);
  ASSERT_LE(port, 65535);

  const Reply reply = Get(port);
  ASSERT_EQ(reply.status, 200);
  EXPECT_THAT(reply.content_type, HasSubstr("text/plain"));
  EXPECT_THAT(reply.body, HasSubstr("# TYPE fedtune_test_events_total counter"));
  EXPECT_EQ(Sample(reply.body, "fedtune_test_events_total{kind=\"a\"}"), 3);
  // The process metrics, read from /proc/self: plausible values, not just names.
  EXPECT_GT(Sample(reply.body, "fedtune_process_resident_memory_bytes"), 1 << 20);
  EXPECT_GE(Sample(reply.body, "fedtune_process_virtual_memory_bytes"),
            Sample(reply.body, "fedtune_process_resident_memory_bytes"));
  EXPECT_GE(Sample(reply.body, "fedtune_process_cpu_seconds_total"), 0);
  EXPECT_GE(Sample(reply.body, "fedtune_process_threads"), 2);  // This thread and the server's.
  EXPECT_GE(Sample(reply.body, "fedtune_process_open_fds"), 3);
  EXPECT_GT(Sample(reply.body, "fedtune_process_start_time_seconds"), 1.5e9);
  EXPECT_THAT(reply.body, HasSubstr("# HELP fedtune_process_resident_memory_bytes"));

  // Only /metrics is served.
  EXPECT_EQ(Get(port, "/").status, 404);
}

TEST(MetricsServerTest, ServesCollectablesAtEveryScrapeAndWritesThePortFile) {
  testing::TempDir tmp;
  const std::string port_file = tmp.Join("metrics.port");
  absl::StatusOr<std::unique_ptr<MetricsServer>> server =
      MetricsServer::Start("127.0.0.1:0", RegistryWithCounter(1), port_file, {std::make_shared<ScrapeCounter>()});
  ASSERT_TRUE(server.ok()) << server.status();
  absl::StatusOr<std::string> written = io::ReadFile(port_file);
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(*written, absl::StrCat((*server)->port(), "\n"));
  EXPECT_EQ(Sample(Get((*server)->port()).body, "fedtune_test_scrapes"), 1);
  EXPECT_EQ(Sample(Get((*server)->port()).body, "fedtune_test_scrapes"), 2);
}

TEST(MetricsServerTest, StopsServingWhenDestroyed) {
  absl::StatusOr<std::unique_ptr<MetricsServer>> server = MetricsServer::Start("127.0.0.1:0", RegistryWithCounter(1));
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  ASSERT_EQ(Get(port).status, 200);
  server->reset();
  EXPECT_EQ(Get(port).status, -1);
}

TEST(MetricsServerTest, ATakenPortIsUnavailable) {
  absl::StatusOr<std::unique_ptr<MetricsServer>> first = MetricsServer::Start("127.0.0.1:0", RegistryWithCounter(1));
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string address = absl::StrCat("127.0.0.1:", (*first)->port());
  absl::StatusOr<std::unique_ptr<MetricsServer>> second = MetricsServer::Start(address, RegistryWithCounter(1));
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
  EXPECT_THAT(second.status().message(), HasSubstr(address));
  EXPECT_EQ(Get((*first)->port()).status, 200);  // The first one still serves.
}

TEST(MetricsServerTest, BadAddressesAreInvalidArgumentNamingThem) {
  for (const std::string address :
       {"", "127.0.0.1", "127.0.0.1:", ":9464", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:+80", "127.0.0.1: 80",
        "127.0.0.1:80s", "999.1.1.1:80", "1.2.3:80", "127.0.0.1:1,127.0.0.1:2", "host name:80", "[::1:80", "[]:80",
        "[zz]:80", "::1:80", "127.0.0.1:123456"}) {
    SCOPED_TRACE(address);
    EXPECT_EQ(CheckListenAddress(address).code(), absl::StatusCode::kInvalidArgument);
    absl::StatusOr<std::unique_ptr<MetricsServer>> server = MetricsServer::Start(address, RegistryWithCounter(1));
    ASSERT_FALSE(server.ok());
    EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(server.status().message(), HasSubstr(absl::StrCat("metrics_listen_address \"", address, "\"")));
  }
  for (const std::string address : {"127.0.0.1:0", "127.0.0.1:9464", "0.0.0.0:9464", "localhost:9464", "[::1]:9464",
                                    "[::]:0", "metrics.example.org:9464"}) {
    EXPECT_TRUE(CheckListenAddress(address).ok()) << address << ": " << CheckListenAddress(address);
  }
}

TEST(MetricsServerTest, ServesOnIpv6Loopback) {
  absl::StatusOr<std::unique_ptr<MetricsServer>> server = MetricsServer::Start("[::1]:0", RegistryWithCounter(4));
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(Sample(Get((*server)->port(), "/metrics", "::1").body, "fedtune_test_events_total{kind=\"a\"}"), 4);
}

TEST(MetricsServerTest, AHostNameIsResolved) {
  absl::StatusOr<std::unique_ptr<MetricsServer>> server = MetricsServer::Start("localhost:0", RegistryWithCounter(2));
  ASSERT_TRUE(server.ok()) << server.status();
  // localhost resolves to ::1 or 127.0.0.1: the client tries both, as a scraper of "localhost" would.
  EXPECT_EQ(Sample(Get((*server)->port(), "/metrics", "localhost").body, "fedtune_test_events_total{kind=\"a\"}"), 2);
}

TEST(MetricsServerTest, APortFileThatCannotBeWrittenIsAnErrorNamingTheField) {
  absl::StatusOr<std::unique_ptr<MetricsServer>> server =
      MetricsServer::Start("127.0.0.1:0", RegistryWithCounter(1), "/nonexistent-dir/sub/metrics.port");
  ASSERT_FALSE(server.ok());
  EXPECT_THAT(server.status().message(), HasSubstr("metrics_port_file"));
}

TEST(MetricsServerTest, LoopbackHosts) {
  for (const char* host : {"127.0.0.1", "127.1.2.3", "localhost", "LOCALHOST", "::1", "[::1]"}) {
    EXPECT_TRUE(IsLoopbackHost(host)) << host;
  }
  for (const char* host : {"0.0.0.0", "10.0.0.1", "[::]", "example.org", ""})
    EXPECT_FALSE(IsLoopbackHost(host)) << host;
}

}  // namespace
}  // namespace fedtune::metrics
