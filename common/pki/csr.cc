#include "common/pki/csr.h"

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "absl/strings/str_cat.h"
#include "common/pki/certificate.h"
#include "common/status_macros.h"

namespace fedtune::pki {

absl::StatusOr<std::string> CreateCsrPem(const KeyPair& key, absl::string_view common_name) {
  RETURN_IF_ERROR(ValidateIdentityName(common_name, "common name"));
  X509ReqPtr req(X509_REQ_new());
  if (!req || X509_REQ_set_version(req.get(), 0) != 1) return OpenSslInternal("cannot create a CSR");
  std::string cn(common_name);
  X509_NAME* name = X509_REQ_get_subject_name(req.get());
  if (X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0) != 1 ||
      X509_REQ_set_pubkey(req.get(), key.get()) != 1 || X509_REQ_sign(req.get(), key.get(), EVP_sha256()) <= 0) {
    return OpenSslInternal("cannot build or sign a CSR");
  }
  BioPtr bio = NewMemBio();
  if (!bio || PEM_write_bio_X509_REQ(bio.get(), req.get()) != 1) return OpenSslInternal("cannot encode a CSR");
  return BioContents(bio.get());
}

absl::StatusOr<VerifiedCsr> ParseAndVerifyCsrPem(absl::string_view pem, absl::string_view source) {
  BioPtr bio = MemBioOf(pem);
  if (!bio) return OpenSslInternal("cannot allocate a BIO");
  X509ReqPtr req(PEM_read_bio_X509_REQ(bio.get(), nullptr, nullptr, nullptr));
  if (!req) {
    return OpenSslStatus(absl::StatusCode::kInvalidArgument,
                         absl::StrCat(source,
                                      ": no PEM certificate request (\"-----BEGIN CERTIFICATE REQUEST-----\")"
                                      " found"));
  }
  EvpPkeyPtr key(X509_REQ_get_pubkey(req.get()));  // X509_REQ_get_pubkey returns a new reference.
  if (!key) return OpenSslStatus(absl::StatusCode::kInvalidArgument, absl::StrCat(source, ": no public key"));
  RETURN_IF_ERROR(CheckIsP256(key.get(), absl::StrCat(source, ": public key")));
  if (X509_REQ_verify(req.get(), key.get()) != 1) {
    return OpenSslStatus(absl::StatusCode::kInvalidArgument,
                         absl::StrCat(source, ": the request's signature does not verify (altered after signing?)"));
  }
  VerifiedCsr out;
  out.common_name = NameEntry(X509_REQ_get_subject_name(req.get()), NID_commonName);
  if (out.common_name.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": the request has no common name (CN)"));
  }
  RETURN_IF_ERROR(ValidateIdentityName(out.common_name, absl::StrCat(source, ": common name")));
  out.public_key = std::move(key);
  return out;
}

}  // namespace fedtune::pki
