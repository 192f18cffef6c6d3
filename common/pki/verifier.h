// Verification of peer certificates for the coordinator: on every RPC the server hands the peer's certificate (gRPC's
// AuthContext property "x509_pem_cert") and the role the RPC needs to CertificateVerifier::Verify, which returns the
// caller's identity or the status to refuse the call with.
//
// Revocation takes effect on the next call without a restart: before each verification the verifier stat(2)s the CA
// certificate, CRL and index files and reloads whichever changed (device, inode, size, modification and change time
// compared; the CA replaces files by rename, so every update gets a new inode). Reload() forces a reload. If a
// changed file cannot be loaded (unreadable, corrupt, bad CRL signature), every verification fails with that error
// until it is fixed: the verifier fails closed and never keeps using revocation data it knows to be stale.
#ifndef FEDTUNE_COMMON_PKI_VERIFIER_H_
#define FEDTUNE_COMMON_PKI_VERIFIER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/pki/certificate.h"

namespace fedtune::pki {

struct VerifierOptions {
  std::string ca_cert_path;  // The consortium CA certificate (ca.pem). Required.
  std::string crl_path;      // The CA's CRL (crl.pem). Required.
  // The CA's index (index.json). Optional ("" = not used). When set, a certificate must also be enrolled in it: a
  // certificate whose serial or fingerprint the index does not know is refused (PERMISSION_DENIED), as is one the
  // index marks revoked even before the CRL says so.
  std::string index_path;
  // Verification time. Default: absl::Now. Tests inject a fixed clock.
  std::function<absl::Time()> clock;
  // When true, a CRL past its nextUpdate makes every verification fail (UNAVAILABLE); when false (default) it is still
  // used, with a warning logged once per load. The CA only re-issues the CRL on revocation or `pki crl`.
  bool reject_stale_crl = false;

  // ca_dir/ca.pem, ca_dir/crl.pem and ca_dir/index.json: the coordinator running beside its CA directory.
  static VerifierOptions ForCaDir(const std::string& ca_dir);
};

// The authenticated caller.
struct PeerIdentity {
  std::string common_name;  // Site id, operator name or server name.
  Role role = Role::kSite;
  std::string serial;  // Decimal.
  absl::Time not_after;
  std::string fingerprint_sha256;  // Of the certificate (DER).
  std::string public_key_sha256;   // Of its SubjectPublicKeyInfo: the key the coordinator's registry pins.
};

// Thread-safe: Verify and Reload may be called concurrently from any number of threads.
class CertificateVerifier {
 public:
  // Loads the files once. Errors as Reload.
  static absl::StatusOr<std::unique_ptr<CertificateVerifier>> Create(VerifierOptions options);

  // Verifies `peer_pem` (the peer's leaf certificate in PEM) for an RPC that needs `expected_role`:
  //  UNAUTHENTICATED: empty or malformed PEM; not signed by the consortium CA; expired; not yet valid; a CA
  //                   certificate instead of an end-entity one; wrong extended key usage for the role (the
  //                   certificate's role, else `expected_role`): site and operator certificates must carry
  //                   extendedKeyUsage clientAuth, server certificates serverAuth; a certificate without the
  //                   extension is refused too.
  //  PERMISSION_DENIED: revoked (CRL or index); not enrolled in the index (when used); no role or another role than
  //                     `expected_role`.
  //  Reload errors (NotFound, DataLoss, ...) when a changed CA/CRL/index file cannot be loaded; UNAVAILABLE for a
  //  stale CRL with reject_stale_crl.
  // Messages name the certificate (CN, serial) and the reason.
  absl::StatusOr<PeerIdentity> Verify(absl::string_view peer_pem, Role expected_role);

  // Re-reads all files now. NotFound/PermissionDenied for missing/unreadable files; InvalidArgument for a CA
  // certificate that does not parse or is not a CA; DataLoss for a corrupt CRL or index, or a CRL not signed by the
  // CA. On failure the verifier refuses every call until a later load succeeds.
  absl::Status Reload();

 private:
  struct Snapshot;
  struct FileStamp {
    bool exists = false;
    uint64_t dev = 0, ino = 0;
    int64_t size = 0, mtime_ns = 0, ctime_ns = 0;
    bool operator==(const FileStamp& o) const {
      return exists == o.exists && dev == o.dev && ino == o.ino && size == o.size && mtime_ns == o.mtime_ns &&
             ctime_ns == o.ctime_ns;
    }
  };

  explicit CertificateVerifier(VerifierOptions options) : options_(std::move(options)) {}
  // The current snapshot, reloading first if a file changed.
  absl::StatusOr<std::shared_ptr<const Snapshot>> Current();
  absl::Status ReloadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<FileStamp> StampFiles() const;

  const VerifierOptions options_;
  absl::Mutex mu_;
  std::shared_ptr<const Snapshot> snapshot_ ABSL_GUARDED_BY(mu_);
  absl::Status load_status_ ABSL_GUARDED_BY(mu_);
  std::vector<FileStamp> stamps_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fedtune::pki

#endif  // FEDTUNE_COMMON_PKI_VERIFIER_H_
