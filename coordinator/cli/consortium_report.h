// The consortium report (`fedtune report --run R --out DIR`), built from the coordinator's RunReport (GetRunReport)
// without any network: report.json (machine-readable, stable keys), report.html (one self-contained page: inline
// CSS and SVG, no script, no external resource) and the per-site summary table printed on the terminal.
//
// What is read from the RunReport: per site, the MetricsReport of kind "final" (ModelEvaluations named
// "open-source", "global", "adapted" and, with the local-only baseline, "local-only"; ModelComparisons global vs
// open-source, adapted vs open-source, adapted vs global and, with the baseline, local-only vs open-source, global vs
// local-only and adapted vs local-only), the per-round MetricsReports (kind "round": train/validation loss, models
// "global" and "local"), the run's RunStatus (rounds, updates, bytes) and, for cross-site evaluation, each site's
// MetricsReport of kind "cross_site" (ModelEvaluations named after the OTHER sites whose shared adapted models were
// evaluated there; a final report's evaluations named after another site count too) and RunReport.shared_models.
// Missing pieces (a site without a final evaluation, a label without an AUC) print as "n/a"
// (JSON null); nothing here fails on partial data.
//
// report.json layout (format "fedtune-consortium-report-v1"; keys are stable, numbers that are undefined are null):
//   {"format", "run": {"id", "name", "state", "message", "started_ms", "finished_ms", "current_round",
//      "rounds_planned", "aggregation", "compression", "base_model_digest", "final_model_digest", "bytes_down",
//      "bytes_up"},
//    "summary": [{"site_id", "test_cases", "final_evaluation", "mean_auc": {"open_source", "global", "adapted",
//    "local_only"},
//      "labels_compared", "improved_significant", "worsened_significant", "wilcoxon_p"}],   (adapted vs open-source)
//    "sites": [{"site_id", "dataset": {"images", "train_images", "validation_images", "test_images"}, "test_cases",
//      "final_evaluation", "models": {"open_source"|"global"|"adapted"|"local_only": {"digest", "mean_auc"}},
//      "labels": [{"label", "positives", "negatives",
//                  "auc": {"open_source"|"global"|"adapted"|"local_only": {"auc", "ci_low", "ci_high"}},
//                  "delong_p": {"global_vs_open_source", "adapted_vs_open_source", "adapted_vs_global",
//                               "local_only_vs_open_source", "global_vs_local_only", "adapted_vs_local_only"}}],
//      "comparisons": {each of the six pairs of delong_p:
//                      {"wilcoxon_p", "improved_significant", "worsened_significant"}},
//      "rounds": [{"round", "train_loss", "validation_loss", "mean_auc_global", "mean_auc_local"}],
//      "bytes_down", "bytes_up"}],
//    "rounds": [{"round", "attempt", "state", "model_digest", "result_digest", "opened_ms", "closed_ms", "message",
//      "accepted", "refused", "declined", "samples", "bytes_up", "mean_train_loss", "mean_validation_loss",
//      "updates": [{"site_id", "status", "num_samples", "bytes", "l2_norm", "train_loss", "validation_loss",
//                   "message"}]}],
//    "cross_site": {"evaluated": bool (another site's adapted model was evaluated somewhere), "note" (says plainly
//      when none was), "sites": [column site ids], "models": ["adapted model of <site>" per site, "global",
//      "open-source"] (rows), "model_sites": [<site> or null per row], "mean_auc": [[row][column]],
//      "delong_p_vs_global": [[row][column]], "cell_status": [[row][column]] ("ok", "not shared", "n/a"),
//      "not_shared": [sites that declined to share their adapted model], "shared_models": [{"site_id", "digest",
//      "bytes"}], "matrix": [{"model_of", "evaluated_at", "mean_auc", "labels": [{"label", "auc"}]}] (every available
//      adapted-model cell)},
//    "privacy": {"dp", "dp_noise_multiplier", "dp_clip_norm", "secure_aggregation" (the run's config),
//      "consortium_epsilon" (the maximum over the sites' spent epsilons: disjoint data, parallel composition; null
//      when no site reported one or when one trained without DP), "consortium_non_private", "delta" (the largest of
//      the sites' deltas), "composition" (the sentence saying so),
//      "sites": [{"site_id", "reported", "epsilon" (null when not reported or non-private), "non_private_training",
//                 "delta", "max_epsilon" (the site's budget; 0: none), "private_steps", "declined_rounds": [round]}],
//      "declined": [{"round", "attempt", "site_id", "reason"}]}.
//    A site's privacy is the PrivacyAccount (MetricsReport.privacy) of its latest report that carries one; declined
//    rounds are the updates with UPLOAD_STATUS_DECLINED (status "declined"; each round's "declined" counts them, apart
//    from "refused").
//    The matrix (consortium_view.h, CrossSiteOf): row "adapted model of S" at column S is S's own final evaluation
//    of its adapted model; at another column T, T's "cross_site" report of S's shared model; the "global" and
//    "open-source" rows come from each site's final report. mean_auc is null for "not shared" and "n/a" cells.
//    delong_p_vs_global summarizes one cell against the global model at the same site: the smallest per-label
//    paired DeLong p, Bonferroni-adjusted over the labels compared (min(1, k * p_min)); null on the global row and
//    where no comparison was reported. The HTML marks cells with it below kSignificance (better or worse than
//    global on that label).
//
// Thread safety: the functions are reentrant.
#ifndef FEDTUNE_COORDINATOR_CLI_CONSORTIUM_REPORT_H_
#define FEDTUNE_COORDINATOR_CLI_CONSORTIUM_REPORT_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "fedtune/v1/federation.pb.h"

namespace fedtune::admin {

// Significance level of "improved" / "worsened" throughout the report.
inline constexpr double kSignificance = 0.05;

// One row of the summary table: the site's final evaluation.
struct SiteSummary {
  std::string site_id;
  int64_t test_cases = 0;
  bool final_evaluation = false;  // The site sent a MetricsReport of kind "final".
  std::optional<double> mean_auc_open_source;
  std::optional<double> mean_auc_global;
  std::optional<double> mean_auc_adapted;
  std::optional<double> mean_auc_local_only;  // nullopt when the run had no local-only baseline.
  // Adapted vs open-source: labels with both AUCs, labels significantly better/worse (DeLong p < 0.05),
  // and the Wilcoxon signed-rank p over the labels.
  int labels_compared = 0;
  int improved_significant = 0;
  int worsened_significant = 0;
  std::optional<double> wilcoxon_p;
};

// The summary of every site of the report, in the report's site order.
std::vector<SiteSummary> SummarizeSites(const v1::RunReport& report);

// `reference` (optional, `fedtune report --reference-run`): another run, e.g. the same federation without privacy,
// whose per-site mean AUCs are shown next to this run's (consortium_reference.h; report.json key "reference").

// report.json's text (pretty-printed, newline-terminated).
std::string ConsortiumReportJson(const v1::RunReport& report, const v1::RunReport* reference = nullptr);

// report.html: one UTF-8 page; all text from the report is HTML-escaped.
std::string ConsortiumReportHtml(const v1::RunReport& report, const v1::RunReport* reference = nullptr);

// The terminal summary: a heading line naming the run, then a table with columns site, test cases,
// "mean AUC open-source -> global -> adapted", "improved p<0.05" (as "K/N"), "worse p<0.05", "Wilcoxon p". When the
// run has differential privacy (a site reported an account, declined a round, or the config's dp is not "none"):
// the consortium epsilon, a table of site, epsilon spent, delta, budget and declined rounds, and one line per
// declined update with its reason.
std::string SiteSummaryText(const v1::RunReport& report, const v1::RunReport* reference = nullptr);

struct ReportFiles {
  std::string json_path;  // DIR/report.json
  std::string html_path;  // DIR/report.html
};

// Creates `out_dir` if needed and writes report.json and report.html atomically. I/O errors name the path.
absl::StatusOr<ReportFiles> WriteConsortiumReport(const v1::RunReport& report, const std::string& out_dir,
                                                  const v1::RunReport* reference = nullptr);

}  // namespace fedtune::admin

#endif  // FEDTUNE_COORDINATOR_CLI_CONSORTIUM_REPORT_H_
