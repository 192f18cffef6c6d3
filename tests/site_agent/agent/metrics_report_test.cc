#include "site_agent/agent/metrics_report.h"

#include <cmath>
#include <utility>

#include "gtest/gtest.h"

namespace fedtune::agent {
namespace {

stats::ComparisonReport Report() {
  std::vector<stats::LabelScores> labels = {
      {"A", {1, 1, 1, 0, 0, 0}, {0.9, 0.4, 0.6, 0.5, 0.1, 0.2}, {0.9, 0.8, 0.7, 0.2, 0.1, 0.3}},
      {"B", {1, 0, 1, 0, 1, 0}, {0.5, 0.5, 0.5, 0.1, 0.3, 0.6}, {0.6, 0.1, 0.7, 0.2, 0.8, 0.3}},
      {"C", {0, 0, 0, 0, 0, 0}, {0.1, 0.2, 0.3, 0.4, 0.5, 0.6}, {0.1, 0.2, 0.3, 0.4, 0.5, 0.6}},  // One class.
  };
  auto r = stats::CompareModels(labels);
  EXPECT_TRUE(r.ok()) << r.status();
  return *r;
}

TEST(MetricsReportTest, ModelEvaluationCarriesPerLabelSummariesOnly) {
  const stats::ComparisonReport report = Report();
  const v1::ModelEvaluation a = ModelEvaluationFrom(report, ReportSide::kA, "global", "abc");
  const v1::ModelEvaluation b = ModelEvaluationFrom(report, ReportSide::kB, "local", "def");
  EXPECT_EQ(a.name(), "global");
  EXPECT_EQ(a.digest(), "abc");
  ASSERT_EQ(a.labels_size(), 3);
  EXPECT_EQ(a.labels(0).label(), "A");
  EXPECT_EQ(a.labels(0).positives(), 3);
  EXPECT_EQ(a.labels(0).negatives(), 3);
  EXPECT_DOUBLE_EQ(a.labels(0).auc(), *report.labels[0].a.auc);
  EXPECT_DOUBLE_EQ(b.labels(0).auc(), *report.labels[0].b.auc);
  EXPECT_DOUBLE_EQ(a.labels(0).ci_low(), report.labels[0].a.ci95->first);
  EXPECT_DOUBLE_EQ(a.labels(0).sensitivity(), report.labels[0].a.youden->sensitivity);
  EXPECT_DOUBLE_EQ(b.labels(1).specificity(), report.labels[1].b.youden->specificity);
  EXPECT_TRUE(std::isnan(a.labels(2).auc()));  // A label with one class has no AUC.
  EXPECT_TRUE(std::isnan(a.labels(2).ci_low()));
  EXPECT_EQ(a.labels(2).negatives(), 6);
  EXPECT_DOUBLE_EQ(a.mean_auc(), *report.mean_auc_a);
  EXPECT_DOUBLE_EQ(b.mean_auc(), *report.mean_auc_b);
  // CompareModels computes no bootstrap CI: NaN, not 0 (which would read as an interval [0, 0]).
  EXPECT_TRUE(std::isnan(a.mean_auc_ci_low()));
  EXPECT_TRUE(std::isnan(b.mean_auc_ci_high()));
}

TEST(MetricsReportTest, MeanAucCiWhenComputed) {
  stats::ComparisonReport report = Report();
  report.mean_auc_ci_a = std::make_pair(0.61, 0.72);
  report.mean_auc_ci_b = std::make_pair(0.65, 0.81);
  const v1::ModelEvaluation a = ModelEvaluationFrom(report, ReportSide::kA, "open-source", "abc");
  const v1::ModelEvaluation b = ModelEvaluationFrom(report, ReportSide::kB, "adapted", "def");
  EXPECT_DOUBLE_EQ(a.mean_auc_ci_low(), 0.61);
  EXPECT_DOUBLE_EQ(a.mean_auc_ci_high(), 0.72);
  EXPECT_DOUBLE_EQ(b.mean_auc_ci_low(), 0.65);
  EXPECT_DOUBLE_EQ(b.mean_auc_ci_high(), 0.81);
}

TEST(MetricsReportTest, ComparisonIsBAgainstA) {
  const stats::ComparisonReport report = Report();
  const v1::ModelComparison c = ModelComparisonFrom(report, "global", "local");
  EXPECT_EQ(c.model_a(), "global");
  EXPECT_EQ(c.model_b(), "local");
  ASSERT_EQ(c.labels_size(), 3);
  ASSERT_EQ(c.delong_p_size(), 3);
  ASSERT_EQ(c.auc_difference_size(), 3);
  EXPECT_DOUBLE_EQ(c.auc_difference(0), *report.labels[0].b.auc - *report.labels[0].a.auc);
  EXPECT_GT(c.auc_difference(0), 0);
  EXPECT_DOUBLE_EQ(c.delong_p(0), *report.labels[0].delong->p_value);
  EXPECT_TRUE(std::isnan(c.delong_p(2)));
  EXPECT_TRUE(std::isnan(c.auc_difference(2)));
  if (report.wilcoxon.p_value) {
    EXPECT_DOUBLE_EQ(c.wilcoxon_p(), *report.wilcoxon.p_value);
  } else {
    EXPECT_TRUE(std::isnan(c.wilcoxon_p()));
  }
  int improved = 0;
  for (int l = 0; l < 2; ++l) improved += c.delong_p(l) < 0.05 && c.auc_difference(l) > 0;
  EXPECT_EQ(c.improved_significant(), improved);
}

TEST(MetricsReportTest, StripPerformanceLeavesNoValues) {
  stats::ComparisonReport comparison = Report();
  comparison.mean_auc_ci_a = std::make_pair(0.61, 0.72);
  v1::MetricsReport report;
  report.set_run_id("r");
  report.set_round(2);
  report.set_kind("round");
  report.set_test_cases(6);
  report.set_train_loss(0.3);
  report.set_validation_loss(0.4);
  *report.add_models() = ModelEvaluationFrom(comparison, ReportSide::kA, "global", "abc");
  *report.add_comparisons() = ModelComparisonFrom(comparison, "global", "local");
  report.mutable_privacy()->set_epsilon(1.5);
  report.mutable_privacy()->set_delta(1e-5);
  report.mutable_privacy()->set_max_epsilon(4);
  StripPerformance(&report);
  EXPECT_EQ(report.run_id(), "r");
  EXPECT_EQ(report.test_cases(), 6);
  ASSERT_EQ(report.models_size(), 1);
  EXPECT_EQ(report.models(0).name(), "global");
  EXPECT_EQ(report.models(0).labels_size(), 0);
  EXPECT_EQ(report.models(0).mean_auc(), 0);
  EXPECT_EQ(report.models(0).mean_auc_ci_low(), 0);
  EXPECT_EQ(report.models(0).mean_auc_ci_high(), 0);
  EXPECT_EQ(report.comparisons_size(), 0);
  EXPECT_EQ(report.validation_loss(), 0);
  // The privacy the site spent is not performance: it stays.
  EXPECT_DOUBLE_EQ(report.privacy().epsilon(), 1.5);
  EXPECT_DOUBLE_EQ(report.privacy().max_epsilon(), 4);
}

}  // namespace
}  // namespace fedtune::agent
