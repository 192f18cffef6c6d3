// The text forms of a failure report's stage (v1::FailureStage, federation.proto): what the coordinator's log, the
// operator's CLI and the metrics' `stage` label say: "download", "training", "evaluation", "upload", "other".
//
// Thread safety: reentrant (no state).
#ifndef FEDTUNE_COMMON_FEDERATION_FAILURE_STAGE_H_
#define FEDTUNE_COMMON_FEDERATION_FAILURE_STAGE_H_

#include "absl/strings/string_view.h"
#include "fedtune/v1/federation.pb.h"

namespace fedtune::federation {

// "download", "training", "evaluation", "upload", "other"; "unspecified" for FAILURE_STAGE_UNSPECIFIED and
// "unknown" for a value this build does not know (proto3 enums are open).
absl::string_view FailureStageText(v1::FailureStage stage);

// True for the five stages above (a value a report may carry; not UNSPECIFIED, not unknown).
bool IsReportableFailureStage(int stage);

}  // namespace fedtune::federation

#endif  // FEDTUNE_COMMON_FEDERATION_FAILURE_STAGE_H_
