// Test helpers for the site agent's Prometheus metrics (site_agent/agent/site_metrics.h): scrape an endpoint with
// cpp-httplib's client, read one sample of the text exposition, and run `promtool check metrics` on a scrape.
#ifndef FEDTUNE_TESTS_SITE_AGENT_AGENT_METRICS_SCRAPE_H_
#define FEDTUNE_TESTS_SITE_AGENT_AGENT_METRICS_SCRAPE_H_

#include <httplib.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"

namespace fedtune::agent::testing {

// GET http://127.0.0.1:PORT/metrics; gtest-fails (and returns "") unless it answers 200 with the text format.
inline std::string ScrapeMetrics(int port) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(10);
  client.set_read_timeout(30);
  httplib::Result result = client.Get("/metrics");
  if (!result) {
    ADD_FAILURE() << "GET http://127.0.0.1:" << port << "/metrics: " << httplib::to_string(result.error());
    return "";
  }
  EXPECT_EQ(result->status, 200);
  EXPECT_NE(result->get_header_value("Content-Type").find("text/plain"), std::string::npos);
  return result->body;
}

// The value of the sample `series` (name and labels exactly as exposed, e.g. `fedtune_site_state{state="idle"}`) in
// the text exposition `text`; NaN when there is no such sample.
inline double MetricValue(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::ConsumePrefix(&line, series) || !absl::ConsumePrefix(&line, " ")) continue;
    // A value, optionally followed by a timestamp.
    const std::string value(line.substr(0, line.find(' ')));
    if (value == "+Inf") return INFINITY;
    double v = 0;
    if (absl::SimpleAtod(value, &v)) return v;
    ADD_FAILURE() << "unparsable sample: " << series << " " << line;
    return NAN;
  }
  return NAN;
}

// Runs `promtool check metrics` (Debian's prometheus package) on `text` (written to `path` first); returns its exit
// status and puts its output into `output`. -1 when it could not be run.
inline int PromtoolCheck(const std::string& text, const std::string& path, std::string* output) {
  {
    std::ofstream out(path, std::ios::binary);
    out << text;
  }
  const std::string command = absl::StrCat("promtool check metrics < '", path, "' 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return -1;
  char buffer[4096];
  size_t n = 0;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) output->append(buffer, n);
  const int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace fedtune::agent::testing

#endif  // FEDTUNE_TESTS_SITE_AGENT_AGENT_METRICS_SCRAPE_H_
