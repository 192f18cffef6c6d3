// Helpers shared by the pki tests: a CA in a temporary directory and site credentials made through the library.
#ifndef FEDTUNE_TESTS_COMMON_PKI_PKI_TEST_UTIL_H_
#define FEDTUNE_TESTS_COMMON_PKI_PKI_TEST_UTIL_H_

#include <sys/stat.h>

#include <memory>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/pki/certificate_authority.h"
#include "common/pki/csr.h"
#include "common/pki/key_pair.h"
#include "gtest/gtest.h"

namespace fedtune::pki::testing {

// A CA in `dir`; CHECK-fails (via gtest assertions in the caller) on error.
inline std::unique_ptr<CertificateAuthority> MakeCa(const std::string& dir, const std::string& consortium) {
  CaOptions options;
  options.consortium = consortium;
  auto ca = CertificateAuthority::Initialize(dir, options);
  EXPECT_TRUE(ca.ok()) << ca.status();
  return ca.ok() ? *std::move(ca) : nullptr;
}

struct Credentials {
  std::string key_pem;
  std::string cert_pem;
  std::string serial;
};

// A fresh key + CSR for `cn`, signed by `ca` for `role` with `options`.
inline Credentials Enroll(CertificateAuthority& ca, const std::string& cn, Role role, IssueOptions options = {}) {
  Credentials out;
  absl::StatusOr<KeyPair> key = KeyPair::Generate();
  EXPECT_TRUE(key.ok()) << key.status();
  absl::StatusOr<std::string> csr = CreateCsrPem(*key, cn);
  EXPECT_TRUE(csr.ok()) << csr.status();
  absl::StatusOr<IssuedCertificate> issued = ca.SignCsr(*csr, role, options);
  EXPECT_TRUE(issued.ok()) << issued.status();
  if (!issued.ok()) return out;
  out.key_pem = *key->PrivateKeyPem();
  out.cert_pem = issued->pem;
  out.serial = issued->info.serial;
  return out;
}

// Permission bits of a file (-1 when it cannot be stat'ed).
inline int FileMode(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return -1;
  return static_cast<int>(st.st_mode & 0777);
}

// Decodes the base64 body of a PEM block, applies `edit` to the DER bytes and re-encodes it with the same label.
template <typename Edit>
std::string EditPemDer(const std::string& pem, Edit edit) {
  const std::string begin_marker = "-----BEGIN ";
  size_t label_end = pem.find("-----", begin_marker.size());
  std::string label = pem.substr(begin_marker.size(), label_end - begin_marker.size());
  size_t body_start = pem.find('\n', label_end) + 1;
  size_t body_end = pem.find("-----END ");
  std::string body = absl::StrReplaceAll(pem.substr(body_start, body_end - body_start), {{"\n", ""}, {"\r", ""}});
  std::string der;
  EXPECT_TRUE(absl::Base64Unescape(body, &der));
  edit(der);
  std::string b64 = absl::Base64Escape(der);
  std::string out = absl::StrCat("-----BEGIN ", label, "-----\n");
  for (size_t i = 0; i < b64.size(); i += 64) absl::StrAppend(&out, b64.substr(i, 64), "\n");
  absl::StrAppend(&out, "-----END ", label, "-----\n");
  return out;
}

}  // namespace fedtune::pki::testing

#endif  // FEDTUNE_TESTS_COMMON_PKI_PKI_TEST_UTIL_H_
