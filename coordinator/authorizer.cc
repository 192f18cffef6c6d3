#include "coordinator/authorizer.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/net/tls.h"
#include "common/pki/certificate.h"
#include "common/status_macros.h"

namespace fedtune::coordinator {

using federation::SiteStatus;
namespace {

std::string CodeName(absl::StatusCode code) {
  return absl::StatusCodeToString(code);  // "PERMISSION_DENIED": gRPC's spelling too.
}

}  // namespace

Authorizer::Authorizer(pki::CertificateVerifier* verifier, StateStore* store, std::function<absl::Time()> clock)
    : verifier_(verifier), store_(store), clock_(clock ? std::move(clock) : [] { return absl::Now(); }) {}

absl::Status Authorizer::CheckSite(const pki::PeerIdentity& peer, Access access) {
  const std::string& id = peer.common_name;
  ASSIGN_OR_RETURN(std::optional<SiteRecord> site, store_->GetSite(id));
  if (!site && access != Access::kSiteHello) {
    return absl::PermissionDeniedError(absl::StrCat("site ", id, " is not registered: it must call Hello first"));
  }
  // The registry pins the site to the key of the first certificate it used (its first Hello, or its first call
  // after a pre-approval). The store is written only when something changes: a new site or pin, or a new offer.
  if (!site || site->key_sha256.empty() ||
      (site->key_sha256 != peer.public_key_sha256 &&
       (site->offered_key_sha256 != peer.public_key_sha256 || site->offered_serial != peer.serial))) {
    ASSIGN_OR_RETURN(SiteRecord pinned, store_->PinSiteKey(id, peer.public_key_sha256, peer.serial,
                                                           access == Access::kSiteHello, absl::ToUnixMillis(clock_())));
    site = std::move(pinned);
  }
  if (site->status == SiteStatus::kRevoked) {
    return absl::PermissionDeniedError(absl::StrCat(
        "site ", id, " is revoked in the coordinator's registry (`fedtune sites approve ", id, "` re-admits it)"));
  }
  if (site->key_sha256 != peer.public_key_sha256) {
    return absl::PermissionDeniedError(absl::StrCat(
        "site ", id, " presented certificate serial ", peer.serial, " with key sha256 ", peer.public_key_sha256,
        ", but the registry pins site ", id, " to key sha256 ", site->key_sha256,
        ". If the site made a new key and was re-enrolled, check that key against the one `fedtune pki sign` "
        "printed and accept it with `fedtune sites approve ",
        id, " --replace-key`; otherwise another party holds a certificate for this site id"));
  }
  if (access == Access::kSiteHello) return absl::OkStatus();
  if (site->status != SiteStatus::kApproved) {
    return absl::PermissionDeniedError(
        absl::StrCat("site ", id, " is not approved: run `fedtune sites approve ", id, "`"));
  }
  return absl::OkStatus();
}

absl::StatusOr<pki::PeerIdentity> Authorizer::Authorize(const grpc::ServerContextBase& context, absl::string_view rpc,
                                                        Access access, const std::string& run_id, int round) {
  const pki::Role role = access == Access::kOperator ? pki::Role::kOperator : pki::Role::kSite;
  const std::string pem = net::PeerCertificatePem(context);
  absl::StatusOr<pki::PeerIdentity> peer = verifier_->Verify(pem, role);
  if (!peer.ok()) {
    // The audit row names the certificate the refused caller presented (CN and serial as it claims them, unverified:
    // the message says why it was refused), so that an investigator sees who tried.
    std::string claimed_cn, claimed_serial;
    if (!pem.empty()) {
      absl::StatusOr<pki::X509Ptr> cert = pki::ParseCertificatePem(pem, "peer certificate");
      if (cert.ok()) {
        absl::StatusOr<pki::CertificateInfo> info = pki::DescribeCertificate(cert->get());
        if (info.ok()) {
          claimed_cn = info->common_name;
          claimed_serial = info->serial;
        }
      }
    }
    Write(context, rpc, claimed_cn, claimed_serial, pki::RoleName(role), peer.status(), run_id, round);
    return peer.status();
  }
  absl::Status status = access == Access::kOperator ? absl::OkStatus() : CheckSite(*peer, access);
  Write(context, rpc, peer->common_name, peer->serial, pki::RoleName(peer->role), status, run_id, round);
  if (!status.ok()) return status;
  if (access != Access::kOperator) {
    absl::Status touched = store_->TouchSite(peer->common_name, absl::ToUnixMillis(clock_()));
    if (!touched.ok()) LOG(WARNING) << "updating last_seen of site " << peer->common_name << ": " << touched;
  }
  return peer;
}

void Authorizer::Audit(const grpc::ServerContextBase& context, absl::string_view rpc, const pki::PeerIdentity& peer,
                       const absl::Status& status, const std::string& run_id, int round) {
  Write(context, rpc, peer.common_name, peer.serial, pki::RoleName(peer.role), status, run_id, round);
}

void Authorizer::Write(const grpc::ServerContextBase& context, absl::string_view rpc, const std::string& cn,
                       const std::string& serial, const std::string& role, const absl::Status& status,
                       const std::string& run_id, int round) {
  AuditRecord record;
  record.time_ms = absl::ToUnixMillis(clock_());
  record.rpc = std::string(rpc);
  record.peer_cn = cn;
  record.serial = serial;
  record.peer_address = context.peer();
  record.role = role;
  record.decision = status.ok() ? "allow" : "deny";
  record.code = CodeName(status.code());
  record.message = std::string(status.message());
  record.run_id = run_id;
  record.round = round;
  if (!status.ok()) {
    LOG(WARNING) << "refused " << rpc << " from " << (cn.empty() ? "(unauthenticated)" : cn) << " at "
                 << record.peer_address << ": " << status;
  }
  absl::Status written = store_->InsertAudit(record);
  // The audit log is not optional, but failing every call because the log cannot be written would let a full disk
  // stop the federation; the error is logged loudly instead.
  if (!written.ok()) LOG(ERROR) << "writing the audit log: " << written;
}

}  // namespace fedtune::coordinator
