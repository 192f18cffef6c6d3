#include "common/federation/failure_stage.h"

namespace fedtune::federation {

absl::string_view FailureStageText(v1::FailureStage stage) {
  switch (stage) {
    case v1::FAILURE_STAGE_UNSPECIFIED:
      return "unspecified";
    case v1::FAILURE_STAGE_DOWNLOAD:
      return "download";
    case v1::FAILURE_STAGE_TRAINING:
      return "training";
    case v1::FAILURE_STAGE_EVALUATION:
      return "evaluation";
    case v1::FAILURE_STAGE_UPLOAD:
      return "upload";
    case v1::FAILURE_STAGE_OTHER:
      return "other";
    default:
      return "unknown";
  }
}

bool IsReportableFailureStage(int stage) {
  return v1::FailureStage_IsValid(stage) && stage != v1::FAILURE_STAGE_UNSPECIFIED;
}

}  // namespace fedtune::federation
