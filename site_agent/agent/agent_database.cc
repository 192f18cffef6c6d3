#include "site_agent/agent/agent_database.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/privacy/rdp_accountant.h"
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
  CREATE TABLE IF NOT EXISTS privacy_ledger (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    mechanism TEXT NOT NULL,
    sample_rate REAL NOT NULL,
    noise_multiplier REAL NOT NULL,
    steps INTEGER NOT NULL,
    recorded_ms INTEGER NOT NULL,
    phases TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, round, attempt));
)sql";

std::string Now() { return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone()); }

void BindKey(store::Statement& s, int first, const TaskKey& key) {
  s.Bind(first, key.run_id)
      .Bind(first + 1, static_cast<int64_t>(key.round))
      .Bind(first + 2, static_cast<int64_t>(key.attempt))
      .Bind(first + 3, key.kind);
}

constexpr char kWhereKey[] = " WHERE run_id = ? AND round = ? AND attempt = ? AND kind = ?;";

constexpr size_t kMaxRunIdBytes = 256;

// The bounds of PrivacyPhaseRecord; the problem in words, or "" when the phase is within them.
std::string PhaseProblem(const PrivacyPhaseRecord& p) {
  if (p.run_id.empty() || p.run_id.size() > kMaxRunIdBytes) {
    return absl::StrCat("run_id of ", p.run_id.size(), " bytes (must be 1 to ", kMaxRunIdBytes, ")");
  }
  if (p.round < 0) return absl::StrCat("round ", p.round, " (must be >= 0)");
  if (p.attempt < 0) return absl::StrCat("attempt ", p.attempt, " (must be >= 0)");
  if (p.steps < 0 || p.steps > privacy::kMaxSteps) {
    return absl::StrCat("steps ", p.steps, " (must be in [0, ", privacy::kMaxSteps, "])");
  }
  if (p.recorded_ms < 0) return absl::StrCat("recorded_ms ", p.recorded_ms, " (must be >= 0)");
  if (p.phases.size() > kMaxPhasesBytes) {
    return absl::StrCat("phases of ", p.phases.size(), " bytes (at most ", kMaxPhasesBytes, ")");
  }
  if (!p.phases.empty() && p.mechanism != "dp-sgd") return "phases in a row whose mechanism is not dp-sgd";
  if (p.mechanism == "none") {
    if (p.sample_rate != 0 || p.noise_multiplier != 0) {
      return "mechanism \"none\" with a sample_rate or noise_multiplier (both must be 0)";
    }
    return "";
  }
  if (p.mechanism != "dp-sgd" && p.mechanism != "dp-fedavg") {
    return absl::StrCat("mechanism \"", p.mechanism.substr(0, 32), "\" (must be none, dp-sgd or dp-fedavg)");
  }
  if (!(p.sample_rate >= 0 && p.sample_rate <= 1)) {
    return absl::StrCat("sample_rate ", p.sample_rate, " (must be in [0, 1])");
  }
  if (p.mechanism == "dp-fedavg" && p.sample_rate != 1) {
    return absl::StrCat("dp-fedavg sample_rate ", p.sample_rate, " (must be 1)");
  }
  if (!(p.noise_multiplier >= privacy::kMinNoiseMultiplier && p.noise_multiplier <= privacy::kMaxNoiseMultiplier)) {
    return absl::StrCat("noise_multiplier ", p.noise_multiplier, " (must be in [", privacy::kMinNoiseMultiplier, ", ",
                        privacy::kMaxNoiseMultiplier, "])");
  }
  return "";
}

}  // namespace

absl::StatusOr<std::unique_ptr<AgentDatabase>> AgentDatabase::Open(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<store::Database> db, OpenSiteDatabase(path));
  RETURN_IF_ERROR(db->Execute(kTables));
  // A ledger written before privacy_ledger.phases existed: add the column (its rows get '').
  if (!db->Prepare("SELECT phases FROM privacy_ledger LIMIT 0;").ok()) {
    RETURN_IF_ERROR(db->Execute("ALTER TABLE privacy_ledger ADD COLUMN phases TEXT NOT NULL DEFAULT '';"));
  }
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

absl::StatusOr<std::optional<v1::Task>> AgentDatabase::StoredTask(const TaskKey& key) {
  ASSIGN_OR_RETURN(store::Statement s, db_->Prepare(std::string("SELECT task FROM fed_tasks") + kWhereKey));
  BindKey(s, 1, key);
  ASSIGN_OR_RETURN(bool found, s.Step());
  if (!found || s.ColumnIsNull(0)) return std::optional<v1::Task>();
  v1::Task task;
  if (!task.ParseFromString(s.ColumnText(0))) {
    return absl::DataLossError(absl::StrCat(db_->path(), ": the fed_tasks row of run ", key.run_id.substr(0, 64),
                                            " round ", key.round, " attempt ", key.attempt,
                                            " holds an unreadable task"));
  }
  return std::optional<v1::Task>(std::move(task));
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
  const bool terminal = state == "done" || state == "failed" || state == "cancelled" || state == "declined";
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

absl::Status AgentDatabase::RecordPrivacyPhase(const PrivacyPhaseRecord& phase) {
  if (const std::string problem = PhaseProblem(phase); !problem.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(db_->path(), ": privacy_ledger row of run ",
                                                   phase.run_id.substr(0, 64), " round ", phase.round, " attempt ",
                                                   phase.attempt, ": ", problem));
  }
  ASSIGN_OR_RETURN(
      store::Statement s,
      db_->Prepare("INSERT OR REPLACE INTO privacy_ledger (run_id, round, attempt, mechanism, "
                   "sample_rate, noise_multiplier, steps, recorded_ms, phases) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?);"));
  s.Bind(1, phase.run_id)
      .Bind(2, static_cast<int64_t>(phase.round))
      .Bind(3, static_cast<int64_t>(phase.attempt))
      .Bind(4, phase.mechanism)
      .Bind(5, phase.sample_rate)
      .Bind(6, phase.noise_multiplier)
      .Bind(7, phase.steps)
      .Bind(8, phase.recorded_ms)
      .Bind(9, phase.phases);
  return s.Run();
}

absl::StatusOr<std::vector<PrivacyPhaseRecord>> AgentDatabase::PrivacyLedger() {
  // typeof() too: SQLite stores what it is given, and a REAL read from a TEXT cell would be 0, a smaller epsilon.
  ASSIGN_OR_RETURN(
      store::Statement s,
      db_->Prepare("SELECT run_id, round, attempt, mechanism, sample_rate, noise_multiplier, steps, "
                   "recorded_ms, typeof(run_id), typeof(round), typeof(attempt), typeof(mechanism), "
                   "typeof(sample_rate), typeof(noise_multiplier), typeof(steps), typeof(recorded_ms), "
                   "phases, typeof(phases) FROM privacy_ledger ORDER BY recorded_ms, run_id, round, attempt LIMIT ?;"));
  s.Bind(1, kMaxPrivacyLedgerRows + 1);
  std::vector<PrivacyPhaseRecord> phases;
  int64_t row = 0;
  while (true) {
    ASSIGN_OR_RETURN(bool more, s.Step());
    if (!more) break;
    ++row;
    if (row > kMaxPrivacyLedgerRows) {
      return absl::DataLossError(
          absl::StrCat(db_->path(), ": table privacy_ledger has more than ", kMaxPrivacyLedgerRows, " rows"));
    }
    const bool text_key = s.ColumnText(8) == "text" && s.ColumnText(11) == "text";
    const bool integers = s.ColumnText(9) == "integer" && s.ColumnText(10) == "integer" &&
                          s.ColumnText(14) == "integer" && s.ColumnText(15) == "integer";
    auto numeric = [](const std::string& type) { return type == "real" || type == "integer"; };
    PrivacyPhaseRecord p;
    p.run_id = s.ColumnIsNull(0) ? "" : s.ColumnText(0);
    const int64_t round = s.ColumnInt(1);
    const int64_t attempt = s.ColumnInt(2);
    p.round = static_cast<int32_t>(std::clamp<int64_t>(round, -1, std::numeric_limits<int32_t>::max()));
    p.attempt = static_cast<int32_t>(std::clamp<int64_t>(attempt, -1, std::numeric_limits<int32_t>::max()));
    p.mechanism = s.ColumnIsNull(3) ? "" : s.ColumnText(3);
    p.sample_rate = s.ColumnDouble(4);
    p.noise_multiplier = s.ColumnDouble(5);
    p.steps = s.ColumnInt(6);
    p.recorded_ms = s.ColumnInt(7);
    p.phases = s.ColumnIsNull(16) ? "" : s.ColumnText(16);
    std::string problem;
    if (s.ColumnText(17) != "text") {
      problem = absl::StrCat("phases of type ", s.ColumnText(17));
    } else if (!text_key || !integers || !numeric(s.ColumnText(12)) || !numeric(s.ColumnText(13))) {
      problem = absl::StrCat("a value of the wrong type (run_id ", s.ColumnText(8), ", round ", s.ColumnText(9),
                             ", attempt ", s.ColumnText(10), ", mechanism ", s.ColumnText(11), ", sample_rate ",
                             s.ColumnText(12), ", noise_multiplier ", s.ColumnText(13), ", steps ", s.ColumnText(14),
                             ", recorded_ms ", s.ColumnText(15), ")");
    } else if (round != p.round || attempt != p.attempt) {
      problem = absl::StrCat("round ", round, " / attempt ", attempt, " out of range");
    } else {
      problem = PhaseProblem(p);
    }
    if (!problem.empty()) {
      return absl::DataLossError(absl::StrCat(db_->path(), ": table privacy_ledger, row ", row, " (run ",
                                              p.run_id.substr(0, 64), " round ", round, " attempt ", attempt,
                                              "): ", problem, "; the site's spent epsilon cannot be computed"));
    }
    phases.push_back(std::move(p));
  }
  return phases;
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
