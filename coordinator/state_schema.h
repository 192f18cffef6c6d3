// The SQLite schema of coordinator.db (documented in state_store.h) and the mapping between its rows and the
// record structs: the migrations, the column lists of each table, and the row readers. StateStore's transactions
// (state_store.cc) use them; nothing else should.
//
// Thread safety: reentrant (no state).
#ifndef FEDTUNE_COORDINATOR_STATE_SCHEMA_H_
#define FEDTUNE_COORDINATOR_STATE_SCHEMA_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/store/database.h"
#include "coordinator/state_store.h"

namespace fedtune::coordinator::schema {

// The numbered migrations, oldest first (state_store.h describes each).
absl::Span<const store::Migration> Migrations();

// The columns each reader below expects, in its order.
inline constexpr char kSiteColumns[] =
    "site_id, status, first_seen_ms, last_seen_ms, certificate_serial, dataset, capabilities, state, progress, "
    "train_loss, key_sha256, key_pinned_ms, offered_key_sha256, offered_serial";
inline constexpr char kRunColumns[] =
    "run_id, name, config, state, sites, base_model_digest, final_model_digest, fedadam_state_path, "
    "fedadam_rounds, current_round, started_ms, finished_ms, evaluation_deadline_ms, message";
inline constexpr char kRoundColumns[] =
    "run_id, round, attempt, state, model_digest, result_digest, opened_ms, deadline_ms, closed_ms, message";
inline constexpr char kModelColumns[] = "digest, parent_digest, path, run_id, round, bytes, created_ms";
inline constexpr char kUpdateColumns[] =
    "id, run_id, round, attempt, site_id, sha256, bytes, num_samples, l2_norm, train_loss, validation_loss, status, "
    "message, spool_path, received_ms";

// The record of the current row of a statement that selected the matching columns. A state column (sites.status,
// runs.state, rounds.state, updates.status) is read through its text form (common/federation/states.h): DataLoss
// naming the table, the row and the column when it holds no known state. ReadRun: also DataLoss naming the run when
// its stored config does not parse.
absl::StatusOr<SiteRecord> ReadSite(const store::Statement& st);
absl::StatusOr<RunRecord> ReadRun(const store::Statement& st);
absl::StatusOr<RoundRecord> ReadRound(const store::Statement& st);
ModelVersion ReadModel(const store::Statement& st);
absl::StatusOr<UpdateRecord> ReadUpdate(const store::Statement& st);
// The state columns are written as federation::Text of the state.

// A run config as stored (text proto).
std::string ConfigText(const v1::RunConfig& config);

}  // namespace fedtune::coordinator::schema

#endif  // FEDTUNE_COORDINATOR_STATE_SCHEMA_H_
