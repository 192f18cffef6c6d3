// What the read-only web dashboard (`fedtune dashboard`, dashboard_server.h) shows: the snapshot it takes of the
// coordinator's AdminService, and that snapshot rendered as one HTML page (server-side, usable without JavaScript),
// as the HTML sections a live page swaps in (server-sent events), and as JSON (/api/state).
//
// The page: a status line (coordinator, time of the snapshot, errors such as "coordinator unreachable: ..."), the
// sites (status, state, last seen, dataset summary, agent version, last failure report), the current run (the latest
// one: round x of y, per-site state, progress, traffic and last failure, the loss per round as an inline SVG chart,
// the latest round attempts) and the history of runs with a link to each run's consortium report
// (/runs/<id>/report). Stable hooks for scripts and tests: id="current-round" with data-round and data-rounds,
// table id="sites" with one row per site (data-site), table id="run-sites", svg id="loss-chart" (data-points),
// table id="runs" (rows data-run-id), section id="snapshot-status" (data-seq, data-ok) and <body data-seq>.
//
// Everything that came over the network (site ids, states, messages, failure reports, run names) is cut to
// kDashboardMaxText bytes and escaped: HtmlEscape (report_format.h: no control character, bidi override or invalid
// UTF-8 reaches the page) in HTML, nlohmann::json's escaping (invalid UTF-8 replaced) in JSON. Lists are bounded:
// kDashboardMaxSites sites, kDashboardMaxRuns runs, kDashboardMaxChartRounds rounds in the chart,
// kDashboardMaxRoundRows round attempts in the table, FailureReport's own bounds for log lines. No external resource:
// the style is inline, the script (kDashboardScript) is served by the dashboard itself.
//
// Thread safety: the functions are reentrant.
#ifndef FEDTUNE_COORDINATOR_CLI_DASHBOARD_PAGE_H_
#define FEDTUNE_COORDINATOR_CLI_DASHBOARD_PAGE_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "fedtune/v1/federation.pb.h"

namespace fedtune::admin {

inline constexpr size_t kDashboardMaxText = 512;      // Bytes of any one string from the network.
inline constexpr int kDashboardMaxSites = 500;        // Sites shown (the rest counted in a note).
inline constexpr int kDashboardMaxRuns = 50;          // Runs of the history (ListRuns limit).
inline constexpr int kDashboardMaxChartRounds = 500;  // Rounds drawn in the loss chart (the latest ones).
inline constexpr int kDashboardMaxRoundRows = 10;     // Round attempts listed under the chart (the latest ones).
inline constexpr int kDashboardMaxLogLines = 20;      // Log lines of a failure report shown.
inline constexpr int kDashboardMaxErrors = 8;         // Error lines of one snapshot.

// One poll of the coordinator. A part whose call failed is nullopt and its error is in `errors`.
struct DashboardSnapshot {
  int64_t seq = 0;                  // 1, 2, ... in the order the snapshots were taken; 0: none taken yet.
  int64_t taken_ms = 0;             // When the poll finished (Unix ms, the dashboard's clock).
  std::string coordinator;          // The coordinator's address, as the operator gave it.
  std::vector<std::string> errors;  // "coordinator unreachable: ...", one per failed call.
  int64_t last_ok_ms = 0;  // When every call last succeeded (0: never); with errors, the parts shown may be that old.
  std::optional<v1::ListSitesResponse> sites;
  bool no_run = false;                       // The coordinator has no run yet (GetRunStatus: NOT_FOUND).
  std::optional<v1::RunStatus> run;          // The latest run, with rounds and sites.
  std::optional<v1::ListRunsResponse> runs;  // Newest first (ListRuns).
};

// The ids of the page's live sections, in page order: each is one element <section id=ID>...</section>.
std::vector<std::string> DashboardSectionIds();

// The whole page (UTF-8), rendered from `snapshot`; it loads /static/dashboard.js, which keeps it live.
std::string DashboardPageHtml(const DashboardSnapshot& snapshot);

// One live section of the page (an id of DashboardSectionIds; "" for another id).
std::string DashboardSectionHtml(const DashboardSnapshot& snapshot, absl::string_view id);

// The data of one server-sent event: one line of JSON {"seq": N, "sections": {ID: HTML, ...}} with every section.
std::string DashboardEventJson(const DashboardSnapshot& snapshot);

// The same event with only the sections whose HTML differs from `*sent` (id -> the HTML last sent to this page;
// empty for a new page: every section), which it updates; "" when no section changed (nothing to send).
std::string DashboardChangedEventJson(const DashboardSnapshot& snapshot, std::map<std::string, std::string>* sent);

// /api/state: the snapshot as JSON (format "fedtune-dashboard-state-v1"), pretty-printed:
//   {"format", "seq", "taken_ms", "coordinator", "errors": [..],
//    "sites": null | [{"site_id", "status", "state", "last_seen_ms", "agent_version", "device", "dataset": {"images",
//      "train_images", "validation_images", "test_images", "studies", "patients"}, "last_failure": FAILURE|null}],
//    "sites_total",
//    "run": null | {"run_id", "name", "state", "message", "current_round", "rounds_planned", "rounds_closed",
//      "started_ms", "finished_ms", "bytes_down", "bytes_up", "report_url" (null when the id cannot be linked),
//      "sites": [{"site_id", "state", "progress", "train_loss", "last_seen_ms", "bytes_down", "bytes_up",
//                 "last_failure"}],
//      "losses": [{"round", "train_loss", "validation_loss"}] (null for a loss not reported)},
//    "runs": null | [{"run_id", "name", "state", "current_round", "rounds_planned", "started_ms", "finished_ms",
//      "bytes_down", "bytes_up", "report_url"}]}
// FAILURE: {"run_id", "round", "stage" ("download", "training", "evaluation", "upload", "other", "unspecified"),
//   "error_class", "status_code", "message", "log_lines": [..], "will_retry", "failed_ms", "received_ms"}.
std::string DashboardStateJson(const DashboardSnapshot& snapshot);

// The loss-per-round chart of a run: an inline <svg id="loss-chart" data-points=N> with the mean training and
// validation loss of each round's accepted updates (the closed attempt's, else the latest attempt's).
std::string LossChartSvg(const v1::RunStatus& run);

// "/runs/ID/report" for a run id of 1 to 64 characters [A-Za-z0-9._-] (what the dashboard's route accepts);
// nullopt for any other id.
std::optional<std::string> RunReportUrl(absl::string_view run_id);

// The dashboard's script (served as /static/dashboard.js): subscribes to /events and swaps each section it gets.
extern const char kDashboardScript[];

}  // namespace fedtune::admin

#endif  // FEDTUNE_COORDINATOR_CLI_DASHBOARD_PAGE_H_
