#include "common/stats/compare_command.h"

#include <nlohmann/json.hpp>
#include <ostream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "common/io/file_util.h"
#include "common/stats/compare.h"
#include "common/stats/score_table.h"
#include "common/status_macros.h"

namespace fedtune::stats {
namespace {

absl::Status RunCompare(const cli::ParsedFlags& flags, std::ostream& out) {
  ScoreTablePaths paths{flags.GetOrDie("truth"), flags.GetOrDie("scores-a"), flags.GetOrDie("scores-b")};
  std::vector<std::string> labels;
  if (std::optional<std::string> list = flags.Get("labels")) {
    for (absl::string_view part : absl::StrSplit(*list, ',')) {
      absl::string_view name = absl::StripAsciiWhitespace(part);
      if (!name.empty()) labels.emplace_back(name);
    }
    if (labels.empty()) return absl::InvalidArgumentError("--labels: no label names given");
  }
  ASSIGN_OR_RETURN(std::vector<LabelScores> scores, LoadScoreTables(paths, labels));
  ASSIGN_OR_RETURN(ComparisonReport report, CompareModels(scores));
  RETURN_IF_ERROR(io::WriteFileAtomically(flags.GetOrDie("out"), ComparisonReportToJson(report).dump(2) + "\n"));
  if (!flags.GetBool("quiet")) out << FormatComparisonTable(report);
  return absl::OkStatus();
}

}  // namespace

cli::Command MakeStatsCompareCommand(std::ostream& out) {
  cli::Command c;
  c.path = {"stats", "compare"};
  c.summary =
      "compare two models' scores: per-label AUC, DeLong CI and paired test, "
      "Youden point; Wilcoxon overall";
  c.flags = {
      {"truth",
       "CheXpert-style truth CSV (Path + label columns; blank or -1 excludes a "
       "case)",
       false, true, std::nullopt, "T.csv"},
      {"scores-a", "scores of model a (Path + one column per label)", false, true, std::nullopt, "A.csv"},
      {"scores-b", "scores of model b", false, true, std::nullopt, "B.csv"},
      {"out", "where to write the JSON report", false, true, std::nullopt, "report.json"},
      {"labels",
       "comma-separated labels to compare (default: all label columns of the "
       "truth file)",
       false, false, std::nullopt, "\"A,B\""},
      {"quiet", "do not print the table", true},
  };
  c.run = [&out](const cli::ParsedFlags& flags) { return RunCompare(flags, out); };
  return c;
}

}  // namespace fedtune::stats
