// What the consortium report reads out of a RunReport (consortium_report.h), looked up once and shared by its JSON,
// HTML and terminal renderings: per site the final evaluation's three models and their comparisons, the per-round
// metrics, totals per round attempt and the cross-site matrix. Pointers point into the RunReport, which must outlive
// the views. Missing pieces are nullptr / nullopt; nothing here fails on partial data.
//
// Thread safety: the functions are reentrant.
#ifndef FEDTUNE_COORDINATOR_CLI_CONSORTIUM_VIEW_H_
#define FEDTUNE_COORDINATOR_CLI_CONSORTIUM_VIEW_H_

#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "coordinator/cli/consortium_report.h"
#include "coordinator/cli/report_format.h"
#include "fedtune/v1/federation.pb.h"

namespace fedtune::admin::consortium {

// The models of a final evaluation, in the report's order. "local-only" (the site's own fine-tuning of the
// open-source model, RunConfig.local_only_baseline) comes last so that the indices of the first three stay.
inline constexpr int kModels = 4;
inline constexpr int kLocalOnly = 3;
inline constexpr const char* kModelName[kModels] = {"open-source", "global", "adapted",
                                                    "local-only"};  // ModelEvaluation.name
inline constexpr const char* kModelKey[kModels] = {"open_source", "global", "adapted", "local_only"};  // JSON keys
inline constexpr const char* kModelTitle[kModels] = {"Open-source", "Federated global", "Locally adapted",
                                                     "Local only"};

// The comparisons: model b against model a.
struct PairSpec {
  int a;
  int b;
  const char* key;
  const char* title;
};
inline constexpr int kPairs = 6;
inline constexpr PairSpec kPair[kPairs] = {{0, 1, "global_vs_open_source", "global vs open-source"},
                                           {0, 2, "adapted_vs_open_source", "adapted vs open-source"},
                                           {1, 2, "adapted_vs_global", "adapted vs global"},
                                           {0, 3, "local_only_vs_open_source", "local only vs open-source"},
                                           {3, 1, "global_vs_local_only", "global vs local only"},
                                           {3, 2, "adapted_vs_local_only", "adapted vs local only"}};
inline constexpr int kAdaptedVsOpenSource = 1;

// A loss as reported: nullopt for 0 (proto3's default: not reported), negative or non-finite values.
std::optional<double> ReportedLoss(double value);

// A comparison found in a final report, in either orientation.
struct ComparisonView {
  const v1::ModelComparison* comparison = nullptr;
  bool reversed = false;  // Stored as a-vs-b instead of b-vs-a: improved and worsened swap.

  std::optional<double> PValue(const std::string& label) const {
    if (comparison == nullptr) return std::nullopt;
    for (int i = 0; i < comparison->labels_size() && i < comparison->delong_p_size(); ++i) {
      if (comparison->labels(i) == label) return Defined(comparison->delong_p(i));
    }
    return std::nullopt;
  }
  std::optional<double> Wilcoxon() const { return comparison ? Defined(comparison->wilcoxon_p()) : std::nullopt; }
  int Improved() const {
    if (comparison == nullptr) return 0;
    return reversed ? comparison->worsened_significant() : comparison->improved_significant();
  }
  int Worsened() const {
    if (comparison == nullptr) return 0;
    return reversed ? comparison->improved_significant() : comparison->worsened_significant();
  }
};

// The mean AUC of an evaluation: its mean_auc when filled in, else the mean over the labels with a defined AUC;
// nullopt for nullptr or no defined AUC.
std::optional<double> MeanAuc(const v1::ModelEvaluation* model);

// What the report needs of one site, looked up once.
struct SiteView {
  const v1::SiteRunReport* site = nullptr;
  const v1::MetricsReport* final_report = nullptr;
  const v1::MetricsReport* cross_report = nullptr;  // kind "cross_site": other sites' adapted models evaluated here.
  const v1::ModelEvaluation* model[kModels] = {};
  ComparisonView pair[kPairs];
  std::vector<std::string> labels;  // Union of the models' labels, in first-seen order.
  std::map<std::string, const v1::LabelAuc*> label_auc[kModels];
  std::vector<const v1::MetricsReport*> rounds;  // kind "round", by round.

  const v1::LabelAuc* Auc(int m, const std::string& label) const {
    auto it = label_auc[m].find(label);
    return it == label_auc[m].end() ? nullptr : it->second;
  }
};

// One view per site of the report, in the report's order.
std::vector<SiteView> ViewsOf(const v1::RunReport& report);

// The run state of `site_id` in report.status(), or nullptr.
const v1::SiteRunState* RunStateOf(const v1::RunReport& report, const std::string& site_id);

// The summary row of one site (adapted vs open-source).
SiteSummary SummaryOf(const SiteView& view);

// Aggregates of one round attempt's updates.
struct RoundTotals {
  int accepted = 0;
  int refused = 0;
  int declined = 0;  // Sites that declined the round (UPLOAD_STATUS_DECLINED); not counted in `refused`.
  int64_t samples = 0;
  int64_t bytes = 0;
  std::optional<double> mean_train_loss;
  std::optional<double> mean_validation_loss;
};

RoundTotals TotalsOf(const v1::RoundInfo& round);

// The evaluation named `name` in `metrics` (which may be nullptr), or nullptr.
const v1::ModelEvaluation* FindModel(const v1::MetricsReport* metrics, const std::string& name);

// The cross-site matrix (consortium_report.h, "cross_site"). Rows: each site's adapted model ("adapted model of
// site-a", ...), then "global" and "open-source"; columns: the sites where the models were evaluated. Cells:
//  - adapted model of site i at site i: site i's final report, model "adapted" (compared with its "global");
//  - adapted model of site i at site j != i: site j's "cross_site" report, model named i (compared with that
//    report's "global"); a final report's model named i is read too (reports before the "cross_site" kind);
//  - global / open-source at site j: site j's final report.
// A site of a run with cross_site_evaluation that did not share its adapted model (not in RunReport.shared_models
// and its final report says adapted_model_shared = false) is "not shared": its row's off-diagonal cells say so.
enum class CellStatus { kOk, kNotShared, kNotAvailable };

struct CrossCell {
  CellStatus status = CellStatus::kNotAvailable;
  const v1::ModelEvaluation* model = nullptr;  // kOk only.
  std::optional<double> mean_auc;
  // Against the global model at the same site: the smallest per-label paired DeLong p, Bonferroni-adjusted over the
  // labels compared (min(1, k * p_min)); nullopt on the global row or without a comparison. `better`: the row
  // model's AUC is above the global model's on that label.
  std::optional<double> p_vs_global;
  bool better = false;
  bool direction_known = false;  // The AUC difference on that label was known (otherwise `better` means nothing).
  bool significant() const { return p_vs_global && *p_vs_global < kSignificance; }
};

struct CrossSiteMatrix {
  std::vector<std::string> sites;             // Columns (the report's site order).
  std::vector<std::string> rows;              // Row titles.
  std::vector<std::string> row_sites;         // The site of each adapted-model row; "" for "global" and "open-source".
  std::vector<std::vector<CrossCell>> cells;  // [row][column].
  std::vector<std::string> not_shared;        // Sites that declined to share their adapted model.
  bool cross_site_run = false;                // The run's config has cross_site_evaluation.
  bool evaluated = false;                     // At least one off-diagonal adapted-model cell is kOk.
};

CrossSiteMatrix CrossSiteOf(const v1::RunReport& report, const std::vector<SiteView>& views);

// What the report says when no cross-site evaluation exists.
inline constexpr char kNoCrossSite[] =
    "No cross-site evaluation was run: no site evaluated another site's adapted model.";

// ---- Differential privacy (consortium_report.h, "privacy").

// True for an update the site declined (SiteService.DeclineTask: UPLOAD_STATUS_DECLINED).
bool IsDeclined(const v1::UpdateInfo& update);
// The update's status as shown: "declined" for a declined update, else federation::DisplayText.
std::string UpdateStatusText(const v1::UpdateInfo& update);

// A site's spent differential privacy: the PrivacyAccount of its latest report that carries one (the reports are
// per round, then the final evaluation: the last one wins); nullptr when the site reported none.
struct SitePrivacy {
  std::string site_id;
  const v1::PrivacyAccount* account = nullptr;
  // Trained without differential privacy at least once: epsilon is unbounded.
  bool non_private() const {
    return account != nullptr && (account->non_private_training() || std::isinf(account->epsilon()));
  }
  std::vector<int> declined_rounds;  // Rounds this site declined (RunStatus updates), ascending, each once.
};

struct DeclinedUpdate {
  int round = 0;
  int attempt = 0;
  std::string site_id;
  std::string reason;  // UpdateInfo.message.
};

struct PrivacyView {
  std::vector<SitePrivacy> sites;  // The report's site order.
  // The consortium's epsilon: the maximum over the sites with an account (their data are disjoint: parallel
  // composition), +inf when one trained without DP; nullopt when no site reported an account, and in a run with
  // dp != "none" when a site with an accepted update has no valid account (missing_accounts: an old agent, a lost
  // report): a maximum without it would be a number that understates. `delta`: the largest of those sites' deltas
  // (the guarantee holds at it).
  std::optional<double> consortium_epsilon;
  // Sites with an accepted update but no valid privacy account (report order), in a run with dp != "none".
  std::vector<std::string> missing_accounts;
  bool complete() const { return missing_accounts.empty(); }
  std::optional<double> delta;
  std::vector<DeclinedUpdate> declined;  // In RunStatus order.
  // Something to show: an account, a declined update, or a run configured with DP ("dp-sgd" / "dp-fedavg").
  bool any = false;
};

PrivacyView PrivacyOf(const v1::RunReport& report, const std::vector<SiteView>& views);

// Why the consortium epsilon is n/a when sites lack an account ("" when complete), naming them (TerminalSafe).
std::string MissingAccountsText(const PrivacyView& view);

// "1.234", "∞ (non-private)" for +inf, "n/a" for nullopt.
std::string FormatEpsilon(std::optional<double> epsilon);

// The sentence stating how the consortium's epsilon is composed.
inline constexpr char kParallelComposition[] =
    "Consortium epsilon: the maximum over the sites (each patient's data is at one site only: disjoint data, "
    "parallel composition).";

// One line naming the run; its strings pass through TerminalSafe (the HTML escapes the result again).
std::string RunLine(const v1::RunStatus& status);

}  // namespace fedtune::admin::consortium

#endif  // FEDTUNE_COORDINATOR_CLI_CONSORTIUM_VIEW_H_
