// ECDSA P-256 key pairs for the consortium PKI: generation, PEM encoding and decoding, and writing private keys to
// disk with mode 0600, atomically. Private keys are stored unencrypted (PKCS#8 PEM); protect them with file
// permissions and, on the coordinator, full-disk encryption.
#ifndef FEDTUNE_COMMON_PKI_KEY_PAIR_H_
#define FEDTUNE_COMMON_PKI_KEY_PAIR_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/pki/openssl_util.h"

namespace fedtune::pki {

// An EC key pair on the NIST P-256 curve (prime256v1 / secp256r1). Movable, not copyable. Thread-compatible: const
// methods may be called concurrently.
class KeyPair {
 public:
  // A fresh key from OpenSSL's default random generator. Internal on an OpenSSL failure.
  static absl::StatusOr<KeyPair> Generate();

  // Decodes a PEM private key (PKCS#8 "PRIVATE KEY" or SEC1 "EC PRIVATE KEY"). InvalidArgument when `pem` is not a
  // PEM private key, is encrypted, or is not a P-256 EC key; the message names `source` (e.g. the file path).
  static absl::StatusOr<KeyPair> FromPrivateKeyPem(absl::string_view pem, absl::string_view source = "private key");

  // Reads and decodes a private key file (errors of io::ReadFile, then those of FromPrivateKeyPem).
  static absl::StatusOr<KeyPair> ReadPrivateKeyFile(const std::string& path);

  KeyPair(KeyPair&&) = default;
  KeyPair& operator=(KeyPair&&) = default;

  // Unencrypted PKCS#8 PEM ("-----BEGIN PRIVATE KEY-----"). Internal on an encoding failure.
  absl::StatusOr<std::string> PrivateKeyPem() const;
  // SubjectPublicKeyInfo PEM ("-----BEGIN PUBLIC KEY-----").
  absl::StatusOr<std::string> PublicKeyPem() const;

  // Writes PrivateKeyPem() to `path` with mode 0600 atomically (see WritePrivateFileAtomically).
  absl::Status WritePrivateKeyFile(const std::string& path) const;

  // The underlying key; owned by this object.
  EVP_PKEY* get() const { return key_.get(); }

 private:
  explicit KeyPair(EvpPkeyPtr key) : key_(std::move(key)) {}
  EvpPkeyPtr key_;
};

// OK when `key` is an EC key on P-256; InvalidArgument naming `what` otherwise.
absl::Status CheckIsP256(EVP_PKEY* key, absl::string_view what);

// Writes `contents` to `path` atomically with mode 0600 from the first byte on (a temporary file created 0600 in the
// same directory, fsync'd, renamed over `path`, directory fsync'd). Errors as io::WriteFileAtomically: NotFound when
// the parent directory does not exist, PermissionDenied, Internal. With `overwrite` false, AlreadyExists when `path`
// already exists (a key is never silently replaced).
absl::Status WritePrivateFileAtomically(const std::string& path, absl::string_view contents, bool overwrite = false);

}  // namespace fedtune::pki

#endif  // FEDTUNE_COMMON_PKI_KEY_PAIR_H_
