#include "common/pki/certificate_authority.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/io/file_util.h"
#include "common/logging.h"
#include "common/pki/csr.h"
#include "common/status_macros.h"

namespace fedtune::pki {
namespace {

// Tolerated clock skew between the CA and its relying parties: certificates start 5 minutes in the past.
constexpr absl::Duration kBackdate = absl::Minutes(5);

// An exclusive flock(2) on ca_dir/.lock, released on destruction.
class DirLock {
 public:
  static absl::StatusOr<DirLock> Acquire(const std::string& dir) {
    std::string path = absl::StrCat(dir, "/.lock");
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return absl::InternalError(absl::StrCat("cannot open lock file '", path, "': ", std::strerror(errno)));
    while (::flock(fd, LOCK_EX) != 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return absl::InternalError(absl::StrCat("cannot lock '", path, "': ", std::strerror(err)));
    }
    return DirLock(fd);
  }
  DirLock(DirLock&& other) : fd_(other.fd_) { other.fd_ = -1; }
  DirLock& operator=(DirLock&&) = delete;
  ~DirLock() {
    if (fd_ >= 0) ::close(fd_);  // Closing the descriptor releases the lock.
  }

 private:
  explicit DirLock(int fd) : fd_(fd) {}
  int fd_;
};

absl::Status CheckConsortiumName(const std::string& name) {
  if (name.empty() || name.size() > 48) {
    return absl::InvalidArgumentError(absl::StrCat("consortium name '", name, "' must have 1 to 48 characters"));
  }
  for (char c : name) {
    if (c < 0x20 || c > 0x7e) {
      return absl::InvalidArgumentError(
          absl::StrCat("consortium name '", name, "' may contain only printable ASCII characters"));
    }
  }
  return absl::OkStatus();
}

absl::Status AddNameEntry(X509_NAME* name, int nid, const std::string& value) {
  if (X509_NAME_add_entry_by_NID(name, nid, MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(value.c_str()), -1,
                                 -1, 0) != 1) {
    return OpenSslInternal(absl::StrCat("cannot add '", value, "' to a certificate name"));
  }
  return absl::OkStatus();
}

// Adds an extension given in OpenSSL's configuration syntax ("critical,CA:TRUE").
absl::Status AddExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509ExtensionPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str()));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    return OpenSslStatus(absl::StatusCode::kInvalidArgument,
                         absl::StrCat("cannot add extension ", OBJ_nid2sn(nid), " = ", value));
  }
  return absl::OkStatus();
}

absl::Status CheckValidity(const IssueOptions& options, absl::Time not_before, absl::Time not_after) {
  if (!options.not_after && options.days < 1) {
    return absl::InvalidArgumentError(absl::StrCat("validity of ", options.days, " days: must be at least 1 day"));
  }
  if (not_after <= not_before) {
    return absl::InvalidArgumentError("certificate validity ends before it starts (not_after <= not_before)");
  }
  return absl::OkStatus();
}

absl::StatusOr<CaIndex> ReadIndexFile(const std::string& dir) {
  ASSIGN_OR_RETURN(std::string json, io::ReadFile(CaIndexPath(dir)));
  return ParseCaIndex(json, CaIndexPath(dir));
}

}  // namespace

std::string CaCertPath(const std::string& ca_dir) { return absl::StrCat(ca_dir, "/ca.pem"); }
std::string CaKeyPath(const std::string& ca_dir) { return absl::StrCat(ca_dir, "/ca.key"); }
std::string CaIndexPath(const std::string& ca_dir) { return absl::StrCat(ca_dir, "/index.json"); }
std::string CaCrlPath(const std::string& ca_dir) { return absl::StrCat(ca_dir, "/crl.pem"); }

absl::StatusOr<std::unique_ptr<CertificateAuthority>> CertificateAuthority::Initialize(const std::string& ca_dir,
                                                                                       const CaOptions& options) {
  RETURN_IF_ERROR(CheckConsortiumName(options.consortium));
  if (options.days < 1) return absl::InvalidArgumentError("CA validity (--days) must be at least 1 day");
  if (options.crl_days < 1) return absl::InvalidArgumentError("CRL validity must be at least 1 day");
  RETURN_IF_ERROR(io::MakeDirectories(ca_dir));
  ASSIGN_OR_RETURN(DirLock lock, DirLock::Acquire(ca_dir));
  struct stat st;
  if (::stat(CaCertPath(ca_dir).c_str(), &st) == 0) {
    return absl::AlreadyExistsError(
        absl::StrCat("'", CaCertPath(ca_dir), "' exists: ", ca_dir, " already holds a CA; refusing to overwrite it"));
  }
  ASSIGN_OR_RETURN(KeyPair key, KeyPair::Generate());

  X509Ptr cert(X509_new());
  if (!cert || X509_set_version(cert.get(), 2) != 1) return OpenSslInternal("cannot create the CA certificate");
  unsigned char serial_bytes[16];
  if (RAND_bytes(serial_bytes, sizeof(serial_bytes)) != 1) return OpenSslInternal("no randomness for a serial");
  serial_bytes[0] &= 0x7f;  // Positive.
  serial_bytes[0] |= 0x40;  // Non-zero, full length.
  BignumPtr serial_bn(BN_bin2bn(serial_bytes, sizeof(serial_bytes), nullptr));
  if (!serial_bn || BN_to_ASN1_INTEGER(serial_bn.get(), X509_get_serialNumber(cert.get())) == nullptr) {
    return OpenSslInternal("cannot set the CA serial");
  }
  X509_NAME* name = X509_get_subject_name(cert.get());
  RETURN_IF_ERROR(AddNameEntry(name, NID_organizationName, options.consortium));
  RETURN_IF_ERROR(AddNameEntry(name, NID_commonName, absl::StrCat(options.consortium, " fedtune CA")));
  if (X509_set_issuer_name(cert.get(), name) != 1) return OpenSslInternal("cannot set the CA issuer");
  const absl::Time now = absl::Now();
  RETURN_IF_ERROR(SetAsnTime(X509_getm_notBefore(cert.get()), now - kBackdate));
  RETURN_IF_ERROR(SetAsnTime(X509_getm_notAfter(cert.get()), now + absl::Hours(24) * options.days));
  if (X509_set_pubkey(cert.get(), key.get()) != 1) return OpenSslInternal("cannot set the CA public key");
  RETURN_IF_ERROR(AddExtension(cert.get(), cert.get(), NID_basic_constraints, "critical,CA:TRUE,pathlen:0"));
  RETURN_IF_ERROR(AddExtension(cert.get(), cert.get(), NID_key_usage, "critical,keyCertSign,cRLSign"));
  RETURN_IF_ERROR(AddExtension(cert.get(), cert.get(), NID_subject_key_identifier, "hash"));
  RETURN_IF_ERROR(AddExtension(cert.get(), cert.get(), NID_authority_key_identifier, "keyid:always"));
  if (X509_sign(cert.get(), key.get(), EVP_sha256()) <= 0) return OpenSslInternal("cannot self-sign the CA");
  ASSIGN_OR_RETURN(std::string cert_pem, CertificateToPem(cert.get()));

  // The key first, refusing to replace an existing one: a half-initialized directory is never mistaken for a CA
  // (Open needs ca.pem and the index too), and a rerun after a crash reports the leftover key.
  RETURN_IF_ERROR(key.WritePrivateKeyFile(CaKeyPath(ca_dir)));
  CaIndex index;
  index.consortium = options.consortium;
  index.crl_days = options.crl_days;
  auto ca = std::unique_ptr<CertificateAuthority>(
      new CertificateAuthority(ca_dir, options.consortium, std::move(cert), cert_pem, std::move(key)));
  RETURN_IF_ERROR(ca->WriteCrlLocked(index));  // Also writes the index (the CRL number advanced).
  RETURN_IF_ERROR(io::WriteFileAtomically(CaCertPath(ca_dir), cert_pem));
  LOG(INFO) << "created consortium CA '" << options.consortium << "' in " << ca_dir;
  return ca;
}

absl::StatusOr<std::unique_ptr<CertificateAuthority>> CertificateAuthority::Open(const std::string& ca_dir) {
  ASSIGN_OR_RETURN(std::string cert_pem, io::ReadFile(CaCertPath(ca_dir)));
  ASSIGN_OR_RETURN(X509Ptr cert, ParseCertificatePem(cert_pem, CaCertPath(ca_dir)));
  ASSIGN_OR_RETURN(KeyPair key, KeyPair::ReadPrivateKeyFile(CaKeyPath(ca_dir)));
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    return OpenSslStatus(absl::StatusCode::kInvalidArgument,
                         absl::StrCat(CaKeyPath(ca_dir), " is not the private key of ", CaCertPath(ca_dir)));
  }
  ASSIGN_OR_RETURN(CaIndex index, ReadIndexFile(ca_dir));
  return std::unique_ptr<CertificateAuthority>(
      new CertificateAuthority(ca_dir, index.consortium, std::move(cert), std::move(cert_pem), std::move(key)));
}

absl::StatusOr<CaIndex> CertificateAuthority::ReadIndex() const { return ReadIndexFile(dir_); }

absl::Status CertificateAuthority::WriteIndexLocked(const CaIndex& index) {
  return io::WriteFileAtomically(CaIndexPath(dir_), SerializeCaIndex(index));
}

absl::StatusOr<IssuedCertificate> CertificateAuthority::IssueLocked(CaIndex& index, EVP_PKEY* subject_key,
                                                                    absl::string_view common_name, Role role,
                                                                    const std::vector<std::string>& dns_names,
                                                                    const std::vector<std::string>& ip_addresses,
                                                                    const IssueOptions& options) {
  const absl::Time now = absl::Now();
  const absl::Time not_before = options.not_before.value_or(now - kBackdate);
  const absl::Time not_after = options.not_after.value_or(now + absl::Hours(24) * options.days);
  RETURN_IF_ERROR(CheckValidity(options, not_before, not_after));

  const std::string serial = absl::StrCat(index.next_serial);
  if (index.FindBySerial(serial) != nullptr) {
    return absl::DataLossError(absl::StrCat(CaIndexPath(dir_), ": next_serial ", serial, " is already used"));
  }
  X509Ptr cert(X509_new());
  if (!cert || X509_set_version(cert.get(), 2) != 1) return OpenSslInternal("cannot create a certificate");
  ASSIGN_OR_RETURN(Asn1IntegerPtr serial_asn, SerialFromString(serial));
  if (X509_set_serialNumber(cert.get(), serial_asn.get()) != 1) return OpenSslInternal("cannot set a serial");
  X509_NAME* name = X509_get_subject_name(cert.get());
  RETURN_IF_ERROR(AddNameEntry(name, NID_organizationName, consortium_));
  RETURN_IF_ERROR(AddNameEntry(name, NID_organizationalUnitName, RoleName(role)));
  RETURN_IF_ERROR(AddNameEntry(name, NID_commonName, std::string(common_name)));
  if (X509_set_issuer_name(cert.get(), X509_get_subject_name(cert_.get())) != 1) {
    return OpenSslInternal("cannot set the issuer");
  }
  RETURN_IF_ERROR(SetAsnTime(X509_getm_notBefore(cert.get()), not_before));
  RETURN_IF_ERROR(SetAsnTime(X509_getm_notAfter(cert.get()), not_after));
  if (X509_set_pubkey(cert.get(), subject_key) != 1) return OpenSslInternal("cannot set the public key");
  RETURN_IF_ERROR(AddExtension(cert.get(), cert_.get(), NID_basic_constraints, "critical,CA:FALSE"));
  RETURN_IF_ERROR(AddExtension(cert.get(), cert_.get(), NID_key_usage, "critical,digitalSignature"));
  RETURN_IF_ERROR(
      AddExtension(cert.get(), cert_.get(), NID_ext_key_usage, role == Role::kServer ? "serverAuth" : "clientAuth"));
  RETURN_IF_ERROR(AddExtension(cert.get(), cert_.get(), NID_subject_key_identifier, "hash"));
  RETURN_IF_ERROR(AddExtension(cert.get(), cert_.get(), NID_authority_key_identifier, "keyid:always"));
  std::vector<std::string> sans;
  for (const std::string& dns : dns_names) sans.push_back(absl::StrCat("DNS:", dns));
  for (const std::string& ip : ip_addresses) sans.push_back(absl::StrCat("IP:", ip));
  if (!sans.empty()) {
    RETURN_IF_ERROR(AddExtension(cert.get(), cert_.get(), NID_subject_alt_name, absl::StrJoin(sans, ",")));
  }
  if (X509_sign(cert.get(), key_.get(), EVP_sha256()) <= 0) return OpenSslInternal("cannot sign a certificate");

  IssuedCertificate issued;
  ASSIGN_OR_RETURN(issued.pem, CertificateToPem(cert.get()));
  ASSIGN_OR_RETURN(issued.info, DescribeCertificate(cert.get()));
  IndexEntry entry;
  entry.serial = serial;
  entry.common_name = std::string(common_name);
  entry.role = role;
  entry.status = CertificateStatus::kEnrolled;
  entry.not_before = issued.info.not_before;
  entry.not_after = issued.info.not_after;
  entry.issued_at = now;
  entry.fingerprint_sha256 = issued.info.fingerprint_sha256;
  index.entries.push_back(entry);
  ++index.next_serial;
  LOG(INFO) << "signed " << RoleName(role) << " certificate serial " << serial << " for '" << common_name
            << "', valid until " << absl::FormatTime(issued.info.not_after);
  return issued;
}

absl::StatusOr<IssuedCertificate> CertificateAuthority::SignCsr(absl::string_view csr_pem, Role role,
                                                                const IssueOptions& options) {
  if (role == Role::kServer) {
    return absl::InvalidArgumentError("a CSR is signed for role site or operator; use the server certificate command");
  }
  ASSIGN_OR_RETURN(VerifiedCsr csr, ParseAndVerifyCsrPem(csr_pem));
  ASSIGN_OR_RETURN(DirLock lock, DirLock::Acquire(dir_));
  ASSIGN_OR_RETURN(CaIndex index, ReadIndexFile(dir_));
  // Checked under the lock, against the index just read: two concurrent signings of one name cannot both pass.
  const absl::Time now = absl::Now();
  std::vector<size_t> current;
  for (size_t i = 0; i < index.entries.size(); ++i) {
    const IndexEntry& e = index.entries[i];
    if (e.common_name == csr.common_name && e.role != Role::kServer && e.status == CertificateStatus::kEnrolled &&
        e.not_after > now) {
      current.push_back(i);
    }
  }
  if (!current.empty() && !options.replace) {
    const IndexEntry& e = index.entries[current.front()];
    return absl::AlreadyExistsError(absl::StrCat(
        "common name '", csr.common_name, "' is already enrolled: ", RoleName(e.role), " certificate serial ", e.serial,
        " (valid until ", absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", e.not_after, absl::UTCTimeZone()),
        "); one name has one valid certificate. If the holder made a new key, re-enrol it with "
        "`fedtune pki sign --replace` (revokes serial ",
        e.serial, "); otherwise check who sent this request"));
  }
  std::vector<IndexEntry> replaced;
  for (size_t i : current) {
    IndexEntry& e = index.entries[i];
    e.status = CertificateStatus::kRevoked;
    e.revoked_at = now;
    e.reason = absl::StrCat("replaced by serial ", index.next_serial);
    replaced.push_back(e);
  }
  ASSIGN_OR_RETURN(IssuedCertificate issued,
                   IssueLocked(index, csr.public_key.get(), csr.common_name, role, {}, {}, options));
  if (replaced.empty()) {
    RETURN_IF_ERROR(WriteIndexLocked(index));
  } else {
    // One index write holds the new certificate and the revocations; the CRL follows (WriteCrlLocked's order).
    RETURN_IF_ERROR(WriteCrlLocked(index));
    for (const IndexEntry& e : replaced) {
      LOG(INFO) << "revoked certificate serial " << e.serial << " ('" << e.common_name << "'): " << e.reason;
    }
  }
  issued.replaced = std::move(replaced);
  return issued;
}

absl::StatusOr<IssuedCertificate> CertificateAuthority::IssueServerCertificate(const KeyPair& server_key,
                                                                               const ServerCertificateSpec& spec,
                                                                               const IssueOptions& options) {
  RETURN_IF_ERROR(ValidateIdentityName(spec.common_name, "server common name"));
  if (spec.dns_names.empty() && spec.ip_addresses.empty()) {
    return absl::InvalidArgumentError("a server certificate needs at least one DNS name or IP address");
  }
  for (const std::string& dns : spec.dns_names) {
    if (dns.empty() || dns.size() > 253 || dns.find_first_of(",: \t\n") != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("'", dns, "' is not a DNS name"));
    }
  }
  for (const std::string& ip : spec.ip_addresses) {
    unsigned char buf[16];
    if (inet_pton(AF_INET, ip.c_str(), buf) != 1 && inet_pton(AF_INET6, ip.c_str(), buf) != 1) {
      return absl::InvalidArgumentError(absl::StrCat("'", ip, "' is not an IPv4 or IPv6 address"));
    }
  }
  ASSIGN_OR_RETURN(DirLock lock, DirLock::Acquire(dir_));
  ASSIGN_OR_RETURN(CaIndex index, ReadIndexFile(dir_));
  ASSIGN_OR_RETURN(IssuedCertificate issued, IssueLocked(index, server_key.get(), spec.common_name, Role::kServer,
                                                         spec.dns_names, spec.ip_addresses, options));
  RETURN_IF_ERROR(WriteIndexLocked(index));
  return issued;
}

absl::StatusOr<IndexEntry> CertificateAuthority::RevokeSerial(absl::string_view serial, absl::string_view reason) {
  ASSIGN_OR_RETURN(Asn1IntegerPtr parsed, SerialFromString(serial));
  const std::string canonical = SerialToString(parsed.get());
  ASSIGN_OR_RETURN(DirLock lock, DirLock::Acquire(dir_));
  ASSIGN_OR_RETURN(CaIndex index, ReadIndexFile(dir_));
  IndexEntry* entry = index.FindBySerial(canonical);
  if (entry == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("no certificate with serial ", canonical, " was issued by the CA in ", dir_));
  }
  if (entry->status == CertificateStatus::kRevoked) {
    return absl::FailedPreconditionError(
        absl::StrCat("certificate serial ", canonical, " ('", entry->common_name, "') is already revoked"));
  }
  entry->status = CertificateStatus::kRevoked;
  entry->revoked_at = absl::Now();
  entry->reason = std::string(reason);
  IndexEntry out = *entry;
  RETURN_IF_ERROR(WriteCrlLocked(index));
  LOG(INFO) << "revoked certificate serial " << canonical << " ('" << out.common_name << "')";
  return out;
}

absl::StatusOr<std::vector<IndexEntry>> CertificateAuthority::RevokeByName(absl::string_view common_name, Role role,
                                                                           absl::string_view reason) {
  ASSIGN_OR_RETURN(DirLock lock, DirLock::Acquire(dir_));
  ASSIGN_OR_RETURN(CaIndex index, ReadIndexFile(dir_));
  std::vector<IndexEntry> revoked;
  const absl::Time now = absl::Now();
  for (IndexEntry& e : index.entries) {
    if (e.common_name != common_name || e.role != role || e.status != CertificateStatus::kEnrolled) continue;
    e.status = CertificateStatus::kRevoked;
    e.revoked_at = now;
    e.reason = std::string(reason);
    revoked.push_back(e);
  }
  if (revoked.empty()) {
    return absl::NotFoundError(
        absl::StrCat("no enrolled ", RoleName(role), " certificate with common name '", common_name, "'"));
  }
  RETURN_IF_ERROR(WriteCrlLocked(index));
  LOG(INFO) << "revoked " << revoked.size() << " certificate(s) of " << RoleName(role) << " '" << common_name << "'";
  return revoked;
}

absl::Status CertificateAuthority::ReissueCrl() {
  ASSIGN_OR_RETURN(DirLock lock, DirLock::Acquire(dir_));
  ASSIGN_OR_RETURN(CaIndex index, ReadIndexFile(dir_));
  return WriteCrlLocked(index);
}

absl::Status CertificateAuthority::WriteCrlLocked(CaIndex& index) {
  X509CrlPtr crl(X509_CRL_new());
  if (!crl || X509_CRL_set_version(crl.get(), 1) != 1 ||  // v2
      X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(cert_.get())) != 1) {
    return OpenSslInternal("cannot create a CRL");
  }
  const absl::Time now = absl::Now();
  Asn1TimePtr this_update(ASN1_TIME_new());
  Asn1TimePtr next_update(ASN1_TIME_new());
  if (!this_update || !next_update) return OpenSslInternal("cannot allocate times");
  RETURN_IF_ERROR(SetAsnTime(this_update.get(), now));
  RETURN_IF_ERROR(SetAsnTime(next_update.get(), now + absl::Hours(24) * index.crl_days));
  if (X509_CRL_set1_lastUpdate(crl.get(), this_update.get()) != 1 ||
      X509_CRL_set1_nextUpdate(crl.get(), next_update.get()) != 1) {
    return OpenSslInternal("cannot set the CRL's update times");
  }
  for (const IndexEntry& e : index.entries) {
    if (e.status != CertificateStatus::kRevoked) continue;
    X509RevokedPtr revoked(X509_REVOKED_new());
    ASSIGN_OR_RETURN(Asn1IntegerPtr serial, SerialFromString(e.serial));
    Asn1TimePtr when(ASN1_TIME_new());
    if (!revoked || !when) return OpenSslInternal("cannot allocate a CRL entry");
    RETURN_IF_ERROR(SetAsnTime(when.get(), e.revoked_at.value_or(now)));
    if (X509_REVOKED_set_serialNumber(revoked.get(), serial.get()) != 1 ||
        X509_REVOKED_set_revocationDate(revoked.get(), when.get()) != 1 ||
        X509_CRL_add0_revoked(crl.get(), revoked.get()) != 1) {
      return OpenSslInternal("cannot add a CRL entry");
    }
    revoked.release();  // Owned by the CRL now.
  }
  X509_CRL_sort(crl.get());
  Asn1IntegerPtr number(ASN1_INTEGER_new());
  if (!number || ASN1_INTEGER_set_int64(number.get(), index.next_crl_number) != 1 ||
      X509_CRL_add1_ext_i2d(crl.get(), NID_crl_number, number.get(), 0, 0) != 1) {
    return OpenSslInternal("cannot set the CRL number");
  }
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert_.get(), nullptr, nullptr, crl.get(), 0);
  X509ExtensionPtr akid(X509V3_EXT_conf_nid(nullptr, &ctx, NID_authority_key_identifier, "keyid:always"));
  if (!akid || X509_CRL_add_ext(crl.get(), akid.get(), -1) != 1) {
    return OpenSslInternal("cannot add the CRL's authority key identifier");
  }
  if (X509_CRL_sign(crl.get(), key_.get(), EVP_sha256()) <= 0) return OpenSslInternal("cannot sign the CRL");
  BioPtr bio = NewMemBio();
  if (!bio || PEM_write_bio_X509_CRL(bio.get(), crl.get()) != 1) return OpenSslInternal("cannot encode the CRL");
  ++index.next_crl_number;
  // The index first: it is the authority on revocation (the verifier checks both).
  RETURN_IF_ERROR(WriteIndexLocked(index));
  return io::WriteFileAtomically(CaCrlPath(dir_), BioContents(bio.get()));
}

}  // namespace fedtune::pki
