#include "coordinator/cli/comparison_report.h"

#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/federation/states.h"
#include "common/html/html.h"
#include "common/io/file_util.h"
#include "common/status_macros.h"
#include "coordinator/cli/consortium_report.h"
#include "coordinator/cli/consortium_view.h"
#include "coordinator/cli/report_format.h"
#include "coordinator/cli/terminal_text.h"
#include "coordinator/cli/text_table.h"
#include "nlohmann/json.hpp"

namespace fedtune::admin {
namespace {

using Json = nlohmann::ordered_json;

// The models a final evaluation holds, in the report's order.
constexpr int kModels = 4;
constexpr const char* kModelName[kModels] = {"open-source", "local-only", "global", "adapted"};  // ModelEvaluation.name
constexpr const char* kModelKey[kModels] = {"open_source", "local_only", "global", "adapted"};   // JSON keys
constexpr int kOpenSource = 0, kLocalOnly = 1, kGlobal = 2, kAdapted = 3;

// The comparisons against the local-only baseline: model b vs model a.
struct PairSpec {
  int a;
  int b;
  const char* key;
  const char* title;
};
constexpr int kPairs = 2;
constexpr PairSpec kPair[kPairs] = {{kLocalOnly, kAdapted, "adapted_vs_local_only", "adapted vs local-only"},
                                    {kLocalOnly, kGlobal, "global_vs_local_only", "global vs local-only"}};

// A mean AUC and its bootstrap CI as reported.
struct MeanWithCi {
  std::optional<double> mean;
  std::optional<double> low;
  std::optional<double> high;
};

// What the comparison needs of one site in one run.
struct Cell {
  const v1::MetricsReport* final_report = nullptr;
  const v1::ModelEvaluation* model[kModels] = {};
  consortium::ComparisonView pair[kPairs];
};

// The runs' cells, looked up once: per site (first-seen order over the runs) and strategy (the runs' order).
struct Views {
  std::vector<std::string> sites;
  std::vector<std::vector<Cell>> cells;  // [site][run]
};

MeanWithCi MeanOf(const v1::ModelEvaluation* model) {
  MeanWithCi m;
  m.mean = consortium::MeanAuc(model);
  // A site of an earlier release leaves the CI at proto3's 0, 0: not computed.
  if (model != nullptr && m.mean && Defined(model->mean_auc_ci_low()) && Defined(model->mean_auc_ci_high()) &&
      model->mean_auc_ci_high() > 0 && model->mean_auc_ci_low() <= model->mean_auc_ci_high()) {
    m.low = model->mean_auc_ci_low();
    m.high = model->mean_auc_ci_high();
  }
  return m;
}

Cell CellOf(const v1::SiteRunReport* site) {
  Cell cell;
  if (site == nullptr) return cell;
  for (const v1::MetricsReport& metrics : site->metrics()) {
    if (metrics.kind() == "final") cell.final_report = &metrics;  // The last one wins, as in the consortium report.
  }
  for (int m = 0; m < kModels; ++m) cell.model[m] = consortium::FindModel(cell.final_report, kModelName[m]);
  if (cell.final_report == nullptr) return cell;
  for (int p = 0; p < kPairs; ++p) {
    for (const v1::ModelComparison& c : cell.final_report->comparisons()) {
      const std::string a = kModelName[kPair[p].a], b = kModelName[kPair[p].b];
      if (c.model_a() == a && c.model_b() == b) {
        cell.pair[p] = {&c, false};
      } else if (cell.pair[p].comparison == nullptr && c.model_a() == b && c.model_b() == a) {
        cell.pair[p] = {&c, true};
      }
    }
  }
  return cell;
}

Views ViewsOf(const std::vector<StrategyRun>& runs) {
  Views views;
  std::set<std::string> seen;
  for (const StrategyRun& run : runs) {
    for (const v1::SiteRunReport& site : run.report.sites()) {
      if (seen.insert(site.site_id()).second) views.sites.push_back(site.site_id());
    }
  }
  for (const std::string& id : views.sites) {
    std::vector<Cell> row;
    for (const StrategyRun& run : runs) {
      const v1::SiteRunReport* found = nullptr;
      for (const v1::SiteRunReport& site : run.report.sites()) {
        if (site.site_id() == id) found = &site;
      }
      row.push_back(CellOf(found));
    }
    views.cells.push_back(std::move(row));
  }
  return views;
}

// The first run's evaluation of model m at site s that has a mean AUC.
MeanWithCi FirstMean(const Views& views, size_t s, int m) {
  for (const Cell& cell : views.cells[s]) {
    MeanWithCi mean = MeanOf(cell.model[m]);
    if (mean.mean) return mean;
  }
  return {};
}

std::optional<double> WallSeconds(const v1::RunStatus& status) {
  if (status.started_ms() <= 0 || status.finished_ms() < status.started_ms()) return std::nullopt;
  return (status.finished_ms() - status.started_ms()) / 1000.0;
}

// The runs' common base model digest, or "" when they differ or one is unknown.
std::string CommonBaseModel(const std::vector<StrategyRun>& runs) {
  if (runs.empty()) return "";
  const std::string& first = runs.front().report.status().base_model_digest();
  for (const StrategyRun& run : runs) {
    if (run.report.status().base_model_digest() != first) return "";
  }
  return first;
}

// AUC difference b - a for `label`, oriented as b vs a.
std::optional<double> DifferenceOf(const consortium::ComparisonView& view, const std::string& label) {
  if (view.comparison == nullptr) return std::nullopt;
  const v1::ModelComparison& c = *view.comparison;
  for (int i = 0; i < c.labels_size() && i < c.auc_difference_size(); ++i) {
    if (c.labels(i) != label) continue;
    std::optional<double> d = Defined(c.auc_difference(i));
    if (d && view.reversed) *d = -*d;
    return d;
  }
  return std::nullopt;
}

std::string FormatWall(std::optional<double> seconds) {
  if (!seconds) return "n/a";
  const int64_t s = static_cast<int64_t>(*seconds + 0.5);
  if (s < 120) return absl::StrCat(s, " s");
  return absl::StrFormat("%d min %02d s", s / 60, s % 60);
}

// ---- JSON

Json Num(std::optional<double> value) { return value ? Json(*value) : Json(nullptr); }

Json MeanJson(const MeanWithCi& m) {
  return {{"mean_auc", Num(m.mean)}, {"ci_low", Num(m.low)}, {"ci_high", Num(m.high)}};
}

Json PairJson(const consortium::ComparisonView& view) {
  if (view.comparison == nullptr) return nullptr;
  Json out;
  out["wilcoxon_p"] = Num(view.Wilcoxon());
  out["improved_significant"] = view.Improved();
  out["worsened_significant"] = view.Worsened();
  Json labels = Json::array();
  for (const std::string& label : view.comparison->labels()) {
    labels.push_back(
        {{"label", label}, {"auc_difference", Num(DifferenceOf(view, label))}, {"delong_p", Num(view.PValue(label))}});
  }
  out["labels"] = std::move(labels);
  return out;
}

Json StrategyJson(const StrategyRun& run) {
  const v1::RunStatus& status = run.report.status();
  Json out;
  out["strategy"] = run.strategy;
  out["run_id"] = status.run_id();
  out["name"] = status.name();
  out["state"] = federation::DisplayText(status);
  out["message"] = status.message();
  out["personalization"] = std::string(federation::Text(federation::ToProto(status.config().personalization())));
  out["aggregation"] = status.config().aggregation();
  out["rounds"] = status.config().rounds();
  out["base_model_digest"] = status.base_model_digest();
  out["final_model_digest"] = status.final_model_digest();
  out["started_ms"] = status.started_ms();
  out["finished_ms"] = status.finished_ms();
  out["wall_seconds"] = Num(WallSeconds(status));
  out["bytes_down"] = status.bytes_down();
  out["bytes_up"] = status.bytes_up();
  return out;
}

// ---- HTML

using html::kEnDash;

constexpr char kStyle[] = R"css(h3 { font-size: 1.08em; margin-top: 1.4em; }
.warning { background: #fff4e5; border-left: 4px solid #e69f00; padding: 0.6em 1em; }
table { margin: 0.4em 0; }
td.text { text-align: left; white-space: normal; }
th.group { text-align: center; }
code { font-size: 0.92em; }
)css";

std::string Td(const std::string& text) { return absl::StrCat("<td>", HtmlEscape(text), "</td>"); }
std::string TdLabel(const std::string& text) { return absl::StrCat("<td class=\"label\">", HtmlEscape(text), "</td>"); }
std::string TdText(const std::string& text) { return absl::StrCat("<td class=\"text\">", HtmlEscape(text), "</td>"); }
std::string TdNa() { return "<td class=\"na\">n/a</td>"; }
std::string Th(const std::string& text) { return absl::StrCat("<th>", HtmlEscape(text), "</th>"); }

std::string MeanTd(const MeanWithCi& m) {
  if (!m.mean) return TdNa();
  std::string cell = FormatAuc(m.mean);
  if (m.low && m.high) {
    absl::StrAppend(&cell, " <span class=\"ci\">(", FormatAuc(m.low), kEnDash, FormatAuc(m.high), ")</span>");
  }
  return absl::StrCat("<td>", cell, "</td>");
}

std::string PTd(std::optional<double> p) { return p ? Td(FormatP(p)) : TdNa(); }

std::string RunsTable(const std::vector<StrategyRun>& runs) {
  std::string out =
      "<table>\n<tr><th>strategy</th><th>run</th><th>state</th><th>personalization</th><th>aggregation</th>"
      "<th>rounds</th><th>base model</th><th>started</th><th>finished</th><th>wall time</th><th>traffic down</th>"
      "<th>traffic up</th></tr>\n";
  for (const StrategyRun& run : runs) {
    const v1::RunStatus& s = run.report.status();
    absl::StrAppend(&out, "<tr>", TdLabel(run.strategy), Td(s.run_id()), TdText(federation::DisplayText(s)),
                    Td(std::string(federation::Text(federation::ToProto(s.config().personalization())))),
                    Td(s.config().aggregation()), Td(absl::StrCat(s.config().rounds())),
                    Td(ShortDigest(s.base_model_digest())), Td(FormatTimeMs(s.started_ms())),
                    Td(FormatTimeMs(s.finished_ms())), Td(FormatWall(WallSeconds(s))), Td(FormatBytes(s.bytes_down())),
                    Td(FormatBytes(s.bytes_up())), "</tr>\n");
  }
  return out + "</table>\n";
}

std::string SummaryTable(const std::vector<StrategyRun>& runs, const Views& views) {
  std::string out =
      "<table>\n<tr><th rowspan=\"2\">site</th><th rowspan=\"2\">open-source</th>"
      "<th rowspan=\"2\">local-only</th>";
  for (const StrategyRun& run : runs) {
    absl::StrAppend(&out, "<th class=\"group\" colspan=\"2\">", HtmlEscape(run.strategy), "</th>");
  }
  out += "</tr>\n<tr>";
  for (size_t r = 0; r < runs.size(); ++r) out += "<th>global</th><th>adapted</th>";
  out += "</tr>\n";
  for (size_t s = 0; s < views.sites.size(); ++s) {
    absl::StrAppend(&out, "<tr>", TdLabel(views.sites[s]), MeanTd(FirstMean(views, s, kOpenSource)),
                    MeanTd(FirstMean(views, s, kLocalOnly)));
    for (const Cell& cell : views.cells[s]) {
      absl::StrAppend(&out, MeanTd(MeanOf(cell.model[kGlobal])), MeanTd(MeanOf(cell.model[kAdapted])));
    }
    out += "</tr>\n";
  }
  return out + "</table>\n";
}

// Per site: one row per strategy with the four models and the comparisons with the local-only baseline, then the
// per-label DeLong p of adapted vs local-only.
std::string SiteSection(const std::vector<StrategyRun>& runs, const Views& views, size_t s) {
  std::string out =
      absl::StrCat("<h3>", HtmlEscape(views.sites[s]), "</h3>\n<table>\n<tr><th>strategy</th>", "<th>test cases</th>");
  for (int m = 0; m < kModels; ++m) absl::StrAppend(&out, Th(kModelName[m]));
  for (int p = 0; p < kPairs; ++p) {
    absl::StrAppend(&out, Th(absl::StrCat(kPair[p].title, ": better / worse p<0.05")),
                    Th(absl::StrCat(kPair[p].title, ": Wilcoxon p")));
  }
  out += "</tr>\n";
  std::vector<std::string> labels;
  std::set<std::string> seen;
  for (size_t r = 0; r < runs.size(); ++r) {
    const Cell& cell = views.cells[s][r];
    absl::StrAppend(&out, "<tr>", TdLabel(runs[r].strategy));
    if (cell.final_report == nullptr) {
      absl::StrAppend(&out, "<td class=\"na\" colspan=\"", 1 + kModels + 2 * kPairs, "\">n/a (no final evaluation)",
                      "</td></tr>\n");
      continue;
    }
    absl::StrAppend(&out, Td(absl::StrCat(cell.final_report->test_cases())));
    for (int m = 0; m < kModels; ++m) absl::StrAppend(&out, MeanTd(MeanOf(cell.model[m])));
    for (int p = 0; p < kPairs; ++p) {
      const consortium::ComparisonView& c = cell.pair[p];
      if (c.comparison == nullptr) {
        absl::StrAppend(&out, TdNa(), TdNa());
        continue;
      }
      absl::StrAppend(&out, Td(absl::StrCat(c.Improved(), " / ", c.Worsened())), PTd(c.Wilcoxon()));
      for (const std::string& label : c.comparison->labels()) {
        if (seen.insert(label).second) labels.push_back(label);
      }
    }
    out += "</tr>\n";
  }
  out += "</table>\n";
  if (labels.empty()) {
    return out +
           "<p class=\"note\">No run has a comparison of the adapted model with the local-only baseline at this "
           "site (runs without the local-only baseline, or sites that did not send it): per-label p-values "
           "n/a.</p>\n";
  }
  absl::StrAppend(&out, "<p>Adapted vs local-only per label: AUC difference (adapted ", html::kMinus,
                  " local-only) and paired DeLong p.</p>\n<table>\n<tr><th>label</th>");
  for (const StrategyRun& run : runs) absl::StrAppend(&out, "<th colspan=\"2\">", HtmlEscape(run.strategy), "</th>");
  out += "</tr>\n";
  for (const std::string& label : labels) {
    absl::StrAppend(&out, "<tr>", TdLabel(label));
    for (size_t r = 0; r < runs.size(); ++r) {
      const consortium::ComparisonView& c = views.cells[s][r].pair[0];
      const std::optional<double> d = DifferenceOf(c, label);
      absl::StrAppend(&out, d ? Td(absl::StrFormat("%+.3f", *d)) : TdNa(), PTd(c.PValue(label)));
    }
    out += "</tr>\n";
  }
  return out + "</table>\n";
}

}  // namespace

std::string StrategyNameOf(const v1::RunConfig& config) {
  switch (config.personalization()) {
    case v1::RunConfig::FEDBN:
      return "fedbn";
    case v1::RunConfig::SILOBN:
      return "silobn";
    case v1::RunConfig::DITTO:
      return "ditto";
    default:
      return config.aggregation().empty() ? "fedavg" : config.aggregation();
  }
}

std::vector<std::string> StrategyNames(const std::vector<v1::RunReport>& runs) {
  std::map<std::string, int> count;
  for (const v1::RunReport& run : runs) ++count[StrategyNameOf(run.status().config())];
  std::vector<std::string> names;
  for (const v1::RunReport& run : runs) {
    std::string name = StrategyNameOf(run.status().config());
    if (count[name] > 1) absl::StrAppend(&name, " (", run.status().run_id(), ")");
    names.push_back(std::move(name));
  }
  return names;
}

std::string ComparisonReportJson(const std::vector<StrategyRun>& runs) {
  const Views views = ViewsOf(runs);
  Json json;
  json["format"] = "fedtune-strategy-comparison-v1";
  const std::string base = CommonBaseModel(runs);
  json["base_model_digest"] = base.empty() ? Json(nullptr) : Json(base);
  json["same_base_model"] = !base.empty();
  Json strategies = Json::array();
  for (const StrategyRun& run : runs) strategies.push_back(StrategyJson(run));
  json["strategies"] = std::move(strategies);
  json["sites"] = views.sites;
  Json results = Json::array();
  Json summary = Json::array();
  for (size_t s = 0; s < views.sites.size(); ++s) {
    Json row;
    row["site_id"] = views.sites[s];
    row["open_source"] = MeanJson(FirstMean(views, s, kOpenSource));
    row["local_only"] = MeanJson(FirstMean(views, s, kLocalOnly));
    Json per_strategy = Json::object();
    for (size_t r = 0; r < runs.size(); ++r) {
      const Cell& cell = views.cells[s][r];
      per_strategy[runs[r].strategy] = {{"global", MeanJson(MeanOf(cell.model[kGlobal]))},
                                        {"adapted", MeanJson(MeanOf(cell.model[kAdapted]))}};
      Json result;
      result["site_id"] = views.sites[s];
      result["strategy"] = runs[r].strategy;
      result["final_evaluation"] = cell.final_report != nullptr;
      result["test_cases"] = cell.final_report != nullptr ? Json(cell.final_report->test_cases()) : Json(nullptr);
      Json models = Json::object();
      for (int m = 0; m < kModels; ++m) {
        if (cell.model[m] == nullptr) {
          models[kModelKey[m]] = nullptr;
          continue;
        }
        Json model = MeanJson(MeanOf(cell.model[m]));
        model["digest"] = cell.model[m]->digest();
        models[kModelKey[m]] = std::move(model);
      }
      result["models"] = std::move(models);
      for (int p = 0; p < kPairs; ++p) result[kPair[p].key] = PairJson(cell.pair[p]);
      results.push_back(std::move(result));
    }
    row["strategies"] = std::move(per_strategy);
    summary.push_back(std::move(row));
  }
  json["results"] = std::move(results);
  json["summary"] = std::move(summary);
  return json.dump(2) + "\n";
}

std::string ComparisonReportHtml(const std::vector<StrategyRun>& runs) {
  const Views views = ViewsOf(runs);
  std::string out = html::PageStart("Strategy comparison", absl::StrCat(html::ReportStyle(110), kStyle));
  const std::string base = CommonBaseModel(runs);
  std::string names;
  for (const StrategyRun& run : runs) absl::StrAppend(&names, names.empty() ? "" : ", ", run.strategy);
  absl::StrAppend(&out, "<p class=\"", base.empty() ? "warning" : "summary", "\">", runs.size(), " run(s) (",
                  HtmlEscape(names), ") at ", views.sites.size(), " site(s); ",
                  base.empty() ? "the runs did NOT start from the same base model: their numbers are not comparable"
                               : absl::StrCat("every run started from base model <code>", HtmlEscape(base), "</code>"),
                  ".</p>\n");
  absl::StrAppend(&out, "<h2>Runs</h2>\n", RunsTable(runs));
  absl::StrAppend(
      &out, "<h2>Mean AUC per site and model</h2>\n",
      "<p>Mean AUC over the labels of each site's test split, with its 95% bootstrap confidence interval (test cases "
      "resampled, labels together). Open-source and local-only are the same for every strategy (the first run's are "
      "shown); global and adapted are per strategy.</p>\n",
      SummaryTable(runs, views));
  absl::StrAppend(&out, "<h2>Per site: the strategies against the local-only baseline</h2>\n");
  for (size_t s = 0; s < views.sites.size(); ++s) absl::StrAppend(&out, SiteSection(runs, views, s));
  absl::StrAppend(
      &out,
      "<p class=\"note\">Better / worse: labels where the model's AUC differs from the local-only model's at paired "
      "DeLong p &lt; 0.05; Wilcoxon: signed-rank test over the labels' AUCs. n/a: not reported (a run without the "
      "local-only baseline, a site without a final evaluation, or a site that does not compute confidence "
      "intervals). Generated by fedtune from the coordinator's records: only summary metrics, never images or "
      "per-case predictions.</p>\n");
  return out + html::PageEnd();
}

std::string ComparisonSummaryText(const std::vector<StrategyRun>& runs) {
  const Views views = ViewsOf(runs);
  TextTable runs_table({"strategy", "run", "state", "wall time", "base model"}, {false, false, false, true});
  for (const StrategyRun& run : runs) {
    const v1::RunStatus& s = run.report.status();
    runs_table.AddRow({run.strategy, s.run_id(), federation::DisplayText(s), FormatWall(WallSeconds(s)),
                       ShortDigest(s.base_model_digest())});
  }
  std::vector<std::string> header = {"site", "open-source", "local-only"};
  std::vector<bool> right = {false, true, true};
  for (const StrategyRun& run : runs) {
    header.push_back(absl::StrCat(run.strategy, " global/adapted"));
    right.push_back(true);
  }
  TextTable table(header, right);
  for (size_t s = 0; s < views.sites.size(); ++s) {
    std::vector<std::string> row = {views.sites[s], FormatAuc(FirstMean(views, s, kOpenSource).mean),
                                    FormatAuc(FirstMean(views, s, kLocalOnly).mean)};
    for (const Cell& cell : views.cells[s]) {
      row.push_back(absl::StrCat(FormatAuc(MeanOf(cell.model[kGlobal]).mean), " / ",
                                 FormatAuc(MeanOf(cell.model[kAdapted]).mean)));
    }
    table.AddRow(std::move(row));
  }
  const std::string base = CommonBaseModel(runs);
  return absl::StrCat("Strategy comparison: ", runs.size(), " run(s), ",
                      base.empty() ? "NOT the same base model" : absl::StrCat("base model ", ShortDigest(base)), "\n",
                      runs_table.Render(), "\nMean AUC per site:\n", table.Render());
}

absl::StatusOr<ComparisonFiles> WriteComparisonReport(const std::vector<StrategyRun>& runs,
                                                      const std::string& out_dir) {
  RETURN_IF_ERROR(io::MakeDirectories(out_dir));
  ComparisonFiles files{out_dir + "/comparison.json", out_dir + "/comparison.html"};
  RETURN_IF_ERROR(io::WriteFileAtomically(files.json_path, ComparisonReportJson(runs)));
  RETURN_IF_ERROR(io::WriteFileAtomically(files.html_path, ComparisonReportHtml(runs)));
  return files;
}

}  // namespace fedtune::admin
