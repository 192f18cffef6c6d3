// Certificate signing requests (PKCS#10): a site or an operator makes its own key pair and a CSR carrying only its
// identity name (CN) and public key; the private key never leaves the machine that made it.
#ifndef FEDTUNE_COMMON_PKI_CSR_H_
#define FEDTUNE_COMMON_PKI_CSR_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/pki/key_pair.h"
#include "common/pki/openssl_util.h"

namespace fedtune::pki {

// A CSR whose self-signature has been verified.
struct VerifiedCsr {
  std::string common_name;  // Subject CN, validated by ValidateIdentityName.
  EvpPkeyPtr public_key;    // The requester's P-256 public key.
};

// A PEM CSR ("-----BEGIN CERTIFICATE REQUEST-----") with subject CN=`common_name`, signed with `key`
// (ECDSA with SHA-256). InvalidArgument when `common_name` fails ValidateIdentityName; Internal on OpenSSL failures.
absl::StatusOr<std::string> CreateCsrPem(const KeyPair& key, absl::string_view common_name);

// Decodes a PEM CSR and checks it: InvalidArgument naming `source` when it is not a PEM CSR, its signature does not
// verify with its own public key (a tampered request), its key is not P-256, or its CN is missing or not a valid
// identity name (see ValidateIdentityName).
absl::StatusOr<VerifiedCsr> ParseAndVerifyCsrPem(absl::string_view pem, absl::string_view source = "CSR");

}  // namespace fedtune::pki

#endif  // FEDTUNE_COMMON_PKI_CSR_H_
