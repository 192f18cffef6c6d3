// The site's own SQLite database (<out_dir>/site.db): fine-tuning runs and their per-epoch metrics (the agent's
// database, agent_database.h, extends the same schema with its tasks).
#ifndef FEDTUNE_SITE_AGENT_COMMANDS_SITE_DATABASE_H_
#define FEDTUNE_SITE_AGENT_COMMANDS_SITE_DATABASE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/store/database.h"
#include "common/train/finetune_pipeline.h"
#include "common/train/trainer.h"
#include "fedtune/v1/finetune.pb.h"

namespace fedtune::agent {

// Opens (creating or migrating) the site database. Errors as store::Database::Open.
absl::StatusOr<std::unique_ptr<store::Database>> OpenSiteDatabase(const std::string& path);

// Records a run (keyed by `run_key`: the same key continues the same run, e.g. after a resume) and returns its id.
absl::StatusOr<int64_t> BeginFinetuneRun(store::Database& db, const std::string& run_key,
                                         const std::string& base_digest, const std::string& config_text);
absl::Status FinishFinetuneRun(store::Database& db, int64_t run_id, const std::string& result_digest);

// Records one fine-tuning (train::RunFinetune) in the site database at `path`, which it opens (creating or
// migrating it) when training starts: the run in finetune_runs, keyed by the base digest and the config's text so
// that a resumed fine-tuning continues its run; each new epoch of each network in finetune_epochs (an epoch stored
// before is replaced; resumed epochs are already there); the result digest when the checkpoint is written. Errors
// of the database. Not thread-safe (the pipeline's thread).
class FinetuneRecorder : public train::FinetuneObserver {
 public:
  FinetuneRecorder(std::string path, const v1::FinetuneConfig& config);
  absl::Status OnStart(const std::string& base_digest) override;
  absl::Status OnEpoch(const std::string& network, const train::EpochRecord& record) override;
  absl::Status OnFinish(const train::FinetuneResult& result) override;

 private:
  const std::string path_;
  std::string config_text_;
  std::unique_ptr<store::Database> db_;  // Open from OnStart on.
  int64_t run_id_ = -1;
};

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_COMMANDS_SITE_DATABASE_H_
