#include "common/secagg/key_agreement.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace fedtune::secagg {
namespace {

constexpr char kCurve[] = "P-256";
constexpr char kSalt[] = "fedtune-secagg-v1";
constexpr char kSignaturePrefix[] = "fedtune-secagg-public-key-v1";

struct PkeyCtxDeleter {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
};
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, PkeyCtxDeleter>;
struct MdCtxDeleter {
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
};
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, MdCtxDeleter>;

absl::Status OpensslError(std::string_view what) {
  const unsigned long code = ERR_get_error();
  char buf[256] = {0};
  if (code != 0) ERR_error_string_n(code, buf, sizeof(buf));
  ERR_clear_error();
  return absl::InternalError(absl::StrCat("secagg: ", std::string(what), code != 0 ? absl::StrCat(": ", buf) : ""));
}

std::vector<uint8_t> SignedMessage(absl::Span<const uint8_t> public_key, std::string_view context) {
  std::vector<uint8_t> msg(kSignaturePrefix, kSignaturePrefix + sizeof(kSignaturePrefix) - 1);
  msg.push_back(0);
  const uint32_t len = static_cast<uint32_t>(context.size());
  for (int i = 0; i < 4; ++i) msg.push_back(static_cast<uint8_t>(len >> (8 * i)));
  msg.insert(msg.end(), context.begin(), context.end());
  msg.insert(msg.end(), public_key.begin(), public_key.end());
  return msg;
}

absl::Status CheckContext(std::string_view context) {
  if (context.size() > kMaxContextBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("secagg: context of ", context.size(), " bytes exceeds ", kMaxContextBytes));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<KeyPair> KeyPair::Generate() {
  PkeyPtr pkey(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", kCurve));
  if (pkey == nullptr) return OpensslError("P-256 key generation failed");
  return FromPkey(std::move(pkey));
}

absl::StatusOr<KeyPair> KeyPair::FromPkey(PkeyPtr pkey) {
  if (pkey == nullptr) return absl::InvalidArgumentError("secagg: no key");
  char group[64] = {0};
  size_t group_len = 0;
  if (EVP_PKEY_get_base_id(pkey.get()) != EVP_PKEY_EC ||
      EVP_PKEY_get_utf8_string_param(pkey.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), &group_len) != 1 ||
      (std::string_view(group, group_len) != "P-256" && std::string_view(group, group_len) != "prime256v1")) {
    ERR_clear_error();
    return absl::InvalidArgumentError("secagg: the key is not an EC P-256 key");
  }
  std::vector<uint8_t> pub(kPublicKeyBytes);
  size_t len = 0;
  if (EVP_PKEY_get_octet_string_param(pkey.get(), OSSL_PKEY_PARAM_PUB_KEY, pub.data(), pub.size(), &len) != 1 ||
      len != kPublicKeyBytes || pub[0] != 0x04) {
    ERR_clear_error();
    return absl::InvalidArgumentError("secagg: the P-256 key has no exportable uncompressed public point");
  }
  return KeyPair(std::move(pkey), std::move(pub));
}

absl::StatusOr<PkeyPtr> ImportPublicKey(absl::Span<const uint8_t> public_key) {
  if (public_key.size() != kPublicKeyBytes || public_key[0] != 0x04) {
    return absl::InvalidArgumentError(absl::StrCat("secagg: a public key must be an uncompressed P-256 point (",
                                                   kPublicKeyBytes, " bytes starting 0x04), got ", public_key.size(),
                                                   " bytes"));
  }
  std::vector<uint8_t> copy(public_key.begin(), public_key.end());
  char group[] = "P-256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0),
      OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, copy.data(), copy.size()),
      OSSL_PARAM_construct_end(),
  };
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  EVP_PKEY* raw = nullptr;
  if (ctx == nullptr || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params) != 1 || raw == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError("secagg: the public key is not a point on P-256");
  }
  PkeyPtr pkey(raw);
  PkeyCtxPtr check(EVP_PKEY_CTX_new_from_pkey(nullptr, pkey.get(), nullptr));
  if (check == nullptr || EVP_PKEY_public_check(check.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError("secagg: the public key is not a valid point on P-256");
  }
  return pkey;
}

std::string PairwiseContext(std::string_view run_id, int64_t round, int64_t site_a, int64_t site_b) {
  return absl::StrCat("fedtune-secagg|run=", std::string(run_id), "|round=", round, "|pair=", std::min(site_a, site_b),
                      ",", std::max(site_a, site_b));
}

absl::StatusOr<Seed> DerivePairwiseSeed(const KeyPair& own, absl::Span<const uint8_t> peer_public_key,
                                        std::string_view context) {
  if (absl::Status s = CheckContext(context); !s.ok()) return s;
  absl::StatusOr<PkeyPtr> peer = ImportPublicKey(peer_public_key);
  if (!peer.ok()) return peer.status();
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, own.pkey(), nullptr));
  size_t secret_len = 0;
  if (ctx == nullptr || EVP_PKEY_derive_init(ctx.get()) != 1 || EVP_PKEY_derive_set_peer(ctx.get(), peer->get()) != 1 ||
      EVP_PKEY_derive(ctx.get(), nullptr, &secret_len) != 1 || secret_len == 0 || secret_len > 128) {
    return OpensslError("ECDH derivation failed");
  }
  std::vector<uint8_t> secret(secret_len);
  if (EVP_PKEY_derive(ctx.get(), secret.data(), &secret_len) != 1) return OpensslError("ECDH derivation failed");
  secret.resize(secret_len);

  std::unique_ptr<EVP_KDF, decltype(&EVP_KDF_free)> kdf(EVP_KDF_fetch(nullptr, "HKDF", nullptr), &EVP_KDF_free);
  if (kdf == nullptr) return OpensslError("HKDF unavailable");
  std::unique_ptr<EVP_KDF_CTX, decltype(&EVP_KDF_CTX_free)> kctx(EVP_KDF_CTX_new(kdf.get()), &EVP_KDF_CTX_free);
  if (kctx == nullptr) return OpensslError("HKDF context failed");
  char digest[] = "SHA256";
  std::vector<uint8_t> salt(kSalt, kSalt + sizeof(kSalt) - 1);
  std::vector<uint8_t> info(context.begin(), context.end());
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, secret.data(), secret.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, salt.data(), salt.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.data(), info.size()),
      OSSL_PARAM_construct_end(),
  };
  Seed seed{};
  const int ok = EVP_KDF_derive(kctx.get(), seed.data(), seed.size(), params);
  OPENSSL_cleanse(secret.data(), secret.size());
  if (ok != 1) return OpensslError("HKDF-SHA256 failed");
  return seed;
}

absl::StatusOr<std::vector<uint8_t>> SignPublicKey(EVP_PKEY* long_term_key, absl::Span<const uint8_t> public_key,
                                                   std::string_view context) {
  if (long_term_key == nullptr) return absl::InvalidArgumentError("secagg: no long-term key to sign with");
  if (absl::Status s = CheckContext(context); !s.ok()) return s;
  const std::vector<uint8_t> msg = SignedMessage(public_key, context);
  MdCtxPtr ctx(EVP_MD_CTX_new());
  size_t len = 0;
  if (ctx == nullptr || EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, long_term_key) != 1 ||
      EVP_DigestSign(ctx.get(), nullptr, &len, msg.data(), msg.size()) != 1) {
    return OpensslError("signing the public key failed");
  }
  std::vector<uint8_t> sig(len);
  if (EVP_DigestSign(ctx.get(), sig.data(), &len, msg.data(), msg.size()) != 1) {
    return OpensslError("signing the public key failed");
  }
  sig.resize(len);
  return sig;
}

absl::Status VerifyPublicKeySignature(EVP_PKEY* long_term_key, absl::Span<const uint8_t> public_key,
                                      std::string_view context, absl::Span<const uint8_t> signature) {
  if (long_term_key == nullptr) return absl::InvalidArgumentError("secagg: no long-term key to verify with");
  if (absl::Status s = CheckContext(context); !s.ok()) return s;
  const std::vector<uint8_t> msg = SignedMessage(public_key, context);
  MdCtxPtr ctx(EVP_MD_CTX_new());
  if (ctx == nullptr || EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, long_term_key) != 1) {
    return OpensslError("verification setup failed");
  }
  const int rc = EVP_DigestVerify(ctx.get(), signature.data(), signature.size(), msg.data(), msg.size());
  ERR_clear_error();
  if (rc != 1) return absl::PermissionDeniedError("secagg: the public key's signature does not verify");
  return absl::OkStatus();
}

}  // namespace fedtune::secagg
