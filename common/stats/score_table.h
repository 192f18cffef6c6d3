// Loading a truth table and two score tables (CheXpert-shaped CSVs: `Path` +
// one column per label) into the per-label case vectors that CompareModels
// takes, matching rows by Path whatever their order.
#ifndef FEDTUNE_COMMON_STATS_SCORE_TABLE_H_
#define FEDTUNE_COMMON_STATS_SCORE_TABLE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/stats/compare.h"

namespace fedtune::stats {

struct ScoreTablePaths {
  std::string truth;
  std::string scores_a;
  std::string scores_b;
};

// Reads the three files. The truth file's first column must be `Path`; its
// label columns are all other columns except CheXpert's metadata columns (Sex,
// Age, Frontal/Lateral, AP/PA, Patient, Study). `labels`, when not empty,
// restricts and orders the labels. Truth values 1, 0, 1.0, 0.0 count; blank, -1
// and -1.0 exclude that case from that label only. Scores must be finite reals
// for every truth row. Rows of a scores file whose Path is not in the truth
// file are ignored. Errors (InvalidArgument unless noted; messages name file,
// line and column): a file that cannot be read (NotFound / PermissionDenied),
// malformed CSV, first column not Path, a duplicate Path, a truth value outside
// the set above, a label column missing from a scores file, a truth Path
// missing from a scores file, a non-numeric or non-finite score, a requested
// label that is not a label column of the truth file, a truth file without
// label columns.
absl::StatusOr<std::vector<LabelScores>> LoadScoreTables(const ScoreTablePaths& paths,
                                                         const std::vector<std::string>& labels);

}  // namespace fedtune::stats

#endif  // FEDTUNE_COMMON_STATS_SCORE_TABLE_H_
