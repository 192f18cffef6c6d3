#include "common/pki/key_pair.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/status_macros.h"

namespace fedtune::pki {
namespace {

// Refuses to prompt for a pass phrase (OpenSSL's default callback would read the terminal).
int NoPassphrase(char*, int, int, void*) { return -1; }

}  // namespace

absl::Status CheckIsP256(EVP_PKEY* key, absl::string_view what) {
  if (key == nullptr || !EVP_PKEY_is_a(key, "EC")) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": not an EC key (fedtune's PKI uses ECDSA P-256 only)"));
  }
  char group[64] = {0};
  size_t len = 0;
  if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), &len) != 1) {
    return OpenSslStatus(absl::StatusCode::kInvalidArgument, absl::StrCat(what, ": EC key without a named curve"));
  }
  std::string name(group, len);
  if (name != "prime256v1" && name != "P-256" && name != "secp256r1") {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": EC key on curve ", name, "; fedtune's PKI uses P-256 (prime256v1) only"));
  }
  return absl::OkStatus();
}

absl::StatusOr<KeyPair> KeyPair::Generate() {
  EvpPkeyPtr key(EVP_EC_gen("P-256"));
  if (!key) return OpenSslInternal("cannot generate a P-256 key");
  return KeyPair(std::move(key));
}

absl::StatusOr<KeyPair> KeyPair::FromPrivateKeyPem(absl::string_view pem, absl::string_view source) {
  BioPtr bio = MemBioOf(pem);
  if (!bio) return OpenSslInternal("cannot allocate a BIO");
  EvpPkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr));
  if (!key) {
    return OpenSslStatus(absl::StatusCode::kInvalidArgument,
                         absl::StrCat(source, ": not an unencrypted PEM private key"));
  }
  RETURN_IF_ERROR(CheckIsP256(key.get(), source));
  return KeyPair(std::move(key));
}

absl::StatusOr<KeyPair> KeyPair::ReadPrivateKeyFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string pem, io::ReadFile(path));
  return FromPrivateKeyPem(pem, path);
}

absl::StatusOr<std::string> KeyPair::PrivateKeyPem() const {
  BioPtr bio = NewMemBio();
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), key_.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return OpenSslInternal("cannot encode a private key");
  }
  return BioContents(bio.get());
}

absl::StatusOr<std::string> KeyPair::PublicKeyPem() const {
  BioPtr bio = NewMemBio();
  if (!bio || PEM_write_bio_PUBKEY(bio.get(), key_.get()) != 1) return OpenSslInternal("cannot encode a public key");
  return BioContents(bio.get());
}

absl::Status KeyPair::WritePrivateKeyFile(const std::string& path) const {
  ASSIGN_OR_RETURN(std::string pem, PrivateKeyPem());
  return WritePrivateFileAtomically(path, pem);
}

absl::Status WritePrivateFileAtomically(const std::string& path, absl::string_view contents, bool overwrite) {
  io::AtomicWriteOptions options;
  options.mode = 0600;
  options.overwrite = overwrite;
  absl::Status status = io::WriteFileAtomically(path, contents, options);
  if (absl::IsAlreadyExists(status)) {
    return absl::AlreadyExistsError(absl::StrCat("'", path, "' already exists; refusing to replace a private key"));
  }
  return status;
}

}  // namespace fedtune::pki
