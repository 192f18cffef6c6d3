// Tests of common/pki/verifier.h: the coordinator's per-call decision for a peer certificate.
#include "common/pki/verifier.h"

#include <openssl/x509v3.h>

#include <atomic>
#include <thread>
#include <vector>

#include "common/io/file_util.h"
#include "common/pki/ca_index.h"
#include "common/pki/certificate_authority.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/pki/pki_test_util.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::pki {
namespace {

using ::fedtune::pki::testing::Enroll;
using ::fedtune::pki::testing::MakeCa;
using ::testing::HasSubstr;

// A certificate for `cn` with subject O=Consortium, OU=`role`, signed with the CA's own key exactly like the CA's
// issued ones except for the extendedKeyUsage (`eku`, OpenSSL config syntax; "" = no EKU extension), and enrolled in
// the index, so that only the EKU can make the verifier refuse it. Returns the PEM.
std::string MintWithEku(const std::string& ca_dir, const std::string& cn, Role role, const std::string& eku) {
  absl::StatusOr<KeyPair> ca_key = KeyPair::ReadPrivateKeyFile(CaKeyPath(ca_dir));
  absl::StatusOr<X509Ptr> ca_cert = ReadCertificateFile(CaCertPath(ca_dir));
  absl::StatusOr<KeyPair> subject_key = KeyPair::Generate();
  EXPECT_TRUE(ca_key.ok() && ca_cert.ok() && subject_key.ok());
  absl::StatusOr<CaIndex> index = ParseCaIndex(*io::ReadFile(CaIndexPath(ca_dir)), "index");
  EXPECT_TRUE(index.ok()) << index.status();
  const std::string serial = absl::StrCat(index->next_serial++);
  X509Ptr cert(X509_new());
  X509_set_version(cert.get(), 2);
  X509_set_serialNumber(cert.get(), SerialFromString(serial)->get());
  X509_NAME* name = X509_get_subject_name(cert.get());
  for (auto [nid, value] : {std::pair<int, std::string>{NID_organizationName, "Consortium"},
                            {NID_organizationalUnitName, RoleName(role)},
                            {NID_commonName, cn}}) {
    X509_NAME_add_entry_by_NID(name, nid, MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(value.c_str()), -1, -1,
                               0);
  }
  X509_set_issuer_name(cert.get(), X509_get_subject_name(ca_cert->get()));
  EXPECT_TRUE(SetAsnTime(X509_getm_notBefore(cert.get()), absl::Now() - absl::Hours(1)).ok());
  EXPECT_TRUE(SetAsnTime(X509_getm_notAfter(cert.get()), absl::Now() + absl::Hours(24)).ok());
  X509_set_pubkey(cert.get(), subject_key->get());
  std::vector<std::pair<int, std::string>> extensions = {{NID_basic_constraints, "critical,CA:FALSE"},
                                                         {NID_key_usage, "critical,digitalSignature"},
                                                         {NID_authority_key_identifier, "keyid:always"}};
  if (!eku.empty()) extensions.push_back({NID_ext_key_usage, eku});
  for (const auto& [nid, value] : extensions) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, ca_cert->get(), cert.get(), nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
    EXPECT_NE(ext, nullptr) << value;
    X509_add_ext(cert.get(), ext, -1);
    X509_EXTENSION_free(ext);
  }
  EXPECT_GT(X509_sign(cert.get(), ca_key->get(), EVP_sha256()), 0);
  absl::StatusOr<CertificateInfo> info = DescribeCertificate(cert.get());
  EXPECT_TRUE(info.ok()) << info.status();
  IndexEntry entry;
  entry.serial = serial;
  entry.common_name = cn;
  entry.role = role;
  entry.not_before = info->not_before;
  entry.not_after = info->not_after;
  entry.issued_at = absl::Now();
  entry.fingerprint_sha256 = info->fingerprint_sha256;
  index->entries.push_back(entry);
  EXPECT_TRUE(io::WriteFileAtomically(CaIndexPath(ca_dir), SerializeCaIndex(*index)).ok());
  return *CertificateToPem(cert.get());
}

class VerifierTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = tmp_.Join("ca");
    ca_ = MakeCa(dir_, "Consortium");
    ASSERT_NE(ca_, nullptr);
  }
  std::unique_ptr<CertificateVerifier> MakeVerifier(VerifierOptions options) {
    auto v = CertificateVerifier::Create(std::move(options));
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *std::move(v) : nullptr;
  }
  std::unique_ptr<CertificateVerifier> MakeVerifier() { return MakeVerifier(VerifierOptions::ForCaDir(dir_)); }

  fedtune::testing::TempDir tmp_;
  std::string dir_;
  std::unique_ptr<CertificateAuthority> ca_;
};

TEST_F(VerifierTest, AcceptsEnrolledCertificateAndReturnsIdentity) {
  auto site = Enroll(*ca_, "site-a", Role::kSite);
  auto verifier = MakeVerifier();
  absl::StatusOr<PeerIdentity> id = verifier->Verify(site.cert_pem, Role::kSite);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->common_name, "site-a");
  EXPECT_EQ(id->role, Role::kSite);
  EXPECT_EQ(id->serial, site.serial);
  EXPECT_NEAR(absl::ToDoubleHours(id->not_after - absl::Now()) / 24, 365, 1);
  EXPECT_EQ(id->fingerprint_sha256.size(), 64u);

  auto op = Enroll(*ca_, "alice", Role::kOperator);
  absl::StatusOr<PeerIdentity> op_id = verifier->Verify(op.cert_pem, Role::kOperator);
  ASSERT_TRUE(op_id.ok()) << op_id.status();  // Issued after the verifier was created: the index reloads.
  EXPECT_EQ(op_id->common_name, "alice");
}

TEST_F(VerifierTest, WrongRoleIsPermissionDenied) {
  auto site = Enroll(*ca_, "site-a", Role::kSite);
  auto op = Enroll(*ca_, "alice", Role::kOperator);
  auto verifier = MakeVerifier();
  absl::Status s = verifier->Verify(site.cert_pem, Role::kOperator).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_THAT(s.message(), HasSubstr("has role site; this call needs role operator"));
  EXPECT_EQ(verifier->Verify(op.cert_pem, Role::kSite).status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(VerifierTest, RevocationTakesEffectOnTheNextCallOfTheSameVerifier) {
  auto site = Enroll(*ca_, "site-a", Role::kSite);
  auto other = Enroll(*ca_, "site-b", Role::kSite);
  auto verifier = MakeVerifier();
  ASSERT_TRUE(verifier->Verify(site.cert_pem, Role::kSite).ok());
  // Revoke through a separate CA object, as `fedtune pki revoke` would from another process.
  absl::StatusOr<std::unique_ptr<CertificateAuthority>> cli_ca = CertificateAuthority::Open(dir_);
  ASSERT_TRUE(cli_ca.ok());
  ASSERT_TRUE((*cli_ca)->RevokeSerial(site.serial).ok());
  absl::Status s = verifier->Verify(site.cert_pem, Role::kSite).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_THAT(s.message(), HasSubstr("revoked"));
  EXPECT_THAT(s.message(), HasSubstr("site-a"));
  EXPECT_TRUE(verifier->Verify(other.cert_pem, Role::kSite).ok());  // Others unaffected.
}

TEST_F(VerifierTest, CrlAloneRevokesWithoutIndex) {
  auto site = Enroll(*ca_, "site-a", Role::kSite);
  VerifierOptions options = VerifierOptions::ForCaDir(dir_);
  options.index_path = "";
  auto verifier = MakeVerifier(options);
  ASSERT_TRUE(verifier->Verify(site.cert_pem, Role::kSite).ok());
  ASSERT_TRUE(ca_->RevokeByName("site-a", Role::kSite).ok());
  absl::Status s = verifier->Verify(site.cert_pem, Role::kSite).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_THAT(s.message(), HasSubstr("was revoked at"));  // The CRL's wording, with its date.
}

TEST_F(VerifierTest, CertificateUnknownToTheIndexIsPermissionDenied) {
  const std::string saved = *io::ReadFile(CaIndexPath(dir_));
  auto site = Enroll(*ca_, "site-a", Role::kSite);
  ASSERT_TRUE(io::WriteFileAtomically(CaIndexPath(dir_), saved).ok());  // As if the enrolment were lost.
  auto verifier = MakeVerifier();
  absl::Status s = verifier->Verify(site.cert_pem, Role::kSite).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_THAT(s.message(), HasSubstr("not enrolled"));
}

TEST_F(VerifierTest, CertificateFromAnotherCaIsUnauthenticated) {
  auto other_ca = MakeCa(tmp_.Join("other"), "Consortium");  // Same name, different key.
  ASSERT_NE(other_ca, nullptr);
  auto foreign = Enroll(*other_ca, "site-a", Role::kSite);
  auto verifier = MakeVerifier();
  absl::Status s = verifier->Verify(foreign.cert_pem, Role::kSite).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
  EXPECT_THAT(s.message(), HasSubstr("not accepted by the consortium CA"));
  // The other CA's own certificate is refused too, as is ours presented as a peer certificate.
  EXPECT_EQ(verifier->Verify(other_ca->ca_pem(), Role::kSite).status().code(), absl::StatusCode::kUnauthenticated);
  absl::Status own = verifier->Verify(ca_->ca_pem(), Role::kSite).status();
  EXPECT_EQ(own.code(), absl::StatusCode::kUnauthenticated) << own;
  EXPECT_THAT(own.message(), HasSubstr("is a CA certificate"));
}

TEST_F(VerifierTest, ExpiredAndNotYetValidAreUnauthenticated) {
  IssueOptions past;
  past.not_before = absl::Now() - absl::Hours(24 * 10);
  past.not_after = absl::Now() - absl::Hours(24);
  auto expired = Enroll(*ca_, "site-old", Role::kSite, past);
  auto verifier = MakeVerifier();
  absl::Status s = verifier->Verify(expired.cert_pem, Role::kSite).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
  EXPECT_THAT(s.message(), HasSubstr("expired at"));

  IssueOptions future;
  future.not_before = absl::Now() + absl::Hours(24);
  future.not_after = absl::Now() + absl::Hours(48);
  auto early = Enroll(*ca_, "site-new", Role::kSite, future);
  absl::Status e = verifier->Verify(early.cert_pem, Role::kSite).status();
  EXPECT_EQ(e.code(), absl::StatusCode::kUnauthenticated) << e;
  EXPECT_THAT(e.message(), HasSubstr("is not valid before"));

  // With an injected clock, a normal certificate is expired a year and a day from now.
  auto site = Enroll(*ca_, "site-a", Role::kSite);
  VerifierOptions options = VerifierOptions::ForCaDir(dir_);
  options.clock = [] { return absl::Now() + absl::Hours(24 * 366); };
  auto later = MakeVerifier(options);
  EXPECT_EQ(later->Verify(site.cert_pem, Role::kSite).status().code(), absl::StatusCode::kUnauthenticated);
}

TEST_F(VerifierTest, MalformedPeerCertificatesAreUnauthenticated) {
  auto verifier = MakeVerifier();
  EXPECT_EQ(verifier->Verify("", Role::kSite).status().code(), absl::StatusCode::kUnauthenticated);
  absl::Status garbage =
      verifier->Verify("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", Role::kSite).status();
  EXPECT_EQ(garbage.code(), absl::StatusCode::kUnauthenticated) << garbage;
  // A certificate whose signed body was altered (CN site-a -> site-b) fails the signature check.
  auto site = Enroll(*ca_, "site-a", Role::kSite);
  std::string forged = testing::EditPemDer(site.cert_pem, [](std::string& der) {
    size_t at = der.find("site-a");
    ASSERT_NE(at, std::string::npos);
    der[at + 5] = 'b';
  });
  absl::Status f = verifier->Verify(forged, Role::kSite).status();
  EXPECT_EQ(f.code(), absl::StatusCode::kUnauthenticated) << f;
  EXPECT_THAT(f.message(), HasSubstr("signature"));
}

TEST_F(VerifierTest, FailsClosedOnCorruptCrlAndRecovers) {
  auto site = Enroll(*ca_, "site-a", Role::kSite);
  auto verifier = MakeVerifier();
  ASSERT_TRUE(verifier->Verify(site.cert_pem, Role::kSite).ok());
  // A CRL signed by another CA is refused.
  auto other_ca = MakeCa(tmp_.Join("other"), "Consortium");
  ASSERT_TRUE(io::WriteFileAtomically(CaCrlPath(dir_), *io::ReadFile(CaCrlPath(tmp_.Join("other")))).ok());
  absl::Status s = verifier->Verify(site.cert_pem, Role::kSite).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  ASSERT_TRUE(io::WriteFileAtomically(CaCrlPath(dir_), "garbage").ok());
  EXPECT_EQ(verifier->Verify(site.cert_pem, Role::kSite).status().code(), absl::StatusCode::kDataLoss);
  ASSERT_TRUE(ca_->ReissueCrl().ok());
  EXPECT_TRUE(verifier->Verify(site.cert_pem, Role::kSite).ok());
  EXPECT_TRUE(verifier->Reload().ok());

  VerifierOptions missing = VerifierOptions::ForCaDir(tmp_.Join("nowhere"));
  EXPECT_EQ(CertificateVerifier::Create(missing).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(VerifierTest, StaleCrlIsRefusedOnlyWhenAsked) {
  auto site = Enroll(*ca_, "site-a", Role::kSite);
  VerifierOptions options = VerifierOptions::ForCaDir(dir_);
  options.clock = [] { return absl::Now() + absl::Hours(24 * 31); };  // Past the 30-day nextUpdate.
  EXPECT_TRUE(MakeVerifier(options)->Verify(site.cert_pem, Role::kSite).ok());
  options.reject_stale_crl = true;
  EXPECT_EQ(MakeVerifier(options)->Verify(site.cert_pem, Role::kSite).status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(VerifierTest, ConcurrentVerificationsSeeARevocation) {
  auto site = Enroll(*ca_, "site-a", Role::kSite);
  auto verifier = MakeVerifier();
  std::atomic<int> ok{0}, denied{0}, other{0};
  std::atomic<bool> revoked{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        bool after = revoked.load();
        absl::StatusCode code = verifier->Verify(site.cert_pem, Role::kSite).status().code();
        if (code == absl::StatusCode::kOk) {
          if (after) ++other;  // Accepted although the revocation had completed before the call: a bug.
          ++ok;
        } else if (code == absl::StatusCode::kPermissionDenied) {
          ++denied;
        } else {
          ++other;
        }
      }
    });
  }
  ASSERT_TRUE(ca_->RevokeSerial(site.serial).ok());
  revoked = true;
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(ok + denied, 200);
  EXPECT_EQ(verifier->Verify(site.cert_pem, Role::kSite).status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(VerifierTest, ExtendedKeyUsageMustMatchTheRole) {
  auto verifier = MakeVerifier();
  // The control: minted like the CA does (clientAuth), it is accepted, so the refusals below are the EKU's doing.
  const std::string good = MintWithEku(dir_, "site-good", Role::kSite, "clientAuth");
  ASSERT_TRUE(verifier->Verify(good, Role::kSite).ok()) << verifier->Verify(good, Role::kSite).status();
  struct Case {
    std::string cn;
    Role role;
    std::string eku;
  };
  for (const Case& c :
       {Case{"site-no-eku", Role::kSite, ""}, Case{"site-server-eku", Role::kSite, "serverAuth"},
        Case{"site-signing-eku", Role::kSite, "codeSigning,emailProtection"}, Case{"alice-no-eku", Role::kOperator, ""},
        Case{"alice-server-eku", Role::kOperator, "serverAuth"}}) {
    const std::string pem = MintWithEku(dir_, c.cn, c.role, c.eku);
    absl::Status s = verifier->Verify(pem, c.role).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << c.cn << ": " << s;
    EXPECT_THAT(s.message(), HasSubstr("extended key usage")) << c.cn;
    EXPECT_THAT(s.message(), HasSubstr(c.cn));
  }
  // The coordinator's server certificate carries serverAuth only: it is accepted for role server and refused as a
  // client's (its role, and its EKU).
  absl::StatusOr<KeyPair> key = KeyPair::Generate();
  ServerCertificateSpec spec;
  spec.dns_names = {"localhost"};
  absl::StatusOr<IssuedCertificate> server = ca_->IssueServerCertificate(*key, spec);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_TRUE(verifier->Verify(server->pem, Role::kServer).ok())
      << verifier->Verify(server->pem, Role::kServer).status();
  EXPECT_FALSE(verifier->Verify(server->pem, Role::kSite).ok());
  const std::string server_with_client_eku = MintWithEku(dir_, "coordinator-2", Role::kServer, "clientAuth");
  EXPECT_EQ(verifier->Verify(server_with_client_eku, Role::kServer).status().code(),
            absl::StatusCode::kUnauthenticated);
}

}  // namespace
}  // namespace fedtune::pki
