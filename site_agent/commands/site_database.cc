#include "site_agent/commands/site_database.h"

#include <google/protobuf/text_format.h>

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status_macros.h"

namespace fedtune::agent {
namespace {

const std::vector<store::Migration>& Schema() {
  static const std::vector<store::Migration> kSchema = {
      {1, R"sql(
        CREATE TABLE finetune_runs (
          id INTEGER PRIMARY KEY,
          run_key TEXT NOT NULL UNIQUE,
          started_at TEXT NOT NULL,
          finished_at TEXT,
          base_digest TEXT NOT NULL,
          config TEXT NOT NULL,
          result_digest TEXT);
        CREATE TABLE finetune_epochs (
          run_id INTEGER NOT NULL REFERENCES finetune_runs(id),
          member TEXT NOT NULL,
          epoch INTEGER NOT NULL,
          train_loss REAL NOT NULL,
          validation_loss REAL NOT NULL,
          images_per_second REAL NOT NULL,
          seconds REAL NOT NULL,
          improved INTEGER NOT NULL,
          PRIMARY KEY (run_id, member, epoch));
      )sql"},
  };
  return kSchema;
}

std::string Now() { return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone()); }

}  // namespace

absl::StatusOr<std::unique_ptr<store::Database>> OpenSiteDatabase(const std::string& path) {
  return store::Database::Open(path, Schema());
}

absl::StatusOr<int64_t> BeginFinetuneRun(store::Database& db, const std::string& run_key,
                                         const std::string& base_digest, const std::string& config_text) {
  ASSIGN_OR_RETURN(store::Statement find, db.Prepare("SELECT id FROM finetune_runs WHERE run_key = ?;"));
  find.Bind(1, run_key);
  ASSIGN_OR_RETURN(bool found, find.Step());
  if (found) return find.ColumnInt(0);
  ASSIGN_OR_RETURN(store::Statement insert,
                   db.Prepare("INSERT INTO finetune_runs (run_key, started_at, base_digest, config) "
                              "VALUES (?, ?, ?, ?);"));
  insert.Bind(1, run_key).Bind(2, Now()).Bind(3, base_digest).Bind(4, config_text);
  RETURN_IF_ERROR(insert.Run());
  return db.LastInsertRowId();
}

absl::Status FinishFinetuneRun(store::Database& db, int64_t run_id, const std::string& result_digest) {
  ASSIGN_OR_RETURN(store::Statement update,
                   db.Prepare("UPDATE finetune_runs SET finished_at = ?, result_digest = ? WHERE id = ?;"));
  update.Bind(1, Now()).Bind(2, result_digest).Bind(3, run_id);
  return update.Run();
}

FinetuneRecorder::FinetuneRecorder(std::string path, const v1::FinetuneConfig& config) : path_(std::move(path)) {
  google::protobuf::TextFormat::PrintToString(config, &config_text_);
}

absl::Status FinetuneRecorder::OnStart(const std::string& base_digest) {
  ASSIGN_OR_RETURN(db_, OpenSiteDatabase(path_));
  ASSIGN_OR_RETURN(run_id_,
                   BeginFinetuneRun(*db_, absl::StrCat(base_digest, "|", config_text_), base_digest, config_text_));
  return absl::OkStatus();
}

absl::Status FinetuneRecorder::OnEpoch(const std::string& network, const train::EpochRecord& r) {
  if (db_ == nullptr) return absl::InternalError("FinetuneRecorder::OnEpoch before OnStart");
  ASSIGN_OR_RETURN(store::Statement insert,
                   db_->Prepare("INSERT OR REPLACE INTO finetune_epochs (run_id, member, epoch, train_loss, "
                                "validation_loss, images_per_second, seconds, improved) VALUES (?,?,?,?,?,?,?,?);"));
  insert.Bind(1, run_id_)
      .Bind(2, network)
      .Bind(3, r.epoch)
      .Bind(4, r.train_loss)
      .Bind(5, r.validation_loss)
      .Bind(6, r.images_per_second)
      .Bind(7, r.seconds)
      .Bind(8, static_cast<int64_t>(r.improved ? 1 : 0));
  return insert.Run();
}

absl::Status FinetuneRecorder::OnFinish(const train::FinetuneResult& result) {
  if (db_ == nullptr) return absl::InternalError("FinetuneRecorder::OnFinish before OnStart");
  return FinishFinetuneRun(*db_, run_id_, result.weights_sha256);
}

}  // namespace fedtune::agent
