// The protocol pieces of secure aggregation that the coordinator's side (coordinator/secure_aggregation.h) and the
// site's side (site_agent/agent/secure_aggregation.h) share: what is signed, how shares are encrypted and serialized,
// how a site masks its vector for a roster, how the coordinator recovers the sum, and the layout of the masked
// vector. The messages are federation.proto's SecAgg* (read its "Secure aggregation" comment first).
//
// Identities inside the protocol are roster indices 1..n (SecAggPeer.index): the Shamir x coordinate of a site and
// the id masking.h uses for it. Contexts bind every seed, key and ciphertext to (run, round, attempt) and to the
// pair, so nothing of one session is valid in another.
//
// Layout of the masked vector: the floating tensors of the round's shared model tensors, sorted by name, each
// flattened in C order. Integer tensors (BatchNorm's num_batches_tracked) are not aggregated under secure
// aggregation: the global model keeps its own.
//
// Bounds: rosters of 2..kMaxSecAggSites sites; vectors of at most kMaxPrgLength entries; everything parsed from a
// peer is checked (InvalidArgument naming the field or peer). Thread-safe (no shared state).
#ifndef FEDTUNE_COMMON_SECAGG_SESSION_H_
#define FEDTUNE_COMMON_SECAGG_SESSION_H_

#include <openssl/evp.h>

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/fl/tensor_map.h"
#include "common/secagg/key_agreement.h"
#include "common/secagg/prg.h"
#include "common/secagg/shamir.h"
#include "fedtune/v1/federation.pb.h"
#include "fedtune/v1/tensor.pb.h"

namespace fedtune::secagg {

inline constexpr int kMaxSecAggSites = 1000;
inline constexpr char kMaskedTensorName[] = "secagg/masked";

// One session: a round attempt of a run.
struct SessionId {
  std::string run_id;
  int round = 0;
  int attempt = 0;
};

// ---- Keys (phase 1)
// Signs a site's advertised keys (c, s, num_samples) for `session` and `site_id` with its certificate's private key:
// fills keys->signature (keys->run_id/round/attempt are not read: the session is what is signed). The signed bytes
// bind run, round, attempt, site id, both public keys and num_samples (KeysSignedContext). Errors of SignPublicKey
// (InvalidArgument for a null key or a run/site id so long that the context exceeds kMaxContextBytes).
absl::Status SignKeys(EVP_PKEY* site_key, const SessionId& session, std::string_view site_id, v1::SecAggKeys* keys);
// Checks a roster entry: both public keys are valid P-256 points and the signature verifies under `certificate_key`
// (the peer certificate's public key; the caller checks the certificate itself against the CA and its CN against
// peer.site_id()). Bad key, or the same key for c and s: InvalidArgument naming the peer; bad signature (substituted
// key, other session, other site, other num_samples): PermissionDenied naming the peer.
absl::Status VerifyPeerKeys(EVP_PKEY* certificate_key, const SessionId& session, const v1::SecAggPeer& peer);

// The context string that SignKeys signs (with c || s as the signed "public key"), for tests and messages.
std::string KeysSignedContext(const SessionId& session, std::string_view site_id, int64_t num_samples);

// ---- Mask key as a secret: the 32-byte P-256 private scalar (big-endian), shared as two 16-byte halves:
// half 0 ("low" in this file) = bytes [0, 16), half 1 ("high") = bytes [16, 32) of the big-endian encoding.
using PrivateScalar = std::array<uint8_t, 32>;
// The key's private scalar. A key without a private part: InvalidArgument.
absl::StatusOr<PrivateScalar> ExportPrivateScalar(const KeyPair& key);
// The key pair of a scalar. 0 or >= the group order: InvalidArgument.
absl::StatusOr<KeyPair> KeyPairFromPrivateScalar(const PrivateScalar& scalar);

// ---- Shares (phase 2): what site u sends peer v, encrypted.
struct SharePayload {
  int32_t x = 0;                  // v's index (the shares' x)
  int32_t from = 0;               // u's index
  Share self_mask;                // of u's self-mask seed b_u
  std::array<Share, 2> mask_key;  // of u's mask private scalar, low and high half
};
// Wire form (kSharePayloadBytes): version byte 1, x and from (int32 LE), then the 9 values (uint64 LE) of
// self_mask.y, mask_key[0].y, mask_key[1].y. The shares' own x fields are not written (they are payload.x).
inline constexpr size_t kSharePayloadBytes = 1 + 4 + 4 + 9 * 8;
std::string SerializeSharePayload(const SharePayload& payload);
// InvalidArgument for a wrong length or version, x or from outside [1, kMaxSecAggSites], or a value >=
// kShamirPrime. Every share of the result has x = payload.x.
absl::StatusOr<SharePayload> ParseSharePayload(std::string_view bytes);

// The encrypted form's size (12-byte nonce + payload + 16-byte tag), and the most the coordinator accepts per
// ciphertext (slack for a later payload version).
inline constexpr size_t kEncryptedSharesBytes = 12 + kSharePayloadBytes + 16;
inline constexpr size_t kMaxEncryptedSharesBytes = 4096;

// AES-128-GCM under DerivePairwiseSeed(own cipher key, peer's cipher public key, share context of (session, from,
// to)); the output is nonce (12, random) || ciphertext || tag (16), with the share context as AAD. The share context
// ("fedtune-secagg-shares-v1|...") differs from every mask context, so the key is unrelated to any mask seed.
// Indices outside [1, kMaxSecAggSites] or equal: InvalidArgument. Decrypt: a tag that does not verify (tampered,
// another session or pair, wrong keys) is PermissionDenied; a ciphertext too short or too long, or a payload that
// does not parse or names other indices than (to_index, from_index): InvalidArgument.
absl::StatusOr<std::string> EncryptShares(const KeyPair& own_cipher_key,
                                          absl::Span<const uint8_t> peer_cipher_public_key, const SessionId& session,
                                          int from_index, int to_index, const SharePayload& payload);
absl::StatusOr<SharePayload> DecryptShares(const KeyPair& own_cipher_key,
                                           absl::Span<const uint8_t> peer_cipher_public_key, const SessionId& session,
                                           int from_index, int to_index, std::string_view ciphertext);

// Everything site u makes in phase 2: its self seed and, for every index of the roster (itself included), the
// payload for that index (Shamir over the roster's n indices with `threshold`). Bounds: 2 <= n <= kMaxSecAggSites,
// 2 <= threshold <= n, 1 <= own_index <= n (else InvalidArgument); a key without a private part InvalidArgument.
struct SiteSecrets {
  Seed self_seed = {};
  std::map<int, SharePayload> payloads;  // by receiver index
};
absl::StatusOr<SiteSecrets> MakeSiteSecrets(int own_index, const KeyPair& mask_key, int threshold, int n);

// ---- Masking (phase 3): y_u for the peers of U2 (index -> mask public key; u itself may be in the map and is
// skipped). Pairwise seeds from DerivePairwiseSeed(mask key, peer mask key, mask context of (session, pair)). A bad
// peer key or index: InvalidArgument naming the index; errors of MaskInput.
absl::StatusOr<std::vector<uint32_t>> MaskForPeers(int own_index, absl::Span<const uint32_t> encoded,
                                                   const Seed& self_seed, const KeyPair& mask_key,
                                                   const std::map<int, std::vector<uint8_t>>& peer_mask_keys,
                                                   const SessionId& session);

// ---- Recovery (phase 4, the coordinator): the sum of the survivors' encoded inputs from the sum of their masked
// vectors. `mask_keys`: every index of U2 -> its mask public key. `self_shares`: per survivor, the shares of its self
// seed revealed; `key_shares`: per dropped index, the revealed shares of its mask scalar (low, high). At least
// `threshold` shares per secret, else FailedPrecondition naming the index; shares that do not reconstruct
// (DataLoss) or a reconstructed scalar whose public key is not the advertised one: DataLoss naming the index.
// An index of `survivors`/`dropped` without a mask key, in both lists or repeated, threshold < 1, or malformed
// shares (duplicate x, value >= p): InvalidArgument naming the index.
struct RevealedShares {
  std::map<int, std::vector<Share>> self_shares;                // survivor index -> shares of b
  std::map<int, std::vector<std::array<Share, 2>>> key_shares;  // dropped index -> shares of s (low, high)
};
absl::StatusOr<std::vector<uint32_t>> RecoverSum(absl::Span<const uint32_t> masked_sum,
                                                 const std::map<int, std::vector<uint8_t>>& mask_keys,
                                                 const std::vector<int>& survivors, const std::vector<int>& dropped,
                                                 const RevealedShares& revealed, int threshold,
                                                 const SessionId& session);

// ---- Revealed shares on the wire (SecAggRevealedShare, phase 4). `owner_site_id`: whose secret the share is.
// Self-mask share: y = share.y (3 values); mask-key share: y = low.y then high.y (6 values); x = the share's x.
v1::SecAggRevealedShare SelfMaskReveal(const std::string& owner_site_id, const Share& share);
v1::SecAggRevealedShare MaskKeyReveal(const std::string& owner_site_id, const std::array<Share, 2>& shares);
// The shares of a revealed entry: wrong number of values, a value >= kShamirPrime, or x outside
// [1, kMaxSecAggSites]: InvalidArgument naming the owner.
absl::StatusOr<Share> ParseSelfMaskReveal(const v1::SecAggRevealedShare& revealed);
absl::StatusOr<std::array<Share, 2>> ParseMaskKeyReveal(const v1::SecAggRevealedShare& revealed);

// ---- Layout and the masked bundle
struct LayoutEntry {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0;
  int64_t numel = 0;
};
struct Layout {
  std::vector<LayoutEntry> entries;
  int64_t length = 0;
};
// The floating tensors of `reference`, sorted by name. Empty, or longer than kMaxPrgLength: InvalidArgument.
absl::StatusOr<Layout> MakeLayout(const fl::TensorMap& reference);
// `scale` * delta flattened by `layout` (float). A tensor missing, not floating, of another shape, or with a
// non-finite (scaled) value: InvalidArgument naming it; scale not finite: InvalidArgument. Tensors of `delta` outside
// the layout are ignored.
absl::StatusOr<std::vector<float>> Flatten(const fl::TensorMap& delta, const Layout& layout, double scale);
// Float32 CPU tensors of the layout from `values` (length == layout.length, else InvalidArgument; a non-finite
// value InvalidArgument naming its tensor).
absl::StatusOr<fl::TensorMap> Unflatten(absl::Span<const double> values, const Layout& layout);

// The upload of a masked vector (the form ReadMaskedBundle reads; data little-endian).
v1::TensorBundle MaskedBundle(absl::Span<const uint32_t> masked);
// The masked vector of an upload: exactly one tensor named kMaskedTensorName, dtype INT32, encoding MASKED_UINT32,
// shape [expected_length], data of 4 * expected_length bytes. Anything else, or expected_length outside
// [1, kMaxPrgLength]: InvalidArgument naming what differs.
absl::StatusOr<std::vector<uint32_t>> ReadMaskedBundle(const v1::TensorBundle& bundle, int64_t expected_length);

}  // namespace fedtune::secagg

#endif  // FEDTUNE_COMMON_SECAGG_SESSION_H_
