// Key agreement and key authentication of secure aggregation (Bonawitz et al., CCS 2017, round 0 "AdvertiseKeys"):
// each site makes an ephemeral ECDH P-256 key pair per round, signs its public key with its long-term key, and derives
// with every peer a 16-byte pairwise seed: HKDF-SHA256(ECDH shared secret, salt "fedtune-secagg-v1", info = context).
// Both ends of a pair get the same seed for the same context; PairwiseContext puts the two site ids in sorted order so
// both sides build the same string. Another context (run, round, pair) gives an unrelated seed.
//
// Public keys travel as uncompressed P-256 points (65 bytes, 0x04 || X || Y); ImportPublicKey refuses any other length,
// prefix, or a point not on the curve (InvalidArgument). Signatures cover "fedtune-secagg-public-key-v1" || context ||
// public key, with SHA-256 under any long-term key OpenSSL can sign with (EC P-256 and RSA-2048 are tested); a
// signature that does not verify is PermissionDenied. Contexts are at most kMaxContextBytes bytes. Thread-safe
// (no shared state; a KeyPair may be used from several threads for derivation).
#ifndef FEDTUNE_COMMON_SECAGG_KEY_AGREEMENT_H_
#define FEDTUNE_COMMON_SECAGG_KEY_AGREEMENT_H_

#include <openssl/evp.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/secagg/prg.h"

namespace fedtune::secagg {

inline constexpr size_t kPublicKeyBytes = 65;
inline constexpr size_t kMaxContextBytes = 1024;

struct PkeyDeleter {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDeleter>;

// An ephemeral P-256 key pair.
class KeyPair {
 public:
  // A fresh key pair. OpenSSL failure: Internal.
  static absl::StatusOr<KeyPair> Generate();
  // The key pair holding `pkey`, a P-256 key with its private part (e.g. rebuilt from a private scalar by
  // session.h's KeyPairFromPrivateScalar); takes ownership. Null, not P-256, or no public point: InvalidArgument.
  static absl::StatusOr<KeyPair> FromPkey(PkeyPtr pkey);
  // The uncompressed public point (kPublicKeyBytes bytes).
  const std::vector<uint8_t>& public_key() const { return public_key_; }
  EVP_PKEY* pkey() const { return pkey_.get(); }

 private:
  KeyPair(PkeyPtr pkey, std::vector<uint8_t> public_key) : pkey_(std::move(pkey)), public_key_(std::move(public_key)) {}
  PkeyPtr pkey_;
  std::vector<uint8_t> public_key_;
};

// A P-256 public key from its uncompressed point. Wrong length or prefix, or not on the curve: InvalidArgument.
absl::StatusOr<PkeyPtr> ImportPublicKey(absl::Span<const uint8_t> public_key);

// "fedtune-secagg|run=<run_id>|round=<round>|pair=<min>,<max>": the same for (a, b) and (b, a).
std::string PairwiseContext(std::string_view run_id, int64_t round, int64_t site_a, int64_t site_b);

// The pairwise seed between `own` and the peer's public key for `context`. Bad peer key: InvalidArgument; context
// longer than kMaxContextBytes: InvalidArgument; OpenSSL failure: Internal.
absl::StatusOr<Seed> DerivePairwiseSeed(const KeyPair& own, absl::Span<const uint8_t> peer_public_key,
                                        std::string_view context);

// Signs `public_key` for `context` with a site's long-term private key (EVP_DigestSign, SHA-256). Null key or a
// context too long: InvalidArgument; OpenSSL failure (e.g. a public-only key): Internal.
absl::StatusOr<std::vector<uint8_t>> SignPublicKey(EVP_PKEY* long_term_key, absl::Span<const uint8_t> public_key,
                                                   std::string_view context);

// OkStatus iff `signature` is a valid signature of `public_key` for `context` under `long_term_key` (its public part
// suffices). Invalid signature (substituted key, other context, other signer): PermissionDenied.
absl::Status VerifyPublicKeySignature(EVP_PKEY* long_term_key, absl::Span<const uint8_t> public_key,
                                      std::string_view context, absl::Span<const uint8_t> signature);

}  // namespace fedtune::secagg

#endif  // FEDTUNE_COMMON_SECAGG_KEY_AGREEMENT_H_
