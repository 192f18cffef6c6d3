#include "common/privacy/privacy_command.h"

#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/privacy/rdp_accountant.h"
#include "common/status_macros.h"

namespace fedtune::privacy {
namespace {

// Shortest round-tripping decimal form of a double (nlohmann's serializer), so JSON readers get the exact value.
std::string Number(double x) { return nlohmann::json(x).dump(); }

struct Setting {
  std::vector<SamplingPhase> phases;  // --sample-rate/--steps (one phase) or --phases.
  double delta;
  std::string Describe() const {
    if (phases.size() == 1) return absl::StrFormat("sample rate %g, %d steps", phases[0].q, phases[0].steps);
    std::vector<std::string> parts;
    for (const SamplingPhase& p : phases) parts.push_back(absl::StrFormat("%d steps at sample rate %g", p.steps, p.q));
    return absl::StrJoin(parts, " + ");
  }
};

// "Q:T[,Q:T...]" (at most 64 phases).
absl::StatusOr<std::vector<SamplingPhase>> ParsePhases(absl::string_view text) {
  std::vector<SamplingPhase> phases;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    const std::vector<absl::string_view> qt = absl::StrSplit(part, ':');
    SamplingPhase p;
    if (qt.size() != 2 || !absl::SimpleAtod(qt[0], &p.q) || !absl::SimpleAtoi(qt[1], &p.steps)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--phases: '", part, "' is not Q:T (a sample rate and a step count)"));
    }
    phases.push_back(p);
    if (phases.size() > 64) return absl::InvalidArgumentError("--phases: at most 64 phases");
  }
  return phases;
}

absl::StatusOr<Setting> ParseSetting(const cli::ParsedFlags& flags) {
  Setting s;
  const bool single = flags.Get("sample-rate").has_value() || flags.Get("steps").has_value();
  const std::optional<std::string> phases = flags.Get("phases");
  if (single == phases.has_value()) {
    return absl::InvalidArgumentError("give either --sample-rate and --steps, or --phases");
  }
  if (phases.has_value()) {
    ASSIGN_OR_RETURN(s.phases, ParsePhases(*phases));
  } else {
    SamplingPhase p;
    if (!flags.Get("sample-rate").has_value() || !flags.Get("steps").has_value()) {
      return absl::InvalidArgumentError("--sample-rate and --steps go together");
    }
    ASSIGN_OR_RETURN(p.q, flags.GetDouble("sample-rate", 0));
    ASSIGN_OR_RETURN(p.steps, flags.GetInt("steps", 0));
    s.phases.push_back(p);
  }
  ASSIGN_OR_RETURN(s.delta, flags.GetDouble("delta", 0));
  return s;
}

// Prefixes the flag name to the accountant's message, keeping its code.
absl::Status ForFlags(const absl::Status& status, const std::string& flags) {
  if (status.ok()) return status;
  return absl::Status(status.code(), flags + ": " + std::string(status.message()));
}

std::vector<cli::FlagSpec> SettingFlags() {
  return {
      {"sample-rate", "Poisson sampling rate q of each step (batch size / site's training cases), in [0, 1]", false,
       false, std::nullopt, "Q"},
      {"steps", "total steps of one site: rounds x local steps per round", false, false, std::nullopt, "T"},
      {"phases",
       "instead of --sample-rate/--steps: phases composed at one noise multiplier, e.g. 0.05:400,0.2:100 (a SoloNet's "
       "members at batch / images and its DuoNet at batch / study pairs)",
       false, false, std::nullopt, "Q:T,..."},
      {"delta", "target delta, in (0, 1) (e.g. below 1 / the site's training cases)", false, true, std::nullopt, "D"},
      {"json", "print one JSON object instead of text", true},
  };
}

absl::Status RunEpsilon(const cli::ParsedFlags& flags, std::ostream& out) {
  ASSIGN_OR_RETURN(Setting s, ParseSetting(flags));
  ASSIGN_OR_RETURN(double sigma, flags.GetDouble("noise-multiplier", 0));
  RdpAccountant accountant;
  for (const SamplingPhase& p : s.phases) {
    RETURN_IF_ERROR(ForFlags(accountant.AddSteps(p.q, sigma, p.steps), "--noise-multiplier/--sample-rate/--steps"));
  }
  absl::StatusOr<PrivacySpent> spent = accountant.GetPrivacySpent(s.delta);
  RETURN_IF_ERROR(ForFlags(spent.status(), "--delta"));
  if (flags.GetBool("json")) {
    out << "{\"epsilon\": " << Number(spent->epsilon) << ", \"best_order\": " << Number(spent->best_order) << "}\n";
  } else {
    out << absl::StrFormat("epsilon = %.6g at delta = %g (best RDP order %g; noise multiplier %g, %s)\n",
                           spent->epsilon, s.delta, spent->best_order, sigma, s.Describe());
  }
  return absl::OkStatus();
}

absl::Status RunNoise(const cli::ParsedFlags& flags, std::ostream& out) {
  ASSIGN_OR_RETURN(Setting s, ParseSetting(flags));
  ASSIGN_OR_RETURN(double target, flags.GetDouble("target-epsilon", 0));
  ASSIGN_OR_RETURN(double tolerance, flags.GetDouble("tolerance", 1e-4));
  absl::StatusOr<NoiseSolution> solution = SolveNoiseMultiplierForPhases(target, s.phases, s.delta, tolerance);
  RETURN_IF_ERROR(ForFlags(solution.status(), "--target-epsilon/--sample-rate/--steps/--delta/--tolerance"));
  if (flags.GetBool("json")) {
    out << "{\"noise_multiplier\": " << Number(solution->noise_multiplier)
        << ", \"epsilon\": " << Number(solution->spent.epsilon)
        << ", \"best_order\": " << Number(solution->spent.best_order) << "}\n";
  } else {
    out << absl::StrFormat("noise multiplier = %.6g gives epsilon = %.6g <= %g at delta = %g (best RDP order %g; %s)\n",
                           solution->noise_multiplier, solution->spent.epsilon, target, s.delta,
                           solution->spent.best_order, s.Describe());
  }
  return absl::OkStatus();
}

}  // namespace

cli::Command MakePrivacyEpsilonCommand(std::ostream& out) {
  cli::Command c;
  c.path = {"privacy", "epsilon"};
  c.summary = "epsilon of DP-SGD with the sampled Gaussian mechanism (RDP accountant, Opacus's orders)";
  c.flags = {{"noise-multiplier", "noise std / clipping norm, in [0.1, 1e4]", false, true, std::nullopt, "S"}};
  for (cli::FlagSpec& f : SettingFlags()) c.flags.push_back(std::move(f));
  c.run = [&out](const cli::ParsedFlags& flags) { return RunEpsilon(flags, out); };
  return c;
}

cli::Command MakePrivacyNoiseCommand(std::ostream& out) {
  cli::Command c;
  c.path = {"privacy", "noise"};
  c.summary = "smallest noise multiplier whose epsilon is at most a target (bisection on the RDP accountant)";
  c.flags = {{"target-epsilon", "the epsilon to reach, > 0", false, true, std::nullopt, "E"},
             {"tolerance", "relative tolerance of the noise multiplier, in (0, 0.1]", false, false, "1e-4", "R"}};
  for (cli::FlagSpec& f : SettingFlags()) c.flags.push_back(std::move(f));
  c.run = [&out](const cli::ParsedFlags& flags) { return RunNoise(flags, out); };
  return c;
}

}  // namespace fedtune::privacy
