#include "coordinator/cli/experiment.h"

#include <filesystem>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/federation/states.h"
#include "common/io/text_proto.h"
#include "common/status_macros.h"
#include "coordinator/cli/run_config.h"

namespace fedtune::admin {
namespace {

struct KnownStrategy {
  const char* name;
  v1::RunConfig::Personalization personalization;
};
constexpr KnownStrategy kKnown[] = {{"fedavg", v1::RunConfig::NONE},
                                    {"fedbn", v1::RunConfig::FEDBN},
                                    {"silobn", v1::RunConfig::SILOBN},
                                    {"ditto", v1::RunConfig::DITTO}};

absl::Status FieldError(absl::string_view field, absl::string_view value, absl::string_view requirement) {
  return absl::InvalidArgumentError(
      absl::StrCat("experiment config field '", field, "' is ", value, ": ", requirement));
}

// AdminClient as a RunService.
class AdminClientRunService final : public RunService {
 public:
  explicit AdminClientRunService(AdminClient* client) : client_(client) {}
  absl::StatusOr<std::string> StartRun(const v1::RunConfig& config) override { return client_->StartRun(config); }
  absl::StatusOr<v1::RunStatus> GetRunStatus(const std::string& run_id) override {
    return client_->GetRunStatus(run_id);
  }
  absl::StatusOr<v1::RunReport> GetRunReport(const std::string& run_id) override {
    return client_->GetRunReport(run_id);
  }

 private:
  AdminClient* client_;
};

absl::Status WithStrategy(const std::string& strategy, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat("strategy ", strategy, ": ", status.message()));
}

// Polls until the run ends; its last status.
absl::StatusOr<v1::RunStatus> WaitForEnd(const std::string& run_id, absl::Duration interval, RunService& service,
                                         const ExperimentOptions& options) {
  int failures = 0;
  while (true) {
    absl::StatusOr<v1::RunStatus> status = service.GetRunStatus(run_id);
    if (!status.ok()) {
      const bool transient = absl::IsUnavailable(status.status()) || absl::IsDeadlineExceeded(status.status());
      if (!transient || ++failures >= options.max_poll_failures) return status.status();
      options.sleep(interval);
      continue;
    }
    failures = 0;
    ASSIGN_OR_RETURN(const federation::RunState state, federation::GetState(*status));
    if (federation::IsFinal(state)) return status;
    options.sleep(interval);
  }
}

}  // namespace

absl::StatusOr<Strategy> ParseStrategy(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(absl::StripAsciiWhitespace(name));
  for (const KnownStrategy& known : kKnown) {
    if (lower == known.name) return Strategy{known.name, known.personalization};
  }
  std::vector<std::string> names;
  for (const KnownStrategy& known : kKnown) names.push_back(known.name);
  return absl::InvalidArgumentError(absl::StrCat("unknown strategy '", name, "': must be one of ",
                                                 absl::StrJoin(names, ", "), " (case-insensitive)"));
}

absl::StatusOr<v1::ExperimentConfig> ParseExperimentConfig(absl::string_view text, absl::string_view source) {
  v1::ExperimentConfig config;
  RETURN_IF_ERROR(io::ParseTextProto(text, source, &config));
  return config;
}

absl::StatusOr<v1::ExperimentConfig> ReadExperimentConfig(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, io::ReadTextProtoFile(path));
  ASSIGN_OR_RETURN(v1::ExperimentConfig config, ParseExperimentConfig(text, path));
  config.set_out_dir(io::ResolveConfigPath(std::filesystem::path(path).parent_path().string(), config.out_dir()));
  return config;
}

absl::Status ValidateExperimentConfig(const v1::ExperimentConfig& config) {
  if (config.strategies_size() == 0) {
    return FieldError("strategies", "empty", "name 1 to 8 strategies (fedavg, fedbn, silobn, ditto)");
  }
  if (config.strategies_size() > kMaxStrategies) {
    return FieldError("strategies", absl::StrCat(config.strategies_size(), " entries"),
                      absl::StrCat("at most ", kMaxStrategies, " strategies (each is a whole federated run)"));
  }
  std::set<std::string> seen;
  for (const std::string& name : config.strategies()) {
    absl::StatusOr<Strategy> strategy = ParseStrategy(name);
    if (!strategy.ok()) return FieldError("strategies", absl::StrCat("'", name, "'"), strategy.status().message());
    if (!seen.insert(strategy->name).second) {
      return FieldError("strategies", absl::StrCat("'", name, "'"), "is given twice");
    }
    const absl::Status valid = ValidateRunConfig(StrategyRunConfig(config.base(), *strategy, ""));
    if (!valid.ok()) return absl::InvalidArgumentError(absl::StrCat("experiment config 'base': ", valid.message()));
  }
  if (config.poll_seconds() < 1 || config.poll_seconds() > 600) {
    return FieldError("poll_seconds", absl::StrCat(config.poll_seconds()), "must be in [1, 600]");
  }
  if (config.out_dir().empty()) return FieldError("out_dir", "empty", "name the report's directory");
  return absl::OkStatus();
}

v1::RunConfig StrategyRunConfig(const v1::RunConfig& base, const Strategy& strategy, const std::string& base_model) {
  v1::RunConfig config = base;
  config.set_personalization(strategy.personalization);
  config.set_final_evaluation(true);
  config.set_local_only_baseline(true);
  if (!base_model.empty()) config.set_base_model(base_model);
  config.set_name(base.name().empty() ? absl::StrCat("[", strategy.name, "]")
                                      : absl::StrCat(base.name(), " [", strategy.name, "]"));
  return config;
}

std::unique_ptr<RunService> AdminRunService(AdminClient* client) {
  return std::make_unique<AdminClientRunService>(client);
}

ExperimentResult RunExperiment(const v1::ExperimentConfig& config, RunService& service,
                               const ExperimentOptions& given) {
  ExperimentResult result;
  result.status = ValidateExperimentConfig(config);
  if (!result.status.ok()) return result;
  ExperimentOptions options = given;
  if (!options.sleep) options.sleep = [](absl::Duration d) { absl::SleepFor(d); };
  if (!options.progress) options.progress = [](const std::string&) {};
  const absl::Duration interval = absl::Seconds(config.poll_seconds());

  std::string base_model = config.base().base_model();
  for (const std::string& name : config.strategies()) {
    const Strategy strategy = *ParseStrategy(name);  // Validated above.
    const v1::RunConfig run_config = StrategyRunConfig(config.base(), strategy, base_model);
    absl::StatusOr<std::string> run_id = service.StartRun(run_config);
    if (!run_id.ok()) {
      result.status = WithStrategy(strategy.name, run_id.status());
      return result;
    }
    options.progress(absl::StrCat(strategy.name, ": run ", *run_id, " started"));
    absl::StatusOr<v1::RunStatus> status = WaitForEnd(*run_id, interval, service, options);
    if (!status.ok()) {
      result.status = WithStrategy(strategy.name, status.status());
      return result;
    }
    // The same base model for every run: the first run's, unless the config named one.
    if (base_model.empty()) base_model = status->base_model_digest();
    const int64_t wall_ms = status->finished_ms() - status->started_ms();
    options.progress(
        absl::StrCat(strategy.name, ": run ", *run_id, " ", federation::DisplayText(*status),
                     status->finished_ms() > 0 && wall_ms >= 0 ? absl::StrCat(" in ", wall_ms / 1000, " s") : "",
                     status->message().empty() ? "" : absl::StrCat(" (", status->message(), ")")));
    absl::StatusOr<v1::RunReport> report = service.GetRunReport(*run_id);
    if (!report.ok()) {
      result.status = WithStrategy(strategy.name, report.status());
      return result;
    }
    result.runs.push_back({strategy.name, *std::move(report)});
  }
  return result;
}

}  // namespace fedtune::admin
