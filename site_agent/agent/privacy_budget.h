// The site's own differential-privacy budget (SiteAgentConfig.max_epsilon and delta, protos/fedtune/v1/
// federation_config.proto): what the site's training has spent, kept in site.db (AgentDatabase's privacy_ledger, one
// row per TRAIN attempt), and whether a TRAIN task may be trained.
//
// Each TRAIN attempt is one ledger row, after its plan's dp (TrainingPlan.dp):
//  - "dp-sgd" (sample-level): every model trained on the site's data is its own sampled Gaussian mechanism at the
//    plan's sigma (dp_noise_multiplier): each SoloNet member at q = B / training images, the DuoNet at
//    q = B / training study pairs (its samples are studies with both views, loader::PairedSamplesFromManifest), and
//    under DITTO the personal model's networks once more (another mechanism on the same data). Before training the
//    row holds every network's PlanDpSgd maximum ("planned"); after training what the trainer reports it ran
//    (train::DpSgdPhases of each RunFinetune, "actual"). The row's `phases` lists them; all are composed.
//  - "dp-fedavg" (client-level, McMahan et al. ICLR 2018): one Gaussian mechanism per round, q = 1 and
//    sigma = dp_noise_multiplier, 1 step. This protects the site's participation (its whole clipped update), with
//    the noise added to the sum of the sites' updates: with secure aggregation by the sites themselves (each adds
//    variance (sigma C)^2 / t, secure_aggregation.h); without it by the coordinator, which the site cannot verify
//    (FederatedAgent declines such rounds when the site has a budget; a site without one accounts sigma, a guarantee
//    against everyone but the coordinator).
//  - "none" (or ""): no differential privacy: the site's epsilon is +infinity from then on (non_private_training).
// The ledger's epsilon composes every phase exactly: the RDP curves of all rows (and of every network of a row) are
// summed (one privacy::RdpAccountant) and converted at SiteAgentConfig.delta.
//
// Budget: before training, CheckRound computes epsilon_after = epsilon(every recorded phase + this round's planned
// phase) and declines when max_epsilon > 0 and epsilon_after > max_epsilon. A site with a budget therefore declines
// every non-private round. An attempt already recorded is not declined when its recorded phase covers the planned one
// (its data was touched, the ledger holds it); a planned phase that would spend more is checked as a new one.
// Re-records are monotone (RecordRound): a row is replaced only by one that spends at least as much, or by the
// "actual" phases replacing the "planned" maximum of the same attempt; a "none" row is never replaced. (That a
// re-sent task has the plan of the recorded one is FederatedAgent's check, against the task stored in fed_tasks.)
// max_epsilon and delta come from the site's config only; nothing in a task changes them.
//
// Thread safety: not thread-safe (the agent's task thread owns it, as it owns the AgentDatabase).
#ifndef FEDTUNE_SITE_AGENT_AGENT_PRIVACY_BUDGET_H_
#define FEDTUNE_SITE_AGENT_AGENT_PRIVACY_BUDGET_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/train/site_data.h"
#include "fedtune/v1/federation.pb.h"
#include "fedtune/v1/federation_config.pb.h"
#include "site_agent/agent/agent_database.h"

namespace fedtune::agent {

// Models trained on the site's data per round, at most (SoloNet members, the DuoNet, DITTO's personal copies).
inline constexpr int kMaxNetworksPerRound = 64;

// What one TRAIN attempt trains on the site's data (dp-sgd's mechanisms; read for dp-sgd only).
struct RoundShape {
  int64_t train_images = 0;  // The SoloNet members' samples, in [1, privacy::kMaxTrainImages].
  int members = 1;           // SoloNet members trained.
  int64_t train_pairs = 0;   // The DuoNet's samples (training study pairs); 0: no DuoNet is trained.
  int copies = 1;            // 2 under DITTO (the personal model's networks too).
  int networks() const { return (members + (train_pairs > 0 ? 1 : 0)) * copies; }
};

// One DP-SGD mechanism a fine-tuning ran (train::DpSgdPhase without the trainer's header).
struct NetworkPhase {
  std::string network;  // "member<i>", "duonet" (a personal model's: "personal-member<i>", ...): no spaces.
  double sample_rate = 0;
  double noise_multiplier = 0;
  int64_t steps = 0;
};

struct BudgetDecision {
  bool decline = false;
  bool already_recorded = false;  // This attempt was accounted before, covering the planned phase: not declined.
  double epsilon_before = 0;      // Every recorded phase but this attempt's; +inf after a non-private round.
  double epsilon_after = 0;       // With this attempt's planned phase.
  // Declined: why, naming max_epsilon, delta and the numbers (logged, sent with DeclineTask). Otherwise a summary of
  // the planned phase and epsilon_after, for the log.
  std::string reason;
  // The budget as it stands before this round (epsilon = epsilon_before, round_epsilon = epsilon_after).
  v1::PrivacyAccount account;
};

class PrivacyBudget {
 public:
  // `db` (not owned) must outlive the budget. `config` must be validated (ValidateAgentConfig: max_epsilon finite
  // and >= 0, delta in (0, 0.1]); its max_epsilon, delta and finetune.batch_size (the batch size of a plan without
  // one) are copied.
  PrivacyBudget(AgentDatabase* db, const v1::SiteAgentConfig& config);

  // The phase a TRAIN task's training adds (see the file comment): dp-sgd with `steps` steps when given (the steps
  // actually taken, summed over the networks), else networks x PlanDpSgd's max_steps. `train_images` in
  // [1, privacy::kMaxTrainImages] and `networks` in [1, kMaxNetworksPerRound] (read for dp-sgd only), steps in
  // [0, privacy::kMaxSteps]. InvalidArgument naming the value or the plan's field (ReadPlanDp, PlanDpSgd).
  absl::StatusOr<PrivacyPhaseRecord> PhaseOf(const v1::Task& task, int64_t train_images, int networks,
                                             std::optional<int64_t> steps = std::nullopt) const;
  // The same for a round's shape: dp-sgd's planned phase lists every network's PlanDpSgd maximum at its own sample
  // rate; with `actual` (the mechanisms training ran, each steps in [0, kMaxSteps], at most 4 x kMaxNetworksPerRound)
  // the row lists those instead. InvalidArgument for a value outside the bounds.
  absl::StatusOr<PrivacyPhaseRecord> PhaseOf(const v1::Task& task, const RoundShape& shape,
                                             const std::optional<std::vector<NetworkPhase>>& actual) const;

  // Before training a TRAIN task: the decision (see the file comment). Errors of PhaseOf and of reading the ledger
  // (DataLoss naming privacy_ledger and the row).
  absl::StatusOr<BudgetDecision> CheckRound(const v1::Task& task, int64_t train_images, int networks);
  absl::StatusOr<BudgetDecision> CheckRound(const v1::Task& task, const RoundShape& shape);

  // Records the attempt's phase, monotonely (the file comment: an earlier record of the same run, round and attempt
  // is replaced only by one spending at least as much, or "planned" by "actual"; otherwise it is kept, logged): with
  // `actual_steps` after training (the steps taken, summed over the networks, at one sample rate), or without (the
  // planned maximum, e.g. just before training starts, so that a crash mid-training is still accounted). Errors of
  // PhaseOf and of the database.
  absl::Status RecordRound(const v1::Task& task, int64_t train_images, int networks,
                           std::optional<int64_t> actual_steps = std::nullopt);
  // The same for a round's shape; `actual`: every DP-SGD mechanism the round's fine-tunings ran.
  absl::Status RecordRound(const v1::Task& task, const RoundShape& shape,
                           const std::optional<std::vector<NetworkPhase>>& actual = std::nullopt);

  // What the site has spent over every recorded phase (round_epsilon = epsilon). DataLoss for a corrupt row.
  absl::StatusOr<v1::PrivacyAccount> Account();

  double max_epsilon() const { return max_epsilon_; }
  double delta() const { return delta_; }

 private:
  struct Spent {
    double epsilon = 0;
    int64_t private_steps = 0;
    bool non_private = false;
  };
  // Exact composition of `phases` at delta_.
  absl::StatusOr<Spent> SpentOver(const std::vector<PrivacyPhaseRecord>& phases) const;
  // Whether recording `next` over the attempt's `recorded` row keeps the ledger monotone (see the file comment).
  absl::StatusOr<bool> Replaces(const PrivacyPhaseRecord& next, const PrivacyPhaseRecord& recorded) const;
  absl::Status Write(const PrivacyPhaseRecord& phase);
  v1::PrivacyAccount AccountOf(const Spent& spent) const;

  AgentDatabase* db_;
  double max_epsilon_;
  double delta_;
  int default_batch_size_;
};

// The DuoNet's training samples at a site (RoundShape::train_pairs): the studies with a frontal and a lateral image
// whose first frontal image is in the training split, as train::RunFinetune pairs them
// (loader::PairedSamplesFromManifest), counted without reading an image; 0 when the validation split has no such
// study (the pipeline then carries the DuoNet over untrained). Pure.
int64_t DuoTrainingPairs(const train::SiteData& site);

// "1.234" (4 significant digits), or "∞ (non-private)" for +infinity.
std::string EpsilonText(double epsilon);

// The site's local report line: "Privacy: epsilon 1.234 at delta 1e-05 (budget 8)" ("(no budget)" when max_epsilon
// is 0; "epsilon ∞ (non-private)" after a non-private round).
std::string PrivacyLine(const v1::PrivacyAccount& account);

// Adds the account to the local evaluation report in `report_dir` (site_agent/commands/evaluate.h's RunEvaluate
// output): report.json gets "privacy": {"epsilon" (null for +inf), "delta", "max_epsilon", "private_steps",
// "non_private_training", "line"}, report.html the PrivacyLine as a paragraph under its title (replacing one added
// before). Both rewritten atomically. A directory without report.json is left alone (OK: no evaluation was written).
// DataLoss naming the file when report.json is not a JSON object or report.html has no title; I/O errors naming it.
absl::Status AddPrivacyToLocalReport(const std::string& report_dir, const v1::PrivacyAccount& account);

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_AGENT_PRIVACY_BUDGET_H_
