// Authorization of every RPC: the caller is the peer certificate's CN, verified by pki::CertificateVerifier for the
// role the service needs, then checked against the site registry (sites table); every decision, allowed or
// refused, is written to the audit_log table.
//
// Codes: no certificate / another CA / expired -> UNAUTHENTICATED; revoked or not enrolled certificate, wrong role
// -> PERMISSION_DENIED (pki::CertificateVerifier::Verify); a site whose registry status is "revoked" ->
// PERMISSION_DENIED on every call; "pending" (or never said Hello) -> PERMISSION_DENIED for everything but Hello.
//
// Key pinning: the registry pins each site to the key of the certificate it first called with
// (StateStore::PinSiteKey: its first Hello creates the entry, pending, with the key pinned; a pre-approved site is
// pinned at its first call). A later certificate with the same CN but another key, however validly issued, is
// refused on every call (PERMISSION_DENIED naming both key fingerprints, audited like every decision) and recorded
// as the site's offered key, until the operator accepts it (`fedtune sites approve ID --replace-key`,
// StateStore::ReplaceSiteKey). A new certificate for the same key (renewal) is accepted.
//
// Thread safety: thread-safe.
#ifndef FEDTUNE_COORDINATOR_AUTHORIZER_H_
#define FEDTUNE_COORDINATOR_AUTHORIZER_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/pki/verifier.h"
#include "coordinator/state_store.h"

namespace fedtune::coordinator {

enum class Access {
  kSiteHello,     // A site certificate; the site may be unknown or pending, not revoked.
  kApprovedSite,  // A site certificate of an approved site.
  kOperator,      // An operator certificate.
};

class Authorizer {
 public:
  // `verifier` and `store` must outlive the authorizer. `clock` defaults to absl::Now.
  Authorizer(pki::CertificateVerifier* verifier, StateStore* store, std::function<absl::Time()> clock = {});

  // Verifies the caller of `rpc` (e.g. "SiteService/GetTask") for `access`, audits the decision and returns the
  // caller's identity, or the status to refuse the call with (codes above). For an allowed site call the site's
  // last_seen time is updated. run_id/round, when known, go into the audit row.
  absl::StatusOr<pki::PeerIdentity> Authorize(const grpc::ServerContextBase& context, absl::string_view rpc,
                                              Access access, const std::string& run_id = "", int round = 0);

  // Audits a decision made after authorization by a handler (e.g. an upload refused as "site not selected", or a
  // tampered payload): decision "deny" when `status` is not OK.
  void Audit(const grpc::ServerContextBase& context, absl::string_view rpc, const pki::PeerIdentity& peer,
             const absl::Status& status, const std::string& run_id = "", int round = 0);

 private:
  absl::Status CheckSite(const pki::PeerIdentity& peer, Access access);
  void Write(const grpc::ServerContextBase& context, absl::string_view rpc, const std::string& cn,
             const std::string& serial, const std::string& role, const absl::Status& status, const std::string& run_id,
             int round);

  pki::CertificateVerifier* const verifier_;
  StateStore* const store_;
  const std::function<absl::Time()> clock_;
};

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_AUTHORIZER_H_
