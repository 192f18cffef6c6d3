// `fedtune stats compare`: compares two models' scores against truth, label by
// label and overall.
#ifndef FEDTUNE_COMMON_STATS_COMPARE_COMMAND_H_
#define FEDTUNE_COMMON_STATS_COMPARE_COMMAND_H_

#include <ostream>

#include "common/cli/command.h"

namespace fedtune::stats {

// --truth T.csv --scores-a A.csv --scores-b B.csv --out report.json [--labels
// "A,B"] [--quiet]. Writes the JSON report atomically and prints the table to
// `out` (which must outlive the command) unless --quiet. Bad input:
// InvalidArgument or NotFound (exit code 2); failure to write the report: the
// write error (exit code 1).
cli::Command MakeStatsCompareCommand(std::ostream& out);

}  // namespace fedtune::stats

#endif  // FEDTUNE_COMMON_STATS_COMPARE_COMMAND_H_
