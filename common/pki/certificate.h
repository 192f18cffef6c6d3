// X.509 certificates of the consortium PKI: roles, identity names, PEM parsing and a plain description of a
// certificate (names, role, serial, validity, SANs) for the CA, the verifier and the CLI.
//
// How the role is encoded: the CA writes the subject as O=<consortium>, OU=<role>, CN=<identity>, where <role> is
// "site", "operator" or "server" (the coordinator's TLS server certificate). Site and operator certificates carry
// extendedKeyUsage clientAuth, server certificates serverAuth. Only the CA sets the subject (a CSR contributes its
// common name and public key, nothing else), so the OU is as trustworthy as the CA's signature.
#ifndef FEDTUNE_COMMON_PKI_CERTIFICATE_H_
#define FEDTUNE_COMMON_PKI_CERTIFICATE_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/pki/openssl_util.h"

namespace fedtune::pki {

enum class Role { kSite, kOperator, kServer };

// "site", "operator", "server".
std::string RoleName(Role role);
// Inverse of RoleName; InvalidArgument listing the valid roles otherwise.
absl::StatusOr<Role> ParseRole(absl::string_view name);

// Site ids and operator names become certificate common names and database keys: 1 to 64 characters from
// [A-Za-z0-9._-], starting with a letter or digit. InvalidArgument naming `what` otherwise.
absl::Status ValidateIdentityName(absl::string_view name, absl::string_view what);

// What fedtune needs to know about a certificate.
struct CertificateInfo {
  std::string subject;       // RFC 2253 one-liner, for messages.
  std::string issuer;        // Likewise.
  std::string common_name;   // Subject CN ("" if none).
  std::string organization;  // Subject O: the consortium name.
  std::optional<Role> role;  // From the subject OU; nullopt when missing or unknown.
  std::string serial;        // Decimal.
  absl::Time not_before;
  absl::Time not_after;
  bool is_ca = false;                     // basicConstraints CA:TRUE.
  std::vector<std::string> dns_names;     // subjectAltName DNS entries.
  std::vector<std::string> ip_addresses;  // subjectAltName IP entries, textual ("127.0.0.1", "::1").
  std::string fingerprint_sha256;         // Lower-case hex of SHA-256 over the DER encoding.
  std::string public_key_sha256;          // Lower-case hex of SHA-256 over the SubjectPublicKeyInfo (DER).
};

// Decodes the first certificate of a PEM string. InvalidArgument naming `source` when there is none.
absl::StatusOr<X509Ptr> ParseCertificatePem(absl::string_view pem, absl::string_view source = "certificate");
// Reads and decodes a PEM certificate file (io::ReadFile errors, then InvalidArgument).
absl::StatusOr<X509Ptr> ReadCertificateFile(const std::string& path);
// PEM encoding of `cert` ("-----BEGIN CERTIFICATE-----"). Internal on failure.
absl::StatusOr<std::string> CertificateToPem(X509* cert);
// Describes `cert`. InvalidArgument when its validity times or its public key are malformed.
absl::StatusOr<CertificateInfo> DescribeCertificate(X509* cert);

}  // namespace fedtune::pki

#endif  // FEDTUNE_COMMON_PKI_CERTIFICATE_H_
