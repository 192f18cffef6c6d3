#include "site_agent/agent/local_baseline.h"

#include <cmath>
#include <filesystem>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/train/finetune_config.h"
#include "site_agent/agent/agent_config.h"
#include "site_agent/commands/site_database.h"

namespace fedtune::agent {
namespace fs = std::filesystem;

// Written once the baseline finished (see TrainLocalOnly).
constexpr char kDoneFile[] = "local-only.done";

absl::StatusOr<v1::FinetuneConfig> LocalOnlyConfig(const v1::SiteAgentConfig& config, const std::string& base_path,
                                                   const std::string& base_digest, const v1::TrainingPlan& plan) {
  if (plan.local_only_epochs() < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("task plan field 'local_only_epochs': ", plan.local_only_epochs(), " must be >= 1"));
  }
  TrainingValues values;
  values.local_epochs = plan.local_only_epochs();
  values.learning_rate = plan.learning_rate() > 0 ? plan.learning_rate() : config.finetune().learning_rate();
  values.batch_size = plan.batch_size() > 0 ? plan.batch_size() : config.finetune().batch_size();
  if (!std::isfinite(values.learning_rate) || values.learning_rate <= 0 || values.batch_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("task plan fields 'learning_rate' / 'batch_size': ", values.learning_rate, " / ",
                     values.batch_size, " must be positive"));
  }
  values.proximal_mu = 0;
  // The key covers everything that decides the model except where it is written.
  v1::FinetuneConfig keyed = TaskFinetuneConfig(config, base_path, "", values);
  keyed.clear_out_dir();
  keyed.clear_base_model();
  // The manifest's contents too: a manifest rewritten at the same path (new images, labels) is other data.
  ASSIGN_OR_RETURN(const std::string manifest_sha256, io::Sha256File(config.finetune().manifest()));
  const std::string key =
      io::Sha256Hex(absl::StrCat(base_digest, "\n", manifest_sha256, "\n", keyed.SerializeAsString())).substr(0, 16);
  const std::string dir = (fs::path(config.work_dir()) / "local-only" / key).string();
  return TaskFinetuneConfig(config, base_path, dir, values);
}

absl::StatusOr<LocalOnlyModel> TrainLocalOnly(const v1::SiteAgentConfig& config, const std::string& base_path,
                                              const std::string& base_digest, const v1::TrainingPlan& plan,
                                              const std::vector<train::FinetuneObserver*>& observers) {
  ASSIGN_OR_RETURN(const v1::FinetuneConfig finetune, LocalOnlyConfig(config, base_path, base_digest, plan));
  RETURN_IF_ERROR(train::ValidateFinetuneConfig(finetune));
  RETURN_IF_ERROR(io::MakeDirectories(finetune.out_dir()));
  LocalOnlyModel model;
  model.dir = finetune.out_dir();
  const std::string done_path = (fs::path(model.dir) / kDoneFile).string();
  if (fs::exists(done_path)) {
    // "<file sha256> <weights sha256>" of the finished model.ckpt: reused as it is when the file still matches.
    ASSIGN_OR_RETURN(const std::string done, io::ReadFile(done_path));
    const std::vector<std::string> fields = absl::StrSplit(done, ' ', absl::SkipWhitespace());
    const std::string path = (fs::path(model.dir) / "model.ckpt").string();
    if (fields.size() == 2 && fs::exists(path) && io::Sha256File(path).value_or("") == fields[0]) {
      model.path = path;
      model.digest = std::string(absl::StripAsciiWhitespace(fields[1]));
      model.reused = true;
      LOG(INFO) << "reusing the local-only baseline " << path << " (weights " << model.digest.substr(0, 12) << ")";
      return model;
    }
    LOG(WARNING) << model.dir << ": the finished local-only baseline no longer matches " << done_path
                 << ": fine-tuning it again";
  }
  LOG(INFO) << "training the local-only baseline in " << model.dir << " (" << finetune.max_epochs()
            << " epochs from the base model " << base_digest.substr(0, 12) << ")";
  FinetuneRecorder recorder((fs::path(model.dir) / "site.db").string(), finetune);
  std::vector<train::FinetuneObserver*> all = observers;
  all.push_back(&recorder);
  ASSIGN_OR_RETURN(const train::FinetuneResult result, train::RunFinetune(finetune, all));
  model.path = result.checkpoint_path;
  model.digest = result.weights_sha256;
  ASSIGN_OR_RETURN(const std::string file_sha256, io::Sha256File(model.path));
  RETURN_IF_ERROR(io::WriteFileAtomically(done_path, absl::StrCat(file_sha256, " ", model.digest, "\n")));
  return model;
}

}  // namespace fedtune::agent
