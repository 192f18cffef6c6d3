// A hand-built RunReport shared by the report and command tests: run "run-7" with two sites. site-a sent round
// metrics and a final evaluation of three labels (Edema without positives: NaN AUCs); site-b sent round metrics
// only. Expected summary of site-a: mean AUC 0.650 -> 0.700 -> 0.750, 2 of 2 labels improved (adapted vs open-source),
// Wilcoxon p 0.250.
#ifndef FEDTUNE_TESTS_COORDINATOR_CLI_RUN_REPORT_FIXTURE_H_
#define FEDTUNE_TESTS_COORDINATOR_CLI_RUN_REPORT_FIXTURE_H_

#include <cmath>
#include <string>
#include <vector>

#include "fedtune/v1/federation.pb.h"

namespace fedtune::admin::testing {

inline void AddModel(v1::MetricsReport* report, const std::string& name, const std::vector<double>& aucs, double mean) {
  static const char* kLabels[] = {"Atelectasis", "Cardiomegaly", "Edema"};
  v1::ModelEvaluation* model = report->add_models();
  model->set_name(name);
  model->set_digest("d1g35t" + name);
  model->set_mean_auc(mean);
  for (size_t i = 0; i < aucs.size(); ++i) {
    v1::LabelAuc* label = model->add_labels();
    label->set_label(kLabels[i]);
    label->set_positives(i == 2 ? 0 : 30 + static_cast<int>(i));
    label->set_negatives(90);
    label->set_auc(aucs[i]);
    label->set_ci_low(std::isnan(aucs[i]) ? NAN : aucs[i] - 0.05);
    label->set_ci_high(std::isnan(aucs[i]) ? NAN : aucs[i] + 0.05);
  }
}

inline void AddComparison(v1::MetricsReport* report, const std::string& a, const std::string& b,
                          const std::vector<double>& p, double wilcoxon, int improved) {
  v1::ModelComparison* c = report->add_comparisons();
  c->set_model_a(a);
  c->set_model_b(b);
  for (const char* label : {"Atelectasis", "Cardiomegaly", "Edema"}) c->add_labels(label);
  for (double v : p) c->add_delong_p(v);
  c->set_wilcoxon_p(wilcoxon);
  c->set_improved_significant(improved);
}

inline v1::RunReport MakeRunReport() {
  v1::RunReport report;
  v1::RunStatus* status = report.mutable_status();
  status->set_run_id("run-7");
  status->set_name("demo <b>");
  status->set_state("completed");
  status->set_current_round(2);
  status->mutable_config()->set_rounds(2);
  status->mutable_config()->set_aggregation("fedavg");
  status->set_base_model_digest(std::string(64, 'a'));
  status->set_final_model_digest(std::string(64, 'f'));
  status->set_bytes_down(5 << 20);
  status->set_bytes_up(3 << 20);
  auto add_round = [&](int round, int attempt, const std::string& state, std::vector<int64_t> bytes) {
    v1::RoundInfo* r = status->add_rounds();
    r->set_round(round);
    r->set_attempt(attempt);
    r->set_state(state);
    r->set_model_digest(std::string(64, '0' + round));
    if (state == "closed") r->set_result_digest(std::string(64, '1' + round));
    for (size_t i = 0; i < bytes.size(); ++i) {
      v1::UpdateInfo* u = r->add_updates();
      u->set_site_id(i == 0 ? "site-a" : "site-b");
      u->set_status("accepted");
      u->set_num_samples(100 + i);
      u->set_bytes(bytes[i]);
      u->set_l2_norm(1.5);
      u->set_train_loss(0.5 - 0.1 * round);
      u->set_validation_loss(0.45);
    }
    return r;
  };
  add_round(1, 1, "failed", {1000})->set_message("1 of 2 min_sites at the deadline");
  add_round(1, 2, "closed", {1000, 2000});
  add_round(2, 1, "closed", {1500, 2500});
  for (const char* id : {"site-a", "site-b"}) {
    v1::SiteRunState* s = status->add_sites();
    s->set_site_id(id);
    s->set_state("done");
    s->set_progress(1);
    s->set_bytes_down(2 << 20);
    s->set_bytes_up(1 << 20);
  }

  v1::SiteRunReport* a = report.add_sites();
  a->set_site_id("site-a");
  a->mutable_dataset()->set_images(600);
  a->mutable_dataset()->set_train_images(400);
  a->mutable_dataset()->set_validation_images(80);
  a->mutable_dataset()->set_test_images(120);
  v1::MetricsReport* round1 = a->add_metrics();
  round1->set_run_id("run-7");
  round1->set_round(1);
  round1->set_kind("round");
  round1->set_train_loss(0.4321);
  round1->set_validation_loss(0.3999);
  AddModel(round1, "global", {0.7, 0.6, NAN}, 0.65);
  AddModel(round1, "local", {0.72, 0.66, NAN}, 0.69);
  v1::MetricsReport* final_report = a->add_metrics();
  final_report->set_run_id("run-7");
  final_report->set_kind("final");
  final_report->set_test_cases(120);
  AddModel(final_report, "open-source", {0.70, 0.60, NAN}, 0.65);
  AddModel(final_report, "global", {0.75, 0.65, NAN}, 0.70);
  AddModel(final_report, "adapted", {0.80, 0.70, NAN}, 0.75);
  AddComparison(final_report, "open-source", "global", {0.04, 0.2, NAN}, 0.5, 1);
  AddComparison(final_report, "open-source", "adapted", {0.01, 0.03, NAN}, 0.25, 2);
  AddComparison(final_report, "global", "adapted", {0.3, 0.4, NAN}, 0.5, 0);

  v1::SiteRunReport* b = report.add_sites();
  b->set_site_id("site-b");
  b->mutable_dataset()->set_images(300);
  v1::MetricsReport* b_round = b->add_metrics();
  b_round->set_round(1);
  b_round->set_kind("round");
  b_round->set_train_loss(0.5);
  AddModel(b_round, "global", {0.7, 0.6, 0.8}, 0.7);
  return report;
}

}  // namespace fedtune::admin::testing

#endif  // FEDTUNE_TESTS_COORDINATOR_CLI_RUN_REPORT_FIXTURE_H_
