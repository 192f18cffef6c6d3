// The local-only baseline of a run's final evaluation (RunConfig.local_only_baseline): the run's base (open-source)
// model fine-tuned on the site's own training split alone, never federated, so that the site's report and the
// consortium report compare open-source, local only, federated global and adapted models on the same test cases.
//
// It is what `fedtune-site finetune` would make from the base model with the site's finetune template (manifest,
// data root, split seed and fractions, input settings, device), the plan's learning rate and batch size, and
// max_epochs = the plan's local_only_epochs (early stopping still applies), with no proximal term.
//
// Files: <work_dir>/local-only/<key>/ (model.ckpt, the fine-tuning state and its site.db) where <key> is the first
// 16 hex digits of the SHA-256 of the base model's digest, the manifest file's SHA-256 and the effective fine-tuning
// config (out_dir excluded). Images changed in place behind an unchanged manifest are not noticed.
// The same base model, data and settings thus give the same directory: a later run (the next strategy of an
// experiment) reuses the model, and a restarted agent resumes its fine-tuning where it stopped. A finished baseline
// is marked by <dir>/local-only.done ("<SHA-256 of model.ckpt> <weights_sha256>", written atomically); it is reused
// without training when model.ckpt still has that SHA-256, and fine-tuned again (resuming) otherwise.
//
// Thread safety: reentrant (callers use distinct work dirs or one thread).
#ifndef FEDTUNE_SITE_AGENT_AGENT_LOCAL_BASELINE_H_
#define FEDTUNE_SITE_AGENT_AGENT_LOCAL_BASELINE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/train/finetune_pipeline.h"
#include "fedtune/v1/federation.pb.h"
#include "fedtune/v1/federation_config.pb.h"

namespace fedtune::agent {

struct LocalOnlyModel {
  std::string path;    // <dir>/model.ckpt
  std::string digest;  // Its weights_sha256.
  std::string dir;
  bool reused = false;  // The directory held a finished fine-tuning before this call.
};

// The fine-tuning config of the baseline (see the file comment): the config's finetune template with base_model =
// `base_path`, out_dir = the keyed directory (from `base_digest`), resume on. InvalidArgument (naming the plan field)
// for local_only_epochs < 1, a learning rate or batch size that is not positive; the manifest's read errors.
absl::StatusOr<v1::FinetuneConfig> LocalOnlyConfig(const v1::SiteAgentConfig& config, const std::string& base_path,
                                                   const std::string& base_digest, const v1::TrainingPlan& plan);

// Makes (or reuses) the baseline: train::RunFinetune on LocalOnlyConfig, observed by `observers` (progress) and
// recorded in the directory's site.db. Errors of the config, the data and the training.
absl::StatusOr<LocalOnlyModel> TrainLocalOnly(const v1::SiteAgentConfig& config, const std::string& base_path,
                                              const std::string& base_digest, const v1::TrainingPlan& plan,
                                              const std::vector<train::FinetuneObserver*>& observers);

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_AGENT_LOCAL_BASELINE_H_
