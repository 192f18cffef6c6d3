// The strategy comparison report (`fedtune experiment`, `fedtune report compare --runs R1,R2,... --out DIR`): several
// runs of the same consortium, one per strategy, side by side, built from each run's RunReport (GetRunReport)
// without any network. comparison.json (machine-readable, stable keys), comparison.html (one self-contained page:
// inline CSS, no script, no external resource) and a short table for the terminal.
//
// What is read from each run's RunReport: per site the MetricsReport of kind "final" — ModelEvaluations "open-source",
// "local-only", "global" and "adapted" (mean_auc and its bootstrap CI mean_auc_ci_low/high) and the ModelComparisons
// "local-only" vs "adapted" and "local-only" vs "global" (per-label DeLong p, AUC difference, Wilcoxon p; found in
// either orientation) — and the run's RunStatus (state, config, base model, started/finished times, traffic).
// Anything missing (a run without the local-only baseline, a site without a final evaluation, a CI a site did not
// compute) is "n/a" (JSON null); nothing here fails on partial data.
//
// comparison.json (format "fedtune-strategy-comparison-v1"; undefined numbers are null):
//   {"format", "base_model_digest" (the runs' common base model, or null when they differ or none is known),
//    "same_base_model" (every run names the same non-empty base model digest),
//    "strategies": [{"strategy", "run_id", "name", "state", "message", "personalization", "aggregation", "rounds",
//      "base_model_digest", "final_model_digest", "started_ms", "finished_ms", "wall_seconds", "bytes_down",
//      "bytes_up"}],
//    "sites": [ids, in first-seen order over the runs],
//    "results": [{"site_id", "strategy", "final_evaluation", "test_cases",
//      "models": {"open_source"|"local_only"|"global"|"adapted": {"digest", "mean_auc", "ci_low", "ci_high"} | null},
//      "adapted_vs_local_only"|"global_vs_local_only": {"wilcoxon_p", "improved_significant", "worsened_significant",
//        "labels": [{"label", "auc_difference", "delong_p"}]} | null}],     (one per site x strategy, sites outer)
//    "summary": [{"site_id", "open_source": {"mean_auc", "ci_low", "ci_high"}, "local_only": {...},
//      "strategies": {STRATEGY: {"global": {...}, "adapted": {...}}}}]}
//   "open_source" and "local_only" of the summary come from the first run that has them (the open-source model is the
//   same in every run, and a site reuses its local-only model across runs from the same base model).
//
// Thread safety: the functions are reentrant.
#ifndef FEDTUNE_COORDINATOR_CLI_COMPARISON_REPORT_H_
#define FEDTUNE_COORDINATOR_CLI_COMPARISON_REPORT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "fedtune/v1/federation.pb.h"
#include "fedtune/v1/federation_config.pb.h"

namespace fedtune::admin {

// One run of a comparison: the strategy it stands for and its report.
struct StrategyRun {
  std::string strategy;  // Column name, e.g. "fedbn". Unique within a comparison (see StrategyNames).
  v1::RunReport report;
};

// The strategy a finished run stands for, from its config: "fedbn", "silobn", "ditto", or for personalization NONE
// the run's aggregation ("fedavg", "fedprox", ...; "fedavg" when unset).
std::string StrategyNameOf(const v1::RunConfig& config);

// Names for `runs` (StrategyNameOf each config) made unique: a repeated name gets " (RUN_ID)" appended.
std::vector<std::string> StrategyNames(const std::vector<v1::RunReport>& runs);

// comparison.json's text (pretty-printed, newline-terminated).
std::string ComparisonReportJson(const std::vector<StrategyRun>& runs);

// comparison.html: one UTF-8 page; all text from the reports is HTML-escaped.
std::string ComparisonReportHtml(const std::vector<StrategyRun>& runs);

// The terminal summary: one line per run (strategy, run id, state, wall time), then a table with one row per site
// and the columns "open-source", "local-only" and per strategy "STRATEGY global/adapted" (mean AUCs).
std::string ComparisonSummaryText(const std::vector<StrategyRun>& runs);

struct ComparisonFiles {
  std::string json_path;  // DIR/comparison.json
  std::string html_path;  // DIR/comparison.html
};

// Creates `out_dir` if needed and writes comparison.json and comparison.html atomically. I/O errors name the path.
absl::StatusOr<ComparisonFiles> WriteComparisonReport(const std::vector<StrategyRun>& runs, const std::string& out_dir);

}  // namespace fedtune::admin

#endif  // FEDTUNE_COORDINATOR_CLI_COMPARISON_REPORT_H_
