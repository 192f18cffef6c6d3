#include "common/stats/compare.h"

#include <cstdio>
#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace fedtune::stats {
namespace {

absl::Status InLabel(const std::string& label, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat("label '", label, "': ", status.message()));
}

absl::StatusOr<ModelSummary> Summarize(const LabelScores& label, const std::vector<double>& scores, int64_t n_pos,
                                       int64_t n_neg) {
  ModelSummary out;
  if (n_pos == 0 || n_neg == 0) {
    out.note = absl::StrCat("AUC undefined: ", n_pos, " positive and ", n_neg, " negative cases");
    return out;
  }
  absl::StatusOr<AucEstimate> estimate = EstimateAuc(label.truth, scores);
  if (!estimate.ok()) return InLabel(label.name, estimate.status());
  out.auc = estimate->auc;
  out.variance = estimate->variance;
  out.ci95 = estimate->ci95;
  out.note = estimate->note;
  absl::StatusOr<OperatingPoint> youden = YoudenOptimalPoint(label.truth, scores);
  if (!youden.ok()) return InLabel(label.name, youden.status());
  out.youden = *youden;
  return out;
}

nlohmann::ordered_json Pair(const std::optional<std::pair<double, double>>& p) {
  if (!p) return nullptr;
  return nlohmann::ordered_json::array({p->first, p->second});
}

template <typename T>
nlohmann::ordered_json Opt(const std::optional<T>& v) {
  if (!v) return nullptr;
  return *v;
}

nlohmann::ordered_json ModelJson(const ModelSummary& m) {
  nlohmann::ordered_json j;
  j["auc"] = Opt(m.auc);
  j["variance"] = Opt(m.variance);
  j["ci95"] = Pair(m.ci95);
  if (m.youden) {
    j["youden"] = {{"threshold", m.youden->threshold},
                   {"sensitivity", m.youden->sensitivity},
                   {"specificity", m.youden->specificity},
                   {"sensitivity_ci95", Pair(m.youden->sensitivity_ci95)},
                   {"specificity_ci95", Pair(m.youden->specificity_ci95)}};
  } else {
    j["youden"] = nullptr;
  }
  if (!m.note.empty()) j["note"] = m.note;
  return j;
}

std::string Num(const std::optional<double>& v, const char* fmt = "%.3f") {
  return v ? absl::StrFormat(fmt, *v) : std::string("n/a");
}

std::string AucCell(const ModelSummary& m) {
  if (!m.auc) return "n/a";
  if (!m.ci95) return absl::StrFormat("%.3f [n/a]", *m.auc);
  return absl::StrFormat("%.3f [%.3f, %.3f]", *m.auc, m.ci95->first, m.ci95->second);
}

std::string PCell(const std::optional<double>& p) {
  if (!p) return "n/a";
  if (*p < 1e-4) return absl::StrFormat("%.1e", *p);
  return absl::StrFormat("%.4f", *p);
}

}  // namespace

absl::StatusOr<ComparisonReport> CompareModels(const std::vector<LabelScores>& labels) {
  ComparisonReport report;
  std::vector<double> auc_a;
  std::vector<double> auc_b;
  for (const LabelScores& label : labels) {
    if (label.truth.size() != label.a.size() || label.truth.size() != label.b.size()) {
      return absl::InvalidArgumentError(absl::StrCat("label '", label.name, "': truth and scores differ in length"));
    }
    LabelComparison out;
    out.name = label.name;
    for (int t : label.truth) {
      if (t != 0 && t != 1) {
        return absl::InvalidArgumentError(absl::StrCat("label '", label.name, "': truth value ", t, " is not 0 or 1"));
      }
      (t == 1 ? out.n_pos : out.n_neg) += 1;
    }
    auto a = Summarize(label, label.a, out.n_pos, out.n_neg);
    if (!a.ok()) return a.status();
    auto b = Summarize(label, label.b, out.n_pos, out.n_neg);
    if (!b.ok()) return b.status();
    out.a = *std::move(a);
    out.b = *std::move(b);
    if (out.a.auc && out.b.auc) {
      absl::StatusOr<PairedDeLong> test = PairedDeLongTest(label.truth, label.a, label.b);
      if (!test.ok()) return InLabel(label.name, test.status());
      out.delong = *test;
      auc_a.push_back(*out.a.auc);
      auc_b.push_back(*out.b.auc);
    }
    report.labels.push_back(std::move(out));
  }
  report.labels_compared = static_cast<int64_t>(auc_a.size());
  if (!auc_a.empty()) {
    double sum_a = 0;
    double sum_b = 0;
    for (size_t i = 0; i < auc_a.size(); ++i) {
      sum_a += auc_a[i];
      sum_b += auc_b[i];
    }
    report.mean_auc_a = sum_a / static_cast<double>(auc_a.size());
    report.mean_auc_b = sum_b / static_cast<double>(auc_b.size());
  }
  absl::StatusOr<WilcoxonResult> wilcoxon = WilcoxonSignedRank(auc_a, auc_b);
  if (!wilcoxon.ok()) return wilcoxon.status();
  report.wilcoxon = *wilcoxon;
  return report;
}

nlohmann::ordered_json ComparisonReportToJson(const ComparisonReport& report) {
  nlohmann::ordered_json labels = nlohmann::ordered_json::array();
  for (const LabelComparison& l : report.labels) {
    nlohmann::ordered_json j;
    j["name"] = l.name;
    j["n_pos"] = l.n_pos;
    j["n_neg"] = l.n_neg;
    j["a"] = ModelJson(l.a);
    j["b"] = ModelJson(l.b);
    if (l.delong) {
      nlohmann::ordered_json d;
      d["difference"] = l.delong->difference;
      d["z"] = Opt(l.delong->z);
      d["p_value"] = Opt(l.delong->p_value);
      d["ci95"] = Pair(l.delong->ci95);
      if (!l.delong->note.empty()) d["note"] = l.delong->note;
      j["delong"] = d;
    } else {
      j["delong"] = nullptr;
    }
    labels.push_back(std::move(j));
  }
  const WilcoxonResult& w = report.wilcoxon;
  nlohmann::ordered_json wilcoxon = {{"n", w.n},
                                     {"statistic", w.statistic},
                                     {"p_value", Opt(w.p_value)},
                                     {"method", MethodName(w.method)},
                                     {"zeros_dropped", w.zeros_dropped}};
  if (!w.note.empty()) wilcoxon["note"] = w.note;
  nlohmann::ordered_json overall = {{"labels_compared", report.labels_compared},
                                    {"mean_auc_a", Opt(report.mean_auc_a)},
                                    {"mean_auc_b", Opt(report.mean_auc_b)},
                                    {"wilcoxon", wilcoxon}};
  if (report.mean_auc_ci_a) overall["mean_auc_a_ci95"] = Pair(report.mean_auc_ci_a);
  if (report.mean_auc_ci_b) overall["mean_auc_b_ci95"] = Pair(report.mean_auc_ci_b);
  return {{"labels", labels}, {"overall", overall}};
}

std::string FormatComparisonTable(const ComparisonReport& report) {
  size_t width = 5;
  for (const LabelComparison& l : report.labels) width = std::max(width, l.name.size());
  std::string out = absl::StrFormat("%-*s %6s %6s  %-22s  %-22s  %7s  %9s\n", static_cast<int>(width), "label", "n+",
                                    "n-", "AUC a [95% CI]", "AUC b [95% CI]", "a - b", "DeLong p");
  for (const LabelComparison& l : report.labels) {
    absl::StrAppendFormat(&out, "%-*s %6d %6d  %-22s  %-22s  %7s  %9s\n", static_cast<int>(width), l.name, l.n_pos,
                          l.n_neg, AucCell(l.a), AucCell(l.b),
                          l.delong ? absl::StrFormat("%+.3f", l.delong->difference) : std::string("n/a"),
                          l.delong ? PCell(l.delong->p_value) : std::string("n/a"));
  }
  const WilcoxonResult& w = report.wilcoxon;
  absl::StrAppendFormat(&out,
                        "mean AUC a %s, b %s over %d labels; Wilcoxon "
                        "signed-rank (%s): n = %d, W = %g, p = %s\n",
                        Num(report.mean_auc_a), Num(report.mean_auc_b), report.labels_compared, MethodName(w.method),
                        w.n, w.statistic, PCell(w.p_value));
  return out;
}

}  // namespace fedtune::stats
