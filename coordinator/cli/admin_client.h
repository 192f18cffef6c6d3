// The operator's connection to the coordinator's AdminService: connection settings from flags or environment
// variables, a mutually authenticated TLS channel with the operator's certificate, one method per RPC (each with a
// deadline) and the resumable, verified model export.
//
// Thread safety: AdminClient is thread-compatible (a gRPC stub is thread-safe, but ExportModel writes files: do not
// export to the same path from two threads), except CancelPendingCalls, which any thread may call at any time. The
// free functions are reentrant.
#ifndef FEDTUNE_COORDINATOR_CLI_ADMIN_CLIENT_H_
#define FEDTUNE_COORDINATOR_CLI_ADMIN_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/cli/command.h"
#include "common/net/chunk_receiver.h"
#include "fedtune/v1/federation.grpc.pb.h"
#include "fedtune/v1/federation.pb.h"

namespace fedtune::admin {

// Where the coordinator is and which files prove the operator's identity.
struct ConnectionSettings {
  std::string coordinator;      // host:port. Required.
  std::string cert;             // The operator's certificate (PEM). Required.
  std::string key;              // Its private key (PEM). Required.
  std::string ca;               // The consortium CA certificate (ca.pem). Required.
  std::string server_name;      // TLS name of the coordinator. Default: the host part of `coordinator`.
  double timeout_seconds = 30;  // Deadline of each unary call. Default 30 s.
};

// Looks up an environment variable; nullopt when unset. The default reads the process environment.
using EnvLookup = std::function<std::optional<std::string>(const std::string& name)>;
EnvLookup ProcessEnvironment();

// The flags every operator command shares: --coordinator, --cert, --key, --ca, --server-name, --timeout.
std::vector<cli::FlagSpec> ConnectionFlags();

// The settings from the flags, each missing one taken from its environment variable (FEDTUNE_COORDINATOR,
// FEDTUNE_CERT, FEDTUNE_KEY, FEDTUNE_CA, FEDTUNE_SERVER_NAME, FEDTUNE_TIMEOUT); a flag wins over the variable.
// InvalidArgument naming the flag and the variable when a required setting is missing, or when the timeout is not a
// positive number.
absl::StatusOr<ConnectionSettings> ResolveConnection(const cli::ParsedFlags& flags, const EnvLookup& env);

// How ExportModel resumes.
struct ExportOptions {
  // Attempts in a row that receive no new byte before giving up. Default 5.
  int max_attempts_without_progress = 5;
  // Wait before the n-th retry: n * retry_backoff (capped at 10 s). Default 500 ms; tests use 0.
  absl::Duration retry_backoff = absl::Milliseconds(500);
  // Deadline of one ExportModel stream. Default 10 minutes.
  absl::Duration stream_timeout = absl::Minutes(10);
  // Called after each received chunk with (bytes so far, total bytes). Default: none.
  std::function<void(int64_t, int64_t)> progress;
};

struct ExportResult {
  std::string path;    // The written file.
  std::string sha256;  // Its verified SHA-256 (the model version's full digest).
  int64_t bytes = 0;
  int attempts = 0;          // Streams opened (1 when nothing broke).
  int64_t resumed_from = 0;  // Bytes already present in OUT.part when the export began (a previous interrupted run).
};

class AdminClient {
 public:
  // Reads the certificate files and makes the channel (connected lazily, on the first call). InvalidArgument /
  // NotFound naming a bad or missing file or a malformed address.
  static absl::StatusOr<std::unique_ptr<AdminClient>> Connect(const ConnectionSettings& settings);

  // Test seam: a client on an existing channel.
  AdminClient(std::shared_ptr<grpc::Channel> channel, std::string address, absl::Duration timeout);

  // The RPCs. Errors carry the coordinator's code (Unavailable when unreachable, Unauthenticated /
  // PermissionDenied when the certificate is refused, NotFound for an unknown site, run or model, ...) with the
  // message prefixed "coordinator ADDRESS: RPC: " (the coordinator's message passed through TerminalSafe).
  absl::StatusOr<v1::ListSitesResponse> ListSites();
  // With `replace_key`, also accepts the key the site offered (refused unless it starts with `expected_key_sha256`
  // when that is not empty).
  absl::StatusOr<v1::SiteInfo> ApproveSite(const std::string& site_id, bool replace_key = false,
                                           const std::string& expected_key_sha256 = "");
  absl::StatusOr<v1::SiteInfo> RevokeSite(const std::string& site_id, const std::string& reason);
  // The site with its stored failure reports, most recent first (NotFound for an unknown site).
  absl::StatusOr<v1::SiteResponse> GetSite(const std::string& site_id);
  absl::StatusOr<std::string> StartRun(const v1::RunConfig& config);      // Returns the run id.
  absl::StatusOr<v1::RunStatus> GetRunStatus(const std::string& run_id);  // Empty id: the latest run.
  absl::StatusOr<v1::RunStatus> AbortRun(const std::string& run_id, const std::string& reason);
  absl::StatusOr<v1::RunReport> GetRunReport(const std::string& run_id);
  // The `limit` most recent runs, newest first, without rounds and sites (0: the coordinator's default of 100; it
  // caps at 1000). Unimplemented from a coordinator older than ListRuns.
  absl::StatusOr<v1::ListRunsResponse> ListRuns(int limit);

  // Streams the model version `digest` (full digest or a unique prefix of >= 8 hex digits, either case; InvalidArgument
  // otherwise) into `out_path`: bytes go to OUT.part (a net::ChunkReceiver, which hashes them as they arrive), a
  // broken stream is reopened from OUT.part's size (also a part left by an earlier, interrupted export: its bytes
  // are read once), and only when the SHA-256 of the whole file equals the digest the server announced (and starts
  // with `digest`) is OUT.part synced and renamed to OUT (atomic). DataLoss on a digest mismatch or an inconsistent
  // stream (OUT.part is removed: the next attempt starts afresh); the RPC's error when it cannot be resumed (e.g.
  // NotFound) or after options.max_attempts_without_progress fruitless attempts; I/O errors naming the path. The
  // parent directory of out_path must exist.
  absl::StatusOr<ExportResult> ExportModel(const std::string& digest, const std::string& out_path,
                                           const ExportOptions& options = {});

  // Cancels the calls in flight (they return Cancelled at once instead of waiting for their deadline) and every
  // later one (they fail with Cancelled without reaching the coordinator): for a program that stops while the
  // coordinator hangs. Thread-safe; idempotent; not undone.
  void CancelPendingCalls();

  const std::string& address() const { return address_; }

 private:
  // A call's registration (for CancelPendingCalls) for the lifetime of its ClientContext; sets the deadline to now +
  // `timeout`.
  class PendingCall {
   public:
    PendingCall(AdminClient* client, grpc::ClientContext* context, absl::Duration timeout);
    ~PendingCall();
    PendingCall(const PendingCall&) = delete;
    PendingCall& operator=(const PendingCall&) = delete;

   private:
    AdminClient* const client_;
    grpc::ClientContext* const context_;
  };

  // One ExportModel stream from what `part` holds. Sets *received to the bytes it appended.
  absl::Status ExportOnce(const std::string& digest, net::ChunkReceiver* part, const ExportOptions& options,
                          int64_t* received);
  // The ExportModel streams (resumed after a break) until `part` holds the whole model; *may_restart: the part
  // may still be begun again from byte 0 (once).
  absl::Status ExportInto(const std::string& digest, const std::string& part_path, net::ChunkReceiver* part,
                          const ExportOptions& options, ExportResult* result, bool* may_restart);
  absl::Status Failed(const grpc::Status& status, const char* rpc) const;

  std::string address_;
  absl::Duration timeout_;
  std::unique_ptr<v1::AdminService::Stub> stub_;
  absl::Mutex pending_mu_;
  absl::flat_hash_set<grpc::ClientContext*> pending_ ABSL_GUARDED_BY(pending_mu_);
  bool cancelled_ ABSL_GUARDED_BY(pending_mu_) = false;
};

}  // namespace fedtune::admin

#endif  // FEDTUNE_COORDINATOR_CLI_ADMIN_CLIENT_H_
