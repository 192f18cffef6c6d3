#include "coordinator/state_store.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "coordinator/state_schema.h"

namespace fedtune::coordinator {

using schema::ConfigText;
using schema::kModelColumns;
using schema::kRoundColumns;
using schema::kRunColumns;
using schema::kSiteColumns;
using schema::kUpdateColumns;
using schema::ReadModel;
using schema::ReadRound;
using schema::ReadRun;
using schema::ReadSite;
using schema::ReadUpdate;

absl::StatusOr<std::unique_ptr<StateStore>> StateStore::Open(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<store::Database> db, store::Database::Open(path, schema::Migrations()));
  return std::unique_ptr<StateStore>(new StateStore(std::move(db)));
}

// ---- Sites

absl::StatusOr<std::optional<SiteRecord>> StateStore::GetSiteLocked(const std::string& site_id) {
  ASSIGN_OR_RETURN(store::Statement st,
                   db_->Prepare(absl::StrCat("SELECT ", kSiteColumns, " FROM sites WHERE site_id = ?")));
  st.Bind(1, site_id);
  ASSIGN_OR_RETURN(bool row, st.Step());
  if (!row) return std::optional<SiteRecord>();
  ASSIGN_OR_RETURN(SiteRecord site, ReadSite(st));
  return std::optional<SiteRecord>(std::move(site));
}

absl::StatusOr<std::optional<SiteRecord>> StateStore::SiteForUpdateLocked(const std::string& site_id, bool create) {
  ASSIGN_OR_RETURN(std::optional<SiteRecord> site, GetSiteLocked(site_id));
  if (!site && !create) return absl::NotFoundError(absl::StrCat("unknown site '", site_id, "'"));
  return site;
}

absl::StatusOr<std::optional<SiteRecord>> StateStore::GetSite(const std::string& site_id) {
  absl::MutexLock lock(&mu_);
  return GetSiteLocked(site_id);
}

absl::StatusOr<std::vector<SiteRecord>> StateStore::ListSites() {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(store::Statement st,
                   db_->Prepare(absl::StrCat("SELECT ", kSiteColumns, " FROM sites ORDER BY site_id")));
  std::vector<SiteRecord> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    ASSIGN_OR_RETURN(SiteRecord site, ReadSite(st));
    out.push_back(std::move(site));
  }
  return out;
}

absl::StatusOr<SiteRecord> StateStore::RecordHello(const std::string& site_id, const std::string& serial,
                                                   const v1::DatasetSummary& dataset,
                                                   const v1::Capabilities& capabilities,
                                                   federation::SiteStatus new_status, int64_t now_ms) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(db_->InTransaction([&]() -> absl::Status {
    ASSIGN_OR_RETURN(store::Statement ins, db_->Prepare("INSERT OR IGNORE INTO sites(site_id, status, first_seen_ms, "
                                                        "status_ms) VALUES(?, ?, ?, ?)"));
    ins.Bind(1, site_id).Bind(2, federation::Text(new_status)).Bind(3, now_ms).Bind(4, now_ms);
    RETURN_IF_ERROR(ins.Run());
    ASSIGN_OR_RETURN(store::Statement up,
                     db_->Prepare("UPDATE sites SET last_seen_ms = ?, certificate_serial = ?, dataset = ?, "
                                  "capabilities = ? WHERE site_id = ?"));
    up.Bind(1, now_ms).Bind(2, serial).BindBlob(3, dataset.SerializeAsString());
    up.BindBlob(4, capabilities.SerializeAsString()).Bind(5, site_id);
    return up.Run();
  }));
  ASSIGN_OR_RETURN(std::optional<SiteRecord> site, GetSiteLocked(site_id));
  if (!site) return absl::InternalError(absl::StrCat("site ", site_id, " vanished after hello"));
  return *site;
}

absl::StatusOr<SiteRecord> StateStore::SetSiteStatus(const std::string& site_id, federation::SiteStatus status,
                                                     bool create, int64_t now_ms) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(db_->InTransaction([&]() -> absl::Status {
    ASSIGN_OR_RETURN(std::optional<SiteRecord> site, SiteForUpdateLocked(site_id, create));
    if (!site) {
      ASSIGN_OR_RETURN(store::Statement ins,
                       db_->Prepare("INSERT INTO sites(site_id, status, status_ms) VALUES(?, ?, ?)"));
      ins.Bind(1, site_id).Bind(2, federation::Text(status)).Bind(3, now_ms);
      return ins.Run();
    }
    ASSIGN_OR_RETURN(store::Statement up, db_->Prepare("UPDATE sites SET status = ?, status_ms = ? WHERE site_id = ?"));
    up.Bind(1, federation::Text(status)).Bind(2, now_ms).Bind(3, site_id);
    return up.Run();
  }));
  ASSIGN_OR_RETURN(std::optional<SiteRecord> site, GetSiteLocked(site_id));
  if (!site) return absl::InternalError(absl::StrCat("site ", site_id, " vanished"));
  return *site;
}

absl::Status StateStore::TouchSite(const std::string& site_id, int64_t now_ms) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(store::Statement st, db_->Prepare("UPDATE sites SET last_seen_ms = ? WHERE site_id = ?"));
  st.Bind(1, now_ms).Bind(2, site_id);
  return st.Run();
}

absl::Status StateStore::SetSiteState(const std::string& site_id, const std::string& state, double progress,
                                      double train_loss, int64_t now_ms) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(store::Statement st,
                   db_->Prepare("UPDATE sites SET state = ?, progress = ?, train_loss = ?, last_seen_ms = ? "
                                "WHERE site_id = ?"));
  st.Bind(1, state).Bind(2, progress).Bind(3, train_loss).Bind(4, now_ms).Bind(5, site_id);
  return st.Run();
}

absl::StatusOr<SiteRecord> StateStore::PinSiteKey(const std::string& site_id, const std::string& key_sha256,
                                                  const std::string& serial, bool create, int64_t now_ms) {
  if (key_sha256.empty()) return absl::InvalidArgumentError(absl::StrCat("site ", site_id, ": empty key to pin"));
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(db_->InTransaction([&]() -> absl::Status {
    ASSIGN_OR_RETURN(std::optional<SiteRecord> site, SiteForUpdateLocked(site_id, create));
    if (!site) {
      ASSIGN_OR_RETURN(store::Statement ins,
                       db_->Prepare("INSERT INTO sites(site_id, status, first_seen_ms, status_ms, key_sha256, "
                                    "key_pinned_ms) VALUES(?, ?, ?, ?, ?, ?)"));
      ins.Bind(1, site_id).Bind(2, federation::Text(federation::SiteStatus::kPending)).Bind(3, now_ms).Bind(4, now_ms);
      ins.Bind(5, key_sha256).Bind(6, now_ms);
      return ins.Run();
    }
    if (site->key_sha256.empty()) {
      ASSIGN_OR_RETURN(store::Statement up,
                       db_->Prepare("UPDATE sites SET key_sha256 = ?, key_pinned_ms = ? WHERE site_id = ?"));
      up.Bind(1, key_sha256).Bind(2, now_ms).Bind(3, site_id);
      return up.Run();
    }
    if (site->key_sha256 == key_sha256 || (site->offered_key_sha256 == key_sha256 && site->offered_serial == serial)) {
      return absl::OkStatus();
    }
    ASSIGN_OR_RETURN(store::Statement offer,
                     db_->Prepare("UPDATE sites SET offered_key_sha256 = ?, offered_serial = ? WHERE site_id = ?"));
    offer.Bind(1, key_sha256).Bind(2, serial).Bind(3, site_id);
    return offer.Run();
  }));
  ASSIGN_OR_RETURN(std::optional<SiteRecord> site, GetSiteLocked(site_id));
  if (!site) return absl::InternalError(absl::StrCat("site ", site_id, " vanished while pinning its key"));
  return *site;
}

absl::StatusOr<SiteRecord> StateStore::ReplaceSiteKey(const std::string& site_id,
                                                      const std::string& expected_key_prefix, int64_t now_ms) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(db_->InTransaction([&]() -> absl::Status {
    ASSIGN_OR_RETURN(std::optional<SiteRecord> site, SiteForUpdateLocked(site_id, /*create=*/false));
    if (site->offered_key_sha256.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "site ", site_id, " has offered no other key: its pinned key is ",
          site->key_sha256.empty() ? "not set yet (the first call pins it)" : absl::StrCat("sha256 ", site->key_sha256),
          "; the site must first call with its new certificate (it is refused and its key recorded), then accept "
          "it with --replace-key"));
    }
    if (!expected_key_prefix.empty() && site->offered_key_sha256.rfind(expected_key_prefix, 0) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("site ", site_id, " offered key sha256 ", site->offered_key_sha256, " (certificate serial ",
                       site->offered_serial, "), not the expected ", expected_key_prefix, "; nothing changed"));
    }
    ASSIGN_OR_RETURN(store::Statement up,
                     db_->Prepare("UPDATE sites SET key_sha256 = offered_key_sha256, key_pinned_ms = ?, "
                                  "offered_key_sha256 = '', offered_serial = '', status = ?, status_ms = ? "
                                  "WHERE site_id = ?"));
    up.Bind(1, now_ms).Bind(2, federation::Text(federation::SiteStatus::kApproved)).Bind(3, now_ms).Bind(4, site_id);
    return up.Run();
  }));
  ASSIGN_OR_RETURN(std::optional<SiteRecord> site, GetSiteLocked(site_id));
  if (!site) return absl::InternalError(absl::StrCat("site ", site_id, " vanished while replacing its key"));
  return *site;
}

// ---- Runs and rounds

absl::StatusOr<std::string> StateStore::NextRunId() {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(store::Statement st, db_->Prepare("SELECT COALESCE(MAX(seq), 0) FROM runs"));
  ASSIGN_OR_RETURN(bool row, st.Step());
  const int64_t seq = row ? st.ColumnInt(0) + 1 : 1;
  return absl::StrFormat("run-%04d", seq);
}

absl::Status StateStore::WriteRunLocked(const RunRecord& r, bool insert) {
  std::string sql =
      insert ? absl::StrCat("INSERT INTO runs(", kRunColumns,
                            ", seq) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM runs))")
             : "UPDATE runs SET run_id = ?1, name = ?2, config = ?3, state = ?4, sites = ?5, base_model_digest = ?6, "
               "final_model_digest = ?7, fedadam_state_path = ?8, fedadam_rounds = ?9, current_round = ?10, "
               "started_ms = ?11, finished_ms = ?12, evaluation_deadline_ms = ?13, message = ?14 WHERE run_id = ?1";
  ASSIGN_OR_RETURN(store::Statement st, db_->Prepare(sql));
  st.Bind(1, r.run_id).Bind(2, r.name).Bind(3, ConfigText(r.config)).Bind(4, federation::Text(r.state));
  st.Bind(5, absl::StrJoin(r.sites, ",")).Bind(6, r.base_model_digest).Bind(7, r.final_model_digest);
  st.Bind(8, r.fedadam_state_path).Bind(9, r.fedadam_rounds).Bind(10, static_cast<int64_t>(r.current_round));
  st.Bind(11, r.started_ms).Bind(12, r.finished_ms).Bind(13, r.evaluation_deadline_ms).Bind(14, r.message);
  return st.Run();
}

absl::Status StateStore::InsertRoundLocked(const RoundRecord& r) {
  ASSIGN_OR_RETURN(store::Statement st,
                   db_->Prepare(absl::StrCat("INSERT INTO rounds(", kRoundColumns, ") VALUES(?,?,?,?,?,?,?,?,?,?)")));
  st.Bind(1, r.run_id).Bind(2, static_cast<int64_t>(r.round)).Bind(3, static_cast<int64_t>(r.attempt));
  st.Bind(4, federation::Text(r.state))
      .Bind(5, r.model_digest)
      .Bind(6, r.result_digest)
      .Bind(7, r.opened_ms)
      .Bind(8, r.deadline_ms);
  st.Bind(9, r.closed_ms).Bind(10, r.message);
  return st.Run();
}

absl::Status StateStore::CreateRun(const RunRecord& run, const RoundRecord& first_round) {
  absl::MutexLock lock(&mu_);
  return db_->InTransaction([&]() -> absl::Status {
    RETURN_IF_ERROR(WriteRunLocked(run, /*insert=*/true));
    return InsertRoundLocked(first_round);
  });
}

absl::Status StateStore::ApplyTransition(const RunTransition& t) {
  absl::MutexLock lock(&mu_);
  return db_->InTransaction([&]() -> absl::Status {
    RETURN_IF_ERROR(WriteRunLocked(t.run, /*insert=*/false));
    if (t.finish_round) {
      const RoundRecord& r = *t.finish_round;
      ASSIGN_OR_RETURN(store::Statement st,
                       db_->Prepare("UPDATE rounds SET state = ?, result_digest = ?, closed_ms = ?, message = ? "
                                    "WHERE run_id = ? AND round = ? AND attempt = ?"));
      st.Bind(1, federation::Text(r.state))
          .Bind(2, r.result_digest)
          .Bind(3, r.closed_ms)
          .Bind(4, r.message)
          .Bind(5, r.run_id);
      st.Bind(6, static_cast<int64_t>(r.round)).Bind(7, static_cast<int64_t>(r.attempt));
      RETURN_IF_ERROR(st.Run());
    }
    if (t.new_model) {
      const ModelVersion& m = *t.new_model;
      ASSIGN_OR_RETURN(store::Statement st, db_->Prepare(absl::StrCat("INSERT OR IGNORE INTO model_versions(",
                                                                      kModelColumns, ") VALUES(?,?,?,?,?,?,?)")));
      st.Bind(1, m.digest).Bind(2, m.parent_digest).Bind(3, m.path).Bind(4, m.run_id);
      st.Bind(5, static_cast<int64_t>(m.round)).Bind(6, m.bytes).Bind(7, m.created_ms);
      RETURN_IF_ERROR(st.Run());
    }
    if (t.open_round) RETURN_IF_ERROR(InsertRoundLocked(*t.open_round));
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<RunRecord>> StateStore::QueryRunsLocked(const std::string& where_order,
                                                                   const std::string& arg) {
  ASSIGN_OR_RETURN(store::Statement st, db_->Prepare(absl::StrCat("SELECT ", kRunColumns, " FROM runs ", where_order)));
  if (!arg.empty()) st.Bind(1, arg);
  std::vector<RunRecord> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    ASSIGN_OR_RETURN(RunRecord run, ReadRun(st));
    out.push_back(std::move(run));
  }
  return out;
}

absl::StatusOr<RunRecord> StateStore::GetRun(const std::string& run_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(std::vector<RunRecord> runs, QueryRunsLocked("WHERE run_id = ?", run_id));
  if (runs.empty()) return absl::NotFoundError(absl::StrCat("unknown run '", run_id, "'"));
  return runs.front();
}

absl::StatusOr<RunRecord> StateStore::LatestRun() {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(std::vector<RunRecord> runs, QueryRunsLocked("ORDER BY seq DESC LIMIT 1", ""));
  if (runs.empty()) return absl::NotFoundError("no run has been started yet");
  return runs.front();
}

absl::StatusOr<std::vector<RunRecord>> StateStore::RecentRuns(int limit) {
  absl::MutexLock lock(&mu_);
  return QueryRunsLocked(absl::StrCat("ORDER BY seq DESC LIMIT ", limit), "");
}

absl::StatusOr<std::optional<RunRecord>> StateStore::ActiveRun() {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(
      std::vector<RunRecord> runs,
      QueryRunsLocked(absl::StrCat("WHERE state IN ('", federation::Text(federation::RunState::kRunning), "', '",
                                   federation::Text(federation::RunState::kEvaluating), "') ORDER BY seq DESC LIMIT 1"),
                      ""));
  if (runs.empty()) return std::optional<RunRecord>();
  return std::optional<RunRecord>(runs.front());
}

absl::StatusOr<std::map<federation::RunState, int64_t>> StateStore::CountRunsByState() {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(store::Statement st, db_->Prepare("SELECT state, COUNT(*) FROM runs GROUP BY state"));
  std::map<federation::RunState, int64_t> counts;
  while (true) {
    ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    const std::string text = st.ColumnText(0);
    absl::StatusOr<federation::RunState> state = federation::ParseRunState(text);
    if (!state.ok()) return absl::DataLossError(absl::StrCat("runs: state '", text, "' names no run state"));
    counts[*state] += st.ColumnInt(1);
  }
  return counts;
}

absl::StatusOr<std::vector<RoundRecord>> StateStore::ListRounds(const std::string& run_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(
      store::Statement st,
      db_->Prepare(absl::StrCat("SELECT ", kRoundColumns, " FROM rounds WHERE run_id = ? ORDER BY round, attempt")));
  st.Bind(1, run_id);
  std::vector<RoundRecord> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    ASSIGN_OR_RETURN(RoundRecord round, ReadRound(st));
    out.push_back(std::move(round));
  }
  return out;
}

absl::StatusOr<std::vector<RunRecord>> StateStore::RunsUsingModel(const std::string& digest) {
  absl::MutexLock lock(&mu_);
  return QueryRunsLocked(
      "WHERE base_model_digest = ?1 OR run_id IN (SELECT run_id FROM model_versions WHERE digest = ?1 AND "
      "run_id != '') ORDER BY seq",
      digest);
}

// ---- Model versions

absl::Status StateStore::PutModelVersion(const ModelVersion& m) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(store::Statement st, db_->Prepare(absl::StrCat("INSERT OR IGNORE INTO model_versions(",
                                                                  kModelColumns, ") VALUES(?,?,?,?,?,?,?)")));
  st.Bind(1, m.digest).Bind(2, m.parent_digest).Bind(3, m.path).Bind(4, m.run_id);
  st.Bind(5, static_cast<int64_t>(m.round)).Bind(6, m.bytes).Bind(7, m.created_ms);
  return st.Run();
}

absl::StatusOr<std::vector<ModelVersion>> StateStore::QueryModelsLocked(const std::string& where_order,
                                                                        const std::string& arg) {
  ASSIGN_OR_RETURN(store::Statement st,
                   db_->Prepare(absl::StrCat("SELECT ", kModelColumns, " FROM model_versions ", where_order)));
  if (!arg.empty()) st.Bind(1, arg);
  std::vector<ModelVersion> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    out.push_back(ReadModel(st));
  }
  return out;
}

absl::StatusOr<std::optional<ModelVersion>> StateStore::GetModelVersion(const std::string& digest) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(std::vector<ModelVersion> models, QueryModelsLocked("WHERE digest = ?", digest));
  if (models.empty()) return std::optional<ModelVersion>();
  return std::optional<ModelVersion>(models.front());
}

absl::StatusOr<std::optional<ModelVersion>> StateStore::LatestModelVersion() {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(
      std::vector<ModelVersion> models,
      QueryModelsLocked("WHERE digest NOT IN (SELECT digest FROM shared_models) ORDER BY rowid DESC LIMIT 1", ""));
  if (models.empty()) return std::optional<ModelVersion>();
  return std::optional<ModelVersion>(models.front());
}

absl::StatusOr<std::vector<ModelVersion>> StateStore::FindModelVersions(const std::string& prefix) {
  absl::MutexLock lock(&mu_);
  // substr instead of LIKE: digests are hex, but a prefix typed by an operator must not act as a pattern.
  return QueryModelsLocked("WHERE substr(digest, 1, length(?1)) = ?1 ORDER BY rowid", prefix);
}

// ---- Updates

absl::StatusOr<int64_t> StateStore::InsertUpdate(const UpdateRecord& u) {
  absl::MutexLock lock(&mu_);
  int64_t id = 0;
  RETURN_IF_ERROR(db_->InTransaction([&]() -> absl::Status {
    if (u.status == federation::UploadStatus::kAccepted) {
      ASSIGN_OR_RETURN(store::Statement q,
                       db_->Prepare("SELECT sha256 FROM updates WHERE run_id = ? AND round = ? AND attempt = ? AND "
                                    "site_id = ? AND status = ?"));
      q.Bind(1, u.run_id).Bind(2, static_cast<int64_t>(u.round)).Bind(3, static_cast<int64_t>(u.attempt));
      q.Bind(4, u.site_id).Bind(5, federation::Text(u.status));
      ASSIGN_OR_RETURN(bool row, q.Step());
      if (row) {
        return absl::AlreadyExistsError(absl::StrCat("site ", u.site_id, " already has an accepted update (sha256 ",
                                                     q.ColumnText(0), ") for run ", u.run_id, " round ", u.round,
                                                     " attempt ", u.attempt));
      }
    }
    ASSIGN_OR_RETURN(store::Statement st,
                     db_->Prepare("INSERT INTO updates(run_id, round, attempt, site_id, sha256, bytes, num_samples, "
                                  "l2_norm, train_loss, validation_loss, status, message, spool_path, received_ms) "
                                  "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)"));
    st.Bind(1, u.run_id).Bind(2, static_cast<int64_t>(u.round)).Bind(3, static_cast<int64_t>(u.attempt));
    st.Bind(4, u.site_id).Bind(5, u.sha256).Bind(6, u.bytes).Bind(7, u.num_samples).Bind(8, u.l2_norm);
    st.Bind(9, u.train_loss).Bind(10, u.validation_loss).Bind(11, federation::Text(u.status)).Bind(12, u.message);
    st.Bind(13, u.spool_path).Bind(14, u.received_ms);
    RETURN_IF_ERROR(st.Run());
    id = db_->LastInsertRowId();
    return absl::OkStatus();
  }));
  return id;
}

absl::StatusOr<std::vector<UpdateRecord>> StateStore::ListUpdates(const std::string& run_id, std::optional<int> round,
                                                                  std::optional<int> attempt,
                                                                  const std::string& site_id,
                                                                  std::optional<federation::UploadStatus> status) {
  absl::MutexLock lock(&mu_);
  // A filter left out is NULL, never a sentinel value: a round a peer sends must not become "every round".
  ASSIGN_OR_RETURN(store::Statement st,
                   db_->Prepare(absl::StrCat("SELECT ", kUpdateColumns,
                                             " FROM updates WHERE run_id = ?1 AND (?2 IS NULL OR round = ?2) AND "
                                             "(?3 IS NULL OR attempt = ?3) AND (?4 = '' OR site_id = ?4) AND "
                                             "(?5 IS NULL OR status = ?5) ORDER BY id")));
  st.Bind(1, run_id);
  if (round) {
    st.Bind(2, static_cast<int64_t>(*round));
  } else {
    st.BindNull(2);
  }
  if (attempt) {
    st.Bind(3, static_cast<int64_t>(*attempt));
  } else {
    st.BindNull(3);
  }
  st.Bind(4, site_id);
  if (status) {
    st.Bind(5, federation::Text(*status));
  } else {
    st.BindNull(5);
  }
  std::vector<UpdateRecord> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    ASSIGN_OR_RETURN(UpdateRecord update, ReadUpdate(st));
    out.push_back(std::move(update));
  }
  return out;
}

// ---- Metrics

absl::Status StateStore::InsertMetrics(const MetricsRecord& m) {
  absl::MutexLock lock(&mu_);
  // One report per (run, round, site, kind): a site that re-sends a report (e.g. after a restart) replaces it.
  return db_->InTransaction([&]() -> absl::Status {
    ASSIGN_OR_RETURN(store::Statement del,
                     db_->Prepare("DELETE FROM metrics WHERE run_id = ? AND round = ? AND site_id = ? AND kind = ?"));
    del.Bind(1, m.run_id).Bind(2, static_cast<int64_t>(m.round)).Bind(3, m.site_id).Bind(4, m.kind);
    RETURN_IF_ERROR(del.Run());
    ASSIGN_OR_RETURN(store::Statement st,
                     db_->Prepare("INSERT INTO metrics(run_id, round, site_id, kind, report, received_ms) "
                                  "VALUES(?,?,?,?,?,?)"));
    st.Bind(1, m.run_id).Bind(2, static_cast<int64_t>(m.round)).Bind(3, m.site_id).Bind(4, m.kind);
    st.BindBlob(5, m.report.SerializeAsString()).Bind(6, m.received_ms);
    return st.Run();
  });
}

absl::StatusOr<std::vector<MetricsRecord>> StateStore::ListMetrics(const std::string& run_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(store::Statement st,
                   db_->Prepare("SELECT run_id, round, site_id, kind, report, received_ms FROM metrics WHERE "
                                "run_id = ? ORDER BY site_id, "
                                "CASE kind WHEN 'round' THEN 0 WHEN 'final' THEN 1 ELSE 2 END, round, id"));
  st.Bind(1, run_id);
  std::vector<MetricsRecord> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    MetricsRecord m;
    m.run_id = st.ColumnText(0);
    m.round = static_cast<int>(st.ColumnInt(1));
    m.site_id = st.ColumnText(2);
    m.kind = st.ColumnText(3);
    if (!m.report.ParseFromString(st.ColumnText(4))) {
      return absl::DataLossError(absl::StrCat("metrics of site ", m.site_id, " run ", run_id, " do not parse"));
    }
    m.received_ms = st.ColumnInt(5);
    out.push_back(std::move(m));
  }
  return out;
}

// ---- Transfers

absl::Status StateStore::AddTransfer(const std::string& run_id, const std::string& site_id, int64_t bytes_down,
                                     int64_t bytes_up) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(store::Statement st,
                   db_->Prepare("INSERT INTO transfers(run_id, site_id, bytes_down, bytes_up) VALUES(?1, ?2, ?3, ?4) "
                                "ON CONFLICT(run_id, site_id) DO UPDATE SET bytes_down = bytes_down + ?3, "
                                "bytes_up = bytes_up + ?4"));
  st.Bind(1, run_id).Bind(2, site_id).Bind(3, bytes_down).Bind(4, bytes_up);
  return st.Run();
}

absl::StatusOr<std::map<std::string, std::pair<int64_t, int64_t>>> StateStore::GetTransfers(const std::string& run_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(store::Statement st,
                   db_->Prepare("SELECT site_id, bytes_down, bytes_up FROM transfers WHERE run_id = ?"));
  st.Bind(1, run_id);
  std::map<std::string, std::pair<int64_t, int64_t>> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    out[st.ColumnText(0)] = {st.ColumnInt(1), st.ColumnInt(2)};
  }
  return out;
}

absl::StatusOr<std::map<std::string, std::pair<int64_t, int64_t>>> StateStore::GetRunTransferTotals(
    const std::vector<std::string>& run_ids) {
  constexpr size_t kBatch = 500;  // Below SQLite's oldest limit of 999 bound parameters.
  absl::MutexLock lock(&mu_);
  std::map<std::string, std::pair<int64_t, int64_t>> out;
  for (size_t begin = 0; begin < run_ids.size(); begin += kBatch) {
    const size_t end = std::min(run_ids.size(), begin + kBatch);
    std::string marks;
    for (size_t i = begin; i < end; ++i) absl::StrAppend(&marks, i == begin ? "?" : ",?");
    ASSIGN_OR_RETURN(store::Statement st,
                     db_->Prepare(absl::StrCat("SELECT run_id, SUM(bytes_down), SUM(bytes_up) FROM transfers WHERE "
                                               "run_id IN (",
                                               marks, ") GROUP BY run_id")));
    for (size_t i = begin; i < end; ++i) st.Bind(static_cast<int>(i - begin + 1), run_ids[i]);
    while (true) {
      ASSIGN_OR_RETURN(bool row, st.Step());
      if (!row) break;
      out[st.ColumnText(0)] = {st.ColumnInt(1), st.ColumnInt(2)};
    }
  }
  return out;
}

// ---- Audit

absl::Status StateStore::InsertAudit(const AuditRecord& a) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(store::Statement st,
                   db_->Prepare("INSERT INTO audit_log(time_ms, rpc, peer_cn, serial, peer_address, role, decision, "
                                "code, message, run_id, round) VALUES(?,?,?,?,?,?,?,?,?,?,?)"));
  st.Bind(1, a.time_ms).Bind(2, a.rpc).Bind(3, a.peer_cn).Bind(4, a.serial).Bind(5, a.peer_address);
  st.Bind(6, a.role).Bind(7, a.decision).Bind(8, a.code).Bind(9, a.message).Bind(10, a.run_id);
  st.Bind(11, static_cast<int64_t>(a.round));
  return st.Run();
}

absl::StatusOr<std::vector<AuditRecord>> StateStore::ListAudit() {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(store::Statement st,
                   db_->Prepare("SELECT time_ms, rpc, peer_cn, serial, peer_address, role, decision, code, message, "
                                "run_id, round FROM audit_log ORDER BY id"));
  std::vector<AuditRecord> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    AuditRecord a;
    a.time_ms = st.ColumnInt(0);
    a.rpc = st.ColumnText(1);
    a.peer_cn = st.ColumnText(2);
    a.serial = st.ColumnText(3);
    a.peer_address = st.ColumnText(4);
    a.role = st.ColumnText(5);
    a.decision = st.ColumnText(6);
    a.code = st.ColumnText(7);
    a.message = st.ColumnText(8);
    a.run_id = st.ColumnText(9);
    a.round = static_cast<int>(st.ColumnInt(10));
    out.push_back(std::move(a));
  }
  return out;
}

}  // namespace fedtune::coordinator
