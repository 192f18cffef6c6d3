// The site's own SQLite database (<out_dir>/site.db): fine-tuning runs and their per-epoch metrics. Later also the
// federation rounds the site took part in.
#ifndef FEDTUNE_SITE_AGENT_SITE_DATABASE_H_
#define FEDTUNE_SITE_AGENT_SITE_DATABASE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/store/database.h"
#include "common/train/trainer.h"

namespace fedtune::agent {

// Opens (creating or migrating) the site database. Errors as store::Database::Open.
absl::StatusOr<std::unique_ptr<store::Database>> OpenSiteDatabase(const std::string& path);

// Records a run (keyed by `run_key`: the same key continues the same run, e.g. after a resume) and returns its id.
absl::StatusOr<int64_t> BeginFinetuneRun(store::Database& db, const std::string& run_key,
                                         const std::string& base_digest, const std::string& config_text);
absl::Status FinishFinetuneRun(store::Database& db, int64_t run_id, const std::string& result_digest);

// Stores each epoch of one ensemble member in table finetune_epochs (run_id, member, epoch, ...); an epoch stored
// before (a resumed run) is replaced. Not thread-safe (one training thread).
class EpochRecorder : public train::EpochObserver {
 public:
  EpochRecorder(store::Database* db, int64_t run_id, std::string member)
      : db_(db), run_id_(run_id), member_(std::move(member)) {}
  absl::Status OnEpoch(const train::EpochRecord& record) override;

 private:
  store::Database* db_;
  int64_t run_id_;
  std::string member_;
};

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_SITE_DATABASE_H_
