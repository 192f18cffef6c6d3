#include "site_agent/agent/metrics_report.h"

#include <limits>
#include <optional>
#include <utility>

namespace fedtune::agent {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kSignificance = 0.05;

double OrNaN(const std::optional<double>& value) { return value ? *value : kNaN; }

}  // namespace

v1::ModelEvaluation ModelEvaluationFrom(const stats::ComparisonReport& report, ReportSide side, const std::string& name,
                                        const std::string& digest) {
  v1::ModelEvaluation evaluation;
  evaluation.set_name(name);
  evaluation.set_digest(digest);
  for (const stats::LabelComparison& label : report.labels) {
    const stats::ModelSummary& summary = side == ReportSide::kA ? label.a : label.b;
    v1::LabelAuc* out = evaluation.add_labels();
    out->set_label(label.name);
    out->set_positives(label.n_pos);
    out->set_negatives(label.n_neg);
    out->set_auc(OrNaN(summary.auc));
    out->set_ci_low(summary.ci95 ? summary.ci95->first : kNaN);
    out->set_ci_high(summary.ci95 ? summary.ci95->second : kNaN);
    out->set_sensitivity(summary.youden ? summary.youden->sensitivity : kNaN);
    out->set_specificity(summary.youden ? summary.youden->specificity : kNaN);
  }
  evaluation.set_mean_auc(OrNaN(side == ReportSide::kA ? report.mean_auc_a : report.mean_auc_b));
  const std::optional<std::pair<double, double>>& ci =
      side == ReportSide::kA ? report.mean_auc_ci_a : report.mean_auc_ci_b;
  evaluation.set_mean_auc_ci_low(ci ? ci->first : kNaN);
  evaluation.set_mean_auc_ci_high(ci ? ci->second : kNaN);
  return evaluation;
}

v1::ModelComparison ModelComparisonFrom(const stats::ComparisonReport& report, const std::string& name_a,
                                        const std::string& name_b) {
  v1::ModelComparison comparison;
  comparison.set_model_a(name_a);
  comparison.set_model_b(name_b);
  int improved = 0;
  int worsened = 0;
  for (const stats::LabelComparison& label : report.labels) {
    comparison.add_labels(label.name);
    const double p = label.delong ? OrNaN(label.delong->p_value) : kNaN;
    const double difference = label.a.auc && label.b.auc ? *label.b.auc - *label.a.auc : kNaN;
    comparison.add_delong_p(p);
    comparison.add_auc_difference(difference);
    if (p < kSignificance && difference > 0) ++improved;  // NaN compares false.
    if (p < kSignificance && difference < 0) ++worsened;
  }
  comparison.set_wilcoxon_p(OrNaN(report.wilcoxon.p_value));
  comparison.set_improved_significant(improved);
  comparison.set_worsened_significant(worsened);
  return comparison;
}

void StripPerformance(v1::MetricsReport* report) {
  for (v1::ModelEvaluation& model : *report->mutable_models()) {
    model.clear_labels();
    model.clear_mean_auc();
    model.clear_mean_auc_ci_low();
    model.clear_mean_auc_ci_high();
  }
  report->clear_comparisons();
  report->clear_train_loss();
  report->clear_validation_loss();
}

}  // namespace fedtune::agent
