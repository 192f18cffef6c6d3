#include "coordinator/state_schema.h"

#include <google/protobuf/text_format.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"

namespace fedtune::coordinator::schema {
namespace {

// A state column's value, or DataLoss naming the table, the row and the column.
template <typename E>
absl::StatusOr<E> StateOf(absl::StatusOr<E> parsed, absl::string_view column, absl::string_view row) {
  if (parsed.ok()) return parsed;
  return absl::DataLossError(absl::StrCat(column, " of ", row, ": ", parsed.status().message(),
                                          " (coordinator.db written by a newer or damaged coordinator?)"));
}

const store::Migration kMigrations[] = {
    {1, R"sql(
CREATE TABLE sites(
  site_id TEXT PRIMARY KEY, status TEXT NOT NULL, first_seen_ms INTEGER NOT NULL DEFAULT 0,
  last_seen_ms INTEGER NOT NULL DEFAULT 0, certificate_serial TEXT NOT NULL DEFAULT '',
  dataset BLOB, capabilities BLOB, state TEXT NOT NULL DEFAULT '', progress REAL NOT NULL DEFAULT 0,
  train_loss REAL NOT NULL DEFAULT 0, status_ms INTEGER NOT NULL DEFAULT 0);
CREATE TABLE runs(
  run_id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, name TEXT NOT NULL DEFAULT '', config TEXT NOT NULL,
  state TEXT NOT NULL, sites TEXT NOT NULL, base_model_digest TEXT NOT NULL, final_model_digest TEXT NOT NULL DEFAULT '',
  fedadam_state_path TEXT NOT NULL DEFAULT '', fedadam_rounds INTEGER NOT NULL DEFAULT 0,
  current_round INTEGER NOT NULL, started_ms INTEGER NOT NULL, finished_ms INTEGER NOT NULL DEFAULT 0,
  evaluation_deadline_ms INTEGER NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '');
CREATE TABLE rounds(
  run_id TEXT NOT NULL REFERENCES runs(run_id), round INTEGER NOT NULL, attempt INTEGER NOT NULL,
  state TEXT NOT NULL, model_digest TEXT NOT NULL, result_digest TEXT NOT NULL DEFAULT '',
  opened_ms INTEGER NOT NULL, deadline_ms INTEGER NOT NULL, closed_ms INTEGER NOT NULL DEFAULT 0,
  message TEXT NOT NULL DEFAULT '', PRIMARY KEY(run_id, round, attempt));
CREATE TABLE model_versions(
  digest TEXT PRIMARY KEY, parent_digest TEXT NOT NULL DEFAULT '', path TEXT NOT NULL,
  run_id TEXT NOT NULL DEFAULT '', round INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0,
  created_ms INTEGER NOT NULL);
CREATE TABLE updates(
  id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, round INTEGER NOT NULL, attempt INTEGER NOT NULL,
  site_id TEXT NOT NULL, sha256 TEXT NOT NULL, bytes INTEGER NOT NULL, num_samples INTEGER NOT NULL,
  l2_norm REAL NOT NULL DEFAULT 0, train_loss REAL NOT NULL DEFAULT 0, validation_loss REAL NOT NULL DEFAULT 0,
  status TEXT NOT NULL, message TEXT NOT NULL DEFAULT '', spool_path TEXT NOT NULL DEFAULT '',
  received_ms INTEGER NOT NULL);
CREATE UNIQUE INDEX updates_accepted ON updates(run_id, round, attempt, site_id) WHERE status = 'accepted';
CREATE TABLE metrics(
  id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, round INTEGER NOT NULL, site_id TEXT NOT NULL,
  kind TEXT NOT NULL, report BLOB NOT NULL, received_ms INTEGER NOT NULL);
CREATE TABLE transfers(
  run_id TEXT NOT NULL, site_id TEXT NOT NULL, bytes_down INTEGER NOT NULL DEFAULT 0,
  bytes_up INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(run_id, site_id));
CREATE TABLE audit_log(
  id INTEGER PRIMARY KEY AUTOINCREMENT, time_ms INTEGER NOT NULL, rpc TEXT NOT NULL, peer_cn TEXT NOT NULL,
  serial TEXT NOT NULL, peer_address TEXT NOT NULL, role TEXT NOT NULL, decision TEXT NOT NULL,
  code TEXT NOT NULL, message TEXT NOT NULL, run_id TEXT NOT NULL DEFAULT '', round INTEGER NOT NULL DEFAULT 0);
)sql"},
    {2, R"sql(
ALTER TABLE sites ADD COLUMN key_sha256 TEXT NOT NULL DEFAULT '';
ALTER TABLE sites ADD COLUMN key_pinned_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sites ADD COLUMN offered_key_sha256 TEXT NOT NULL DEFAULT '';
ALTER TABLE sites ADD COLUMN offered_serial TEXT NOT NULL DEFAULT '';
)sql"},
    // Cross-site evaluation (issue 13): the adapted models sites shared, and the run's cross-evaluation stage.
    {3, R"sql(
CREATE TABLE shared_models(
  run_id TEXT NOT NULL, site_id TEXT NOT NULL, digest TEXT NOT NULL, bytes INTEGER NOT NULL,
  received_ms INTEGER NOT NULL, PRIMARY KEY(run_id, site_id));
CREATE TABLE cross_evaluations(
  run_id TEXT PRIMARY KEY, started_ms INTEGER NOT NULL, deadline_ms INTEGER NOT NULL);
)sql"},
    // Failure reports from sites (issue 15): the latest kMaxFailuresPerSite per site (site_failures_store.cc).
    {4, R"sql(
CREATE TABLE site_failures(
  id INTEGER PRIMARY KEY AUTOINCREMENT, site_id TEXT NOT NULL, run_id TEXT NOT NULL DEFAULT '',
  report BLOB NOT NULL, received_ms INTEGER NOT NULL);
CREATE INDEX site_failures_by_site ON site_failures(site_id, id);
CREATE INDEX site_failures_by_run ON site_failures(run_id, site_id, id);
)sql"},
};

}  // namespace

absl::Span<const store::Migration> Migrations() { return kMigrations; }

absl::StatusOr<SiteRecord> ReadSite(const store::Statement& st) {
  SiteRecord s;
  s.site_id = st.ColumnText(0);
  ASSIGN_OR_RETURN(s.status, StateOf(federation::ParseSiteStatus(st.ColumnText(1)), "sites.status",
                                     absl::StrCat("site ", s.site_id)));
  s.first_seen_ms = st.ColumnInt(2);
  s.last_seen_ms = st.ColumnInt(3);
  s.certificate_serial = st.ColumnText(4);
  s.dataset.ParseFromString(st.ColumnText(5));
  s.capabilities.ParseFromString(st.ColumnText(6));
  s.state = st.ColumnText(7);
  s.progress = st.ColumnDouble(8);
  s.train_loss = st.ColumnDouble(9);
  s.key_sha256 = st.ColumnText(10);
  s.key_pinned_ms = st.ColumnInt(11);
  s.offered_key_sha256 = st.ColumnText(12);
  s.offered_serial = st.ColumnText(13);
  return s;
}

absl::StatusOr<RunRecord> ReadRun(const store::Statement& st) {
  RunRecord r;
  r.run_id = st.ColumnText(0);
  r.name = st.ColumnText(1);
  if (!google::protobuf::TextFormat::ParseFromString(st.ColumnText(2), &r.config)) {
    return absl::DataLossError(absl::StrCat("run ", r.run_id, ": stored config does not parse"));
  }
  ASSIGN_OR_RETURN(r.state,
                   StateOf(federation::ParseRunState(st.ColumnText(3)), "runs.state", absl::StrCat("run ", r.run_id)));
  for (absl::string_view s : absl::StrSplit(st.ColumnText(4), ',', absl::SkipEmpty())) r.sites.emplace_back(s);
  r.base_model_digest = st.ColumnText(5);
  r.final_model_digest = st.ColumnText(6);
  r.fedadam_state_path = st.ColumnText(7);
  r.fedadam_rounds = st.ColumnInt(8);
  r.current_round = static_cast<int>(st.ColumnInt(9));
  r.started_ms = st.ColumnInt(10);
  r.finished_ms = st.ColumnInt(11);
  r.evaluation_deadline_ms = st.ColumnInt(12);
  r.message = st.ColumnText(13);
  return r;
}

absl::StatusOr<RoundRecord> ReadRound(const store::Statement& st) {
  RoundRecord r;
  r.run_id = st.ColumnText(0);
  r.round = static_cast<int>(st.ColumnInt(1));
  r.attempt = static_cast<int>(st.ColumnInt(2));
  ASSIGN_OR_RETURN(r.state, StateOf(federation::ParseRoundState(st.ColumnText(3)), "rounds.state",
                                    absl::StrCat("run ", r.run_id, " round ", r.round, " attempt ", r.attempt)));
  r.model_digest = st.ColumnText(4);
  r.result_digest = st.ColumnText(5);
  r.opened_ms = st.ColumnInt(6);
  r.deadline_ms = st.ColumnInt(7);
  r.closed_ms = st.ColumnInt(8);
  r.message = st.ColumnText(9);
  return r;
}

ModelVersion ReadModel(const store::Statement& st) {
  ModelVersion m;
  m.digest = st.ColumnText(0);
  m.parent_digest = st.ColumnText(1);
  m.path = st.ColumnText(2);
  m.run_id = st.ColumnText(3);
  m.round = static_cast<int>(st.ColumnInt(4));
  m.bytes = st.ColumnInt(5);
  m.created_ms = st.ColumnInt(6);
  return m;
}

absl::StatusOr<UpdateRecord> ReadUpdate(const store::Statement& st) {
  UpdateRecord u;
  u.id = st.ColumnInt(0);
  u.run_id = st.ColumnText(1);
  u.round = static_cast<int>(st.ColumnInt(2));
  u.attempt = static_cast<int>(st.ColumnInt(3));
  u.site_id = st.ColumnText(4);
  u.sha256 = st.ColumnText(5);
  u.bytes = st.ColumnInt(6);
  u.num_samples = st.ColumnInt(7);
  u.l2_norm = st.ColumnDouble(8);
  u.train_loss = st.ColumnDouble(9);
  u.validation_loss = st.ColumnDouble(10);
  ASSIGN_OR_RETURN(u.status, StateOf(federation::ParseUploadStatus(st.ColumnText(11)), "updates.status",
                                     absl::StrCat("update ", u.id, " (site ", u.site_id, ", run ", u.run_id, ")")));
  u.message = st.ColumnText(12);
  u.spool_path = st.ColumnText(13);
  u.received_ms = st.ColumnInt(14);
  return u;
}

std::string ConfigText(const v1::RunConfig& config) {
  std::string text;
  google::protobuf::TextFormat::PrintToString(config, &text);
  return text;
}

}  // namespace fedtune::coordinator::schema
