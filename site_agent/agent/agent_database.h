// The site agent's federation records in the site's SQLite database (<work_dir>/site.db, opened with
// OpenSiteDatabase, so the file also has the finetune_* tables): the tasks it worked on and their state, the
// update payload of each TRAIN task (path, SHA-256, size: a restarted agent re-uploads the same bytes), the adapted
// checkpoints it kept, and the runs it has finished.
//
// Tables (created with CREATE TABLE IF NOT EXISTS, see the .cc; site_database.cc's migrations own schema versions):
//   fed_tasks(run_id, round, attempt, kind, state, model_digest, update_path, update_sha256, update_bytes,
//             num_samples, train_loss, validation_loss, message, started, finished)   key (run_id, round, attempt,
//             kind)
//   adapted_models(run_id, round, attempt, digest, validation_loss, path, created)      key (run_id, round, attempt)
//   fed_runs(run_id, state, finished)                                                    key run_id
//   privacy_ledger(run_id, round, attempt, mechanism, sample_rate, noise_multiplier, steps, recorded_ms, phases)
//                                                                                        key (run_id, round, attempt)
//   (phases: added by ALTER TABLE to a ledger written before it; '' in those rows)
// Task states: "started", "update-written", "uploaded", "done", "failed", "cancelled", "declined" (the site declined
// the TRAIN task: its privacy budget, privacy_budget.h).
//
// privacy_ledger holds one row per TRAIN attempt whose training touched (or is about to touch) the site's data: the
// phase its RDP accountant adds (privacy_budget.h). Rows are read back with bounds (PrivacyLedger); a row outside
// them is DataLoss naming the table and the row, never a silently smaller epsilon.
//
// Thread safety: not thread-safe (the agent's task thread owns it).
#ifndef FEDTUNE_SITE_AGENT_AGENT_AGENT_DATABASE_H_
#define FEDTUNE_SITE_AGENT_AGENT_AGENT_DATABASE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/store/database.h"
#include "fedtune/v1/federation.pb.h"

namespace fedtune::agent {

struct TaskKey {
  std::string run_id;
  int32_t round = 0;
  int32_t attempt = 0;
  std::string kind;  // "train" or "evaluate".
};

struct TaskRecord {
  TaskKey key;
  std::string state;
  std::string model_digest;
  std::string update_path;
  std::string update_sha256;
  int64_t update_bytes = 0;
  int64_t num_samples = 0;
  double train_loss = 0;
  double validation_loss = 0;
  std::string message;
};

// One row of privacy_ledger: what one TRAIN attempt's training did with the site's data.
struct PrivacyPhaseRecord {
  std::string run_id;
  int32_t round = 0;
  int32_t attempt = 0;
  std::string mechanism;        // "none", "dp-sgd" or "dp-fedavg".
  double sample_rate = 0;       // q in [0, 1] (dp-fedavg: 1; none: 0).
  double noise_multiplier = 0;  // sigma (0 for "none").
  int64_t steps = 0;            // Accounted steps of the sampled Gaussian mechanism, in [0, privacy::kMaxSteps].
  int64_t recorded_ms = 0;      // Unix milliseconds of the (last) record.
  // dp-sgd: every mechanism of the attempt, as privacy_budget.cc writes and reads it (one per trained network, each at
  // its own sample rate; "planned" or "actual"); then sample_rate is their largest and steps their sum, a summary.
  // Empty in rows of older agents (one mechanism: sample_rate x steps). At most kMaxPhasesBytes.
  std::string phases;
};

inline constexpr size_t kMaxPhasesBytes = 16 << 10;

// Rows privacy_ledger may hold (PrivacyLedger reads at most this many; more is DataLoss).
inline constexpr int64_t kMaxPrivacyLedgerRows = 1'000'000;

struct AdaptedModel {
  std::string run_id;
  int32_t round = 0;
  int32_t attempt = 0;
  std::string digest;  // weights_sha256 of the checkpoint.
  double validation_loss = 0;
  std::string path;
};

class AgentDatabase {
 public:
  // Opens (creating) the database file and the tables. Errors as store::Database::Open.
  static absl::StatusOr<std::unique_ptr<AgentDatabase>> Open(const std::string& path);

  // Inserts the task in state "started" unless it exists (a re-offered task keeps its record and state).
  absl::Status BeginTask(const TaskKey& key, const v1::Task& task);
  // The task's record; nullopt when unknown.
  absl::StatusOr<std::optional<TaskRecord>> FindTask(const TaskKey& key);
  // The task as first stored by BeginTask (a re-offered task does not replace it); nullopt when unknown. DataLoss
  // when the stored bytes are not a Task.
  absl::StatusOr<std::optional<v1::Task>> StoredTask(const TaskKey& key);
  // Records the update payload written for a TRAIN task and sets state "update-written".
  absl::Status RecordUpdate(const TaskKey& key, const std::string& path, const std::string& sha256, int64_t bytes,
                            int64_t num_samples, double train_loss, double validation_loss);
  // Sets the state (and message); "done", "failed", "cancelled" and "declined" also set `finished`.
  absl::Status SetTaskState(const TaskKey& key, const std::string& state, const std::string& message = "");

  // The adapted model with the lowest validation loss of the run; nullopt when none.
  absl::StatusOr<std::optional<AdaptedModel>> BestAdapted(const std::string& run_id);
  absl::Status RecordAdapted(const AdaptedModel& model);

  // TRAIN tasks whose update was written or uploaded but which did not finish (the agent stopped before the round
  // report), of runs not finished, oldest first: a restarted agent completes them (the coordinator does not offer a
  // task again once it accepted the update).
  absl::StatusOr<std::vector<v1::Task>> InterruptedTrainTasks();

  // Inserts the phase, replacing the row of the same (run_id, round, attempt): re-recording an attempt (planned
  // steps before training, the steps taken after) is idempotent. InvalidArgument for values outside the bounds of
  // PrivacyPhaseRecord (nothing written).
  absl::Status RecordPrivacyPhase(const PrivacyPhaseRecord& phase);
  // Every row, ordered by recorded_ms, run_id, round, attempt. DataLoss naming privacy_ledger and the row (run,
  // round, attempt) for a value of the wrong type or outside the bounds of PrivacyPhaseRecord, or more than
  // kMaxPrivacyLedgerRows rows.
  absl::StatusOr<std::vector<PrivacyPhaseRecord>> PrivacyLedger();

  // True when the site has a task record of the run.
  absl::StatusOr<bool> TookPart(const std::string& run_id);
  // Marks the run finished for this site; returns true when it was not marked before.
  absl::StatusOr<bool> MarkRunFinished(const std::string& run_id, const std::string& state);

  store::Database& database() { return *db_; }

 private:
  explicit AgentDatabase(std::unique_ptr<store::Database> db) : db_(std::move(db)) {}
  std::unique_ptr<store::Database> db_;
};

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_AGENT_AGENT_DATABASE_H_
