// The consortium certificate authority: a directory holding the CA's key and certificate, the index of issued
// certificates and the current CRL. The operator creates it once (`fedtune pki init`), then signs site and operator
// CSRs, issues the coordinator's TLS server certificate and revokes certificates. The coordinator's
// CertificateVerifier (verifier.h) reads the same directory.
//
// Directory layout (see the *Path functions below):
//   ca.pem      the CA certificate (self-signed, CA:TRUE pathlen:0, keyUsage keyCertSign+cRLSign, ECDSA P-256)
//   ca.key      the CA private key, mode 0600
//   index.json  serial counter, CRL number counter and every issued certificate with its state (ca_index.h)
//   crl.pem     the current CRL (v2, signed by the CA; thisUpdate = issue time, nextUpdate = + crl_days)
//   .lock       flock(2) lock file; every mutation holds it, so concurrent CLI invocations and the coordinator
//               serialize
// Every file is replaced atomically (temporary file + fsync + rename), so a reader sees the old or the new version.
// Order of writes on issue: the index records the certificate before its PEM is returned; on revocation: the index,
// then the CRL (a crash in between leaves the index authoritative; `pki crl` re-issues the CRL from it).
//
// Serial numbers are sequential (1, 2, 3, ...), unique within one CA; the CA's own certificate has a random 127-bit
// serial. Thread-safe: all methods may be called concurrently (mutations are serialized by the lock file).
#ifndef FEDTUNE_COMMON_PKI_CERTIFICATE_AUTHORITY_H_
#define FEDTUNE_COMMON_PKI_CERTIFICATE_AUTHORITY_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/pki/ca_index.h"
#include "common/pki/certificate.h"
#include "common/pki/key_pair.h"
#include "common/pki/openssl_util.h"

namespace fedtune::pki {

std::string CaCertPath(const std::string& ca_dir);   // ca_dir/ca.pem
std::string CaKeyPath(const std::string& ca_dir);    // ca_dir/ca.key
std::string CaIndexPath(const std::string& ca_dir);  // ca_dir/index.json
std::string CaCrlPath(const std::string& ca_dir);    // ca_dir/crl.pem

struct CaOptions {
  // Consortium name: 1 to 48 printable ASCII characters. The CA subject is O=<consortium>,
  // CN="<consortium> fedtune CA", and every issued certificate carries O=<consortium>. Required.
  std::string consortium;
  int64_t days = 3650;    // Validity of the CA certificate. Default 10 years.
  int64_t crl_days = 30;  // nextUpdate - thisUpdate of every CRL. Default 30 days.
};

// Validity of an issued certificate (default: from 5 minutes before now, for clock skew, to now + days) and, for
// SignCsr, what to do with a common name that already has a valid certificate.
struct IssueOptions {
  int64_t days = 365;                    // Default 1 year. Must be >= 1 unless not_after is given.
  std::optional<absl::Time> not_before;  // Overrides; meant for tests (expired / not-yet-valid certificates).
  std::optional<absl::Time> not_after;
  // SignCsr only. false (default): refuse a common name that already has a valid certificate. true: issue anyway
  // and revoke the name's valid certificates in the same index update (re-enrolment after the holder made a new
  // key), so that one name never has two valid certificates.
  bool replace = false;
};

// The coordinator's TLS server certificate.
struct ServerCertificateSpec {
  std::string common_name = "coordinator";  // An identity name (ValidateIdentityName).
  std::vector<std::string> dns_names;       // subjectAltName DNS entries.
  std::vector<std::string> ip_addresses;    // subjectAltName IP entries (IPv4 or IPv6 text).
};

struct IssuedCertificate {
  std::string pem;       // The certificate alone (the chain is this + ca.pem).
  CertificateInfo info;  // Its description (serial, names, validity, fingerprint).
  // With IssueOptions::replace: the certificates of the same common name this one replaced, now revoked (reason
  // "replaced by serial N"); the CRL was re-issued. Empty otherwise.
  std::vector<IndexEntry> replaced;
};

class CertificateAuthority {
 public:
  // Creates a new CA in `ca_dir` (created if missing): key, self-signed certificate, empty index and an empty CRL.
  // InvalidArgument for a bad consortium name or validity; AlreadyExists when ca_dir already holds ca.key or ca.pem
  // (an existing CA is never overwritten); I/O errors of the writes.
  static absl::StatusOr<std::unique_ptr<CertificateAuthority>> Initialize(const std::string& ca_dir,
                                                                          const CaOptions& options);

  // Opens an existing CA. NotFound when a file is missing; InvalidArgument when ca.pem/ca.key do not parse or do not
  // belong together; DataLoss when index.json is corrupt.
  static absl::StatusOr<std::unique_ptr<CertificateAuthority>> Open(const std::string& ca_dir);

  // Verifies a CSR (csr.h: signature, P-256 key, valid CN) and issues a clientAuth certificate for `role`
  // (kSite or kOperator; InvalidArgument for kServer) with subject O=<consortium>, OU=<role>, CN=<CSR's CN>, and
  // records it in the index as enrolled. InvalidArgument for a bad CSR or validity.
  // One common name, one valid certificate: AlreadyExists, naming the CN and the serial, when the index holds an
  // enrolled, unexpired site or operator certificate with the CSR's CN (either role: a site id and an operator name
  // never share a CN), unless options.replace, which revokes those certificates in the same locked index update
  // and re-issues the CRL (IssuedCertificate::replaced). Revoked and expired certificates do not count. Server
  // certificates (IssueServerCertificate) are outside this rule.
  absl::StatusOr<IssuedCertificate> SignCsr(absl::string_view csr_pem, Role role, const IssueOptions& options = {});

  // Issues the coordinator's serverAuth certificate for `server_key` (made by the caller, normally beside the
  // coordinator), with the SANs of `spec` (at least one DNS name or IP address, else InvalidArgument), role kServer.
  absl::StatusOr<IssuedCertificate> IssueServerCertificate(const KeyPair& server_key, const ServerCertificateSpec& spec,
                                                           const IssueOptions& options = {});

  // Marks the certificate with `serial` (decimal, or hex with 0x) revoked in the index and re-issues the CRL.
  // NotFound for a serial this CA never issued; FailedPrecondition when it is already revoked.
  absl::StatusOr<IndexEntry> RevokeSerial(absl::string_view serial, absl::string_view reason = "");

  // Revokes every enrolled certificate with common name `common_name` and role `role` (e.g. all of a site's
  // certificates). NotFound when there is none. Returns the revoked entries.
  absl::StatusOr<std::vector<IndexEntry>> RevokeByName(absl::string_view common_name, Role role,
                                                       absl::string_view reason = "");

  // Re-issues crl.pem from the index (fresh thisUpdate/nextUpdate, next CRL number). Run it before nextUpdate passes.
  absl::Status ReissueCrl();

  // The current index as stored on disk (DataLoss when corrupt).
  absl::StatusOr<CaIndex> ReadIndex() const;

  const std::string& dir() const { return dir_; }
  const std::string& consortium() const { return consortium_; }
  const std::string& ca_pem() const { return ca_pem_; }

 private:
  CertificateAuthority(std::string dir, std::string consortium, X509Ptr cert, std::string cert_pem, KeyPair key)
      : dir_(std::move(dir)),
        consortium_(std::move(consortium)),
        cert_(std::move(cert)),
        ca_pem_(std::move(cert_pem)),
        key_(std::move(key)) {}

  // Builds and signs a certificate and appends its entry to `index` (the caller writes the index); must be called
  // with the lock held and `index` freshly read.
  absl::StatusOr<IssuedCertificate> IssueLocked(CaIndex& index, EVP_PKEY* subject_key, absl::string_view common_name,
                                                Role role, const std::vector<std::string>& dns_names,
                                                const std::vector<std::string>& ip_addresses,
                                                const IssueOptions& options);
  absl::Status WriteCrlLocked(CaIndex& index);
  absl::Status WriteIndexLocked(const CaIndex& index);

  const std::string dir_;
  const std::string consortium_;
  const X509Ptr cert_;
  const std::string ca_pem_;
  const KeyPair key_;
};

}  // namespace fedtune::pki

#endif  // FEDTUNE_COMMON_PKI_CERTIFICATE_AUTHORITY_H_
