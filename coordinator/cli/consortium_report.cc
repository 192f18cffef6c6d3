#include "coordinator/cli/consortium_report.h"

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/io/file_util.h"
#include "common/status_macros.h"
#include "coordinator/cli/consortium_reference.h"
#include "coordinator/cli/consortium_view.h"
#include "coordinator/cli/report_format.h"
#include "coordinator/cli/terminal_text.h"
#include "coordinator/cli/text_table.h"

// The report is rendered in three files: consortium_json.cc (report.json), consortium_html.cc (report.html) and
// this one (the terminal summary and the files), all from the views of consortium_view.h.
namespace fedtune::admin {

std::vector<SiteSummary> SummarizeSites(const v1::RunReport& report) {
  std::vector<SiteSummary> out;
  for (const consortium::SiteView& view : consortium::ViewsOf(report)) out.push_back(consortium::SummaryOf(view));
  return out;
}

namespace {

// The terminal's privacy lines (SiteSummaryText); "" for a run without differential privacy.
std::string PrivacyText(const v1::RunReport& report) {
  const consortium::PrivacyView p = consortium::PrivacyOf(report, consortium::ViewsOf(report));
  if (!p.any) return "";
  const v1::RunConfig& config = report.status().config();
  std::string dp = config.dp().empty() ? "none" : TerminalSafe(config.dp(), 32);
  if (config.dp() == "dp-sgd" || config.dp() == "dp-fedavg") {
    absl::StrAppend(&dp, ", noise multiplier ", absl::StrFormat("%g", config.dp_noise_multiplier()), ", clip norm ",
                    absl::StrFormat("%g", config.dp_clip_norm()));
  }
  std::string text = absl::StrCat("\nDifferential privacy (", dp, "): consortium epsilon ",
                                  consortium::FormatEpsilon(p.consortium_epsilon),
                                  p.delta ? absl::StrFormat(" at delta %g", *p.delta) : std::string(), "\n",
                                  consortium::kParallelComposition, "\n");
  if (!p.complete()) absl::StrAppend(&text, "Consortium epsilon ", consortium::MissingAccountsText(p), "\n");
  TextTable table({"site", "epsilon spent", "delta", "budget", "declined rounds"}, {false, true, true, true, false});
  for (const consortium::SitePrivacy& site : p.sites) {
    std::string declined = site.declined_rounds.empty() ? "-" : absl::StrJoin(site.declined_rounds, ", ");
    if (site.account == nullptr) {
      table.AddRow({site.site_id, "n/a (not reported)", "n/a", "n/a", declined});
      continue;
    }
    const double epsilon = site.non_private() ? std::numeric_limits<double>::infinity() : site.account->epsilon();
    table.AddRow({site.site_id, consortium::FormatEpsilon(epsilon), absl::StrFormat("%g", site.account->delta()),
                  site.account->max_epsilon() > 0 ? absl::StrFormat("%g", site.account->max_epsilon()) : "none",
                  declined});
  }
  absl::StrAppend(&text, table.Render());
  for (const consortium::DeclinedUpdate& d : p.declined) {
    absl::StrAppend(&text, "declined: round ", d.round, " attempt ", d.attempt, " by ", TerminalSafe(d.site_id), ": ",
                    TerminalSafe(d.reason), "\n");
  }
  return text;
}

}  // namespace

std::string SiteSummaryText(const v1::RunReport& report, const v1::RunReport* reference) {
  const std::vector<SiteSummary> summaries = SummarizeSites(report);
  // The local-only column only when some site reported the baseline (RunConfig.local_only_baseline).
  const bool local_only = std::any_of(summaries.begin(), summaries.end(),
                                      [](const SiteSummary& s) { return s.mean_auc_local_only.has_value(); });
  std::vector<std::string> header = {"site", "test cases", "mean AUC open-source -> global -> adapted"};
  std::vector<bool> right = {false, true, false};
  if (local_only) {
    header.push_back("local only");
    right.push_back(true);
  }
  for (const char* h : {"improved p<0.05", "worse p<0.05", "Wilcoxon p"}) {
    header.push_back(h);
    right.push_back(true);
  }
  TextTable table(header, right);
  for (const SiteSummary& s : summaries) {
    std::vector<std::string> row;
    if (!s.final_evaluation) {
      row = {s.site_id, "n/a", "n/a (no final evaluation)"};
      if (local_only) row.push_back("n/a");
      for (int i = 0; i < 3; ++i) row.push_back("n/a");
      table.AddRow(row);
      continue;
    }
    row = {s.site_id, absl::StrCat(s.test_cases),
           absl::StrCat(FormatAuc(s.mean_auc_open_source), " -> ", FormatAuc(s.mean_auc_global), " -> ",
                        FormatAuc(s.mean_auc_adapted))};
    if (local_only) row.push_back(FormatAuc(s.mean_auc_local_only));
    row.push_back(absl::StrCat(s.improved_significant, "/", s.labels_compared));
    row.push_back(absl::StrCat(s.worsened_significant));
    row.push_back(FormatP(s.wilcoxon_p));
    table.AddRow(row);
  }
  return absl::StrCat("Consortium report: ", consortium::RunLine(report.status()), "\n", table.Render(),
                      "(improved/worse: labels where the adapted model's AUC differs from the open-source model's at "
                      "DeLong p < 0.05; Wilcoxon: adapted vs open-source over the labels)\n",
                      PrivacyText(report),
                      reference == nullptr
                          ? ""
                          : consortium::ReferenceText(report.status(), consortium::ReferenceOf(report, *reference)));
}

absl::StatusOr<ReportFiles> WriteConsortiumReport(const v1::RunReport& report, const std::string& out_dir,
                                                  const v1::RunReport* reference) {
  RETURN_IF_ERROR(io::MakeDirectories(out_dir));
  ReportFiles files{out_dir + "/report.json", out_dir + "/report.html"};
  RETURN_IF_ERROR(io::WriteFileAtomically(files.json_path, ConsortiumReportJson(report, reference)));
  RETURN_IF_ERROR(io::WriteFileAtomically(files.html_path, ConsortiumReportHtml(report, reference)));
  return files;
}

}  // namespace fedtune::admin
