// StateStore's cross-site evaluation tables (migration 3, see state_store.h): shared adapted models and the runs'
// cross-evaluation stage.
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "coordinator/state_schema.h"
#include "coordinator/state_store.h"

namespace fedtune::coordinator {

absl::Status StateStore::InsertSharedModel(const SharedModelRecord& shared, const ModelVersion& m) {
  absl::MutexLock lock(&mu_);
  return db_->InTransaction([&]() -> absl::Status {
    ASSIGN_OR_RETURN(store::Statement held,
                     db_->Prepare("SELECT digest FROM shared_models WHERE run_id = ? AND site_id = ?"));
    held.Bind(1, shared.run_id).Bind(2, shared.site_id);
    ASSIGN_OR_RETURN(bool row, held.Step());
    if (row) {
      const std::string digest = held.ColumnText(0);
      if (digest == shared.digest) return absl::OkStatus();
      return absl::AlreadyExistsError(absl::StrCat("site ", shared.site_id, " already shared its adapted model ",
                                                   digest, " for run ", shared.run_id));
    }
    ASSIGN_OR_RETURN(store::Statement version,
                     db_->Prepare(absl::StrCat("INSERT OR IGNORE INTO model_versions(", schema::kModelColumns,
                                               ") VALUES(?,?,?,?,?,?,?)")));
    version.Bind(1, m.digest).Bind(2, m.parent_digest).Bind(3, m.path).Bind(4, m.run_id);
    version.Bind(5, static_cast<int64_t>(m.round)).Bind(6, m.bytes).Bind(7, m.created_ms);
    RETURN_IF_ERROR(version.Run());
    ASSIGN_OR_RETURN(store::Statement st, db_->Prepare("INSERT INTO shared_models(run_id, site_id, digest, bytes, "
                                                       "received_ms) VALUES(?,?,?,?,?)"));
    st.Bind(1, shared.run_id).Bind(2, shared.site_id).Bind(3, shared.digest).Bind(4, shared.bytes);
    st.Bind(5, shared.received_ms);
    return st.Run();
  });
}

absl::StatusOr<std::vector<SharedModelRecord>> StateStore::ListSharedModels(const std::string& run_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(store::Statement st, db_->Prepare("SELECT run_id, site_id, digest, bytes, received_ms FROM "
                                                     "shared_models WHERE run_id = ? ORDER BY site_id"));
  st.Bind(1, run_id);
  std::vector<SharedModelRecord> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    SharedModelRecord r;
    r.run_id = st.ColumnText(0);
    r.site_id = st.ColumnText(1);
    r.digest = st.ColumnText(2);
    r.bytes = st.ColumnInt(3);
    r.received_ms = st.ColumnInt(4);
    out.push_back(std::move(r));
  }
  return out;
}

absl::Status StateStore::StartCrossEvaluation(const CrossEvaluationRecord& record) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(store::Statement st, db_->Prepare("INSERT OR IGNORE INTO cross_evaluations(run_id, started_ms, "
                                                     "deadline_ms) VALUES(?,?,?)"));
  st.Bind(1, record.run_id).Bind(2, record.started_ms).Bind(3, record.deadline_ms);
  return st.Run();
}

absl::StatusOr<std::optional<CrossEvaluationRecord>> StateStore::GetCrossEvaluation(const std::string& run_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(store::Statement st,
                   db_->Prepare("SELECT run_id, started_ms, deadline_ms FROM cross_evaluations WHERE run_id = ?"));
  st.Bind(1, run_id);
  ASSIGN_OR_RETURN(bool row, st.Step());
  if (!row) return std::optional<CrossEvaluationRecord>();
  CrossEvaluationRecord r;
  r.run_id = st.ColumnText(0);
  r.started_ms = st.ColumnInt(1);
  r.deadline_ms = st.ColumnInt(2);
  return std::optional<CrossEvaluationRecord>(std::move(r));
}

}  // namespace fedtune::coordinator
