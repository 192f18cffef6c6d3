#include "site_agent/agent/privacy_budget.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/io/file_util.h"
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
  return absl::StrFormat("dp-sgd: %d network(s), %d steps in all at sample rate %.4g, sigma %g", networks, phase.steps,
                         phase.sample_rate, phase.noise_multiplier);
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
    absl::Status added = accountant.AddSteps(phase.sample_rate, phase.noise_multiplier, phase.steps);
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
  ASSIGN_OR_RETURN(const PrivacyPhaseRecord planned, PhaseOf(task, train_images, networks));
  ASSIGN_OR_RETURN(std::vector<PrivacyPhaseRecord> phases, db_->PrivacyLedger());
  BudgetDecision decision;
  const auto same =
      std::find_if(phases.begin(), phases.end(), [&task](const PrivacyPhaseRecord& p) { return SameAttempt(p, task); });
  decision.already_recorded = same != phases.end();
  if (decision.already_recorded) {
    ASSIGN_OR_RETURN(const Spent spent, SpentOver(phases));
    decision.epsilon_before = decision.epsilon_after = spent.epsilon;
    decision.account = AccountOf(spent);
    decision.reason = absl::StrCat("run ", task.run_id(), " round ", task.round(), " attempt ", task.attempt(),
                                   " was accounted before (", same->mechanism, ", ", same->steps, " steps): epsilon ",
                                   EpsilonText(spent.epsilon), " at delta ", delta_);
    return decision;
  }
  ASSIGN_OR_RETURN(const Spent before, SpentOver(phases));
  phases.push_back(planned);
  ASSIGN_OR_RETURN(const Spent after, SpentOver(phases));
  decision.epsilon_before = before.epsilon;
  decision.epsilon_after = after.epsilon;
  decision.account = AccountOf(before);
  decision.account.set_round_epsilon(after.epsilon);
  decision.decline = max_epsilon_ > 0 && after.epsilon > max_epsilon_;
  const std::string what = absl::StrCat("run ", task.run_id(), " round ", task.round(), " attempt ", task.attempt(),
                                        " (", DescribePhase(planned, networks), ")");
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

absl::Status PrivacyBudget::RecordRound(const v1::Task& task, int64_t train_images, int networks,
                                        std::optional<int64_t> actual_steps) {
  ASSIGN_OR_RETURN(const PrivacyPhaseRecord phase, PhaseOf(task, train_images, networks, actual_steps));
  return db_->RecordPrivacyPhase(phase);
}

absl::StatusOr<v1::PrivacyAccount> PrivacyBudget::Account() {
  ASSIGN_OR_RETURN(const std::vector<PrivacyPhaseRecord> phases, db_->PrivacyLedger());
  ASSIGN_OR_RETURN(const Spent spent, SpentOver(phases));
  return AccountOf(spent);
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
