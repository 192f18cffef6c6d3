#include "common/secagg/session.h"

#include <ATen/ATen.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "common/fl/tensor_map.h"
#include "common/secagg/masking.h"
#include "common/status_macros.h"

namespace fedtune::secagg {
namespace {

constexpr size_t kNonceBytes = 12;
constexpr size_t kTagBytes = 16;
constexpr uint8_t kPayloadVersion = 1;

struct BnDeleter {
  void operator()(BIGNUM* p) const { BN_clear_free(p); }
};
using BnPtr = std::unique_ptr<BIGNUM, BnDeleter>;
struct BnCtxDeleter {
  void operator()(BN_CTX* p) const { BN_CTX_free(p); }
};
struct GroupDeleter {
  void operator()(EC_GROUP* p) const { EC_GROUP_free(p); }
};
struct PointDeleter {
  void operator()(EC_POINT* p) const { EC_POINT_free(p); }
};
struct ParamBldDeleter {
  void operator()(OSSL_PARAM_BLD* p) const { OSSL_PARAM_BLD_free(p); }
};
struct ParamDeleter {
  void operator()(OSSL_PARAM* p) const { OSSL_PARAM_free(p); }
};
struct PkeyCtxDeleter {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
};
struct CipherDeleter {
  void operator()(EVP_CIPHER* p) const { EVP_CIPHER_free(p); }
};
struct CipherCtxDeleter {
  void operator()(EVP_CIPHER_CTX* p) const { EVP_CIPHER_CTX_free(p); }
};

absl::Status OpensslInternal(absl::string_view what) {
  const unsigned long code = ERR_get_error();
  char buf[256] = {0};
  if (code != 0) ERR_error_string_n(code, buf, sizeof(buf));
  ERR_clear_error();
  return absl::InternalError(absl::StrCat("secagg: ", what, code != 0 ? absl::StrCat(": ", buf) : ""));
}

// Length-prefixed so that no two (run, site) pairs give the same string.
std::string SessionPart(const SessionId& session) {
  return absl::StrCat("run=", session.run_id.size(), ":", session.run_id, "|round=", session.round,
                      "|attempt=", session.attempt);
}

std::string ShareContext(const SessionId& session, int from_index, int to_index) {
  return absl::StrCat("fedtune-secagg-shares-v1|", SessionPart(session), "|from=", from_index, "|to=", to_index);
}

std::string MaskContext(const SessionId& session, int a, int b) {
  return absl::StrCat("fedtune-secagg-mask-v1|", SessionPart(session), "|pair=", std::min(a, b), ",", std::max(a, b));
}

absl::Status CheckIndex(int index, absl::string_view what) {
  if (index < 1 || index > kMaxSecAggSites) {
    return absl::InvalidArgumentError(
        absl::StrCat("secagg: ", what, " index ", index, " is outside [1, ", kMaxSecAggSites, "]"));
  }
  return absl::OkStatus();
}

absl::Status Prefix(const absl::Status& status, absl::string_view prefix) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(prefix, ": ", status.message()));
}

void PutU32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutU64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint32_t GetU32(const unsigned char* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}
uint64_t GetU64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}

// The AES-128-GCM key of the ordered pair (from, to).
absl::StatusOr<Seed> ShareKey(const KeyPair& own_cipher_key, absl::Span<const uint8_t> peer_cipher_public_key,
                              const SessionId& session, int from_index, int to_index) {
  RETURN_IF_ERROR(CheckIndex(from_index, "sender"));
  RETURN_IF_ERROR(CheckIndex(to_index, "receiver"));
  if (from_index == to_index) {
    return absl::InvalidArgumentError(absl::StrCat("secagg: shares from index ", from_index, " to itself"));
  }
  absl::StatusOr<Seed> key =
      DerivePairwiseSeed(own_cipher_key, peer_cipher_public_key, ShareContext(session, from_index, to_index));
  if (!key.ok()) {
    return Prefix(key.status(), absl::StrCat("secagg: cipher key of the pair (", from_index, ", ", to_index, ")"));
  }
  return key;
}

absl::StatusOr<std::unique_ptr<EVP_CIPHER, CipherDeleter>> FetchGcm() {
  std::unique_ptr<EVP_CIPHER, CipherDeleter> cipher(EVP_CIPHER_fetch(nullptr, "AES-128-GCM", nullptr));
  if (cipher == nullptr) return OpensslInternal("AES-128-GCM unavailable");
  return cipher;
}

Seed Half(const PrivateScalar& scalar, int half) {
  Seed s{};
  std::memcpy(s.data(), scalar.data() + 16 * half, 16);
  return s;
}

// P-256's group order n, big-endian.
constexpr uint8_t kGroupOrder[32] = {0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
                                     0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17,
                                     0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51};

absl::Status CheckRevealedY(const v1::SecAggRevealedShare& revealed, int expected_values, absl::string_view what) {
  if (revealed.y_size() != expected_values) {
    return absl::InvalidArgumentError(absl::StrCat("secagg: the ", what, " share of site '", revealed.site_id(),
                                                   "' has ", revealed.y_size(), " values, expected ", expected_values));
  }
  for (uint64_t y : revealed.y()) {
    if (y >= kShamirPrime) {
      return absl::InvalidArgumentError(
          absl::StrCat("secagg: the ", what, " share of site '", revealed.site_id(), "' has a value >= p"));
    }
  }
  if (revealed.x() < 1 || revealed.x() > kMaxSecAggSites) {
    return absl::InvalidArgumentError(absl::StrCat("secagg: the ", what, " share of site '", revealed.site_id(),
                                                   "' has x = ", revealed.x(), " outside [1, ", kMaxSecAggSites, "]"));
  }
  return absl::OkStatus();
}

}  // namespace

// ---- Keys

std::string KeysSignedContext(const SessionId& session, std::string_view site_id, int64_t num_samples) {
  return absl::StrCat("fedtune-secagg-keys-v1|", SessionPart(session), "|site=", site_id.size(), ":",
                      std::string(site_id), "|num_samples=", num_samples);
}

namespace {
std::vector<uint8_t> BothKeys(const std::string& cipher_public_key, const std::string& mask_public_key) {
  std::vector<uint8_t> both(cipher_public_key.begin(), cipher_public_key.end());
  both.insert(both.end(), mask_public_key.begin(), mask_public_key.end());
  return both;
}
}  // namespace

absl::Status SignKeys(EVP_PKEY* site_key, const SessionId& session, std::string_view site_id, v1::SecAggKeys* keys) {
  if (keys == nullptr) return absl::InvalidArgumentError("secagg: no keys to sign");
  ASSIGN_OR_RETURN(std::vector<uint8_t> signature,
                   SignPublicKey(site_key, BothKeys(keys->cipher_public_key(), keys->mask_public_key()),
                                 KeysSignedContext(session, site_id, keys->num_samples())));
  keys->set_signature(std::string(signature.begin(), signature.end()));
  return absl::OkStatus();
}

absl::Status VerifyPeerKeys(EVP_PKEY* certificate_key, const SessionId& session, const v1::SecAggPeer& peer) {
  const std::string who = absl::StrCat("secagg: peer '", peer.site_id(), "' (index ", peer.index(), ")");
  for (const auto& [what, key] : {std::pair<const char*, const std::string*>{"cipher", &peer.cipher_public_key()},
                                  {"mask", &peer.mask_public_key()}}) {
    absl::StatusOr<PkeyPtr> imported =
        ImportPublicKey(absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(key->data()), key->size()));
    if (!imported.ok()) return Prefix(imported.status(), absl::StrCat(who, ": ", what, " public key"));
  }
  if (peer.cipher_public_key() == peer.mask_public_key()) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": the cipher and mask public keys are the same"));
  }
  const std::string& sig = peer.signature();
  absl::Status verified =
      VerifyPublicKeySignature(certificate_key, BothKeys(peer.cipher_public_key(), peer.mask_public_key()),
                               KeysSignedContext(session, peer.site_id(), peer.num_samples()),
                               absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(sig.data()), sig.size()));
  if (!verified.ok()) return Prefix(verified, who);
  return absl::OkStatus();
}

// ---- Mask key as a secret

absl::StatusOr<PrivateScalar> ExportPrivateScalar(const KeyPair& key) {
  BIGNUM* raw = nullptr;
  if (key.pkey() == nullptr || EVP_PKEY_get_bn_param(key.pkey(), OSSL_PKEY_PARAM_PRIV_KEY, &raw) != 1 ||
      raw == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError("secagg: the key pair has no private scalar to export");
  }
  BnPtr bn(raw);
  PrivateScalar out{};
  if (BN_bn2binpad(bn.get(), out.data(), static_cast<int>(out.size())) != static_cast<int>(out.size())) {
    return OpensslInternal("exporting the private scalar failed");
  }
  return out;
}

absl::StatusOr<KeyPair> KeyPairFromPrivateScalar(const PrivateScalar& scalar) {
  if (std::all_of(scalar.begin(), scalar.end(), [](uint8_t b) { return b == 0; })) {
    return absl::InvalidArgumentError("secagg: a private scalar of 0");
  }
  if (!std::lexicographical_compare(scalar.begin(), scalar.end(), std::begin(kGroupOrder), std::end(kGroupOrder))) {
    return absl::InvalidArgumentError("secagg: a private scalar >= the P-256 group order");
  }
  BnPtr priv(BN_bin2bn(scalar.data(), static_cast<int>(scalar.size()), nullptr));
  std::unique_ptr<EC_GROUP, GroupDeleter> group(EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1));
  std::unique_ptr<BN_CTX, BnCtxDeleter> bn_ctx(BN_CTX_new());
  if (priv == nullptr || group == nullptr || bn_ctx == nullptr) return OpensslInternal("P-256 setup failed");
  std::unique_ptr<EC_POINT, PointDeleter> point(EC_POINT_new(group.get()));
  if (point == nullptr || EC_POINT_mul(group.get(), point.get(), priv.get(), nullptr, nullptr, bn_ctx.get()) != 1) {
    return OpensslInternal("deriving the public point failed");
  }
  std::vector<uint8_t> pub(kPublicKeyBytes);
  if (EC_POINT_point2oct(group.get(), point.get(), POINT_CONVERSION_UNCOMPRESSED, pub.data(), pub.size(),
                         bn_ctx.get()) != kPublicKeyBytes) {
    return OpensslInternal("encoding the public point failed");
  }
  std::unique_ptr<OSSL_PARAM_BLD, ParamBldDeleter> bld(OSSL_PARAM_BLD_new());
  if (bld == nullptr || OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_PRIV_KEY, priv.get()) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, pub.data(), pub.size()) != 1) {
    return OpensslInternal("building the key parameters failed");
  }
  std::unique_ptr<OSSL_PARAM, ParamDeleter> params(OSSL_PARAM_BLD_to_param(bld.get()));
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxDeleter> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  EVP_PKEY* raw = nullptr;
  if (params == nullptr || ctx == nullptr || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_KEYPAIR, params.get()) != 1 || raw == nullptr) {
    return OpensslInternal("building the P-256 key from its scalar failed");
  }
  return KeyPair::FromPkey(PkeyPtr(raw));
}

// ---- Shares

std::string SerializeSharePayload(const SharePayload& payload) {
  std::string out;
  out.reserve(kSharePayloadBytes);
  out.push_back(static_cast<char>(kPayloadVersion));
  PutU32(out, static_cast<uint32_t>(payload.x));
  PutU32(out, static_cast<uint32_t>(payload.from));
  for (uint64_t y : payload.self_mask.y) PutU64(out, y);
  for (const Share& half : payload.mask_key) {
    for (uint64_t y : half.y) PutU64(out, y);
  }
  return out;
}

absl::StatusOr<SharePayload> ParseSharePayload(std::string_view bytes) {
  if (bytes.size() != kSharePayloadBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("secagg: a share payload has ", bytes.size(), " bytes, expected ", kSharePayloadBytes));
  }
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  if (p[0] != kPayloadVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("secagg: share payload version ", int{p[0]}, " is not ", int{kPayloadVersion}));
  }
  SharePayload payload;
  payload.x = static_cast<int32_t>(GetU32(p + 1));
  payload.from = static_cast<int32_t>(GetU32(p + 5));
  RETURN_IF_ERROR(CheckIndex(payload.x, "share payload x"));
  RETURN_IF_ERROR(CheckIndex(payload.from, "share payload sender"));
  std::array<Share*, 3> shares = {&payload.self_mask, &payload.mask_key[0], &payload.mask_key[1]};
  const unsigned char* v = p + 9;
  for (Share* share : shares) {
    share->x = payload.x;
    for (uint64_t& y : share->y) {
      y = GetU64(v);
      v += 8;
      if (y >= kShamirPrime) {
        return absl::InvalidArgumentError(
            absl::StrCat("secagg: the share payload from index ", payload.from, " has a value >= p"));
      }
    }
  }
  return payload;
}

absl::StatusOr<std::string> EncryptShares(const KeyPair& own_cipher_key,
                                          absl::Span<const uint8_t> peer_cipher_public_key, const SessionId& session,
                                          int from_index, int to_index, const SharePayload& payload) {
  ASSIGN_OR_RETURN(Seed key, ShareKey(own_cipher_key, peer_cipher_public_key, session, from_index, to_index));
  const std::string aad = ShareContext(session, from_index, to_index);
  const std::string plain = SerializeSharePayload(payload);
  std::string out(kNonceBytes + plain.size() + kTagBytes, '\0');
  auto* o = reinterpret_cast<unsigned char*>(out.data());
  if (RAND_bytes(o, kNonceBytes) != 1) return OpensslInternal("RAND_bytes failed");
  ASSIGN_OR_RETURN(auto cipher, FetchGcm());
  std::unique_ptr<EVP_CIPHER_CTX, CipherCtxDeleter> ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  if (ctx == nullptr || EVP_EncryptInit_ex2(ctx.get(), cipher.get(), key.data(), o, nullptr) != 1 ||
      EVP_EncryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), o + kNonceBytes, &len, reinterpret_cast<const unsigned char*>(plain.data()),
                        static_cast<int>(plain.size())) != 1 ||
      len != static_cast<int>(plain.size()) || EVP_EncryptFinal_ex(ctx.get(), o + kNonceBytes + len, &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kTagBytes, o + kNonceBytes + plain.size()) != 1) {
    OPENSSL_cleanse(key.data(), key.size());
    return OpensslInternal("AES-128-GCM encryption failed");
  }
  OPENSSL_cleanse(key.data(), key.size());
  return out;
}

absl::StatusOr<SharePayload> DecryptShares(const KeyPair& own_cipher_key,
                                           absl::Span<const uint8_t> peer_cipher_public_key, const SessionId& session,
                                           int from_index, int to_index, std::string_view ciphertext) {
  if (ciphertext.size() < kNonceBytes + kTagBytes + 1 || ciphertext.size() > kMaxEncryptedSharesBytes) {
    return absl::InvalidArgumentError(absl::StrCat("secagg: the encrypted shares from index ", from_index, " have ",
                                                   ciphertext.size(), " bytes, outside [", kNonceBytes + kTagBytes + 1,
                                                   ", ", kMaxEncryptedSharesBytes, "]"));
  }
  ASSIGN_OR_RETURN(Seed key, ShareKey(own_cipher_key, peer_cipher_public_key, session, from_index, to_index));
  const std::string aad = ShareContext(session, from_index, to_index);
  const auto* c = reinterpret_cast<const unsigned char*>(ciphertext.data());
  const size_t body = ciphertext.size() - kNonceBytes - kTagBytes;
  std::string plain(body, '\0');
  unsigned char tag[kTagBytes];
  std::memcpy(tag, c + kNonceBytes + body, kTagBytes);
  ASSIGN_OR_RETURN(auto cipher, FetchGcm());
  std::unique_ptr<EVP_CIPHER_CTX, CipherCtxDeleter> ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  if (ctx == nullptr || EVP_DecryptInit_ex2(ctx.get(), cipher.get(), key.data(), c, nullptr) != 1 ||
      EVP_DecryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_DecryptUpdate(ctx.get(), reinterpret_cast<unsigned char*>(plain.data()), &len, c + kNonceBytes,
                        static_cast<int>(body)) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kTagBytes, tag) != 1) {
    OPENSSL_cleanse(key.data(), key.size());
    return OpensslInternal("AES-128-GCM decryption setup failed");
  }
  OPENSSL_cleanse(key.data(), key.size());
  int final_len = 0;
  if (EVP_DecryptFinal_ex(ctx.get(), reinterpret_cast<unsigned char*>(plain.data()) + len, &final_len) != 1) {
    ERR_clear_error();
    OPENSSL_cleanse(plain.data(), plain.size());
    return absl::PermissionDeniedError(
        absl::StrCat("secagg: the encrypted shares from index ", from_index, " to index ", to_index,
                     " do not authenticate (tampered, or made for another session, pair or key)"));
  }
  absl::StatusOr<SharePayload> payload = ParseSharePayload(plain);
  OPENSSL_cleanse(plain.data(), plain.size());
  if (!payload.ok()) return Prefix(payload.status(), absl::StrCat("secagg: shares from index ", from_index));
  if (payload->x != to_index || payload->from != from_index) {
    return absl::InvalidArgumentError(absl::StrCat("secagg: the shares from index ", from_index,
                                                   " name x = ", payload->x, " and sender ", payload->from,
                                                   ", expected x = ", to_index, " and sender ", from_index));
  }
  return payload;
}

absl::StatusOr<SiteSecrets> MakeSiteSecrets(int own_index, const KeyPair& mask_key, int threshold, int n) {
  if (n < 2 || n > kMaxSecAggSites) {
    return absl::InvalidArgumentError(
        absl::StrCat("secagg: a roster of ", n, " sites is outside [2, ", kMaxSecAggSites, "]"));
  }
  if (threshold < 2 || threshold > n) {
    return absl::InvalidArgumentError(absl::StrCat("secagg: threshold ", threshold, " is outside [2, ", n, "]"));
  }
  if (own_index < 1 || own_index > n) {
    return absl::InvalidArgumentError(absl::StrCat("secagg: own index ", own_index, " is outside [1, ", n, "]"));
  }
  SiteSecrets secrets;
  if (RAND_bytes(secrets.self_seed.data(), static_cast<int>(secrets.self_seed.size())) != 1) {
    return OpensslInternal("RAND_bytes failed");
  }
  ASSIGN_OR_RETURN(PrivateScalar scalar, ExportPrivateScalar(mask_key));
  Seed low = Half(scalar, 0);
  Seed high = Half(scalar, 1);
  OPENSSL_cleanse(scalar.data(), scalar.size());
  absl::StatusOr<std::vector<Share>> self_shares = SplitSecret(secrets.self_seed, threshold, n);
  absl::StatusOr<std::vector<Share>> low_shares = SplitSecret(low, threshold, n);
  absl::StatusOr<std::vector<Share>> high_shares = SplitSecret(high, threshold, n);
  OPENSSL_cleanse(low.data(), low.size());
  OPENSSL_cleanse(high.data(), high.size());
  RETURN_IF_ERROR(self_shares.status());
  RETURN_IF_ERROR(low_shares.status());
  RETURN_IF_ERROR(high_shares.status());
  for (int i = 0; i < n; ++i) {
    SharePayload& p = secrets.payloads[i + 1];
    p.x = i + 1;
    p.from = own_index;
    p.self_mask = (*self_shares)[i];
    p.mask_key = {(*low_shares)[i], (*high_shares)[i]};
  }
  return secrets;
}

// ---- Masking

absl::StatusOr<std::vector<uint32_t>> MaskForPeers(int own_index, absl::Span<const uint32_t> encoded,
                                                   const Seed& self_seed, const KeyPair& mask_key,
                                                   const std::map<int, std::vector<uint8_t>>& peer_mask_keys,
                                                   const SessionId& session) {
  RETURN_IF_ERROR(CheckIndex(own_index, "own"));
  std::vector<PeerSeed> peers;
  peers.reserve(peer_mask_keys.size());
  for (const auto& [index, key] : peer_mask_keys) {
    if (index == own_index) continue;
    RETURN_IF_ERROR(CheckIndex(index, "peer"));
    absl::StatusOr<Seed> seed = DerivePairwiseSeed(mask_key, key, MaskContext(session, own_index, index));
    if (!seed.ok()) return Prefix(seed.status(), absl::StrCat("secagg: mask key of peer index ", index));
    peers.push_back({index, *seed});
  }
  return MaskInput(own_index, encoded, self_seed, peers);
}

// ---- Recovery

absl::StatusOr<std::vector<uint32_t>> RecoverSum(absl::Span<const uint32_t> masked_sum,
                                                 const std::map<int, std::vector<uint8_t>>& mask_keys,
                                                 const std::vector<int>& survivors, const std::vector<int>& dropped,
                                                 const RevealedShares& revealed, int threshold,
                                                 const SessionId& session) {
  if (threshold < 1 || threshold > kMaxShareholders) {
    return absl::InvalidArgumentError(absl::StrCat("secagg: threshold ", threshold, " is out of bounds"));
  }
  std::set<int> seen;
  for (const std::vector<int>* list : {&survivors, &dropped}) {
    for (int index : *list) {
      if (mask_keys.count(index) == 0) {
        return absl::InvalidArgumentError(absl::StrCat("secagg: index ", index, " has no advertised mask key"));
      }
      if (!seen.insert(index).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("secagg: index ", index, " is listed twice among the survivors and dropped sites"));
      }
    }
  }
  auto reconstruct = [threshold](absl::Span<const Share> shares, int index,
                                 absl::string_view what) -> absl::StatusOr<Seed> {
    if (static_cast<int>(shares.size()) < threshold) {
      return absl::FailedPreconditionError(
          absl::StrCat("secagg: ", shares.size(), " shares of the ", what, " of index ", index, ", need ", threshold));
    }
    absl::StatusOr<Seed> secret = ReconstructSecret(shares, threshold);
    if (!secret.ok()) return Prefix(secret.status(), absl::StrCat("secagg: the ", what, " of index ", index));
    return secret;
  };

  std::vector<Seed> self_seeds;
  self_seeds.reserve(survivors.size());
  for (int u : survivors) {
    auto it = revealed.self_shares.find(u);
    const std::vector<Share> none;
    ASSIGN_OR_RETURN(Seed b, reconstruct(it == revealed.self_shares.end() ? none : it->second, u, "self-mask seed"));
    self_seeds.push_back(b);
  }
  std::vector<DroppedPairSeed> pairs;
  for (int v : dropped) {
    auto it = revealed.key_shares.find(v);
    std::vector<Share> low, high;
    if (it != revealed.key_shares.end()) {
      for (const std::array<Share, 2>& s : it->second) {
        low.push_back(s[0]);
        high.push_back(s[1]);
      }
    }
    ASSIGN_OR_RETURN(Seed low_half, reconstruct(low, v, "mask key (low half)"));
    ASSIGN_OR_RETURN(Seed high_half, reconstruct(high, v, "mask key (high half)"));
    PrivateScalar scalar{};
    std::memcpy(scalar.data(), low_half.data(), 16);
    std::memcpy(scalar.data() + 16, high_half.data(), 16);
    absl::StatusOr<KeyPair> key = KeyPairFromPrivateScalar(scalar);
    OPENSSL_cleanse(scalar.data(), scalar.size());
    if (!key.ok()) {
      if (key.status().code() == absl::StatusCode::kInvalidArgument) {
        return absl::DataLossError(absl::StrCat("secagg: the mask key of index ", v,
                                                " reconstructs to an invalid scalar: ", key.status().message()));
      }
      return key.status();
    }
    if (key->public_key() != mask_keys.at(v)) {
      return absl::DataLossError(absl::StrCat("secagg: the reconstructed mask key of index ", v,
                                              " is not the one it advertised (wrong or forged shares)"));
    }
    for (int u : survivors) {
      absl::StatusOr<Seed> seed = DerivePairwiseSeed(*key, mask_keys.at(u), MaskContext(session, v, u));
      if (!seed.ok()) return Prefix(seed.status(), absl::StrCat("secagg: mask key of index ", u));
      pairs.push_back({v, u, *seed});
    }
  }
  absl::StatusOr<std::vector<uint32_t>> sum = Unmask(masked_sum, self_seeds, pairs);
  for (Seed& s : self_seeds) OPENSSL_cleanse(s.data(), s.size());
  for (DroppedPairSeed& p : pairs) OPENSSL_cleanse(p.seed.data(), p.seed.size());
  return sum;
}

// ---- Revealed shares on the wire

v1::SecAggRevealedShare SelfMaskReveal(const std::string& owner_site_id, const Share& share) {
  v1::SecAggRevealedShare out;
  out.set_site_id(owner_site_id);
  out.set_x(share.x);
  for (uint64_t y : share.y) out.add_y(y);
  return out;
}

v1::SecAggRevealedShare MaskKeyReveal(const std::string& owner_site_id, const std::array<Share, 2>& shares) {
  v1::SecAggRevealedShare out;
  out.set_site_id(owner_site_id);
  out.set_x(shares[0].x);
  for (const Share& s : shares) {
    for (uint64_t y : s.y) out.add_y(y);
  }
  return out;
}

absl::StatusOr<Share> ParseSelfMaskReveal(const v1::SecAggRevealedShare& revealed) {
  RETURN_IF_ERROR(CheckRevealedY(revealed, 3, "self-mask"));
  Share share;
  share.x = revealed.x();
  for (int i = 0; i < 3; ++i) share.y[i] = revealed.y(i);
  return share;
}

absl::StatusOr<std::array<Share, 2>> ParseMaskKeyReveal(const v1::SecAggRevealedShare& revealed) {
  RETURN_IF_ERROR(CheckRevealedY(revealed, 6, "mask-key"));
  std::array<Share, 2> shares;
  for (int h = 0; h < 2; ++h) {
    shares[h].x = revealed.x();
    for (int i = 0; i < 3; ++i) shares[h].y[i] = revealed.y(3 * h + i);
  }
  return shares;
}

// ---- Layout and the masked bundle

absl::StatusOr<Layout> MakeLayout(const fl::TensorMap& reference) {
  Layout layout;
  for (const auto& [name, tensor] : reference) {  // std::map: sorted by name
    if (!tensor.defined() || !fl::IsFloating(tensor)) continue;
    LayoutEntry entry;
    entry.name = name;
    entry.shape.assign(tensor.sizes().begin(), tensor.sizes().end());
    entry.offset = layout.length;
    entry.numel = tensor.numel();
    layout.length += entry.numel;
    if (layout.length > kMaxPrgLength) {
      return absl::InvalidArgumentError(
          absl::StrCat("secagg: the floating tensors exceed ", kMaxPrgLength, " entries (at tensor '", name, "')"));
    }
    layout.entries.push_back(std::move(entry));
  }
  if (layout.entries.empty() || layout.length == 0) {
    return absl::InvalidArgumentError("secagg: the model has no floating tensor entries to aggregate");
  }
  return layout;
}

absl::StatusOr<std::vector<float>> Flatten(const fl::TensorMap& delta, const Layout& layout, double scale) {
  if (!std::isfinite(scale)) return absl::InvalidArgumentError(absl::StrCat("secagg: scale ", scale, " is not finite"));
  if (layout.length < 0 || layout.length > kMaxPrgLength) {
    return absl::InvalidArgumentError(absl::StrCat("secagg: layout length ", layout.length, " is out of bounds"));
  }
  std::vector<float> out(static_cast<size_t>(layout.length));
  for (const LayoutEntry& entry : layout.entries) {
    auto it = delta.find(entry.name);
    if (it == delta.end() || !it->second.defined()) {
      return absl::InvalidArgumentError(absl::StrCat("secagg: the update lacks tensor '", entry.name, "'"));
    }
    const at::Tensor& t = it->second;
    if (!fl::IsFloating(t)) {
      return absl::InvalidArgumentError(
          absl::StrCat("secagg: tensor '", entry.name, "' is ", fl::DTypeName(t), ", not floating"));
    }
    if (std::vector<int64_t>(t.sizes().begin(), t.sizes().end()) != entry.shape) {
      return absl::InvalidArgumentError(absl::StrCat("secagg: tensor '", entry.name, "' has shape ", fl::ShapeString(t),
                                                     ", expected [", absl::StrJoin(entry.shape, ", "), "]"));
    }
    if (entry.offset < 0 || entry.numel != t.numel() || entry.offset + entry.numel > layout.length) {
      return absl::InvalidArgumentError(absl::StrCat("secagg: layout entry '", entry.name, "' is inconsistent"));
    }
    const at::Tensor d = t.detach().to(at::kCPU).to(at::kDouble).contiguous();
    const double* p = d.data_ptr<double>();
    for (int64_t i = 0; i < entry.numel; ++i) {
      const float v = static_cast<float>(scale * p[i]);
      if (!std::isfinite(v)) {
        return absl::InvalidArgumentError(absl::StrCat("secagg: tensor '", entry.name, "' has a non-finite value at ",
                                                       i, " (after scaling by ", scale, ")"));
      }
      out[static_cast<size_t>(entry.offset + i)] = v;
    }
  }
  return out;
}

absl::StatusOr<fl::TensorMap> Unflatten(absl::Span<const double> values, const Layout& layout) {
  if (static_cast<int64_t>(values.size()) != layout.length) {
    return absl::InvalidArgumentError(
        absl::StrCat("secagg: ", values.size(), " values for a layout of ", layout.length, " entries"));
  }
  fl::TensorMap out;
  for (const LayoutEntry& entry : layout.entries) {
    if (entry.offset < 0 || entry.numel < 0 || entry.offset + entry.numel > layout.length) {
      return absl::InvalidArgumentError(absl::StrCat("secagg: layout entry '", entry.name, "' is inconsistent"));
    }
    int64_t shape_numel = 1;
    for (int64_t d : entry.shape) {
      if (d < 0 || (d > 0 && shape_numel > kMaxPrgLength / d)) {
        return absl::InvalidArgumentError(absl::StrCat("secagg: layout entry '", entry.name, "' has a bad shape"));
      }
      shape_numel *= d;
    }
    if (shape_numel != entry.numel) {
      return absl::InvalidArgumentError(absl::StrCat("secagg: layout entry '", entry.name, "' has ", entry.numel,
                                                     " entries for its shape's ", shape_numel));
    }
    at::Tensor t = at::empty(entry.shape, at::TensorOptions().dtype(at::kFloat));
    float* p = t.data_ptr<float>();
    for (int64_t i = 0; i < entry.numel; ++i) {
      const double v = values[static_cast<size_t>(entry.offset + i)];
      if (!std::isfinite(v)) {
        return absl::InvalidArgumentError(
            absl::StrCat("secagg: a non-finite value for tensor '", entry.name, "' at ", i));
      }
      p[i] = static_cast<float>(v);
    }
    out.emplace(entry.name, std::move(t));
  }
  return out;
}

v1::TensorBundle MaskedBundle(absl::Span<const uint32_t> masked) {
  v1::TensorBundle bundle;
  v1::NamedTensor* t = bundle.add_tensors();
  t->set_name(kMaskedTensorName);
  t->add_shape(static_cast<int64_t>(masked.size()));
  t->set_dtype(v1::NamedTensor::INT32);
  t->set_encoding(v1::NamedTensor::MASKED_UINT32);
  std::string data;
  data.reserve(masked.size() * 4);
  for (uint32_t v : masked) PutU32(data, v);
  t->set_data(std::move(data));
  return bundle;
}

absl::StatusOr<std::vector<uint32_t>> ReadMaskedBundle(const v1::TensorBundle& bundle, int64_t expected_length) {
  if (expected_length < 1 || expected_length > kMaxPrgLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("secagg: expected masked length ", expected_length, " is outside [1, ", kMaxPrgLength, "]"));
  }
  if (bundle.tensors_size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("secagg: a masked upload holds exactly one tensor ('",
                                                   kMaskedTensorName, "'), got ", bundle.tensors_size()));
  }
  const v1::NamedTensor& t = bundle.tensors(0);
  if (t.name() != kMaskedTensorName) {
    return absl::InvalidArgumentError(
        absl::StrCat("secagg: the masked tensor is named '", t.name(), "', expected '", kMaskedTensorName, "'"));
  }
  if (t.dtype() != v1::NamedTensor::INT32) {
    return absl::InvalidArgumentError(absl::StrCat("secagg: the masked tensor has dtype ",
                                                   v1::NamedTensor::DType_Name(t.dtype()), ", expected INT32"));
  }
  if (t.encoding() != v1::NamedTensor::MASKED_UINT32) {
    return absl::InvalidArgumentError(absl::StrCat("secagg: the masked tensor has encoding ",
                                                   v1::NamedTensor::Encoding_Name(t.encoding()),
                                                   ", expected MASKED_UINT32"));
  }
  if (t.shape_size() != 1 || t.shape(0) != expected_length) {
    return absl::InvalidArgumentError(absl::StrCat("secagg: the masked tensor has shape [",
                                                   absl::StrJoin(t.shape(), ", "), "], expected [", expected_length,
                                                   "]"));
  }
  if (t.data().size() != static_cast<size_t>(expected_length) * 4) {
    return absl::InvalidArgumentError(absl::StrCat("secagg: the masked tensor has ", t.data().size(),
                                                   " bytes of data, expected ", expected_length * 4));
  }
  if (t.scale() != 0 || t.indices_size() != 0) {
    return absl::InvalidArgumentError("secagg: the masked tensor carries a scale or indices");
  }
  std::vector<uint32_t> out(static_cast<size_t>(expected_length));
  const auto* p = reinterpret_cast<const unsigned char*>(t.data().data());
  for (size_t i = 0; i < out.size(); ++i) out[i] = GetU32(p + 4 * i);
  return out;
}

}  // namespace fedtune::secagg
