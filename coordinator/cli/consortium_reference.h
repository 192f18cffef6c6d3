// The consortium report's comparison with a reference run (`fedtune report --run R --reference-run R0`): typically
// the same federation without privacy, so that a private run's AUC is read next to what privacy cost. Per site of
// the report (sites the reference lacks show "n/a"): the mean AUC of the final global and adapted models in both runs
// (their final evaluations, SummarizeSites), the differences, and the site's spent epsilon in this run (PrivacyOf).
// The two runs' privacy settings are stated; nothing checks that they are otherwise the same federation (the report
// names both runs' configs: rounds, local epochs, aggregation).
//
// report.json: "reference": {"run_id", "name", "state", "rounds", "local_epochs", "dp", "secure_aggregation",
//   "sites": [{"site_id", "epsilon" (null: none or non-private), "non_private_training",
//              "mean_auc": {"global", "adapted"}, "reference_mean_auc": {"global", "adapted"},
//              "difference": {"global", "adapted"} (this run - reference; null when either is missing)}]}.
// Thread safety: reentrant.
#ifndef FEDTUNE_COORDINATOR_CLI_CONSORTIUM_REFERENCE_H_
#define FEDTUNE_COORDINATOR_CLI_CONSORTIUM_REFERENCE_H_

#include <optional>
#include <string>
#include <vector>

#include "fedtune/v1/federation.pb.h"
#include "nlohmann/json.hpp"

namespace fedtune::admin::consortium {

struct ReferenceRow {
  std::string site_id;
  std::optional<double> epsilon;  // This run's spent epsilon at the site (nullopt: no account or non-private).
  bool non_private = false;
  std::optional<double> global, adapted;                      // This run.
  std::optional<double> reference_global, reference_adapted;  // The reference run.
};

struct ReferenceView {
  const v1::RunStatus* reference = nullptr;
  std::vector<ReferenceRow> rows;  // The report's site order.
};

ReferenceView ReferenceOf(const v1::RunReport& report, const v1::RunReport& reference);

nlohmann::ordered_json ReferenceJson(const ReferenceView& view);
std::string ReferenceHtml(const v1::RunStatus& status, const ReferenceView& view);
std::string ReferenceText(const v1::RunStatus& status, const ReferenceView& view);

}  // namespace fedtune::admin::consortium

#endif  // FEDTUNE_COORDINATOR_CLI_CONSORTIUM_REFERENCE_H_
