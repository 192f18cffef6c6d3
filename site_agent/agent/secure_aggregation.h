// The site's side of secure aggregation (federation.proto, "Secure aggregation"; Bonawitz et al., CCS 2017) for one
// round attempt, and client-level DP-FedAvg at the site. The coordinator's side is coordinator/secure_aggregation.h;
// the cryptography both share is common/secagg/session.h.
//
// A TRAIN task whose plan has secure_aggregation goes (federated_agent.h):
//   download -> SiteSecAggSession::Begin (phase 1 keys, phase 2 shares) -> fine-tuning -> MaskUpdate (phase 3:
//   shares received, delta clipped / noised / pre-scaled / encoded / masked) -> upload of update.bin -> Unmask
//   (phase 4: the shares revealed) -> evaluation and round report.
// Phases 1 and 2 run right after the download, before training, so that the key and share phases end while the
// slower sites still download or train.
//
// Phase 1: two fresh P-256 key pairs (cipher c, mask s) are signed with the site's certificate key (site_key) and
//   advertised with num_samples = the training images; the roster (U1) is long-polled until ready and every entry is
//   verified: its certificate chains to the consortium CA (ca_cert; X509_verify_cert, purpose SSL client, the
//   certificate's validity) and is a site certificate, its CN equals the entry's site_id, its keys' signature
//   verifies under that certificate (secagg::VerifyPeerKeys), the indices are 1..n and distinct, site ids distinct,
//   the site itself is in it with exactly the keys it advertised, n >= 2, 2 <= threshold <= n, range > 0,
//   vector_length equals the layout of the downloaded global model, max_num_samples >= this site's num_samples.
//   NO revocation check: the site has no CRL (the coordinator checks revocation when a peer authenticates; a peer
//   revoked after it advertised stays in this attempt's roster). Any failure aborts the session before anything
//   secret leaves the site: PermissionDenied naming the peer and what failed (InvalidArgument for a malformed
//   roster), never masking for an unverified roster.
// Phase 2: secagg::MakeSiteSecrets (self seed b, Shamir shares of b and of the mask scalar over U1 with the
//   roster's threshold), one EncryptShares ciphertext for every other site of U1, SecAggShareKeys.
// Phase 3: the inbox (U2 and the ciphertexts addressed to this site) is long-polled until ready; U2 must be a subset
//   of U1 holding this site and every other site of U2 must have sent exactly one ciphertext, which must decrypt
//   (PermissionDenied naming the peer) to shares with x == own index and from == the peer's index. The delta of the
//   shared tensors is flattened by secagg::MakeLayout(global) (floating tensors in name order; integer counters are
//   not aggregated) and prepared by PrepareInput: DP-FedAvg clipping and noise (below), then the pre-scaling
//   (FedAvg: num_samples / roster.max_num_samples; dp "dp-fedavg": 1, uniform weights). FixedPointCodec(range,
//   n = |U1|) clips every value to [-range, range] (the number clipped is logged: a large count means secagg_range
//   is too small for this model's deltas) and encodes it into Z_2^32; MaskForPeers adds the masks for U2. The payload
//   (secagg::MaskedBundle) goes up as an ordinary resumable update.
// Phase 4: the unmask request is long-polled until ready and checked by DecideReveal (the rule "never reveal both
//   shares of one peer"). The site reveals its share of every survivor's self seed, its own seed included (the
//   coordinator needs t shares of each seed from the t or more answers; federation.proto's "own share excluded" would
//   make a roster of two sites with t = 2 unrecoverable), and its shares of every dropped site's mask key. A refusal is
//   FailedPrecondition naming the peer and logged as a protocol violation by the coordinator. What is revealed is
//   recorded (reveals.txt in the round dir, atomically) BEFORE it is sent.
//
// Client-level DP-FedAvg (plan dp == "dp-fedavg", McMahan et al. ICLR 2018): the delta's L2 norm over the values
//   sent (the layout's tensors) is clipped to dp_clip_norm; with secure aggregation the site then adds its share of
//   the Gaussian noise, N(0, (dp_noise_multiplier * dp_clip_norm)^2 / t) per value with t = the roster's threshold
//   (DpFedAvgNoiseStddev): the coordinator can unmask only a sum of at least t sites' inputs, so every sum it can
//   learn carries at least the full variance (sigma C)^2, however many sites drop, and each site accounts sigma
//   honestly (with all n >= t sites the sum carries n / t of it: more noise than the accountant assumes, never less).
//   The noise comes from AES-128-CTR keyed with
//   16 bytes of OpenSSL RAND_bytes, turned into normals by Box-Muller (never reproducible across rounds or runs).
//   Without secure aggregation the coordinator adds the noise (and the site only clips: ClipL2Norm). Under plain
//   secure aggregation without DP the delta's norm is not clipped (the plan carries no clip norm): the fixed-point
//   range clips each value instead.
//
// Secrets (the ephemeral private keys, the self seed, the shares received) live only in memory, in the session
// object; nothing secret is written to disk (reveals.txt names sites and kinds only). A restarted agent therefore
// drops out of the session it was in. When its masked update was recorded (update.bin and site.db), FederatedAgent
// uploads those same bytes again (resumable; a valid input of the session: its peers hold the shares of its self
// seed) and completes the round without unmasking (the others' answers suffice while t of U3 answer). Otherwise its
// new keys are refused by the coordinator (the attempt's key phase is over, or other keys: ALREADY_EXISTS), the task
// fails, and the coordinator's dropout recovery removes the site's masks from the others' sum.
//
// Bounds: rosters of 2..secagg::kMaxSecAggSites sites, vectors of at most secagg::kMaxPrgLength entries (checked by
// session.h); long-polls of SecAggOptions::wait_seconds each, at most SecAggOptions::phase_wait per phase (phase 4:
// plus the time to the task's deadline). Thread safety: a SiteSecAggSession is used by one thread; the free
// functions are thread-safe.
#ifndef FEDTUNE_SITE_AGENT_AGENT_SECURE_AGGREGATION_H_
#define FEDTUNE_SITE_AGENT_AGENT_SECURE_AGGREGATION_H_

#include <openssl/x509.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/fl/tensor_map.h"
#include "common/pki/openssl_util.h"
#include "common/secagg/key_agreement.h"
#include "common/secagg/session.h"
#include "fedtune/v1/federation.pb.h"
#include "site_agent/agent/coordinator_client.h"

namespace fedtune::agent {

// ---- Roster verification (phase 1)

// Verifies a peer's certificate: parses as PEM, chains to `ca_certificate` (X509_verify_cert with a store holding
// only the CA, purpose SSL client, at the current time), is a site certificate (OU "site"), and its CN equals
// `site_id`. Returns the certificate's public key. Every failure: PermissionDenied naming the site and the reason.
// No CRL is consulted (the site has none).
absl::StatusOr<pki::EvpPkeyPtr> VerifyPeerCertificate(absl::string_view certificate_pem, absl::string_view site_id,
                                                      X509* ca_certificate);

// A roster that passed VerifyRoster.
struct VerifiedRoster {
  int own_index = 0;
  int n = 0;
  int threshold = 0;
  double range = 0;
  int64_t vector_length = 0;
  int64_t max_num_samples = 0;
  std::map<std::string, v1::SecAggPeer> by_site;  // U1 by site id
  std::map<int, std::string> site_of;             // index -> site id
};

// What the site itself advertised, to find in the roster.
struct OwnKeys {
  std::string site_id;
  std::vector<uint8_t> cipher_public_key;
  std::vector<uint8_t> mask_public_key;
  int64_t num_samples = 0;
};

// Checks `roster` (ready) as the header's phase 1 says, except vector_length (the caller compares it with its
// layout). PermissionDenied naming the peer for a certificate, CN or signature that fails, or for this site's own
// entry carrying other keys than it advertised; InvalidArgument naming the field for a malformed roster (indices,
// duplicates, n, threshold, range, max_num_samples, this site missing).
absl::StatusOr<VerifiedRoster> VerifyRoster(const v1::SecAggRoster& roster, const secagg::SessionId& session,
                                            const OwnKeys& own, X509* ca_certificate);

// ---- The reveal decision (phase 4): pure, testable without gRPC.

enum class RevealKind { kSelfMask, kMaskKey };
// "self-mask", "mask-key".
const char* RevealKindName(RevealKind kind);

// What a session revealed: site -> kind.
using RevealRecord = std::map<std::string, RevealKind>;

struct RevealPlan {
  std::set<std::string> self_mask;  // Survivors (this site included): reveal the share of their self seed.
  std::set<std::string> mask_key;   // Dropped: reveal the shares of their mask key.
};

// What to reveal for `request`, given U2 (`u2`, the sites whose shares this site holds, itself included) and what
// this session revealed before (`previous`, site -> kind). FailedPrecondition ("protocol violation ...", naming the
// peer) when a site is both a survivor and dropped, a survivor or dropped site is not in U2, this site is listed as
// dropped, or a site was revealed before with the other kind. Duplicates in the request are read once; a request
// identical to an earlier one gives the same plan.
absl::StatusOr<RevealPlan> DecideReveal(const v1::SecAggUnmaskRequest& request, absl::string_view own_site_id,
                                        const std::set<std::string>& u2, const RevealRecord& previous);

// The record of what a session revealed: one line "<site> <kind>" per peer. A missing file is an empty record;
// a malformed one DataLoss naming the file and line.
absl::StatusOr<RevealRecord> ReadRevealRecord(const std::string& path);
// Writes the record atomically (mode 0600). I/O errors naming the file.
absl::Status WriteRevealRecord(const std::string& path, const RevealRecord& record);

// ---- The input (phase 3) and client-level DP-FedAvg

// Scales `values` so that their L2 norm is at most `clip_norm` (> 0, finite; else InvalidArgument). Returns the
// norm before clipping.
absl::StatusOr<double> ClipL2Norm(std::vector<float>& values, double clip_norm);
// DP-FedAvg without secure aggregation (the coordinator adds the noise): scales the floating tensors of `delta` so
// that their L2 norm (fl::L2Norm: floating tensors, BatchNorm running statistics included, integer counters not)
// is at most `clip_norm` (> 0, finite; else InvalidArgument). Returns the norm before clipping. With a lossy encoding
// the clipped delta is what error feedback encodes (the residual is added after clipping).
absl::StatusOr<double> ClipDeltaL2Norm(fl::TensorMap& delta, double clip_norm);
// Adds N(0, stddev^2) to every value, drawn from AES-128-CTR keyed with `seed` (Box-Muller); the same seed gives
// the same noise. stddev >= 0 and finite, else InvalidArgument.
absl::Status AddGaussianNoise(std::vector<float>& values, double stddev, const secagg::Seed& seed);

// A site's DP-FedAvg noise share under secure aggregation: sigma * C / sqrt(threshold) (see the file comment).
// `threshold` >= 1 (VerifyRoster's bound is >= 2); a smaller one is read as 1 (the full noise).
double DpFedAvgNoiseStddev(double noise_multiplier, double clip_norm, int threshold);
// 16 bytes of OpenSSL RAND_bytes (Internal on failure).
absl::StatusOr<secagg::Seed> RandomSeed();

// How PrepareInput turns a flattened delta into the values to encode.
struct InputOptions {
  double dp_clip_norm = 0;  // > 0: clip the L2 norm to this first (DP-FedAvg).
  double noise_stddev = 0;  // > 0: then add this site's noise share N(0, noise_stddev^2) per value.
  secagg::Seed noise_seed = {};
  double scale = 1;  // Then multiply by this (FedAvg pre-scaling; 1 under DP-FedAvg).
};
struct PreparedInput {
  std::vector<float> values;
  double l2_norm = 0;         // Of the delta, before clipping.
  bool norm_clipped = false;  // The DP clip scaled it down.
};
// Flatten(delta, layout, 1), then clipping, noise and scale as `options` says. Errors of Flatten and ClipL2Norm;
// InvalidArgument for a scale that is not finite and > 0.
absl::StatusOr<PreparedInput> PrepareInput(const fl::TensorMap& delta, const secagg::Layout& layout,
                                           const InputOptions& options);

// ---- The session

struct SecAggOptions {
  // Each long-poll asks the coordinator to wait up to this long. Default 20 s.
  int wait_seconds = 20;
  // Longest wait for one phase (the coordinator's secagg_phase_seconds is at most 3600). Default 3660 s.
  absl::Duration phase_wait = absl::Seconds(3660);
};

// What a session needs from the agent.
struct SecAggSite {
  CoordinatorClient* client = nullptr;  // Not owned; outlives the session.
  std::string site_id;
  std::string site_key_path;  // PEM private key of the site certificate (SiteAgentConfig.site_key).
  std::string ca_cert_path;   // The consortium CA (SiteAgentConfig.ca_cert).
  std::string round_dir;      // reveals.txt goes here.
  CancelFn cancelled;         // Checked between long-polls (CANCELLED).
  std::function<void(const std::string& state, double progress)> set_state;  // Heartbeat; may be empty.
};

// The masked update of phase 3.
struct MaskedUpdate {
  v1::TensorBundle bundle;     // secagg::MaskedBundle
  int64_t clipped_values = 0;  // Values beyond [-range, range], clipped by the codec.
  double l2_norm = 0;          // Of the delta before any clipping.
  bool norm_clipped = false;   // DP-FedAvg's clip scaled it.
};

class SiteSecAggSession {
 public:
  // Phases 1 and 2 for `task` (run, round, attempt; its plan's dp fields). `global_shared`: the round's shared global
  // tensors (the layout); `num_samples`: the training images the update will be weighted by (> 0). Errors: those of
  // the RPCs (retried as coordinator_client.h says; the coordinator's PERMISSION_DENIED, a site outside the phase's
  // set, is returned as FAILED_PRECONDITION by every method, so that only a roster this site refuses itself stops
  // the agent's task loop), VerifyRoster's, FailedPrecondition when the roster's
  // vector_length differs from the layout's, reading site_key / ca_cert (named), DEADLINE_EXCEEDED when the roster
  // did not come within options.phase_wait, CANCELLED.
  static absl::StatusOr<std::unique_ptr<SiteSecAggSession>> Begin(const SecAggSite& site, const v1::Task& task,
                                                                  const fl::TensorMap& global_shared,
                                                                  int64_t num_samples,
                                                                  const SecAggOptions& options = {});

  // Phase 3 up to the payload: waits for the inbox, checks and decrypts it, and masks `delta` (the shared tensors'
  // delta, at least the layout's). Errors: the inbox checks (header), Flatten's, CANCELLED, DEADLINE_EXCEEDED.
  absl::StatusOr<MaskedUpdate> MaskUpdate(const fl::TensorMap& delta);

  // Phase 4, after the upload was accepted: waits for the unmask request, decides (DecideReveal), records, reveals.
  // Errors: DecideReveal's FailedPrecondition; the record's I/O errors; the RPCs'.
  absl::Status Unmask();

  const VerifiedRoster& roster() const { return roster_; }
  const secagg::SessionId& session() const { return session_; }
  const std::set<std::string>& u2() const { return u2_; }
  int64_t num_samples() const { return num_samples_; }
  ~SiteSecAggSession();

 private:
  SiteSecAggSession(const SecAggSite& site, const secagg::SessionId& session, const SecAggOptions& options,
                    secagg::KeyPair cipher_key, secagg::KeyPair mask_key);
  // Long-polls `poll` until its answer is ready (`ready` says), within `limit`.
  template <typename T>
  absl::StatusOr<T> PollUntilReady(const char* what, absl::Duration limit,
                                   const std::function<absl::StatusOr<T>(int)>& poll,
                                   const std::function<bool(const T&)>& ready);

  SecAggSite site_;
  secagg::SessionId session_;
  SecAggOptions options_;
  std::string dp_;  // The plan's: "none", "dp-sgd", "dp-fedavg".
  double dp_noise_multiplier_ = 0;
  double dp_clip_norm_ = 0;
  absl::Time task_deadline_ = absl::InfiniteFuture();
  int64_t num_samples_ = 0;
  secagg::Layout layout_;
  secagg::KeyPair cipher_key_;
  secagg::KeyPair mask_key_;
  VerifiedRoster roster_;
  secagg::SiteSecrets secrets_;
  std::set<std::string> u2_;
  std::map<std::string, secagg::SharePayload> received_;  // From each other site of U2: its shares for this site.
};

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_AGENT_SECURE_AGGREGATION_H_
