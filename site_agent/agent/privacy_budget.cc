#include "site_agent/agent/privacy_budget.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/io/file_util.h"
#include "common/logging.h"
#include "common/privacy/dp_plan.h"
#include "common/privacy/rdp_accountant.h"
#include "common/status_macros.h"
#include "site_agent/agent/agent_config.h"

namespace fedtune::agent {
namespace {

namespace fs = std::filesystem;

constexpr double kInfinity = std::numeric_limits<double>::infinity();
// Local reports are a few hundred KiB; anything far larger is not one of ours.
constexpr uintmax_t kMaxLocalReportBytes = uintmax_t{64} << 20;
constexpr char kHtmlPrivacyOpen[] = "<p class=\"privacy\">";

bool SameAttempt(const PrivacyPhaseRecord& phase, const v1::Task& task) {
  return phase.run_id == task.run_id() && phase.round == task.round() && phase.attempt == task.attempt();
}

std::string DescribePhase(const PrivacyPhaseRecord& phase, int networks) {
  if (phase.mechanism == "none") return "no differential privacy (plan dp \"none\")";
  if (phase.mechanism == "dp-fedavg") {
    return absl::StrFormat("dp-fedavg: one Gaussian mechanism at sigma %g (client level)", phase.noise_multiplier);
  }
  return absl::StrFormat("dp-sgd: %d network(s), %d steps in all at sample rate%s %.4g, sigma %g", networks,
                         phase.steps, phase.phases.find("duonet") != std::string::npos ? "s up to" : "",
                         phase.sample_rate, phase.noise_multiplier);
}

constexpr char kPlanned[] = "planned";
constexpr char kActual[] = "actual";
// Networks a row's phases may list: every network of a round, twice (DITTO), with room to spare.
constexpr size_t kMaxRowNetworks = 4 * kMaxNetworksPerRound;

// A row's `phases` text: "planned" or "actual", then one line per network: "<network> <q> <sigma> <steps>".
std::string SerializePhases(bool actual, const std::vector<NetworkPhase>& networks) {
  std::string out = actual ? kActual : kPlanned;
  for (const NetworkPhase& n : networks) {
    absl::StrAppend(&out, "\n", n.network, " ", absl::StrFormat("%.17g %.17g", n.sample_rate, n.noise_multiplier), " ",
                    n.steps);
  }
  return out;
}

struct RowPhases {
  bool actual = false;
  std::vector<NetworkPhase> networks;  // Empty: the row's own sample_rate x steps (rows of older agents).
};

std::string RowName(const PrivacyPhaseRecord& row) {
  return absl::StrCat("privacy_ledger row of run ", row.run_id.substr(0, 64), " round ", row.round, " attempt ",
                      row.attempt);
}

absl::Status CheckNetwork(const NetworkPhase& n) {
  if (n.network.empty() || n.network.size() > 64 || n.network.find_first_of(" \n") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("network name \"", n.network.substr(0, 64), "\""));
  }
  if (!(n.sample_rate > 0 && n.sample_rate <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat(n.network, ": sample rate ", n.sample_rate, " outside (0, 1]"));
  }
  if (!(n.noise_multiplier >= privacy::kMinNoiseMultiplier && n.noise_multiplier <= privacy::kMaxNoiseMultiplier)) {
    return absl::InvalidArgumentError(absl::StrCat(n.network, ": noise multiplier ", n.noise_multiplier, " outside [",
                                                   privacy::kMinNoiseMultiplier, ", ", privacy::kMaxNoiseMultiplier,
                                                   "]"));
  }
  if (n.steps < 0 || n.steps > privacy::kMaxSteps) {
    return absl::InvalidArgumentError(
        absl::StrCat(n.network, ": ", n.steps, " steps outside [0, ", privacy::kMaxSteps, "]"));
  }
  return absl::OkStatus();
}

absl::StatusOr<RowPhases> ParsePhases(const PrivacyPhaseRecord& row) {
  RowPhases out;
  if (row.phases.empty()) return out;
  const std::vector<std::string> lines = absl::StrSplit(row.phases, '\n');
  auto corrupt = [&row](const std::string& why) {
    return absl::DataLossError(
        absl::StrCat(RowName(row), ": phases ", why, "; the site's spent epsilon cannot be computed"));
  };
  if (lines[0] != kPlanned && lines[0] != kActual) return corrupt("do not start with planned or actual");
  out.actual = lines[0] == kActual;
  if (lines.size() - 1 > kMaxRowNetworks) return corrupt(absl::StrCat("list ", lines.size() - 1, " networks"));
  for (size_t i = 1; i < lines.size(); ++i) {
    const std::vector<std::string> fields = absl::StrSplit(lines[i], ' ');
    NetworkPhase n;
    if (fields.size() != 4 || !absl::SimpleAtod(fields[1], &n.sample_rate) ||
        !absl::SimpleAtod(fields[2], &n.noise_multiplier) || !absl::SimpleAtoi(fields[3], &n.steps)) {
      return corrupt(absl::StrCat("line ", i + 1, " is not \"<network> <q> <sigma> <steps>\""));
    }
    n.network = fields[0];
    if (absl::Status ok = CheckNetwork(n); !ok.ok()) return corrupt(absl::StrCat("line ", i + 1, ": ", ok.message()));
    out.networks.push_back(std::move(n));
  }
  return out;
}

// The row's summary fields from its networks: the largest sample rate, the steps summed.
absl::Status Summarize(const std::vector<NetworkPhase>& networks, PrivacyPhaseRecord* phase) {
  int64_t steps = 0;
  for (const NetworkPhase& n : networks) {
    RETURN_IF_ERROR(CheckNetwork(n));
    steps += n.steps;
    if (steps > privacy::kMaxSteps) {
      return absl::InvalidArgumentError(absl::StrCat("run ", phase->run_id, " round ", phase->round,
                                                     ": DP-SGD steps of all networks exceed ", privacy::kMaxSteps));
    }
    phase->sample_rate = std::max(phase->sample_rate, n.sample_rate);
  }
  phase->steps = steps;
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadReportFile(const fs::path& path) {
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  if (!ec && size > kMaxLocalReportBytes) {
    return absl::DataLossError(
        absl::StrCat(path.string(), ": ", size, " bytes, more than a local report's ", kMaxLocalReportBytes));
  }
  return io::ReadFile(path.string());
}

}  // namespace

PrivacyBudget::PrivacyBudget(AgentDatabase* db, const v1::SiteAgentConfig& config)
    : db_(db),
      max_epsilon_(config.max_epsilon()),
      delta_(config.delta()),
      default_batch_size_(config.finetune().batch_size()) {}

absl::StatusOr<PrivacyPhaseRecord> PrivacyBudget::PhaseOf(const v1::Task& task, int64_t train_images, int networks,
                                                          std::optional<int64_t> steps) const {
  ASSIGN_OR_RETURN(const PlanDp dp, ReadPlanDp(task.plan()));
  PrivacyPhaseRecord phase;
  phase.run_id = task.run_id();
  phase.round = task.round();
  phase.attempt = task.attempt();
  phase.mechanism = PlanDpText(dp);
  phase.recorded_ms = absl::ToUnixMillis(absl::Now());
  if (steps && (*steps < 0 || *steps > privacy::kMaxSteps)) {
    return absl::InvalidArgumentError(absl::StrCat("run ", task.run_id(), " round ", task.round(), ": DP steps taken ",
                                                   *steps, " outside [0, ", privacy::kMaxSteps, "]"));
  }
  switch (dp) {
    case PlanDp::kNone:
      return phase;
    case PlanDp::kDpFedAvg:
      phase.sample_rate = 1;
      phase.noise_multiplier = task.plan().dp_noise_multiplier();
      phase.steps = 1;
      return phase;
    case PlanDp::kDpSgd:
      break;
  }
  if (networks < 1 || networks > kMaxNetworksPerRound) {
    return absl::InvalidArgumentError(absl::StrCat("run ", task.run_id(), " round ", task.round(), ": ", networks,
                                                   " networks trained outside [1, ", kMaxNetworksPerRound, "]"));
  }
  // As FinetuneModel (federated_agent.cc) trains: the plan's batch size, else the config's; at least one epoch.
  const int64_t batch_size = task.plan().batch_size() > 0 ? task.plan().batch_size() : default_batch_size_;
  const int64_t epochs = std::max(1, task.plan().local_epochs());
  ASSIGN_OR_RETURN(const privacy::DpSgdPlan plan, privacy::PlanDpSgd(train_images, batch_size, epochs));
  phase.sample_rate = plan.sample_rate;
  phase.noise_multiplier = task.plan().dp_noise_multiplier();
  if (steps) {
    phase.steps = *steps;
  } else {
    if (plan.max_steps > privacy::kMaxSteps / networks) {
      return absl::InvalidArgumentError(absl::StrCat("run ", task.run_id(), " round ", task.round(), ": ", networks,
                                                     " x ", plan.max_steps, " DP-SGD steps exceed ",
                                                     privacy::kMaxSteps));
    }
    phase.steps = networks * plan.max_steps;
  }
  phase.phases =
      SerializePhases(steps.has_value(), {NetworkPhase{"all", phase.sample_rate, phase.noise_multiplier, phase.steps}});
  return phase;
}

absl::StatusOr<PrivacyPhaseRecord> PrivacyBudget::PhaseOf(
    const v1::Task& task, const RoundShape& shape, const std::optional<std::vector<NetworkPhase>>& actual) const {
  ASSIGN_OR_RETURN(const PlanDp dp, ReadPlanDp(task.plan()));
  if (dp != PlanDp::kDpSgd) return PhaseOf(task, shape.train_images, 1, std::nullopt);
  const std::string what = absl::StrCat("run ", task.run_id(), " round ", task.round());
  if (shape.members < 0 || shape.copies < 1 || shape.copies > 2 || shape.networks() < 1 ||
      shape.networks() > kMaxNetworksPerRound) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", shape.members, " members",
                                                   shape.train_pairs > 0 ? " and a DuoNet" : "", " x ", shape.copies,
                                                   " trained outside [1, ", kMaxNetworksPerRound, "] networks"));
  }
  if (shape.train_pairs < 0 || shape.train_pairs > privacy::kMaxTrainImages) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", shape.train_pairs, " training study pairs"));
  }
  PrivacyPhaseRecord phase;
  phase.run_id = task.run_id();
  phase.round = task.round();
  phase.attempt = task.attempt();
  phase.mechanism = PlanDpText(dp);
  phase.recorded_ms = absl::ToUnixMillis(absl::Now());
  phase.noise_multiplier = task.plan().dp_noise_multiplier();
  std::vector<NetworkPhase> networks;
  if (actual) {
    if (actual->size() > kMaxRowNetworks) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": ", actual->size(), " DP-SGD mechanisms, more than ", kMaxRowNetworks));
    }
    networks = *actual;
  } else {
    // As FinetuneModel (federated_agent.cc) trains: the plan's batch size, else the config's; at least one epoch.
    const int64_t batch_size = task.plan().batch_size() > 0 ? task.plan().batch_size() : default_batch_size_;
    const int64_t epochs = std::max(1, task.plan().local_epochs());
    ASSIGN_OR_RETURN(const privacy::DpSgdPlan members, privacy::PlanDpSgd(shape.train_images, batch_size, epochs));
    std::optional<privacy::DpSgdPlan> duo;
    if (shape.train_pairs > 0) {
      ASSIGN_OR_RETURN(duo, privacy::PlanDpSgd(shape.train_pairs, batch_size, epochs));
    }
    for (int c = 0; c < shape.copies; ++c) {
      const std::string prefix = c == 0 ? "" : "personal-";
      for (int m = 0; m < shape.members; ++m) {
        networks.push_back(NetworkPhase{absl::StrCat(prefix, "member", m), members.sample_rate, phase.noise_multiplier,
                                        members.max_steps});
      }
      if (duo)
        networks.push_back(NetworkPhase{prefix + "duonet", duo->sample_rate, phase.noise_multiplier, duo->max_steps});
    }
  }
  if (absl::Status summarized = Summarize(networks, &phase); !summarized.ok()) {
    return absl::Status(summarized.code(), absl::StrCat(what, ": ", summarized.message()));
  }
  phase.phases = SerializePhases(actual.has_value(), networks);
  return phase;
}

absl::StatusOr<PrivacyBudget::Spent> PrivacyBudget::SpentOver(const std::vector<PrivacyPhaseRecord>& phases) const {
  Spent spent;
  privacy::RdpAccountant accountant;
  bool any_private = false;
  for (const PrivacyPhaseRecord& phase : phases) {
    if (phase.mechanism == "none") {
      spent.non_private = true;
      continue;
    }
    ASSIGN_OR_RETURN(const RowPhases row, ParsePhases(phase));
    absl::Status added;
    if (row.networks.empty()) {
      added = accountant.AddSteps(phase.sample_rate, phase.noise_multiplier, phase.steps);
    } else {
      for (const NetworkPhase& n : row.networks) {
        if (n.steps == 0) continue;
        added = accountant.AddSteps(n.sample_rate, n.noise_multiplier, n.steps);
        if (!added.ok()) break;
      }
    }
    if (!added.ok()) {
      return absl::Status(added.code(), absl::StrCat("privacy phase of run ", phase.run_id, " round ", phase.round,
                                                     " attempt ", phase.attempt, ": ", added.message()));
    }
    spent.private_steps += phase.steps;
    any_private = true;
  }
  if (spent.non_private) {
    spent.epsilon = kInfinity;
  } else if (any_private) {
    absl::StatusOr<privacy::PrivacySpent> eps = accountant.GetPrivacySpent(delta_);
    if (eps.ok()) {
      spent.epsilon = eps->epsilon;
    } else if (eps.status().code() == absl::StatusCode::kOutOfRange) {
      spent.epsilon = kInfinity;  // No order gives a finite epsilon: far beyond any budget.
    } else {
      return eps.status();
    }
  }
  return spent;
}

v1::PrivacyAccount PrivacyBudget::AccountOf(const Spent& spent) const {
  v1::PrivacyAccount account;
  account.set_epsilon(spent.epsilon);
  account.set_delta(delta_);
  account.set_max_epsilon(max_epsilon_);
  account.set_private_steps(spent.private_steps);
  account.set_non_private_training(spent.non_private);
  account.set_round_epsilon(spent.epsilon);
  return account;
}

absl::StatusOr<BudgetDecision> PrivacyBudget::CheckRound(const v1::Task& task, int64_t train_images, int networks) {
  return CheckRound(task, RoundShape{train_images, networks, 0, 1});
}

absl::StatusOr<bool> PrivacyBudget::Replaces(const PrivacyPhaseRecord& next, const PrivacyPhaseRecord& recorded) const {
  if (recorded.mechanism == "none") return false;  // Already +infinity: nothing spends more.
  if (next.mechanism == "none") return true;
  ASSIGN_OR_RETURN(const RowPhases next_row, ParsePhases(next));
  ASSIGN_OR_RETURN(const RowPhases recorded_row, ParsePhases(recorded));
  // What training did replaces the planned maximum of the same attempt (rows of older agents hold a plan).
  if (next_row.actual && !recorded_row.actual) return true;
  ASSIGN_OR_RETURN(const Spent next_alone, SpentOver({next}));
  ASSIGN_OR_RETURN(const Spent recorded_alone, SpentOver({recorded}));
  return next_alone.epsilon >= recorded_alone.epsilon;
}

absl::StatusOr<BudgetDecision> PrivacyBudget::CheckRound(const v1::Task& task, const RoundShape& shape) {
  ASSIGN_OR_RETURN(const PrivacyPhaseRecord planned, PhaseOf(task, shape, std::nullopt));
  ASSIGN_OR_RETURN(std::vector<PrivacyPhaseRecord> phases, db_->PrivacyLedger());
  BudgetDecision decision;
  const auto same =
      std::find_if(phases.begin(), phases.end(), [&task](const PrivacyPhaseRecord& p) { return SameAttempt(p, task); });
  ASSIGN_OR_RETURN(const Spent before, SpentOver(phases));
  if (same != phases.end()) {
    // Covered: the recorded phase is "none", what training did ("actual", of the same plan: the agent refuses a task
    // whose plan differs from the recorded one), or spends at least as much as the planned one.
    ASSIGN_OR_RETURN(const RowPhases recorded_row, ParsePhases(*same));
    bool covered = same->mechanism == "none" || recorded_row.actual;
    if (!covered) {
      ASSIGN_OR_RETURN(const bool replaces, Replaces(planned, *same));
      ASSIGN_OR_RETURN(const Spent planned_alone, SpentOver({planned}));
      ASSIGN_OR_RETURN(const Spent recorded_alone, SpentOver({*same}));
      covered = !replaces || recorded_alone.epsilon >= planned_alone.epsilon;
    }
    if (covered) {
      decision.already_recorded = true;
      decision.epsilon_before = decision.epsilon_after = before.epsilon;
      decision.account = AccountOf(before);
      decision.reason = absl::StrCat("run ", task.run_id(), " round ", task.round(), " attempt ", task.attempt(),
                                     " was accounted before (", same->mechanism, ", ", same->steps, " steps): epsilon ",
                                     EpsilonText(before.epsilon), " at delta ", delta_);
      return decision;
    }
    phases.erase(same);  // The planned phase spends more than the recorded one: checked in its place.
  }
  phases.push_back(planned);
  ASSIGN_OR_RETURN(const Spent after, SpentOver(phases));
  decision.epsilon_before = before.epsilon;
  decision.epsilon_after = after.epsilon;
  decision.account = AccountOf(before);
  decision.account.set_round_epsilon(after.epsilon);
  decision.decline = max_epsilon_ > 0 && after.epsilon > max_epsilon_;
  const std::string what = absl::StrCat("run ", task.run_id(), " round ", task.round(), " attempt ", task.attempt(),
                                        " (", DescribePhase(planned, shape.networks()), ")");
  if (!decision.decline) {
    decision.reason =
        absl::StrCat(what, ": epsilon ", EpsilonText(before.epsilon), " -> ", EpsilonText(after.epsilon), " at delta ",
                     delta_, ", max_epsilon ", max_epsilon_ > 0 ? absl::StrCat(max_epsilon_) : "0 (no budget)");
  } else if (planned.mechanism == "none") {
    decision.reason = absl::StrCat(what, " has an unbounded epsilon: with a privacy budget (max_epsilon ", max_epsilon_,
                                   " at delta ", delta_, ", spent ", EpsilonText(before.epsilon),
                                   ") this site trains differentially private rounds only");
  } else {
    decision.reason =
        absl::StrCat(what, " would raise this site's epsilon from ", EpsilonText(before.epsilon), " to ",
                     EpsilonText(after.epsilon), " at delta ", delta_, ", above its max_epsilon ", max_epsilon_);
  }
  return decision;
}

absl::Status PrivacyBudget::Write(const PrivacyPhaseRecord& phase) {
  ASSIGN_OR_RETURN(const std::vector<PrivacyPhaseRecord> phases, db_->PrivacyLedger());
  for (const PrivacyPhaseRecord& recorded : phases) {
    if (recorded.run_id != phase.run_id || recorded.round != phase.round || recorded.attempt != phase.attempt) {
      continue;
    }
    ASSIGN_OR_RETURN(const bool replaces, Replaces(phase, recorded));
    if (!replaces) {
      LOG(WARNING) << RowName(recorded) << ": kept (" << recorded.mechanism << ", " << recorded.steps
                   << " steps); a re-record never lowers an attempt's epsilon (" << phase.mechanism << ", "
                   << phase.steps << " steps not recorded)";
      return absl::OkStatus();
    }
  }
  return db_->RecordPrivacyPhase(phase);
}

absl::Status PrivacyBudget::RecordRound(const v1::Task& task, int64_t train_images, int networks,
                                        std::optional<int64_t> actual_steps) {
  ASSIGN_OR_RETURN(const PrivacyPhaseRecord phase, PhaseOf(task, train_images, networks, actual_steps));
  return Write(phase);
}

absl::Status PrivacyBudget::RecordRound(const v1::Task& task, const RoundShape& shape,
                                        const std::optional<std::vector<NetworkPhase>>& actual) {
  ASSIGN_OR_RETURN(const PrivacyPhaseRecord phase, PhaseOf(task, shape, actual));
  return Write(phase);
}

absl::StatusOr<v1::PrivacyAccount> PrivacyBudget::Account() {
  ASSIGN_OR_RETURN(const std::vector<PrivacyPhaseRecord> phases, db_->PrivacyLedger());
  ASSIGN_OR_RETURN(const Spent spent, SpentOver(phases));
  return AccountOf(spent);
}

int64_t DuoTrainingPairs(const train::SiteData& site) {
  auto pairs_in = [&site](data::Split split) {
    std::vector<size_t> entries = site.split.EntriesIn(split);
    std::sort(entries.begin(), entries.end());
    int64_t n = 0;
    for (const data::Study& study : site.manifest.studies()) {
      if (study.frontal.empty() || study.lateral.empty()) continue;
      if (std::binary_search(entries.begin(), entries.end(), study.frontal.front())) ++n;
    }
    return n;
  };
  const int64_t train = pairs_in(data::Split::kTrain);
  return train > 0 && pairs_in(data::Split::kValidation) > 0 ? train : 0;
}

std::string EpsilonText(double epsilon) {
  if (std::isinf(epsilon)) return "∞ (non-private)";
  return absl::StrFormat("%.4g", epsilon);
}

std::string PrivacyLine(const v1::PrivacyAccount& account) {
  return absl::StrCat(
      "Privacy: epsilon ", EpsilonText(account.epsilon()), " at delta ", absl::StrFormat("%g", account.delta()),
      account.max_epsilon() > 0 ? absl::StrFormat(" (budget %g)", account.max_epsilon()) : std::string(" (no budget)"));
}

absl::Status AddPrivacyToLocalReport(const std::string& report_dir, const v1::PrivacyAccount& account) {
  const fs::path json_path = fs::path(report_dir) / "report.json";
  const fs::path html_path = fs::path(report_dir) / "report.html";
  if (!fs::exists(json_path)) return absl::OkStatus();
  const std::string line = PrivacyLine(account);

  ASSIGN_OR_RETURN(const std::string json_text, ReadReportFile(json_path));
  nlohmann::json json = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) {
    return absl::DataLossError(absl::StrCat(json_path.string(), ": not a JSON object (an evaluation report)"));
  }
  nlohmann::json privacy = nlohmann::json::object();
  privacy["epsilon"] = std::isfinite(account.epsilon()) ? nlohmann::json(account.epsilon()) : nlohmann::json();
  privacy["delta"] = account.delta();
  privacy["max_epsilon"] = account.max_epsilon();
  privacy["private_steps"] = account.private_steps();
  privacy["non_private_training"] = account.non_private_training();
  privacy["line"] = line;
  json["privacy"] = std::move(privacy);
  RETURN_IF_ERROR(io::WriteFileAtomically(json_path.string(), json.dump(2) + "\n"));

  if (!fs::exists(html_path)) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::string html, ReadReportFile(html_path));
  // An earlier line (the same round evaluated again after a restart) is replaced.
  if (const size_t old = html.find(kHtmlPrivacyOpen); old != std::string::npos) {
    const size_t end = html.find("</p>\n", old);
    if (end != std::string::npos) html.erase(old, end + 5 - old);
  }
  const size_t title_end = html.find("</h1>\n");
  if (title_end == std::string::npos) {
    return absl::DataLossError(absl::StrCat(html_path.string(), ": no <h1> title to put the privacy line under"));
  }
  // The line holds numbers and fixed words only: nothing to escape.
  html.insert(title_end + 6, absl::StrCat(kHtmlPrivacyOpen, line, "</p>\n"));
  return io::WriteFileAtomically(html_path.string(), html);
}

}  // namespace fedtune::agent
