#include "common/pki/certificate.h"

#include <arpa/inet.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/status_macros.h"

namespace fedtune::pki {

std::string RoleName(Role role) {
  switch (role) {
    case Role::kSite:
      return "site";
    case Role::kOperator:
      return "operator";
    case Role::kServer:
      return "server";
  }
  return "?";
}

absl::StatusOr<Role> ParseRole(absl::string_view name) {
  if (name == "site") return Role::kSite;
  if (name == "operator") return Role::kOperator;
  if (name == "server") return Role::kServer;
  return absl::InvalidArgumentError(absl::StrCat("unknown role '", name, "' (expected site, operator or server)"));
}

absl::Status ValidateIdentityName(absl::string_view name, absl::string_view what) {
  if (name.empty() || name.size() > 64) {
    return absl::InvalidArgumentError(absl::StrCat(what, " '", name, "' must have 1 to 64 characters"));
  }
  if (!absl::ascii_isalnum(static_cast<unsigned char>(name[0]))) {
    return absl::InvalidArgumentError(absl::StrCat(what, " '", name, "' must start with a letter or digit"));
  }
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " '", name, "' may contain only letters, digits, '.', '_' and '-'"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<X509Ptr> ParseCertificatePem(absl::string_view pem, absl::string_view source) {
  BioPtr bio = MemBioOf(pem);
  if (!bio) return OpenSslInternal("cannot allocate a BIO");
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) {
    return OpenSslStatus(absl::StatusCode::kInvalidArgument,
                         absl::StrCat(source, ": no PEM certificate (\"-----BEGIN CERTIFICATE-----\") found"));
  }
  return cert;
}

absl::StatusOr<X509Ptr> ReadCertificateFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string pem, io::ReadFile(path));
  return ParseCertificatePem(pem, path);
}

absl::StatusOr<std::string> CertificateToPem(X509* cert) {
  BioPtr bio = NewMemBio();
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) return OpenSslInternal("cannot encode a certificate");
  return BioContents(bio.get());
}

absl::StatusOr<CertificateInfo> DescribeCertificate(X509* cert) {
  CertificateInfo info;
  const X509_NAME* subject = X509_get_subject_name(cert);
  info.subject = NameToString(subject);
  info.issuer = NameToString(X509_get_issuer_name(cert));
  info.common_name = NameEntry(subject, NID_commonName);
  info.organization = NameEntry(subject, NID_organizationName);
  absl::StatusOr<Role> role = ParseRole(NameEntry(subject, NID_organizationalUnitName));
  if (role.ok()) info.role = *role;
  info.serial = SerialToString(X509_get0_serialNumber(cert));
  ASSIGN_OR_RETURN(info.not_before, AsnTimeToTime(X509_get0_notBefore(cert)));
  ASSIGN_OR_RETURN(info.not_after, AsnTimeToTime(X509_get0_notAfter(cert)));
  // X509_get_extension_flags computes the cached extension data (EXFLAG_CA for basicConstraints CA:TRUE).
  info.is_ca = (X509_get_extension_flags(cert) & EXFLAG_CA) != 0;
  GENERAL_NAMES* sans = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (sans != nullptr) {
    for (int i = 0; i < sk_GENERAL_NAME_num(sans); ++i) {
      const GENERAL_NAME* gn = sk_GENERAL_NAME_value(sans, i);
      if (gn->type == GEN_DNS) {
        const ASN1_IA5STRING* dns = gn->d.dNSName;
        info.dns_names.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(dns)),
                                    static_cast<size_t>(ASN1_STRING_length(dns)));
      } else if (gn->type == GEN_IPADD) {
        const ASN1_OCTET_STRING* ip = gn->d.iPAddress;
        char text[INET6_ADDRSTRLEN] = {0};
        int len = ASN1_STRING_length(ip);
        int family = len == 4 ? AF_INET : (len == 16 ? AF_INET6 : -1);
        if (family != -1 && inet_ntop(family, ASN1_STRING_get0_data(ip), text, sizeof(text)) != nullptr) {
          info.ip_addresses.emplace_back(text);
        }
      }
    }
    GENERAL_NAMES_free(sans);
  }
  ASSIGN_OR_RETURN(info.fingerprint_sha256, CertificateFingerprint(cert));
  ASSIGN_OR_RETURN(info.public_key_sha256, PublicKeyFingerprint(cert));
  return info;
}

}  // namespace fedtune::pki
