#include "site_agent/commands/finetune.h"

#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>

#include "common/status_macros.h"
#include "common/train/finetune_config.h"
#include "common/train/finetune_pipeline.h"
#include "common/train/threads.h"
#include "site_agent/commands/site_database.h"

namespace fedtune::agent {
namespace {

absl::Status RunFinetuneCommand(const cli::ParsedFlags& flags) {
  ASSIGN_OR_RETURN(v1::FinetuneConfig config, train::LoadFinetuneConfig(flags.GetOrDie("config")));
  if (std::optional<std::string> device = flags.Get("device")) config.set_device(*device);
  ASSIGN_OR_RETURN(int64_t max_epochs, flags.GetInt("max-epochs", config.max_epochs()));
  config.set_max_epochs(static_cast<int>(max_epochs));
  RETURN_IF_ERROR(train::ValidateFinetuneConfig(config));
  train::SetIntraOpThreads(config.threads());
  FinetuneRecorder recorder((std::filesystem::path(config.out_dir()) / "site.db").string(), config);
  train::FinetuneObserver* observers[] = {&recorder};
  ASSIGN_OR_RETURN(train::FinetuneResult result, train::RunFinetune(config, observers));
  std::printf("fine-tuned model: %s (sha256 %s, parent %s)\ntest split for evaluation: %s\n",
              result.checkpoint_path.c_str(), result.weights_sha256.c_str(), result.parent_sha256.c_str(),
              result.test_manifest.c_str());
  return absl::OkStatus();
}

}  // namespace

cli::Command MakeFinetuneCommand() {
  cli::Command c;
  c.path = {"finetune"};
  c.summary = "fine-tune a checkpoint on this site's data (study recipe; resumable) and write the adapted model";
  c.flags = {
      {"config", "text-format fedtune.v1.FinetuneConfig (see docs/config-reference.md)", false, true, std::nullopt,
       "F.textproto"},
      {"device", "override the config's device: auto, cpu, cuda, cuda:N", false, false, std::nullopt, "D"},
      {"max-epochs", "override the config's max_epochs", false, false, std::nullopt, "N"},
  };
  c.run = RunFinetuneCommand;
  return c;
}

}  // namespace fedtune::agent
