// The coordinator's TLS identity in tests that start a real coordinator: a server certificate for localhost and
// 127.0.0.1 issued by the test's CA, written as server.pem and server.key in the test's temporary directory.
#ifndef FEDTUNE_TESTS_COORDINATOR_SERVER_CERTIFICATE_H_
#define FEDTUNE_TESTS_COORDINATOR_SERVER_CERTIFICATE_H_

#include "common/pki/certificate_authority.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::coordinator::testing {

inline ::testing::AssertionResult WriteLocalhostServerCertificate(pki::CertificateAuthority& ca,
                                                                  const fedtune::testing::TempDir& tmp) {
  absl::StatusOr<pki::KeyPair> key = pki::KeyPair::Generate();
  if (!key.ok()) return ::testing::AssertionFailure() << key.status();
  pki::ServerCertificateSpec spec;
  spec.dns_names = {"localhost"};
  spec.ip_addresses = {"127.0.0.1"};
  absl::StatusOr<pki::IssuedCertificate> cert = ca.IssueServerCertificate(*key, spec);
  if (!cert.ok()) return ::testing::AssertionFailure() << cert.status();
  tmp.WriteFile("server.pem", cert->pem);
  tmp.WriteFile("server.key", *key->PrivateKeyPem());
  return ::testing::AssertionSuccess();
}

}  // namespace fedtune::coordinator::testing

#endif  // FEDTUNE_TESTS_COORDINATOR_SERVER_CERTIFICATE_H_
