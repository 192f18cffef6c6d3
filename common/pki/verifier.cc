#include "common/pki/verifier.h"

#include <openssl/pem.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/logging.h"
#include "common/pki/ca_index.h"
#include "common/pki/certificate_authority.h"
#include "common/pki/openssl_util.h"
#include "common/status_macros.h"

namespace fedtune::pki {

struct CertificateVerifier::Snapshot {
  X509Ptr ca;
  X509StorePtr store;  // Trusts `ca` only. X509_STORE is safe for concurrent verifications once built.
  X509CrlPtr crl;
  absl::Time crl_next_update;
  bool use_index = false;
  std::map<std::string, IndexEntry> index;  // By serial.
};

namespace {

std::string Describe(const CertificateInfo& info) {
  return absl::StrCat("certificate CN='", info.common_name, "' serial ", info.serial);
}

std::string FormatUtc(absl::Time t) { return absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", t, absl::UTCTimeZone()); }

// The CA issues site and operator certificates with extendedKeyUsage clientAuth and the coordinator's server
// certificate with serverAuth (certificate_authority.cc). A certificate of `role` must carry that EKU: without it a
// certificate the CA made for another purpose (or one without any EKU, which X.509 reads as "any purpose") could
// authenticate a peer. UNAUTHENTICATED, like every other defect of the certificate itself.
absl::Status CheckExtendedKeyUsage(X509* cert, const CertificateInfo& info, Role role) {
  const bool server = role == Role::kServer;
  const uint32_t needed = server ? XKU_SSL_SERVER : XKU_SSL_CLIENT;
  const char* needed_name = server ? "serverAuth" : "clientAuth";
  // X509_get_extended_key_usage answers "all" for a certificate without the extension: check its presence first.
  if ((X509_get_extension_flags(cert) & EXFLAG_XKUSAGE) == 0) {
    return absl::UnauthenticatedError(absl::StrCat(Describe(info), " has no extended key usage; a ", RoleName(role),
                                                   " certificate needs extended key usage ", needed_name));
  }
  if ((X509_get_extended_key_usage(cert) & needed) == 0) {
    return absl::UnauthenticatedError(absl::StrCat(Describe(info), " lacks extended key usage ", needed_name,
                                                   ", which a ", RoleName(role), " certificate needs"));
  }
  return absl::OkStatus();
}

}  // namespace

VerifierOptions VerifierOptions::ForCaDir(const std::string& ca_dir) {
  VerifierOptions options;
  options.ca_cert_path = CaCertPath(ca_dir);
  options.crl_path = CaCrlPath(ca_dir);
  options.index_path = CaIndexPath(ca_dir);
  return options;
}

absl::StatusOr<std::unique_ptr<CertificateVerifier>> CertificateVerifier::Create(VerifierOptions options) {
  if (options.ca_cert_path.empty() || options.crl_path.empty()) {
    return absl::InvalidArgumentError("CertificateVerifier needs the CA certificate and CRL paths");
  }
  if (!options.clock) options.clock = [] { return absl::Now(); };
  auto verifier = std::unique_ptr<CertificateVerifier>(new CertificateVerifier(std::move(options)));
  RETURN_IF_ERROR(verifier->Reload());
  return verifier;
}

std::vector<CertificateVerifier::FileStamp> CertificateVerifier::StampFiles() const {
  std::vector<FileStamp> stamps;
  for (const std::string* path : {&options_.ca_cert_path, &options_.crl_path, &options_.index_path}) {
    FileStamp s;
    struct stat st;
    if (!path->empty() && ::stat(path->c_str(), &st) == 0) {
      s.exists = true;
      s.dev = st.st_dev;
      s.ino = st.st_ino;
      s.size = st.st_size;
      s.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
      s.ctime_ns = static_cast<int64_t>(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec;
    }
    stamps.push_back(s);
  }
  return stamps;
}

absl::Status CertificateVerifier::Reload() {
  absl::MutexLock lock(&mu_);
  return ReloadLocked();
}

absl::Status CertificateVerifier::ReloadLocked() {
  // Stamps first: a file replaced while we read it gets reloaded again on the next call.
  stamps_ = StampFiles();
  auto load = [&]() -> absl::StatusOr<std::shared_ptr<const Snapshot>> {
    auto snap = std::make_shared<Snapshot>();
    ASSIGN_OR_RETURN(snap->ca, ReadCertificateFile(options_.ca_cert_path));
    if ((X509_get_extension_flags(snap->ca.get()) & EXFLAG_CA) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(options_.ca_cert_path, " is not a CA certificate"));
    }
    snap->store.reset(X509_STORE_new());
    if (!snap->store || X509_STORE_add_cert(snap->store.get(), snap->ca.get()) != 1) {
      return OpenSslInternal("cannot build the trust store");
    }
    ASSIGN_OR_RETURN(std::string crl_pem, io::ReadFile(options_.crl_path));
    BioPtr bio = MemBioOf(crl_pem);
    snap->crl.reset(PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr));
    if (!snap->crl) {
      return OpenSslStatus(absl::StatusCode::kDataLoss, absl::StrCat(options_.crl_path, ": not a PEM CRL"));
    }
    if (X509_NAME_cmp(X509_CRL_get_issuer(snap->crl.get()), X509_get_subject_name(snap->ca.get())) != 0) {
      return absl::DataLossError(absl::StrCat(options_.crl_path, ": issued by ",
                                              NameToString(X509_CRL_get_issuer(snap->crl.get())),
                                              ", not by the consortium CA"));
    }
    EVP_PKEY* ca_key = X509_get0_pubkey(snap->ca.get());
    if (ca_key == nullptr || X509_CRL_verify(snap->crl.get(), ca_key) != 1) {
      return OpenSslStatus(absl::StatusCode::kDataLoss,
                           absl::StrCat(options_.crl_path, ": signature does not verify with the CA key"));
    }
    const ASN1_TIME* next = X509_CRL_get0_nextUpdate(snap->crl.get());
    if (next == nullptr) return absl::DataLossError(absl::StrCat(options_.crl_path, ": no nextUpdate"));
    ASSIGN_OR_RETURN(snap->crl_next_update, AsnTimeToTime(next));
    if (snap->crl_next_update < options_.clock()) {
      LOG(WARNING) << options_.crl_path << " is past its nextUpdate (" << FormatUtc(snap->crl_next_update)
                   << "); re-issue it with `fedtune pki crl`";
    }
    if (!options_.index_path.empty()) {
      snap->use_index = true;
      ASSIGN_OR_RETURN(std::string json, io::ReadFile(options_.index_path));
      ASSIGN_OR_RETURN(CaIndex index, ParseCaIndex(json, options_.index_path));
      for (IndexEntry& e : index.entries) {
        std::string serial = e.serial;
        snap->index.emplace(std::move(serial), std::move(e));
      }
    }
    return std::shared_ptr<const Snapshot>(std::move(snap));
  };
  absl::StatusOr<std::shared_ptr<const Snapshot>> loaded = load();
  if (!loaded.ok()) {
    snapshot_.reset();  // Fail closed.
    load_status_ = loaded.status();
    LOG(ERROR) << "certificate verifier: cannot load CA data: " << load_status_;
    return load_status_;
  }
  snapshot_ = *std::move(loaded);
  load_status_ = absl::OkStatus();
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const CertificateVerifier::Snapshot>> CertificateVerifier::Current() {
  absl::MutexLock lock(&mu_);
  if (!(StampFiles() == stamps_)) {
    absl::Status reloaded = ReloadLocked();
    if (!reloaded.ok()) return reloaded;
  }
  if (!load_status_.ok()) return load_status_;
  return snapshot_;
}

absl::StatusOr<PeerIdentity> CertificateVerifier::Verify(absl::string_view peer_pem, Role expected_role) {
  ASSIGN_OR_RETURN(std::shared_ptr<const Snapshot> snap, Current());
  const absl::Time now = options_.clock();
  if (options_.reject_stale_crl && snap->crl_next_update < now) {
    return absl::UnavailableError(absl::StrCat("the CRL ", options_.crl_path, " expired at ",
                                               FormatUtc(snap->crl_next_update), "; re-issue it (fedtune pki crl)"));
  }
  if (peer_pem.empty()) return absl::UnauthenticatedError("no client certificate");
  absl::StatusOr<X509Ptr> parsed = ParseCertificatePem(peer_pem, "peer certificate");
  if (!parsed.ok()) return absl::UnauthenticatedError(parsed.status().message());
  X509* cert = parsed->get();
  absl::StatusOr<CertificateInfo> described = DescribeCertificate(cert);
  if (!described.ok()) return absl::UnauthenticatedError(described.status().message());
  const CertificateInfo& info = *described;

  X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (!ctx || X509_STORE_CTX_init(ctx.get(), snap->store.get(), cert, nullptr) != 1) {
    return OpenSslInternal("cannot set up certificate verification");
  }
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
  X509_VERIFY_PARAM_set_time(param, absl::ToTimeT(now));
  X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_X509_STRICT);
  if (X509_verify_cert(ctx.get()) != 1) {
    int err = X509_STORE_CTX_get_error(ctx.get());
    DrainOpenSslErrors();
    switch (err) {
      case X509_V_ERR_CERT_HAS_EXPIRED:
        return absl::UnauthenticatedError(absl::StrCat(Describe(info), " expired at ", FormatUtc(info.not_after)));
      case X509_V_ERR_CERT_NOT_YET_VALID:
        return absl::UnauthenticatedError(
            absl::StrCat(Describe(info), " is not valid before ", FormatUtc(info.not_before)));
      default:
        return absl::UnauthenticatedError(
            absl::StrCat(Describe(info), " (issuer ", info.issuer,
                         ") is not accepted by the consortium CA: ", X509_verify_cert_error_string(err)));
    }
  }
  if (info.is_ca) {
    return absl::UnauthenticatedError(absl::StrCat(Describe(info), " is a CA certificate, not a peer's"));
  }
  RETURN_IF_ERROR(CheckExtendedKeyUsage(cert, info, info.role.value_or(expected_role)));
  X509_REVOKED* revoked = nullptr;
  if (X509_CRL_get0_by_serial(snap->crl.get(), &revoked, X509_get0_serialNumber(cert)) == 1) {
    std::string when = "?";
    absl::StatusOr<absl::Time> t = AsnTimeToTime(X509_REVOKED_get0_revocationDate(revoked));
    if (t.ok()) when = FormatUtc(*t);
    return absl::PermissionDeniedError(absl::StrCat(Describe(info), " was revoked at ", when));
  }
  if (snap->use_index) {
    auto it = snap->index.find(info.serial);
    if (it == snap->index.end() || it->second.fingerprint_sha256 != info.fingerprint_sha256) {
      return absl::PermissionDeniedError(
          absl::StrCat(Describe(info), " is not enrolled in the CA index ", options_.index_path));
    }
    if (it->second.status == CertificateStatus::kRevoked) {
      return absl::PermissionDeniedError(absl::StrCat(Describe(info), " was revoked"));
    }
  }
  if (!info.role) {
    return absl::PermissionDeniedError(absl::StrCat(Describe(info), " carries no fedtune role (subject OU)"));
  }
  if (*info.role != expected_role) {
    return absl::PermissionDeniedError(absl::StrCat(Describe(info), " has role ", RoleName(*info.role),
                                                    "; this call needs role ", RoleName(expected_role)));
  }
  PeerIdentity identity;
  identity.common_name = info.common_name;
  identity.role = *info.role;
  identity.serial = info.serial;
  identity.not_after = info.not_after;
  identity.fingerprint_sha256 = info.fingerprint_sha256;
  identity.public_key_sha256 = info.public_key_sha256;
  return identity;
}

}  // namespace fedtune::pki
