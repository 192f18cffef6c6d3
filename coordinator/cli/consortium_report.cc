#include "coordinator/cli/consortium_report.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/status_macros.h"
#include "coordinator/cli/consortium_view.h"
#include "coordinator/cli/report_format.h"
#include "coordinator/cli/text_table.h"

// The report is rendered in three files: consortium_json.cc (report.json), consortium_html.cc (report.html) and
// this one (the terminal summary and the files), all from the views of consortium_view.h.
namespace fedtune::admin {

std::vector<SiteSummary> SummarizeSites(const v1::RunReport& report) {
  std::vector<SiteSummary> out;
  for (const consortium::SiteView& view : consortium::ViewsOf(report)) out.push_back(consortium::SummaryOf(view));
  return out;
}

std::string SiteSummaryText(const v1::RunReport& report) {
  TextTable table({"site", "test cases", "mean AUC open-source -> global -> adapted", "improved p<0.05", "worse p<0.05",
                   "Wilcoxon p"},
                  {false, true, false, true, true, true});
  for (const SiteSummary& s : SummarizeSites(report)) {
    if (!s.final_evaluation) {
      table.AddRow({s.site_id, "n/a", "n/a (no final evaluation)", "n/a", "n/a", "n/a"});
      continue;
    }
    table.AddRow({s.site_id, absl::StrCat(s.test_cases),
                  absl::StrCat(FormatAuc(s.mean_auc_open_source), " -> ", FormatAuc(s.mean_auc_global), " -> ",
                               FormatAuc(s.mean_auc_adapted)),
                  absl::StrCat(s.improved_significant, "/", s.labels_compared), absl::StrCat(s.worsened_significant),
                  FormatP(s.wilcoxon_p)});
  }
  return absl::StrCat("Consortium report: ", consortium::RunLine(report.status()), "\n", table.Render(),
                      "(improved/worse: labels where the adapted model's AUC differs from the open-source model's at "
                      "DeLong p < 0.05; Wilcoxon: adapted vs open-source over the labels)\n");
}

absl::StatusOr<ReportFiles> WriteConsortiumReport(const v1::RunReport& report, const std::string& out_dir) {
  RETURN_IF_ERROR(io::MakeDirectories(out_dir));
  ReportFiles files{out_dir + "/report.json", out_dir + "/report.html"};
  RETURN_IF_ERROR(io::WriteFileAtomically(files.json_path, ConsortiumReportJson(report)));
  RETURN_IF_ERROR(io::WriteFileAtomically(files.html_path, ConsortiumReportHtml(report)));
  return files;
}

}  // namespace fedtune::admin
