// Summary metrics that leave a site: a stats::ComparisonReport (two models on the site's test split) turned into
// the protocol's v1::ModelEvaluation / v1::ModelComparison, and the assembly of a v1::MetricsReport.
//
// Only aggregates go into these messages (per-label AUC, DeLong CI and p-value, Youden sensitivity/specificity,
// case counts, mean AUC and its bootstrap CI, Wilcoxon p); the types used here have no field for an image, a path or a
// per-case score. Undefined statistics (a label with one class in the test split) are NaN.
//
// With share_metrics = false a site still reports (the coordinator learns that the site finished the round or the
// run, and how many test cases it has) but without any model performance: StripPerformance keeps run_id, round,
// kind, test_cases and each model's name and digest, and removes every per-label value, every comparison and the
// losses. The site's PrivacyAccount (MetricsReport.privacy, privacy_budget.h) is not performance and stays.
//
// Thread safety: reentrant.
#ifndef FEDTUNE_SITE_AGENT_AGENT_METRICS_REPORT_H_
#define FEDTUNE_SITE_AGENT_AGENT_METRICS_REPORT_H_

#include <string>

#include "common/stats/compare.h"
#include "fedtune/v1/federation.pb.h"

namespace fedtune::agent {

// Which model of a ComparisonReport (model a or model b).
enum class ReportSide { kA, kB };

// One model's per-label results from `report` (labels in report order, with n_pos/n_neg), named `name`, with
// `digest` (the checkpoint's weights_sha256), the mean AUC over labels with both classes and its 95% bootstrap CI
// (report.mean_auc_ci_a / _b; NaN when not computed).
v1::ModelEvaluation ModelEvaluationFrom(const stats::ComparisonReport& report, ReportSide side, const std::string& name,
                                        const std::string& digest);

// Model b against model a: per-label paired DeLong p, AUC difference b - a, the Wilcoxon p over labels and the
// counts of labels where b is significantly better / worse (p < 0.05).
v1::ModelComparison ModelComparisonFrom(const stats::ComparisonReport& report, const std::string& name_a,
                                        const std::string& name_b);

// Removes every performance value (see the file comment); used when SiteAgentConfig.share_metrics is false.
void StripPerformance(v1::MetricsReport* report);

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_AGENT_METRICS_REPORT_H_
