#include "site_agent/loadgen/site_credentials.h"

#include <filesystem>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/pki/certificate_authority.h"
#include "common/pki/csr.h"
#include "common/pki/key_pair.h"
#include "common/status_macros.h"

namespace fedtune::loadgen {

absl::StatusOr<std::vector<SiteCredentials>> EnsureSiteCredentials(const std::vector<std::string>& site_ids,
                                                                   const std::string& certs_dir,
                                                                   const std::string& ca_dir,
                                                                   const std::string& ca_cert) {
  namespace fs = std::filesystem;
  if (!fs::exists(ca_cert)) {
    return absl::NotFoundError(absl::StrCat("CA certificate '", ca_cert, "' does not exist (--ca-cert or --ca-dir)"));
  }
  RETURN_IF_ERROR(io::MakeDirectories(certs_dir));
  std::unique_ptr<pki::CertificateAuthority> ca;  // Opened at the first site to enrol.
  std::vector<SiteCredentials> out;
  out.reserve(site_ids.size());
  for (const std::string& id : site_ids) {
    SiteCredentials site;
    site.site_id = id;
    site.files.cert = (fs::path(certs_dir) / absl::StrCat(id, ".pem")).string();
    site.files.key = (fs::path(certs_dir) / absl::StrCat(id, ".key")).string();
    site.files.ca = ca_cert;
    const bool has_cert = fs::exists(site.files.cert);
    const bool has_key = fs::exists(site.files.key);
    if (has_cert != has_key) {
      return absl::FailedPreconditionError(
          absl::StrCat("site ", id, ": '", has_cert ? site.files.key : site.files.cert, "' is missing but '",
                       has_cert ? site.files.cert : site.files.key, "' exists; remove it to enrol the site again"));
    }
    if (!has_cert) {
      if (ca_dir.empty()) {
        return absl::NotFoundError(
            absl::StrCat("site ", id, ": '", site.files.cert, "' does not exist (give --ca-dir to enrol the sites)"));
      }
      if (ca == nullptr) {
        ASSIGN_OR_RETURN(ca, pki::CertificateAuthority::Open(ca_dir));
      }
      // What `fedtune-site pki request` and `fedtune pki sign --role site` do.
      ASSIGN_OR_RETURN(pki::KeyPair key, pki::KeyPair::Generate());
      ASSIGN_OR_RETURN(std::string csr, pki::CreateCsrPem(key, id));
      ASSIGN_OR_RETURN(pki::IssuedCertificate issued, ca->SignCsr(csr, pki::Role::kSite));
      RETURN_IF_ERROR(key.WritePrivateKeyFile(site.files.key));
      RETURN_IF_ERROR(io::WriteFileAtomically(site.files.cert, issued.pem));
      site.enrolled_now = true;
    }
    out.push_back(std::move(site));
  }
  return out;
}

}  // namespace fedtune::loadgen
