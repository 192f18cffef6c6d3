#include "coordinator/cli/dashboard_page.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/federation/failure_stage.h"
#include "common/federation/states.h"
#include "common/html/html.h"
#include "coordinator/cli/consortium_view.h"
#include "coordinator/cli/report_format.h"
#include "coordinator/cli/terminal_text.h"
#include "nlohmann/json.hpp"

namespace fedtune::admin {
namespace {

using nlohmann::json;

constexpr char kStatusId[] = "snapshot-status";
constexpr char kSitesId[] = "sites-section";
constexpr char kRunId[] = "run-section";
constexpr char kRunsId[] = "runs-section";

// Network text, made safe and bounded: for JSON (valid UTF-8, no control character) and for HTML (also escaped).
std::string Safe(absl::string_view text) { return TerminalSafe(text, kDashboardMaxText); }
std::string H(absl::string_view text) { return html::Escape(Safe(text)); }

std::optional<double> Loss(double value) { return consortium::ReportedLoss(value); }

json Nullable(std::optional<double> value) { return value ? json(*value) : json(nullptr); }

bool HasFailure(const v1::SiteFailure& f) { return f.has_report() || f.received_ms() > 0; }

// A state class for the page's colours: "bad" (lost, revoked, failed), "warn" (retrying), "" otherwise.
std::string StateClass(absl::string_view state) {
  const std::string s = absl::AsciiStrToLower(state);
  if (absl::StartsWith(s, "lost") || absl::StartsWith(s, "revoked") || absl::StartsWith(s, "failed") ||
      absl::StartsWith(s, "aborted")) {
    return "bad";
  }
  if (absl::StartsWith(s, "retrying") || absl::StartsWith(s, "pending")) return "warn";
  if (absl::StartsWith(s, "completed") || absl::StartsWith(s, "approved")) return "good";
  return "";
}

std::string StateSpan(absl::string_view state) {
  const std::string cls = StateClass(state);
  return absl::StrCat("<span class=\"state", cls.empty() ? "" : " " + cls, "\">", state.empty() ? "-" : H(state),
                      "</span>");
}

std::string DatasetText(const v1::DatasetSummary& d) {
  if (d.images() == 0 && d.train_images() == 0 && d.test_images() == 0) return "-";
  std::string text = absl::StrCat(d.images(), " images");
  if (d.train_images() + d.validation_images() + d.test_images() > 0) {
    absl::StrAppend(&text, " (train ", d.train_images(), ", val ", d.validation_images(), ", test ", d.test_images(),
                    ")");
  }
  if (d.studies() > 0 || d.patients() > 0)
    absl::StrAppend(&text, "; ", d.studies(), " studies, ", d.patients(), " patients");
  return text;
}

json FailureJson(const v1::SiteFailure& f) {
  if (!HasFailure(f)) return nullptr;
  const v1::FailureReport& r = f.report();
  json lines = json::array();
  for (int i = 0; i < r.log_lines_size() && i < kDashboardMaxLogLines; ++i) lines.push_back(Safe(r.log_lines(i)));
  return {{"run_id", Safe(r.run_id())},
          {"round", r.round()},
          {"stage", std::string(federation::FailureStageText(r.stage()))},
          {"error_class", Safe(r.error_class())},
          {"status_code", r.status_code()},
          {"message", Safe(r.message())},
          {"log_lines", lines},
          {"will_retry", r.will_retry()},
          {"failed_ms", r.failed_ms()},
          {"received_ms", f.received_ms()}};
}

// A failure report in a table cell: "training: DATA_LOSS: message (run-0001 round 2, 12s ago)", its log lines folded.
std::string FailureHtml(const v1::SiteFailure& f, int64_t now_ms, absl::string_view key) {
  if (!HasFailure(f)) return "<span class=\"none\">-</span>";
  const v1::FailureReport& r = f.report();
  std::string where;
  if (!r.run_id().empty())
    absl::StrAppend(&where, H(r.run_id()), r.round() > 0 ? absl::StrCat(" round ", r.round()) : "", ", ");
  absl::StrAppend(&where, FormatAgo(f.received_ms(), now_ms), r.will_retry() ? ", retrying" : "");
  const absl::string_view stage = federation::FailureStageText(r.stage());
  std::string out = absl::StrCat("<div class=\"failure\" data-stage=\"", stage, "\"><b>", stage, "</b>: <code>",
                                 H(r.error_class().empty() ? "UNKNOWN" : r.error_class()), "</code> ", H(r.message()),
                                 " <span class=\"note\">(", where, ")</span>");
  if (r.log_lines_size() > 0) {
    absl::StrAppend(&out, "<details data-key=\"", html::Escape(key), "\"><summary>last log lines</summary><pre>");
    for (int i = 0; i < r.log_lines_size() && i < kDashboardMaxLogLines; ++i)
      absl::StrAppend(&out, H(r.log_lines(i)), "\n");
    absl::StrAppend(&out, "</pre></details>");
  }
  absl::StrAppend(&out, "</div>");
  return out;
}

// The mean losses of each round: the closed attempt's updates, else the latest attempt's. The latest
// kDashboardMaxChartRounds rounds.
struct RoundLoss {
  int round = 0;
  std::optional<double> train;
  std::optional<double> validation;
};

std::vector<RoundLoss> LossesOf(const v1::RunStatus& run) {
  std::map<int, std::pair<bool, RoundLoss>> by_round;  // round -> (from a closed attempt, losses)
  for (const v1::RoundInfo& r : run.rounds()) {
    const absl::StatusOr<federation::RoundState> state = federation::GetState(r);
    const bool closed = state.ok() && *state == federation::RoundState::kClosed;
    const consortium::RoundTotals totals = consortium::TotalsOf(r);
    auto it = by_round.find(r.round());
    if (it != by_round.end() && it->second.first && !closed) continue;
    by_round[r.round()] = {closed, RoundLoss{r.round(), totals.mean_train_loss, totals.mean_validation_loss}};
  }
  std::vector<RoundLoss> out;
  for (const auto& [round, entry] : by_round) {
    if (entry.second.train || entry.second.validation) out.push_back(entry.second);
  }
  if (out.size() > static_cast<size_t>(kDashboardMaxChartRounds)) {
    out.erase(out.begin(), out.end() - kDashboardMaxChartRounds);
  }
  return out;
}

int ClosedRounds(const v1::RunStatus& run) {
  std::vector<int> closed;
  for (const v1::RoundInfo& r : run.rounds()) {
    const absl::StatusOr<federation::RoundState> state = federation::GetState(r);
    if (state.ok() && *state == federation::RoundState::kClosed) closed.push_back(r.round());
  }
  std::sort(closed.begin(), closed.end());
  return static_cast<int>(std::unique(closed.begin(), closed.end()) - closed.begin());
}

std::string ReportLink(absl::string_view run_id, absl::string_view text) {
  const std::optional<std::string> url = RunReportUrl(run_id);
  if (!url) return "-";
  return absl::StrCat("<a href=\"", *url, "\">", text, "</a>");
}

json ReportUrlJson(absl::string_view run_id) {
  const std::optional<std::string> url = RunReportUrl(run_id);
  return url ? json(*url) : json(nullptr);
}

double Progress(double p) { return std::isfinite(p) ? std::clamp(p, 0.0, 1.0) : 0.0; }

// ---- Sections

std::string StatusSection(const DashboardSnapshot& s) {
  std::string out = absl::StrCat("<section id=\"", kStatusId, "\" data-seq=\"", s.seq, "\" data-ok=\"",
                                 s.errors.empty() && s.seq > 0 ? "true" : "false", "\">\n<p class=\"status\">");
  if (s.seq == 0) {
    absl::StrAppend(&out, "Waiting for the first answer of coordinator ", H(s.coordinator), "&hellip;");
  } else {
    absl::StrAppend(&out, "Coordinator <code>", H(s.coordinator), "</code>, snapshot ", s.seq, " taken ",
                    FormatTimeMs(s.taken_ms));
  }
  if (!s.errors.empty() && s.seq > 0) {
    absl::StrAppend(&out, s.last_ok_ms > 0
                              ? absl::StrCat("; showing what it last answered, at ", FormatTimeMs(s.last_ok_ms))
                              : "; no answer yet");
  }
  absl::StrAppend(&out, "</p>\n");
  for (size_t i = 0; i < s.errors.size() && i < static_cast<size_t>(kDashboardMaxErrors); ++i) {
    absl::StrAppend(&out, "<p class=\"error\"", i == 0 ? " id=\"error\"" : "", ">", H(s.errors[i]), "</p>\n");
  }
  absl::StrAppend(&out, "</section>");
  return out;
}

std::string SitesSection(const DashboardSnapshot& s) {
  std::string out = absl::StrCat("<section id=\"", kSitesId, "\">\n<h2>Sites</h2>\n");
  if (!s.sites) return absl::StrCat(out, "<p class=\"note\">Not known yet (see the error above).</p>\n</section>");
  if (s.sites->sites_size() == 0) {
    return absl::StrCat(out, "<p class=\"note\">No site has contacted the coordinator yet.</p>\n</section>");
  }
  absl::StrAppend(&out,
                  "<table id=\"sites\">\n<tr><th>site</th><th>status</th><th>state</th><th>last seen</th>"
                  "<th>dataset</th><th>agent</th><th>last failure</th></tr>\n");
  int shown = 0;
  for (const v1::SiteInfo& site : s.sites->sites()) {
    if (shown++ >= kDashboardMaxSites) break;
    const v1::Capabilities& c = site.capabilities();
    std::string agent = c.agent_version().empty() ? "-" : H(c.agent_version());
    if (!c.device().empty()) absl::StrAppend(&agent, " <span class=\"note\">", H(c.device()), "</span>");
    absl::StrAppend(&out, "<tr data-site=\"", H(site.site_id()), "\"><td class=\"label\">", H(site.site_id()),
                    "</td><td>", StateSpan(federation::DisplayText(site)), "</td><td>", StateSpan(site.state()),
                    "</td><td>", FormatAgo(site.last_seen_ms(), s.taken_ms), "</td><td>", DatasetText(site.dataset()),
                    "</td><td>", agent, "</td><td class=\"text\">",
                    FailureHtml(site.last_failure(), s.taken_ms, absl::StrCat("site/", Safe(site.site_id()))),
                    "</td></tr>\n");
  }
  absl::StrAppend(&out, "</table>\n");
  if (s.sites->sites_size() > kDashboardMaxSites) {
    absl::StrAppend(&out, "<p class=\"note\">", s.sites->sites_size() - kDashboardMaxSites,
                    " more sites not shown (the first ", kDashboardMaxSites, " by id).</p>\n");
  }
  absl::StrAppend(&out, "</section>");
  return out;
}

std::string RoundsTable(const v1::RunStatus& run) {
  if (run.rounds_size() == 0) return "";
  std::string out =
      "<table id=\"rounds\">\n<tr><th>round</th><th>attempt</th><th>state</th><th>accepted</th><th>refused</th>"
      "<th>declined</th><th>mean train loss</th><th>mean val loss</th><th>bytes up</th><th>note</th></tr>\n";
  const int first = std::max(0, run.rounds_size() - kDashboardMaxRoundRows);
  for (int i = run.rounds_size() - 1; i >= first; --i) {
    const v1::RoundInfo& r = run.rounds(i);
    const consortium::RoundTotals t = consortium::TotalsOf(r);
    absl::StrAppend(&out, "<tr data-round=\"", r.round(), "\"><td>", r.round(), "</td><td>", r.attempt(), "</td><td>",
                    StateSpan(federation::DisplayText(r)), "</td><td>", t.accepted, "</td><td>", t.refused, "</td><td>",
                    t.declined, "</td><td>", FormatLoss(t.mean_train_loss), "</td><td>",
                    FormatLoss(t.mean_validation_loss), "</td><td>", FormatBytes(t.bytes), "</td><td class=\"text\">",
                    H(r.message()), "</td></tr>\n");
  }
  absl::StrAppend(&out, "</table>\n");
  if (first > 0)
    absl::StrAppend(&out, "<p class=\"note\">The latest ", kDashboardMaxRoundRows, " round attempts.</p>\n");
  return out;
}

std::string RunSection(const DashboardSnapshot& s) {
  std::string out = absl::StrCat("<section id=\"", kRunId, "\"");
  if (!s.run) {
    absl::StrAppend(&out, ">\n<h2>Current run</h2>\n<p class=\"summary\">",
                    s.no_run ? "No run yet." : "Not known yet (see the error above).",
                    " <span id=\"current-round\" data-round=\"0\" data-rounds=\"0\"></span></p>\n</section>");
    return out;
  }
  const v1::RunStatus& run = *s.run;
  const std::string state = federation::DisplayText(run);
  absl::StrAppend(&out, " data-run-id=\"", H(run.run_id()), "\" data-state=\"", H(state), "\">\n<h2>Run ",
                  H(run.run_id()), run.name().empty() ? "" : absl::StrCat(" &ldquo;", H(run.name()), "&rdquo;"), " ",
                  StateSpan(state), "</h2>\n");
  const int planned = run.config().rounds();
  absl::StrAppend(&out, "<p class=\"summary\">Round <span id=\"current-round\" data-round=\"", run.current_round(),
                  "\" data-rounds=\"", planned, "\">", run.current_round(), " of ", planned, "</span> &middot; ",
                  ClosedRounds(run), " closed &middot; traffic ", FormatBytes(run.bytes_down()), " down, ",
                  FormatBytes(run.bytes_up()), " up &middot; started ", FormatTimeMs(run.started_ms()),
                  run.finished_ms() > 0 ? absl::StrCat(", finished ", FormatTimeMs(run.finished_ms())) : "",
                  " &middot; ", ReportLink(run.run_id(), "consortium report"), "</p>\n");
  if (!run.message().empty()) absl::StrAppend(&out, "<p class=\"message\">", H(run.message()), "</p>\n");
  if (run.sites_size() > 0) {
    absl::StrAppend(&out,
                    "<table id=\"run-sites\">\n<tr><th>site</th><th>state</th><th>progress</th><th>train loss</th>"
                    "<th>last seen</th><th>down</th><th>up</th><th>last failure in this run</th></tr>\n");
    int shown = 0;
    for (const v1::SiteRunState& site : run.sites()) {
      if (shown++ >= kDashboardMaxSites) break;
      const double p = Progress(site.progress());
      absl::StrAppend(
          &out, "<tr data-site=\"", H(site.site_id()), "\"><td class=\"label\">", H(site.site_id()), "</td><td>",
          StateSpan(site.state()), "</td><td><progress max=\"1\" value=\"", absl::StrFormat("%.3f", p),
          "\"></progress> ", absl::StrFormat("%.0f%%", 100 * p), "</td><td>", FormatLoss(Loss(site.train_loss())),
          "</td><td>", FormatAgo(site.last_seen_ms(), s.taken_ms), "</td><td>", FormatBytes(site.bytes_down()),
          "</td><td>", FormatBytes(site.bytes_up()), "</td><td class=\"text\">",
          FailureHtml(site.last_failure(), s.taken_ms, absl::StrCat("run/", Safe(site.site_id()))), "</td></tr>\n");
    }
    absl::StrAppend(&out, "</table>\n");
  }
  absl::StrAppend(&out, "<h3>Loss per round</h3>\n", LossChartSvg(run), "\n", RoundsTable(run), "</section>");
  return out;
}

std::string RunsSection(const DashboardSnapshot& s) {
  std::string out = absl::StrCat("<section id=\"", kRunsId, "\">\n<h2>Runs</h2>\n");
  if (!s.runs) return absl::StrCat(out, "<p class=\"note\">Not known (see the error above).</p>\n</section>");
  if (s.runs->runs_size() == 0) return absl::StrCat(out, "<p class=\"note\">No run yet.</p>\n</section>");
  absl::StrAppend(&out,
                  "<table id=\"runs\">\n<tr><th>run</th><th>name</th><th>state</th><th>round</th><th>started</th>"
                  "<th>finished</th><th>down</th><th>up</th><th>report</th></tr>\n");
  int shown = 0;
  for (const v1::RunStatus& run : s.runs->runs()) {
    if (shown++ >= kDashboardMaxRuns) break;
    absl::StrAppend(&out, "<tr data-run-id=\"", H(run.run_id()), "\"><td class=\"label\">", H(run.run_id()),
                    "</td><td class=\"text\">", run.name().empty() ? "-" : H(run.name()), "</td><td>",
                    StateSpan(federation::DisplayText(run)), "</td><td>", run.current_round(), "/",
                    run.config().rounds(), "</td><td>", FormatTimeMs(run.started_ms()), "</td><td>",
                    FormatTimeMs(run.finished_ms()), "</td><td>", FormatBytes(run.bytes_down()), "</td><td>",
                    FormatBytes(run.bytes_up()), "</td><td>", ReportLink(run.run_id(), "report"), "</td></tr>\n");
  }
  absl::StrAppend(&out, "</table>\n");
  if (s.runs->runs_size() > kDashboardMaxRuns) {
    absl::StrAppend(&out, "<p class=\"note\">The latest ", kDashboardMaxRuns, " runs.</p>\n");
  }
  absl::StrAppend(&out, "</section>");
  return out;
}

constexpr char kStyle[] = R"css(
body { max-width: none; margin: 1.2em 2em; }
h1 { display: flex; align-items: baseline; gap: 0.8em; }
h3 { font-size: 1.05em; margin: 1.2em 0 0.4em; }
#live { font-size: 0.55em; font-weight: normal; padding: 0.15em 0.6em; border-radius: 1em; background: #eee; }
#live.ok { background: #e6f4ea; color: #1e6b34; }
#live.stale { background: #fff4e0; color: #8a5300; }
td.text { text-align: left; white-space: normal; max-width: 40em; }
#sites td, #run-sites td { white-space: normal; }
td.label { white-space: nowrap; }
.state.bad { color: #b00020; font-weight: bold; }
.state.warn { color: #a05a00; font-weight: bold; }
.state.good { color: #1e6b34; }
.error { background: #fbe9e7; border-left: 4px solid #b00020; padding: 0.4em 0.8em; }
.message { color: #444; }
.failure code { color: #b00020; }
.failure pre { font-size: 0.85em; background: #f7f7f7; padding: 0.4em; white-space: pre-wrap; }
progress { width: 7em; vertical-align: middle; }
svg text { font-family: inherit; font-size: 11px; fill: #444; }
)css";

}  // namespace

std::optional<std::string> RunReportUrl(absl::string_view run_id) {
  if (run_id.empty() || run_id.size() > 64) return std::nullopt;
  for (char c : run_id) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '_' && c != '-') return std::nullopt;
  }
  if (run_id == "." || run_id == "..") return std::nullopt;
  return absl::StrCat("/runs/", run_id, "/report");
}

std::vector<std::string> DashboardSectionIds() { return {kStatusId, kSitesId, kRunId, kRunsId}; }

std::string DashboardSectionHtml(const DashboardSnapshot& snapshot, absl::string_view id) {
  if (id == kStatusId) return StatusSection(snapshot);
  if (id == kSitesId) return SitesSection(snapshot);
  if (id == kRunId) return RunSection(snapshot);
  if (id == kRunsId) return RunsSection(snapshot);
  return "";
}

std::string DashboardPageHtml(const DashboardSnapshot& snapshot) {
  std::string page = html::PageStart("fedtune dashboard", absl::StrCat(html::ReportStyle(90), kStyle));
  // PageStart ends with the heading; the live indicator goes inside it, the body carries the snapshot number.
  const std::string heading = "<h1>fedtune dashboard</h1>\n";
  if (absl::EndsWith(page, heading)) {
    page.resize(page.size() - heading.size());
    const std::string body = "<body>\n";
    if (absl::EndsWith(page, body)) page.resize(page.size() - body.size());
    absl::StrAppend(&page, "<body data-seq=\"", snapshot.seq,
                    "\">\n<h1>fedtune dashboard <span id=\"live\" class=\"stale\">static snapshot</span></h1>\n");
  }
  absl::StrAppend(&page,
                  "<noscript><p class=\"note\">Without JavaScript this page is a static snapshot: reload it to "
                  "refresh.</p></noscript>\n");
  for (const std::string& id : DashboardSectionIds()) absl::StrAppend(&page, DashboardSectionHtml(snapshot, id), "\n");
  absl::StrAppend(&page,
                  "<p class=\"note\">Read-only view of the coordinator's AdminService, polled by <code>fedtune "
                  "dashboard</code>. JSON: <a href=\"/api/state\">/api/state</a>.</p>\n"
                  "<script src=\"/static/dashboard.js\"></script>\n",
                  html::PageEnd());
  return page;
}

std::string DashboardEventJson(const DashboardSnapshot& snapshot) {
  json sections = json::object();
  for (const std::string& id : DashboardSectionIds()) sections[id] = DashboardSectionHtml(snapshot, id);
  const json event = {{"seq", snapshot.seq}, {"sections", sections}};
  return event.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string DashboardChangedEventJson(const DashboardSnapshot& snapshot, std::map<std::string, std::string>* sent) {
  json sections = json::object();
  for (const std::string& id : DashboardSectionIds()) {
    std::string html = DashboardSectionHtml(snapshot, id);
    auto it = sent->find(id);
    if (it != sent->end() && it->second == html) continue;
    sections[id] = html;
    (*sent)[id] = std::move(html);
  }
  if (sections.empty()) return "";
  const json event = {{"seq", snapshot.seq}, {"sections", sections}};
  return event.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string DashboardStateJson(const DashboardSnapshot& s) {
  json state = {{"format", "fedtune-dashboard-state-v1"},
                {"seq", s.seq},
                {"taken_ms", s.taken_ms},
                {"last_ok_ms", s.last_ok_ms},
                {"coordinator", Safe(s.coordinator)}};
  json errors = json::array();
  for (size_t i = 0; i < s.errors.size() && i < static_cast<size_t>(kDashboardMaxErrors); ++i) {
    errors.push_back(Safe(s.errors[i]));
  }
  state["errors"] = errors;
  state["sites"] = nullptr;
  state["sites_total"] = nullptr;
  if (s.sites) {
    json sites = json::array();
    for (int i = 0; i < s.sites->sites_size() && i < kDashboardMaxSites; ++i) {
      const v1::SiteInfo& site = s.sites->sites(i);
      const v1::DatasetSummary& d = site.dataset();
      sites.push_back({{"site_id", Safe(site.site_id())},
                       {"status", Safe(federation::DisplayText(site))},
                       {"state", Safe(site.state())},
                       {"last_seen_ms", site.last_seen_ms()},
                       {"agent_version", Safe(site.capabilities().agent_version())},
                       {"device", Safe(site.capabilities().device())},
                       {"dataset",
                        {{"images", d.images()},
                         {"train_images", d.train_images()},
                         {"validation_images", d.validation_images()},
                         {"test_images", d.test_images()},
                         {"studies", d.studies()},
                         {"patients", d.patients()}}},
                       {"last_failure", FailureJson(site.last_failure())}});
    }
    state["sites"] = sites;
    state["sites_total"] = s.sites->sites_size();
  }
  state["run"] = nullptr;
  if (s.run) {
    const v1::RunStatus& run = *s.run;
    json sites = json::array();
    for (int i = 0; i < run.sites_size() && i < kDashboardMaxSites; ++i) {
      const v1::SiteRunState& site = run.sites(i);
      sites.push_back({{"site_id", Safe(site.site_id())},
                       {"state", Safe(site.state())},
                       {"progress", Progress(site.progress())},
                       {"train_loss", Nullable(Loss(site.train_loss()))},
                       {"last_seen_ms", site.last_seen_ms()},
                       {"bytes_down", site.bytes_down()},
                       {"bytes_up", site.bytes_up()},
                       {"last_failure", FailureJson(site.last_failure())}});
    }
    json losses = json::array();
    for (const RoundLoss& l : LossesOf(run)) {
      losses.push_back(
          {{"round", l.round}, {"train_loss", Nullable(l.train)}, {"validation_loss", Nullable(l.validation)}});
    }
    state["run"] = {{"run_id", Safe(run.run_id())},
                    {"name", Safe(run.name())},
                    {"state", Safe(federation::DisplayText(run))},
                    {"message", Safe(run.message())},
                    {"current_round", run.current_round()},
                    {"rounds_planned", run.config().rounds()},
                    {"rounds_closed", ClosedRounds(run)},
                    {"started_ms", run.started_ms()},
                    {"finished_ms", run.finished_ms()},
                    {"bytes_down", run.bytes_down()},
                    {"bytes_up", run.bytes_up()},
                    {"report_url", ReportUrlJson(run.run_id())},
                    {"sites", sites},
                    {"losses", losses}};
  }
  state["runs"] = nullptr;
  if (s.runs) {
    json runs = json::array();
    for (int i = 0; i < s.runs->runs_size() && i < kDashboardMaxRuns; ++i) {
      const v1::RunStatus& run = s.runs->runs(i);
      runs.push_back({{"run_id", Safe(run.run_id())},
                      {"name", Safe(run.name())},
                      {"state", Safe(federation::DisplayText(run))},
                      {"current_round", run.current_round()},
                      {"rounds_planned", run.config().rounds()},
                      {"started_ms", run.started_ms()},
                      {"finished_ms", run.finished_ms()},
                      {"bytes_down", run.bytes_down()},
                      {"bytes_up", run.bytes_up()},
                      {"report_url", ReportUrlJson(run.run_id())}});
    }
    state["runs"] = runs;
  }
  return state.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

std::string LossChartSvg(const v1::RunStatus& run) {
  const std::vector<RoundLoss> losses = LossesOf(run);
  constexpr double kWidth = 640, kHeight = 246, kLeft = 52, kRight = 16, kTop = 30, kBottom = 38;
  std::string out = absl::StrFormat(
      "<svg id=\"loss-chart\" data-points=\"%d\" width=\"%.0f\" "
      "height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" role=\"img\" aria-label=\"mean loss per round\">\n",
      losses.size(), kWidth, kHeight, kWidth, kHeight);
  absl::StrAppendFormat(
      &out, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"#fafafa\" stroke=\"#ccc\"/>\n", kLeft,
      kTop, kWidth - kLeft - kRight, kHeight - kTop - kBottom);
  if (losses.empty()) {
    absl::StrAppendFormat(
        &out, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">no round has reported a loss yet</text>\n</svg>",
        (kWidth + kLeft - kRight) / 2, (kHeight + kTop - kBottom) / 2);
    return out;
  }
  int first_round = losses.front().round, last_round = std::max(losses.back().round, run.config().rounds());
  if (run.config().rounds() > 0 && losses.size() < static_cast<size_t>(kDashboardMaxChartRounds)) first_round = 1;
  if (last_round <= first_round) last_round = first_round + 1;
  // The loss axis spans the losses shown, padded (losses of a few rounds differ little: from 0 they would look flat).
  double lo = std::numeric_limits<double>::infinity(), hi = 0;
  for (const RoundLoss& l : losses) {
    for (const std::optional<double>& v : {l.train, l.validation}) {
      if (!v) continue;
      lo = std::min(lo, *v);
      hi = std::max(hi, *v);
    }
  }
  const double pad = std::max({(hi - lo) * 0.15, hi * 0.02, 1e-6});
  lo = std::max(0.0, lo - pad);
  hi += pad;
  const double plot_w = kWidth - kLeft - kRight, plot_h = kHeight - kTop - kBottom;
  auto x_of = [&](int round) { return kLeft + plot_w * (round - first_round) / (last_round - first_round); };
  auto y_of = [&](double loss) { return kTop + plot_h * (1 - std::clamp((loss - lo) / (hi - lo), 0.0, 1.0)); };
  // Axes: three loss ticks, round ticks (at most ~12 labels).
  for (int i = 0; i <= 2; ++i) {
    const double v = lo + (hi - lo) * i / 2;
    absl::StrAppendFormat(&out,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e3e3e3\"/>"
                          "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.4g</text>\n",
                          kLeft, y_of(v), kWidth - kRight, y_of(v), kLeft - 6, y_of(v) + 4, v);
  }
  const int step = std::max(1, (last_round - first_round + 1) / 12);
  for (int r = first_round; r <= last_round; r += step) {
    absl::StrAppendFormat(&out, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>\n", x_of(r),
                          kHeight - kBottom + 15, r);
  }
  absl::StrAppendFormat(&out, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">round</text>\n", kLeft + plot_w / 2,
                        kHeight - 6);
  struct Series {
    const char* name;
    const char* color;
    std::optional<double> RoundLoss::*field;
  };
  const Series series[] = {{"train", "#0072b2", &RoundLoss::train}, {"validation", "#e69f00", &RoundLoss::validation}};
  int legend = 0;
  for (const Series& s : series) {
    std::string points, dots;
    for (const RoundLoss& l : losses) {
      const std::optional<double>& v = l.*(s.field);
      if (!v) continue;
      absl::StrAppendFormat(&points, "%s%.1f,%.1f", points.empty() ? "" : " ", x_of(l.round), y_of(*v));
      absl::StrAppendFormat(&dots,
                            "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\" data-series=\"%s\" data-round=\"%d\">"
                            "<title>round %d: %s loss %s</title></circle>\n",
                            x_of(l.round), y_of(*v), s.color, s.name, l.round, l.round, s.name, FormatLoss(v));
    }
    if (points.empty()) continue;
    absl::StrAppendFormat(&out, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"%s\"/>\n%s", s.color,
                          points, dots);
    // The legend sits above the plot, one entry after the other, never over a line.
    const double lx = kLeft + 170 * legend++, ly = 16;
    absl::StrAppendFormat(&out,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"/>"
                          "<text x=\"%.1f\" y=\"%.1f\">mean %s loss</text>\n",
                          lx, ly - 4, lx + 18, ly - 4, s.color, lx + 24, ly, s.name);
  }
  absl::StrAppend(&out, "</svg>");
  return out;
}

const char kDashboardScript[] =
    R"js(// fedtune dashboard: keeps the server-rendered page live. The dashboard pushes every new snapshot as a
// server-sent event (/events) carrying the page's sections, rendered and escaped by the server; each one replaces
// the section with the same id. Without this script the page is a static snapshot.
(function () {
  'use strict';
  var live = document.getElementById('live');
  function setLive(text, cls) {
    if (live) { live.textContent = text; live.className = cls; }
  }
  if (!window.EventSource || !window.JSON) {
    setLive('static snapshot', 'stale');
    return;
  }
  // The browser reconnects by itself after a network error, but gives up for good after a non-200 answer (a 503
  // when too many pages are open, a restarted dashboard's 403, ...): then this reconnects, every 10 s.
  var source = null;
  function connect() {
    source = new EventSource('/events');
    source.onopen = function () { setLive('live', 'ok'); };
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) {
        setLive('disconnected', 'stale');
        source.close();
        setTimeout(connect, 10000);
      } else {
        setLive('reconnecting\u2026', 'stale');
      }
    };
    source.onmessage = onMessage;
  }
  function onMessage(event) {
    var update;
    try { update = JSON.parse(event.data); } catch (e) { return; }
    var sections = update.sections || {};
    Object.keys(sections).forEach(function (id) {
      var old = document.getElementById(id);
      if (!old) return;
      var holder = document.createElement('div');
      holder.innerHTML = sections[id];
      var fresh = holder.firstElementChild;
      if (!fresh || fresh.id !== id) return;
      // Folded log lines the reader opened stay open.
      var open = {};
      old.querySelectorAll('details[open][data-key]').forEach(function (d) { open[d.getAttribute('data-key')] = true; });
      fresh.querySelectorAll('details[data-key]').forEach(function (d) {
        if (open[d.getAttribute('data-key')]) d.setAttribute('open', '');
      });
      old.parentNode.replaceChild(fresh, old);
    });
    document.body.setAttribute('data-seq', String(update.seq));
    setLive('live', 'ok');
  }
  connect();
})();
)js";

}  // namespace fedtune::admin
