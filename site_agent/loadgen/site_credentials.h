// The simulated sites' TLS credentials: one certificate and key per site, made by the project's PKI code (the code
// of `fedtune-site pki request` + `fedtune pki sign`), so that the coordinator sees N distinct, enrolled sites.
//
// Layout of the credentials directory (the same files the site agents of deploy/demo.sh use):
//   <certs_dir>/<site id>.pem   the site certificate (role site, CN = site id)
//   <certs_dir>/<site id>.key   its private key (mode 0600)
// With a CA directory, a site whose two files are missing is enrolled: a new P-256 key, a CSR for its id, signed by
// the CA with role site (recorded in the CA's index.json, so the coordinator's verifier accepts it on its next call).
// Existing files are reused as they are, so a second load test against the same coordinator state presents the
// same keys (the coordinator pins each site to its key). A site with only one of its two files is an error.
//
// Thread safety: EnsureSiteCredentials is not meant to run concurrently for the same directory (CA writes are
// serialized by the CA's lock file, but two enrolments of the same site would both sign).
#ifndef FEDTUNE_SITE_AGENT_LOADGEN_SITE_CREDENTIALS_H_
#define FEDTUNE_SITE_AGENT_LOADGEN_SITE_CREDENTIALS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/net/tls.h"

namespace fedtune::loadgen {

struct SiteCredentials {
  std::string site_id;
  net::TlsFiles files;        // cert, key and the CA certificate.
  bool enrolled_now = false;  // Issued by this call.
};

// The credentials of `site_ids` in `certs_dir` (created when missing), trusting `ca_cert`. Sites missing from the
// directory are enrolled with the CA in `ca_dir` when it is not empty. Errors: NotFound naming the missing
// certificate or key (without ca_dir), or `ca_cert`; FailedPrecondition for a site with only one of its two files;
// the CA's errors (AlreadyExists when the CA already has a valid certificate for a site whose files are missing
// here: point --certs at the directory that holds them); I/O errors naming the file.
absl::StatusOr<std::vector<SiteCredentials>> EnsureSiteCredentials(const std::vector<std::string>& site_ids,
                                                                   const std::string& certs_dir,
                                                                   const std::string& ca_dir,
                                                                   const std::string& ca_cert);

}  // namespace fedtune::loadgen

#endif  // FEDTUNE_SITE_AGENT_LOADGEN_SITE_CREDENTIALS_H_
