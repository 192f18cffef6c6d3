#include "site_agent/agent/agent_database.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status_macros.h"
#include "site_agent/commands/site_database.h"

namespace fedtune::agent {
namespace {

// IF NOT EXISTS: the file's schema versions belong to site_database.cc's migrations.
constexpr char kTables[] = R"sql(
  CREATE TABLE IF NOT EXISTS fed_tasks (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    model_digest TEXT NOT NULL,
    task BLOB NOT NULL,
    update_path TEXT,
    update_sha256 TEXT,
    update_bytes INTEGER,
    num_samples INTEGER,
    train_loss REAL,
    validation_loss REAL,
    message TEXT,
    started TEXT NOT NULL,
    finished TEXT,
    PRIMARY KEY (run_id, round, attempt, kind));
  CREATE TABLE IF NOT EXISTS adapted_models (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    digest TEXT NOT NULL,
    validation_loss REAL NOT NULL,
    path TEXT NOT NULL,
    created TEXT NOT NULL,
    PRIMARY KEY (run_id, round, attempt));
  CREATE TABLE IF NOT EXISTS fed_runs (
    run_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    finished TEXT NOT NULL);
)sql";

std::string Now() { return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone()); }

void BindKey(store::Statement& s, int first, const TaskKey& key) {
  s.Bind(first, key.run_id)
      .Bind(first + 1, static_cast<int64_t>(key.round))
      .Bind(first + 2, static_cast<int64_t>(key.attempt))
      .Bind(first + 3, key.kind);
}

constexpr char kWhereKey[] = " WHERE run_id = ? AND round = ? AND attempt = ? AND kind = ?;";

}  // namespace

absl::StatusOr<std::unique_ptr<AgentDatabase>> AgentDatabase::Open(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<store::Database> db, OpenSiteDatabase(path));
  RETURN_IF_ERROR(db->Execute(kTables));
  return std::unique_ptr<AgentDatabase>(new AgentDatabase(std::move(db)));
}

absl::Status AgentDatabase::BeginTask(const TaskKey& key, const v1::Task& task) {
  ASSIGN_OR_RETURN(store::Statement s,
                   db_->Prepare("INSERT OR IGNORE INTO fed_tasks (run_id, round, attempt, kind, state, model_digest, "
                                "task, started) VALUES (?, ?, ?, ?, 'started', ?, ?, ?);"));
  BindKey(s, 1, key);
  s.Bind(5, task.model_digest()).BindBlob(6, task.SerializeAsString()).Bind(7, Now());
  return s.Run();
}

absl::StatusOr<std::vector<v1::Task>> AgentDatabase::InterruptedTrainTasks() {
  ASSIGN_OR_RETURN(
      store::Statement s,
      db_->Prepare("SELECT task FROM fed_tasks WHERE kind = 'train' AND state IN ('update-written', "
                   "'uploaded') AND run_id NOT IN (SELECT run_id FROM fed_runs) ORDER BY started, round;"));
  std::vector<v1::Task> tasks;
  while (true) {
    ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    v1::Task task;
    if (!task.ParseFromString(s.ColumnText(0))) {
      return absl::DataLossError(absl::StrCat(db_->path(), ": a fed_tasks row holds an unreadable task"));
    }
    tasks.push_back(std::move(task));
  }
  return tasks;
}

absl::StatusOr<std::optional<TaskRecord>> AgentDatabase::FindTask(const TaskKey& key) {
  ASSIGN_OR_RETURN(store::Statement s,
                   db_->Prepare(std::string("SELECT state, model_digest, update_path, update_sha256, update_bytes, "
                                            "num_samples, train_loss, validation_loss, message FROM fed_tasks") +
                                kWhereKey));
  BindKey(s, 1, key);
  ASSIGN_OR_RETURN(bool found, s.Step());
  if (!found) return std::optional<TaskRecord>();
  TaskRecord r;
  r.key = key;
  r.state = s.ColumnText(0);
  r.model_digest = s.ColumnText(1);
  r.update_path = s.ColumnIsNull(2) ? "" : s.ColumnText(2);
  r.update_sha256 = s.ColumnIsNull(3) ? "" : s.ColumnText(3);
  r.update_bytes = s.ColumnIsNull(4) ? 0 : s.ColumnInt(4);
  r.num_samples = s.ColumnIsNull(5) ? 0 : s.ColumnInt(5);
  r.train_loss = s.ColumnIsNull(6) ? 0 : s.ColumnDouble(6);
  r.validation_loss = s.ColumnIsNull(7) ? 0 : s.ColumnDouble(7);
  r.message = s.ColumnIsNull(8) ? "" : s.ColumnText(8);
  return std::optional<TaskRecord>(std::move(r));
}

absl::Status AgentDatabase::RecordUpdate(const TaskKey& key, const std::string& path, const std::string& sha256,
                                         int64_t bytes, int64_t num_samples, double train_loss,
                                         double validation_loss) {
  ASSIGN_OR_RETURN(store::Statement s,
                   db_->Prepare(std::string("UPDATE fed_tasks SET state = 'update-written', update_path = ?, "
                                            "update_sha256 = ?, update_bytes = ?, num_samples = ?, train_loss = ?, "
                                            "validation_loss = ?") +
                                kWhereKey));
  s.Bind(1, path).Bind(2, sha256).Bind(3, bytes).Bind(4, num_samples).Bind(5, train_loss).Bind(6, validation_loss);
  BindKey(s, 7, key);
  return s.Run();
}

absl::Status AgentDatabase::SetTaskState(const TaskKey& key, const std::string& state, const std::string& message) {
  const bool terminal = state == "done" || state == "failed" || state == "cancelled";
  ASSIGN_OR_RETURN(store::Statement s,
                   db_->Prepare(std::string("UPDATE fed_tasks SET state = ?, message = ?, finished = ?") + kWhereKey));
  s.Bind(1, state).Bind(2, message);
  if (terminal) {
    s.Bind(3, Now());
  } else {
    s.BindNull(3);
  }
  BindKey(s, 4, key);
  return s.Run();
}

absl::StatusOr<std::optional<AdaptedModel>> AgentDatabase::BestAdapted(const std::string& run_id) {
  ASSIGN_OR_RETURN(store::Statement s,
                   db_->Prepare("SELECT round, attempt, digest, validation_loss, path FROM adapted_models "
                                "WHERE run_id = ? ORDER BY validation_loss ASC, round DESC LIMIT 1;"));
  s.Bind(1, run_id);
  ASSIGN_OR_RETURN(bool found, s.Step());
  if (!found) return std::optional<AdaptedModel>();
  AdaptedModel m;
  m.run_id = run_id;
  m.round = static_cast<int32_t>(s.ColumnInt(0));
  m.attempt = static_cast<int32_t>(s.ColumnInt(1));
  m.digest = s.ColumnText(2);
  m.validation_loss = s.ColumnDouble(3);
  m.path = s.ColumnText(4);
  return std::optional<AdaptedModel>(std::move(m));
}

absl::Status AgentDatabase::RecordAdapted(const AdaptedModel& m) {
  ASSIGN_OR_RETURN(store::Statement s,
                   db_->Prepare("INSERT OR REPLACE INTO adapted_models (run_id, round, attempt, digest, "
                                "validation_loss, path, created) VALUES (?, ?, ?, ?, ?, ?, ?);"));
  s.Bind(1, m.run_id)
      .Bind(2, static_cast<int64_t>(m.round))
      .Bind(3, static_cast<int64_t>(m.attempt))
      .Bind(4, m.digest)
      .Bind(5, m.validation_loss)
      .Bind(6, m.path)
      .Bind(7, Now());
  return s.Run();
}

absl::StatusOr<bool> AgentDatabase::TookPart(const std::string& run_id) {
  ASSIGN_OR_RETURN(store::Statement s, db_->Prepare("SELECT 1 FROM fed_tasks WHERE run_id = ? LIMIT 1;"));
  s.Bind(1, run_id);
  return s.Step();
}

absl::StatusOr<bool> AgentDatabase::MarkRunFinished(const std::string& run_id, const std::string& state) {
  ASSIGN_OR_RETURN(store::Statement s,
                   db_->Prepare("INSERT OR IGNORE INTO fed_runs (run_id, state, finished) VALUES (?, ?, ?);"));
  s.Bind(1, run_id).Bind(2, state).Bind(3, Now());
  RETURN_IF_ERROR(s.Run());
  ASSIGN_OR_RETURN(store::Statement changes, db_->Prepare("SELECT changes();"));
  ASSIGN_OR_RETURN(bool row, changes.Step());
  return row && changes.ColumnInt(0) > 0;
}

}  // namespace fedtune::agent
