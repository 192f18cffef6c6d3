// The site agent's connection to the coordinator: one mTLS channel (the agent only dials out), every call with a
// deadline, retries with exponential backoff and jitter on UNAVAILABLE / DEADLINE_EXCEEDED, and the two resumable
// transfers of the protocol (protos/fedtune/v1/federation.proto), both by common/net's chunk sender and receiver:
//  - DownloadModel: the model file is written to <dir>/<digest>.part by a net::ChunkReceiver, which hashes it as
//    the bytes arrive; after a broken stream the download resumes from the .part file's size (also across agent
//    restarts: the bytes held are then read once); when complete its SHA-256 must equal the digest (the file is
//    then renamed to <dir>/<digest>.ckpt), otherwise the .part file is removed and DATA_LOSS returned.
//  - UploadUpdate: GetUploadOffset(run, round, sha256, kind) says what the coordinator already holds durably (or that
//    the payload was accepted before: nothing is sent); the stream then sends UploadHeader{offset, kind} and a
//    net::ChunkSender sends the file's bytes from that offset in chunk_bytes pieces. After a broken stream the next
//    attempt asks for the offset again. The kind (UploadRequest.kind) is a round's update or the site's adapted
//    model (cross-site evaluation).
//
// Retries: an attempt that fails with UNAVAILABLE, DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED (the coordinator is busy:
// its per-site call limits, thread quota or spool limits) is repeated after a backoff that starts at
// RetryPolicy::min_backoff, doubles up to max_backoff and is multiplied by a uniform factor in [1 - jitter,
// 1 + jitter]; the call gives up (returning the last error, its message saying how many attempts were made) after
// max_attempts attempts or once max_elapsed has passed since the first failure. A transfer attempt that moved bytes
// forward starts the count afresh, so a long transfer over a flaky link is not abandoned while it makes progress.
// Other codes are returned at once (UNAUTHENTICATED, PERMISSION_DENIED, FAILED_PRECONDITION, ...), prefixed with
// "coordinator ADDRESS: RPC". A TLS handshake that fails because the coordinator's certificate does not chain to
// ca_cert (UNAVAILABLE, retried: typically a TLS-inspecting middlebox) says so, naming the address and ca_cert.
//
// Thread safety: thread-safe (gRPC stubs are); the agent's heartbeat thread shares the client with the task thread.
#ifndef FEDTUNE_SITE_AGENT_COORDINATOR_CLIENT_H_
#define FEDTUNE_SITE_AGENT_COORDINATOR_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/fl/encoding.h"
#include "common/net/chunk_receiver.h"
#include "common/net/chunk_sender.h"
#include "common/net/tls.h"
#include "fedtune/v1/federation.grpc.pb.h"
#include "fedtune/v1/federation.pb.h"

namespace fedtune::agent {

class SiteMetrics;  // site_metrics.h

struct RetryPolicy {
  absl::Duration min_backoff = absl::Milliseconds(500);  // First wait (SiteAgentConfig.min_backoff_ms).
  absl::Duration max_backoff = absl::Seconds(30);        // Longest wait (SiteAgentConfig.max_backoff_ms).
  double jitter = 0.2;                                   // +-20%.
  int max_attempts = 10;                                 // Attempts per call (>= 1).
  absl::Duration max_elapsed = absl::Minutes(10);        // Give up after this long since the first failure.
};

// True for the codes that are retried: UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED.
bool IsRetryable(const absl::Status& status);

// The backoff of one call or loop. Not thread-safe.
class Backoff {
 public:
  // `sleep` waits (absl::SleepFor when empty; a test passes a recorder). `seed` seeds the jitter.
  Backoff(const RetryPolicy& policy, std::function<void(absl::Duration)> sleep, uint64_t seed);

  // After a failed attempt: returns `error` (with " (gave up after N attempts)" added) when the policy is used up,
  // otherwise waits the next backoff and returns OK.
  absl::Status Wait(const absl::Status& error);
  // The next wait without waiting (and without counting an attempt): for logs.
  absl::Duration NextDelay() const;
  // Progress was made: the next failure waits min_backoff again and the attempt count restarts.
  void Reset();
  int failures() const { return failures_; }

 private:
  RetryPolicy policy_;
  std::function<void(absl::Duration)> sleep_;
  uint64_t rng_state_;
  int failures_ = 0;
  absl::Time first_failure_ = absl::InfinitePast();
};

struct ClientOptions {
  std::string address;      // host:port of the coordinator (messages name it).
  net::TlsFiles tls;        // Site certificate, key and the consortium CA.
  std::string server_name;  // TLS name of the coordinator's certificate; default: the host of `address`.
  // HTTP CONNECT proxy (net::ChannelOptions::proxy: unset = the environment's, "" = none). SiteAgentConfig.proxy.
  std::optional<std::string> proxy;
  // Keepalive pings while calls are in flight (SiteAgentConfig.keepalive_seconds, keepalive_timeout_seconds).
  absl::Duration keepalive = absl::Seconds(20);
  absl::Duration keepalive_timeout = absl::Seconds(10);
  absl::Duration rpc_timeout = absl::Seconds(30);  // Deadline of unary calls (SiteAgentConfig.rpc_timeout_seconds).
  // Streams get rpc_timeout plus the bytes still to move at this rate (a floor for slow links;
  // SiteAgentConfig.min_transfer_kib_per_second).
  double min_transfer_bytes_per_second = 256 * 1024;
  RetryPolicy retry;
  int chunk_bytes = 1 << 20;  // Upload chunk size, clamped to [1 KiB, 4 MiB]; the coordinator's Hello may change it.
  std::function<void(absl::Duration)> sleep;  // Backoff waits; default absl::SleepFor. Test seam.
  uint64_t seed = 0;                          // Jitter seed; 0: from the clock.
  // Transfer bytes, retries by RPC name and the "retrying" state go here (site_metrics.h). Nullable, not owned; must
  // outlive the client. Default none.
  SiteMetrics* metrics = nullptr;
};

// What to upload: a payload file whose SHA-256 the caller computed (and recorded) beforehand.
struct UploadRequest {
  std::string run_id;
  int32_t round = 0;
  std::string path;    // The serialized TensorBundle.
  std::string sha256;  // Of the file (lowercase hex).
  int64_t num_samples = 0;
  fl::Encoding encoding = fl::Encoding::kDenseFp32;
  double train_loss = 0;
  double validation_loss = 0;
  // UPLOAD_KIND_UPDATE: a round's delta; UPLOAD_KIND_ADAPTED_MODEL: the site's adapted checkpoint for cross-site
  // evaluation (round 0; num_samples and the losses are not read).
  v1::UploadKind kind = v1::UPLOAD_KIND_UPDATE;
};

// DeclineRequest.reason's limit (federation.proto).
inline constexpr size_t kMaxDeclineReasonBytes = 1024;

// Returns true when the caller wants a transfer stopped (checked between chunks and before each attempt).
using CancelFn = std::function<bool()>;

// Told about the client's retries (the agent's heartbeat says "retrying: REASON" while a call is retried). Called on
// the thread of the retried call: OnRetry before each backoff wait, OnRetryEnd once when a call that was retried
// ends (it succeeded, gave up or failed with an error that is not retried). Implementations must be thread-safe
// (calls on several threads may be retried at once) and must not call back into the retried call.
class RetryObserver {
 public:
  virtual ~RetryObserver() = default;
  // `call` ("Hello", "DownloadModel", "UploadUpdate", "ReportMetrics", "DeclineTask", "SecAgg...") failed with the
  // retryable `error` and is tried again after about `delay`.
  virtual void OnRetry(absl::string_view call, const absl::Status& error, absl::Duration delay) = 0;
  virtual void OnRetryEnd(absl::string_view call) = 0;
};

class CoordinatorClient {
 public:
  // A client over a new mTLS channel (net::MakeClientChannel), through options.proxy when given. Errors of reading
  // the PEM files (named) and InvalidArgument for an address without a port or an invalid proxy URL. Nothing is
  // connected yet.
  static absl::StatusOr<std::unique_ptr<CoordinatorClient>> Create(const ClientOptions& options);
  // A client over an existing channel (tests).
  static std::unique_ptr<CoordinatorClient> ForChannel(std::shared_ptr<grpc::Channel> channel,
                                                       const ClientOptions& options);

  // Unary calls. Hello and ReportMetrics are retried as the header says; GetTask and Heartbeat are single attempts
  // (the agent's loop and the heartbeat period already repeat them). GetTask's deadline is wait_seconds +
  // rpc_timeout.
  absl::StatusOr<v1::HelloResponse> Hello(const v1::HelloRequest& request);
  absl::StatusOr<v1::Task> GetTask(int wait_seconds);
  // `timeout`: the call's deadline; zero: rpc_timeout.
  absl::StatusOr<v1::HeartbeatResponse> Heartbeat(const v1::HeartbeatRequest& request,
                                                  absl::Duration timeout = absl::ZeroDuration());
  absl::Status ReportMetrics(const v1::MetricsReport& report);
  // Declines the TRAIN task (run, round, attempt) with `reason` (cut to kMaxDeclineReasonBytes) and the site's
  // privacy budget as it stands; retried as ReportMetrics. The coordinator's errors (FAILED_PRECONDITION once the
  // site's update of that attempt was accepted, NOT_FOUND for an unknown run) are returned at once.
  absl::Status DeclineTask(const std::string& run_id, int32_t round, int32_t attempt, const std::string& reason,
                           const v1::PrivacyAccount& privacy);
  // Sends a failure report (federation.proto, FailureReport; the caller scrubs and bounds it). Retried as the header
  // says, but the whole call, backoff waits included, ends after about `give_up`: it is best effort and must not
  // hold up the agent's loop. Not seen by the RetryObserver. Errors: the last attempt's (the coordinator's
  // INVALID_ARGUMENT for a field over its bound, UNIMPLEMENTED from a coordinator without the call).
  absl::Status ReportFailure(const v1::FailureReport& report, absl::Duration give_up);
  absl::StatusOr<v1::UploadOffsetResponse> GetUploadOffset(const std::string& run_id, int32_t round,
                                                           const std::string& sha256,
                                                           v1::UploadKind kind = v1::UPLOAD_KIND_UPDATE);

  // Downloads model `digest` (64 hex digits; InvalidArgument otherwise) into `dir` (created) and returns the path
  // <dir>/<digest>.ckpt. An existing <dir>/<digest>.ckpt whose SHA-256 matches is returned without a call (one that
  // does not match is removed and downloaded again). expected_bytes (the task's model_bytes; 0 = unknown) only
  // sizes the deadline and discards a .part file that is already longer. Errors: DATA_LOSS when the bytes do not
  // hash to `digest` or the coordinator's chunks are inconsistent (offset, total, a sha256 other than `digest`),
  // the .part file removed; CANCELLED when `cancelled` says so (the .part file is kept for a later resume); the
  // coordinator's errors (NOT_FOUND for an unknown digest); I/O errors naming the file.
  absl::StatusOr<std::string> DownloadModel(const std::string& digest, int64_t expected_bytes, const std::string& dir,
                                            const CancelFn& cancelled = nullptr);

  // Uploads request.path resumably (see the header); ABORTED (the coordinator still holds the previous, broken stream
  // of the same payload) is retried like UNAVAILABLE. Returns the coordinator's answer ("accepted"), also when
  // GetUploadOffset says the payload was accepted before (received_bytes = the file size, message says so).
  // Errors: the coordinator's (FAILED_PRECONDITION for a round that is not open, ALREADY_EXISTS for a different
  // payload already accepted, DATA_LOSS for a payload whose digest did not match, INVALID_ARGUMENT for a payload it
  // could not decode); DATA_LOSS when the coordinator claims to hold more bytes than the file has; CANCELLED;
  // I/O errors naming the file.
  absl::StatusOr<v1::UploadResponse> UploadUpdate(const UploadRequest& request, const CancelFn& cancelled = nullptr);

  // Secure aggregation (federation.proto, "Secure aggregation"; site_agent/agent/secure_aggregation.h). Every call is
  // retried as the header says (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED with backoff); other codes are
  // returned at once (the coordinator's NotFound, PermissionDenied, FailedPrecondition, InvalidArgument, AlreadyExists
  // for other keys). SecAggShareKeys and SecAggRevealShares take ALREADY_EXISTS on a retried attempt as success (the
  // earlier attempt reached the coordinator; its answer was lost). The long-polls (GetRoster, GetInbox,
  // GetUnmaskRequest) send request.wait_seconds (clamped to [0, 600]) and have the deadline wait_seconds +
  // rpc_timeout; an answer with ready = false is returned as is (the caller polls again).
  absl::Status SecAggAdvertiseKeys(const v1::SecAggKeys& keys);
  absl::StatusOr<v1::SecAggRoster> SecAggGetRoster(const v1::SecAggPhaseRequest& request);
  absl::Status SecAggShareKeys(const v1::SecAggShareUpload& upload);
  absl::StatusOr<v1::SecAggInbox> SecAggGetInbox(const v1::SecAggPhaseRequest& request);
  absl::StatusOr<v1::SecAggUnmaskRequest> SecAggGetUnmaskRequest(const v1::SecAggPhaseRequest& request);
  absl::Status SecAggRevealShares(const v1::SecAggReveal& reveal);

  // The observer of retries (not owned; nullptr: none). Set it before the calls it should see start; it must outlive
  // every call made after (the agent sets it once, to an object that lives as long as the client).
  void set_retry_observer(RetryObserver* observer) { retry_observer_.store(observer); }

  // The upload chunk size (clamped to [1 KiB, 4 MiB]).
  void set_chunk_bytes(int bytes);
  int chunk_bytes() const { return chunk_bytes_.load(); }
  const std::string& address() const { return options_.address; }
  // Payload bytes received / sent by the transfers so far (for logs).
  int64_t bytes_down() const { return bytes_down_.load(); }
  int64_t bytes_up() const { return bytes_up_.load(); }

 private:
  CoordinatorClient(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options);

  // A backoff whose waits count as retries of `rpc` in options.metrics ("": not counted, the state still shows them).
  Backoff NewBackoff(absl::string_view rpc = "");
  absl::Duration StreamTimeout(int64_t bytes) const;
  // The download attempts (with backoff) until `part` holds the whole model.
  absl::Status DownloadInto(const std::string& digest, int64_t expected_bytes, net::ChunkReceiver* part,
                            const CancelFn& cancelled);
  // One download attempt from what `part` holds.
  absl::Status DownloadOnce(const std::string& digest, int64_t expected_bytes, net::ChunkReceiver* part,
                            const CancelFn& cancelled);
  // One upload attempt of `payload` from `offset`.
  absl::StatusOr<v1::UploadResponse> UploadOnce(const UploadRequest& request, net::ChunkSender* payload, int64_t offset,
                                                const CancelFn& cancelled);
  absl::Status Error(const grpc::Status& status, absl::string_view rpc) const;
  // A unary call retried as the header says: `call` makes one attempt with the context (deadline `timeout`) given.
  // With `already_exists_after_retry_ok`, ALREADY_EXISTS on an attempt after a retryable failure is success.
  absl::Status RetriedCall(absl::string_view rpc, absl::Duration timeout, bool already_exists_after_retry_ok,
                           const std::function<grpc::Status(grpc::ClientContext*)>& call);

  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::SiteService::Stub> stub_;
  std::atomic<int> chunk_bytes_;
  std::atomic<uint64_t> backoff_seeds_;
  std::atomic<int64_t> bytes_down_{0};
  std::atomic<int64_t> bytes_up_{0};
  std::atomic<RetryObserver*> retry_observer_{nullptr};
};

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_COORDINATOR_CLIENT_H_
