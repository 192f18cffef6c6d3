// The coordinator's durable state: one SQLite file, <state_dir>/coordinator.db (WAL, numbered migrations, see
// common/store/database.h). Every state change that matters is ONE method here and ONE transaction, so a
// coordinator killed at any moment restarts from a consistent database.
//
// Schema (migration 1; the SQL and the row mapping are in state_schema.h):
// The state columns (sites.status, runs.state, rounds.state, updates.status) hold the text forms of
// common/federation/states.h; a value that names no state is read as DataLoss naming the table, row and column.
//   sites(site_id PK, status 'pending'|'approved'|'revoked', first_seen_ms, last_seen_ms, certificate_serial,
//         dataset BLOB (serialized v1.DatasetSummary), capabilities BLOB (serialized v1.Capabilities),
//         state (last heartbeat's free text), progress, train_loss, status_ms)
//   runs(run_id PK, seq UNIQUE, name, config (v1.RunConfig text proto), state 'running'|'evaluating'|'completed'|
//        'failed'|'aborted', sites (selected site ids, comma separated), base_model_digest, final_model_digest,
//        fedadam_state_path (file under <state_dir>/fedadam/ holding the FedAdam m/v bundle after a round, or ''),
//        fedadam_rounds, current_round, started_ms, finished_ms, evaluation_deadline_ms, message)
//   rounds(run_id, round, attempt, state 'open'|'closed'|'failed'|'aborted', model_digest (sent out),
//          result_digest (aggregated global), opened_ms, deadline_ms, closed_ms, message; PK(run_id, round, attempt))
//   model_versions(digest PK = SHA-256 of the checkpoint file, parent_digest ('' for an import), path (blob),
//                  run_id, round, bytes, created_ms); rowid order is creation order.
//   updates(id PK, run_id, round, attempt, site_id, sha256, bytes, num_samples, l2_norm, train_loss,
//           validation_loss, status 'accepted'|'refused'|'declined', message, spool_path, received_ms); a 'declined'
//           row (RoundManager::DeclineTask) has no payload: sha256 '', message = the reason and the site's privacy.
//           UNIQUE (run_id, round, attempt, site_id) WHERE status = 'accepted'.
//   metrics(id PK, run_id, round, site_id, kind 'round'|'final'|'cross_site', report BLOB (serialized
//           v1.MetricsReport),
//           received_ms)
//   transfers(run_id, site_id, bytes_down, bytes_up; PK(run_id, site_id)); run_id '' for transfers outside a run.
//   audit_log(id PK, time_ms, rpc, peer_cn, serial, peer_address, role, decision 'allow'|'deny', code (gRPC code
//             name), message, run_id, round); for a refused certificate, peer_cn and serial are what the
//             certificate claims (unverified; '' when there was none or it did not parse).
// Migration 2 (key pinning) adds to sites: key_sha256 (the pinned key: SHA-256 of the certificate's
//   SubjectPublicKeyInfo, '' = not pinned yet), key_pinned_ms, offered_key_sha256 and offered_serial (another key the
//   site presented and was refused for, '' = none).
// Migration 3 (cross-site evaluation; methods in shared_models_store.cc):
//   shared_models(run_id, site_id, digest (a model version: the site's adapted model), bytes, received_ms;
//                 PK(run_id, site_id)): at most one shared adapted model per site and run.
//   cross_evaluations(run_id PK, started_ms, deadline_ms): the run entered its cross-evaluation stage
//                     (round_manager.h); metrics of kind 'cross_site' are its reports.
// Migration 4 (failure reports from sites, issue 15; methods in site_failures_store.cc):
//   site_failures(id PK AUTOINCREMENT (arrival order), site_id (the reporting site's certificate CN), run_id (the
//                 report's, '' when not tied to a run), report BLOB (serialized v1.FailureReport), received_ms);
//                 the latest kMaxFailuresPerSite rows of each site are kept, older ones deleted as new ones arrive.
//
// Thread safety: thread-safe; every method holds an internal mutex for its whole transaction.
#ifndef FEDTUNE_COORDINATOR_STATE_STORE_H_
#define FEDTUNE_COORDINATOR_STATE_STORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/federation/states.h"
#include "common/store/database.h"
#include "fedtune/v1/federation.pb.h"
#include "fedtune/v1/federation_config.pb.h"

namespace fedtune::coordinator {

struct SiteRecord {
  std::string site_id;
  federation::SiteStatus status = federation::SiteStatus::kPending;
  int64_t first_seen_ms = 0;
  int64_t last_seen_ms = 0;
  std::string certificate_serial;
  v1::DatasetSummary dataset;
  v1::Capabilities capabilities;
  std::string state;
  double progress = 0;
  double train_loss = 0;
  std::string key_sha256;  // The pinned key ("" = not pinned yet).
  int64_t key_pinned_ms = 0;
  std::string offered_key_sha256;  // Another key the site presented and was refused for ("" = none).
  std::string offered_serial;      // That certificate's serial.
};

struct RunRecord {
  std::string run_id;
  std::string name;
  v1::RunConfig config;
  federation::RunState state = federation::RunState::kRunning;
  std::vector<std::string> sites;
  std::string base_model_digest;
  std::string final_model_digest;
  std::string fedadam_state_path;
  int64_t fedadam_rounds = 0;
  int current_round = 0;
  int64_t started_ms = 0;
  int64_t finished_ms = 0;
  int64_t evaluation_deadline_ms = 0;
  std::string message;
  bool active() const { return !federation::IsFinal(state); }
};

struct RoundRecord {
  std::string run_id;
  int round = 0;
  int attempt = 0;
  federation::RoundState state = federation::RoundState::kOpen;
  std::string model_digest;
  std::string result_digest;
  int64_t opened_ms = 0;
  int64_t deadline_ms = 0;
  int64_t closed_ms = 0;
  std::string message;
};

struct ModelVersion {
  std::string digest;
  std::string parent_digest;
  std::string path;
  std::string run_id;
  int round = 0;
  int64_t bytes = 0;
  int64_t created_ms = 0;
};

struct UpdateRecord {
  int64_t id = 0;
  std::string run_id;
  int round = 0;
  int attempt = 0;
  std::string site_id;
  std::string sha256;
  int64_t bytes = 0;
  int64_t num_samples = 0;
  double l2_norm = 0;
  double train_loss = 0;
  double validation_loss = 0;
  federation::UploadStatus status = federation::UploadStatus::kAccepted;
  std::string message;
  std::string spool_path;
  int64_t received_ms = 0;
};

struct AuditRecord {
  int64_t time_ms = 0;
  std::string rpc;
  std::string peer_cn;
  std::string serial;
  std::string peer_address;
  std::string role;
  std::string decision;  // "allow", "deny".
  std::string code;      // "OK", "PERMISSION_DENIED", ...
  std::string message;
  std::string run_id;
  int round = 0;
};

// A site's adapted model shared for cross-site evaluation (table shared_models).
struct SharedModelRecord {
  std::string run_id;
  std::string site_id;
  std::string digest;  // SHA-256 of the checkpoint file; a model version (run_id = the run, round 0).
  int64_t bytes = 0;
  int64_t received_ms = 0;
};

// A run's cross-evaluation stage (table cross_evaluations).
struct CrossEvaluationRecord {
  std::string run_id;
  int64_t started_ms = 0;
  int64_t deadline_ms = 0;
};

// Failure reports kept per site (site_failures): each new one deletes the site's oldest beyond this many.
inline constexpr int kMaxFailuresPerSite = 50;

struct MetricsRecord {
  std::string run_id;
  int round = 0;
  std::string site_id;
  std::string kind;
  v1::MetricsReport report;
  int64_t received_ms = 0;
};

// A change of a run's state in one transaction: the run row is rewritten, then optionally a round row is
// rewritten (finish_round: state, result, closed time, message by its key), a model version inserted and a new
// round inserted.
struct RunTransition {
  RunRecord run;
  std::optional<RoundRecord> finish_round;
  std::optional<ModelVersion> new_model;
  std::optional<RoundRecord> open_round;
};

class StateStore {
 public:
  // Opens (creating) `path` (":memory:" for tests) and applies the migrations. Errors as store::Database::Open.
  static absl::StatusOr<std::unique_ptr<StateStore>> Open(const std::string& path);

  // ---- Sites
  // std::nullopt when the site is unknown.
  absl::StatusOr<std::optional<SiteRecord>> GetSite(const std::string& site_id);
  absl::StatusOr<std::vector<SiteRecord>> ListSites();
  // Records a Hello: creates the site with `new_status` when unknown, else keeps its status; stores serial,
  // dataset, capabilities and last_seen. Returns the stored record.
  absl::StatusOr<SiteRecord> RecordHello(const std::string& site_id, const std::string& serial,
                                         const v1::DatasetSummary& dataset, const v1::Capabilities& capabilities,
                                         federation::SiteStatus new_status, int64_t now_ms);
  // Sets the status, creating the site when unknown and `create` is true (NotFound otherwise).
  absl::StatusOr<SiteRecord> SetSiteStatus(const std::string& site_id, federation::SiteStatus status, bool create,
                                           int64_t now_ms);
  // last_seen_ms = now (no-op for an unknown site).
  absl::Status TouchSite(const std::string& site_id, int64_t now_ms);
  absl::Status SetSiteState(const std::string& site_id, const std::string& state, double progress, double train_loss,
                            int64_t now_ms);
  // Compares the key of the certificate a site presents (`key_sha256`, SHA-256 of its SubjectPublicKeyInfo; its
  // serial `serial`) with the site's pinned key, in one transaction:
  //  - unknown site: created 'pending' (first_seen = now) with this key pinned when `create` (its first Hello),
  //    else NotFound;
  //  - known site without a pin (pre-approved before its first call, or registered before pinning existed): this
  //    key is pinned;
  //  - pinned to this key: nothing changes;
  //  - pinned to another key: the pin is kept; this key and serial are recorded as the offer (offered_key_sha256,
  //    offered_serial) that ReplaceSiteKey can accept.
  // Returns the record after the transaction: the caller refuses the site when record.key_sha256 != key_sha256.
  // InvalidArgument for an empty key.
  absl::StatusOr<SiteRecord> PinSiteKey(const std::string& site_id, const std::string& key_sha256,
                                        const std::string& serial, bool create, int64_t now_ms);
  // The operator accepts the key a site offered (`fedtune sites approve ID --replace-key`): in one transaction the
  // offered key becomes the pinned one, the offer is cleared and the status becomes 'approved'. NotFound for an
  // unknown site; FailedPrecondition naming the pinned key when the site offered no other key, or naming both keys
  // when `expected_key_prefix` is not empty and the offered key does not start with it.
  absl::StatusOr<SiteRecord> ReplaceSiteKey(const std::string& site_id, const std::string& expected_key_prefix,
                                            int64_t now_ms);

  // ---- Runs and rounds
  // The next free run id, "run-0001", "run-0002", ...
  absl::StatusOr<std::string> NextRunId();
  // Inserts the run and its first round. AlreadyExists when the run id exists.
  absl::Status CreateRun(const RunRecord& run, const RoundRecord& first_round);
  absl::Status ApplyTransition(const RunTransition& transition);
  // NotFound naming the run.
  absl::StatusOr<RunRecord> GetRun(const std::string& run_id);
  // The most recently created run; NotFound when there is none.
  absl::StatusOr<RunRecord> LatestRun();
  // The `limit` most recent runs, newest first.
  absl::StatusOr<std::vector<RunRecord>> RecentRuns(int limit);
  // The run in state running or evaluating, if any.
  absl::StatusOr<std::optional<RunRecord>> ActiveRun();
  // How many runs are in each state (states without runs absent). One aggregate query: the metrics endpoint asks at
  // every scrape. DataLoss naming the text for a state column that names no state.
  absl::StatusOr<std::map<federation::RunState, int64_t>> CountRunsByState();
  // Rounds of a run ordered by (round, attempt).
  absl::StatusOr<std::vector<RoundRecord>> ListRounds(const std::string& run_id);
  // The runs that use model version `digest`: as their base model, or because the run made it (a round's result).
  // Ordered by creation.
  absl::StatusOr<std::vector<RunRecord>> RunsUsingModel(const std::string& digest);

  // ---- Model versions
  // Inserts unless the digest is already recorded (then keeps the first record).
  absl::Status PutModelVersion(const ModelVersion& version);
  absl::StatusOr<std::optional<ModelVersion>> GetModelVersion(const std::string& digest);
  // The last recorded version that is not a shared adapted model (those are never a default base model);
  // std::nullopt when there is none.
  absl::StatusOr<std::optional<ModelVersion>> LatestModelVersion();
  // Versions whose digest starts with `prefix`.
  absl::StatusOr<std::vector<ModelVersion>> FindModelVersions(const std::string& prefix);

  // ---- Updates
  // Inserts and returns the row id. AlreadyExists when an accepted update exists for (run, round, attempt, site).
  absl::StatusOr<int64_t> InsertUpdate(const UpdateRecord& update);
  // round / attempt std::nullopt: every round / attempt (any value given, negative ones included, matches only
  // itself). site_id empty: every site. status std::nullopt: any status. Ordered by id.
  absl::StatusOr<std::vector<UpdateRecord>> ListUpdates(const std::string& run_id, std::optional<int> round,
                                                        std::optional<int> attempt, const std::string& site_id,
                                                        std::optional<federation::UploadStatus> status);

  // ---- Metrics
  // Stores a site's report; one per (run, round, site, kind): a report sent again replaces the earlier one.
  absl::Status InsertMetrics(const MetricsRecord& record);
  // Ordered by site, then kind ('round' by round, then 'final', then 'cross_site'), then arrival.
  absl::StatusOr<std::vector<MetricsRecord>> ListMetrics(const std::string& run_id);

  // ---- Cross-site evaluation (shared_models_store.cc)
  // In one transaction: records `version` (INSERT OR IGNORE, as PutModelVersion) and the shared model. Idempotent
  // for the same (run, site, digest); AlreadyExists naming the digest held when the site shared another model in
  // this run.
  absl::Status InsertSharedModel(const SharedModelRecord& shared, const ModelVersion& version);
  // The run's shared models, ordered by site id.
  absl::StatusOr<std::vector<SharedModelRecord>> ListSharedModels(const std::string& run_id);
  // Records the start of the run's cross-evaluation stage (a second call keeps the first record).
  absl::Status StartCrossEvaluation(const CrossEvaluationRecord& record);
  // std::nullopt when the run never entered the stage.
  absl::StatusOr<std::optional<CrossEvaluationRecord>> GetCrossEvaluation(const std::string& run_id);

  // ---- Failure reports from sites (site_failures_store.cc)
  // Stores `failure` (site_id, report, received_ms; site_id must not be empty: InvalidArgument) and, in the same
  // transaction, deletes the site's reports beyond its latest kMaxFailuresPerSite. The report is stored as given:
  // its bounds are the caller's (SiteServiceImpl::ReportFailure).
  absl::Status InsertSiteFailure(const v1::SiteFailure& failure);
  // The site's stored reports, most recent first (arrival order; at most kMaxFailuresPerSite). Empty for an unknown
  // site. DataLoss naming the site when a stored report does not parse.
  absl::StatusOr<std::vector<v1::SiteFailure>> ListSiteFailures(const std::string& site_id);
  // Each site's most recent report, by site id: over every report when `run_id` is nullopt, else over the reports
  // whose run_id equals it ("" selects the reports tied to no run). Sites without one are absent. DataLoss as above.
  absl::StatusOr<std::map<std::string, v1::SiteFailure>> LatestSiteFailures(const std::optional<std::string>& run_id);

  // ---- Transfers
  absl::Status AddTransfer(const std::string& run_id, const std::string& site_id, int64_t bytes_down, int64_t bytes_up);
  // site -> (bytes_down, bytes_up).
  absl::StatusOr<std::map<std::string, std::pair<int64_t, int64_t>>> GetTransfers(const std::string& run_id);
  // run -> (bytes_down, bytes_up) of all its sites together, for each of `run_ids` that has transfers (one grouped
  // query per 500 runs).
  absl::StatusOr<std::map<std::string, std::pair<int64_t, int64_t>>> GetRunTransferTotals(
      const std::vector<std::string>& run_ids);

  // ---- Audit
  absl::Status InsertAudit(const AuditRecord& record);
  // Rows in insertion order (tests and investigations).
  absl::StatusOr<std::vector<AuditRecord>> ListAudit();

 private:
  explicit StateStore(std::unique_ptr<store::Database> db) : db_(std::move(db)) {}
  absl::StatusOr<std::optional<SiteRecord>> GetSiteLocked(const std::string& site_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The site about to be changed: its record; nullopt when it is unknown and `create` allows adding it; NotFound
  // "unknown site 'ID'" when it is unknown and may not be created.
  absl::StatusOr<std::optional<SiteRecord>> SiteForUpdateLocked(const std::string& site_id, bool create)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status WriteRunLocked(const RunRecord& run, bool insert) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status InsertRoundLocked(const RoundRecord& round) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::vector<RunRecord>> QueryRunsLocked(const std::string& where_order, const std::string& arg)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::vector<ModelVersion>> QueryModelsLocked(const std::string& where_order, const std::string& arg)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  std::unique_ptr<store::Database> db_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_STATE_STORE_H_
