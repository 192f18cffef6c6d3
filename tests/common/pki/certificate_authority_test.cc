// Tests of common/pki/certificate_authority.h: initialization, issued certificate contents, the index, serials,
// revocation and the CRL.
#include "common/pki/certificate_authority.h"

#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/io/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/pki/pki_test_util.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::pki {
namespace {

using ::fedtune::pki::testing::Enroll;
using ::fedtune::pki::testing::FileMode;
using ::fedtune::pki::testing::MakeCa;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

X509CrlPtr ReadCrl(const std::string& dir) {
  absl::StatusOr<std::string> pem = io::ReadFile(CaCrlPath(dir));
  EXPECT_TRUE(pem.ok());
  BioPtr bio = MemBioOf(*pem);
  return X509CrlPtr(PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr));
}

TEST(CertificateAuthorityTest, InitWritesCaFilesAndRefusesToOverwrite) {
  fedtune::testing::TempDir tmp;
  const std::string dir = tmp.Join("ca");
  auto ca = MakeCa(dir, "Nordic Chest");
  ASSERT_NE(ca, nullptr);
  EXPECT_EQ(FileMode(CaKeyPath(dir)), 0600);
  absl::StatusOr<X509Ptr> cert = ReadCertificateFile(CaCertPath(dir));
  ASSERT_TRUE(cert.ok()) << cert.status();
  absl::StatusOr<CertificateInfo> info = DescribeCertificate(cert->get());
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->common_name, "Nordic Chest fedtune CA");
  EXPECT_EQ(info->organization, "Nordic Chest");
  EXPECT_TRUE(info->is_ca);
  EXPECT_EQ(info->subject, info->issuer);
  EXPECT_EQ(X509_get_key_usage(cert->get()), static_cast<uint32_t>(KU_KEY_CERT_SIGN | KU_CRL_SIGN));
  EXPECT_EQ(X509_check_issued(cert->get(), cert->get()), X509_V_OK);  // Self-signed.
  EXPECT_NEAR(absl::ToDoubleHours(info->not_after - absl::Now()) / 24, 3650, 1);
  // Empty CRL signed by the CA.
  X509CrlPtr crl = ReadCrl(dir);
  ASSERT_TRUE(crl);
  EXPECT_LE(sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl.get())), 0);  // -1: no entries at all.
  EXPECT_EQ(X509_CRL_verify(crl.get(), X509_get0_pubkey(cert->get())), 1);
  absl::StatusOr<CaIndex> index = ca->ReadIndex();
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(index->consortium, "Nordic Chest");
  EXPECT_EQ(index->next_serial, 1);
  EXPECT_TRUE(index->entries.empty());

  CaOptions again;
  again.consortium = "Other";
  auto second = CertificateAuthority::Initialize(dir, again);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kAlreadyExists) << second.status();
  EXPECT_EQ(*io::ReadFile(CaCertPath(dir)), ca->ca_pem());  // Untouched.

  CaOptions bad;
  EXPECT_EQ(CertificateAuthority::Initialize(tmp.Join("ca2"), bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad.consortium = "ok";
  bad.days = 0;
  EXPECT_EQ(CertificateAuthority::Initialize(tmp.Join("ca3"), bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CertificateTest, GarbagePemIsInvalidArgument) {
  absl::StatusOr<X509Ptr> cert = ParseCertificatePem("not a certificate", "peer.pem");
  EXPECT_EQ(cert.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(cert.status().message(), HasSubstr("peer.pem: no PEM certificate"));
  EXPECT_EQ(ParseCertificatePem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseRole("admin").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*ParseRole(RoleName(Role::kOperator)), Role::kOperator);
}

TEST(CertificateAuthorityTest, OpenRejectsMissingOrMismatchedFiles) {
  fedtune::testing::TempDir tmp;
  EXPECT_EQ(CertificateAuthority::Open(tmp.Join("nothing")).status().code(), absl::StatusCode::kNotFound);
  auto a = MakeCa(tmp.Join("a"), "A");
  auto b = MakeCa(tmp.Join("b"), "B");
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(io::WriteFileAtomically(CaCertPath(tmp.Join("a")), b->ca_pem()).ok());
  absl::Status mismatch = CertificateAuthority::Open(tmp.Join("a")).status();
  EXPECT_EQ(mismatch.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(mismatch.message(), HasSubstr("is not the private key of"));
  ASSERT_TRUE(io::WriteFileAtomically(CaIndexPath(tmp.Join("b")), "{\"format\": 3}").ok());
  EXPECT_EQ(CertificateAuthority::Open(tmp.Join("b")).status().code(), absl::StatusCode::kDataLoss);
}

TEST(CertificateAuthorityTest, SignedCertificatesCarryRoleNamesAndSequentialSerials) {
  fedtune::testing::TempDir tmp;
  const std::string dir = tmp.Join("ca");
  auto ca = MakeCa(dir, "Consortium");
  ASSERT_NE(ca, nullptr);
  auto site = Enroll(*ca, "site-a", Role::kSite);
  auto op = Enroll(*ca, "alice", Role::kOperator);
  EXPECT_EQ(site.serial, "1");
  EXPECT_EQ(op.serial, "2");

  absl::StatusOr<X509Ptr> cert = ParseCertificatePem(site.cert_pem);
  ASSERT_TRUE(cert.ok());
  absl::StatusOr<CertificateInfo> info = DescribeCertificate(cert->get());
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->common_name, "site-a");
  EXPECT_EQ(info->organization, "Consortium");
  ASSERT_TRUE(info->role.has_value());
  EXPECT_EQ(*info->role, Role::kSite);
  EXPECT_FALSE(info->is_ca);
  EXPECT_EQ(info->issuer, "CN=Consortium fedtune CA,O=Consortium");
  EXPECT_EQ(X509_get_extended_key_usage(cert->get()), static_cast<uint32_t>(XKU_SSL_CLIENT));
  EXPECT_EQ(X509_get_key_usage(cert->get()), static_cast<uint32_t>(KU_DIGITAL_SIGNATURE));
  EXPECT_NEAR(absl::ToDoubleHours(info->not_after - absl::Now()) / 24, 365, 1);
  EXPECT_LT(info->not_before, absl::Now());

  absl::StatusOr<X509Ptr> op_cert = ParseCertificatePem(op.cert_pem);
  EXPECT_EQ(*DescribeCertificate(op_cert->get())->role, Role::kOperator);

  absl::StatusOr<CaIndex> index = ca->ReadIndex();
  ASSERT_TRUE(index.ok());
  ASSERT_EQ(index->entries.size(), 2u);
  EXPECT_EQ(index->next_serial, 3);
  EXPECT_EQ(index->entries[0].common_name, "site-a");
  EXPECT_EQ(index->entries[0].role, Role::kSite);
  EXPECT_EQ(index->entries[0].status, CertificateStatus::kEnrolled);
  EXPECT_EQ(index->entries[0].fingerprint_sha256, info->fingerprint_sha256);
  EXPECT_EQ(index->entries[1].role, Role::kOperator);

  // A second CA object on the same directory (another CLI invocation) continues the serials.
  absl::StatusOr<std::unique_ptr<CertificateAuthority>> reopened = CertificateAuthority::Open(dir);
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ(Enroll(**reopened, "site-b", Role::kSite).serial, "3");
  EXPECT_EQ(Enroll(*ca, "site-c", Role::kSite).serial, "4");

  // Validity overrides and errors.
  IssueOptions past;
  past.not_before = absl::Now() - absl::Hours(48);
  past.not_after = absl::Now() - absl::Hours(24);
  auto expired = Enroll(*ca, "site-old", Role::kSite, past);
  EXPECT_LT(DescribeCertificate(ParseCertificatePem(expired.cert_pem)->get())->not_after, absl::Now());
  IssueOptions backwards;
  backwards.not_before = absl::Now();
  backwards.not_after = absl::Now() - absl::Hours(1);
  absl::StatusOr<KeyPair> key = KeyPair::Generate();
  EXPECT_EQ(ca->SignCsr(*CreateCsrPem(*key, "x"), Role::kSite, backwards).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ca->SignCsr(*CreateCsrPem(*key, "x"), Role::kServer).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ca->SignCsr("garbage", Role::kSite).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CertificateAuthorityTest, ServerCertificateHasSansAndServerAuth) {
  fedtune::testing::TempDir tmp;
  auto ca = MakeCa(tmp.Join("ca"), "C");
  ASSERT_NE(ca, nullptr);
  absl::StatusOr<KeyPair> key = KeyPair::Generate();
  ServerCertificateSpec spec;
  spec.dns_names = {"coordinator.example.org", "localhost"};
  spec.ip_addresses = {"127.0.0.1", "::1"};
  absl::StatusOr<IssuedCertificate> issued = ca->IssueServerCertificate(*key, spec);
  ASSERT_TRUE(issued.ok()) << issued.status();
  EXPECT_EQ(issued->info.common_name, "coordinator");
  EXPECT_EQ(*issued->info.role, Role::kServer);
  EXPECT_THAT(issued->info.dns_names, ElementsAre("coordinator.example.org", "localhost"));
  EXPECT_THAT(issued->info.ip_addresses, ElementsAre("127.0.0.1", "::1"));
  absl::StatusOr<X509Ptr> cert = ParseCertificatePem(issued->pem);
  EXPECT_EQ(X509_get_extended_key_usage(cert->get()), static_cast<uint32_t>(XKU_SSL_SERVER));
  EXPECT_EQ(X509_check_host(cert->get(), "localhost", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_ip_asc(cert->get(), "127.0.0.1", 0), 1);
  EXPECT_EQ(X509_check_host(cert->get(), "evil.example.org", 0, 0, nullptr), 0);

  ServerCertificateSpec none;
  EXPECT_EQ(ca->IssueServerCertificate(*key, none).status().code(), absl::StatusCode::kInvalidArgument);
  ServerCertificateSpec bad_ip;
  bad_ip.ip_addresses = {"300.1.1.1"};
  EXPECT_EQ(ca->IssueServerCertificate(*key, bad_ip).status().code(), absl::StatusCode::kInvalidArgument);
  ServerCertificateSpec bad_dns;
  bad_dns.dns_names = {"a,IP:1.2.3.4"};
  EXPECT_EQ(ca->IssueServerCertificate(*key, bad_dns).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CertificateAuthorityTest, RevocationUpdatesIndexAndSignedCrl) {
  fedtune::testing::TempDir tmp;
  const std::string dir = tmp.Join("ca");
  auto ca = MakeCa(dir, "C");
  ASSERT_NE(ca, nullptr);
  auto a = Enroll(*ca, "site-a", Role::kSite);
  auto b1 = Enroll(*ca, "site-b", Role::kSite);
  IssueOptions replace;
  replace.replace = true;
  auto b2 = Enroll(*ca, "site-b", Role::kSite, replace);  // Revokes b1 (CRL 2).
  auto op_c = Enroll(*ca, "op-c", Role::kOperator);

  absl::StatusOr<IndexEntry> revoked = ca->RevokeSerial(a.serial, "laptop stolen");
  ASSERT_TRUE(revoked.ok()) << revoked.status();
  EXPECT_EQ(revoked->common_name, "site-a");
  EXPECT_EQ(ca->RevokeSerial(a.serial).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ca->RevokeSerial("99").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ca->RevokeSerial("abc").status().code(), absl::StatusCode::kInvalidArgument);

  absl::StatusOr<std::vector<IndexEntry>> by_name = ca->RevokeByName("site-b", Role::kSite);
  ASSERT_TRUE(by_name.ok()) << by_name.status();
  ASSERT_EQ(by_name->size(), 1u);  // b1 was revoked when b2 replaced it.
  EXPECT_EQ((*by_name)[0].serial, b2.serial);
  EXPECT_EQ(ca->RevokeByName("site-b", Role::kSite).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ca->RevokeByName("op-c", Role::kSite).status().code(), absl::StatusCode::kNotFound);  // Role matters.

  absl::StatusOr<CaIndex> index = ca->ReadIndex();
  ASSERT_TRUE(index.ok());
  EXPECT_EQ(index->FindBySerial(a.serial)->status, CertificateStatus::kRevoked);
  EXPECT_EQ(index->FindBySerial(a.serial)->reason, "laptop stolen");
  EXPECT_TRUE(index->FindBySerial(a.serial)->revoked_at.has_value());
  EXPECT_EQ(index->FindBySerial(b1.serial)->reason, absl::StrCat("replaced by serial ", b2.serial));
  EXPECT_EQ(index->FindBySerial(op_c.serial)->status, CertificateStatus::kEnrolled);  // Other role untouched.

  X509CrlPtr crl = ReadCrl(dir);
  ASSERT_TRUE(crl);
  EXPECT_EQ(X509_CRL_verify(crl.get(), X509_get0_pubkey(ParseCertificatePem(ca->ca_pem())->get())), 1);
  std::set<std::string> serials;
  STACK_OF(X509_REVOKED)* entries = X509_CRL_get_REVOKED(crl.get());
  for (int i = 0; i < sk_X509_REVOKED_num(entries); ++i) {
    serials.insert(SerialToString(X509_REVOKED_get0_serialNumber(sk_X509_REVOKED_value(entries, i))));
  }
  EXPECT_EQ(serials, (std::set<std::string>{a.serial, b1.serial, b2.serial}));
  absl::StatusOr<absl::Time> this_update = AsnTimeToTime(X509_CRL_get0_lastUpdate(crl.get()));
  absl::StatusOr<absl::Time> next_update = AsnTimeToTime(X509_CRL_get0_nextUpdate(crl.get()));
  EXPECT_NEAR(absl::ToDoubleHours(*next_update - *this_update) / 24, 30, 0.01);
  ASN1_INTEGER* number = static_cast<ASN1_INTEGER*>(X509_CRL_get_ext_d2i(crl.get(), NID_crl_number, nullptr, nullptr));
  ASSERT_NE(number, nullptr);
  EXPECT_EQ(ASN1_INTEGER_get(number), 4);  // Init wrote CRL 1, the replacement CRL 2, two revocations 3 and 4.
  ASN1_INTEGER_free(number);

  // Hex serials are accepted.
  EXPECT_TRUE(ca->RevokeSerial(absl::StrCat("0x", op_c.serial)).ok());
}

TEST(CertificateAuthorityTest, ConcurrentIssuersGetUniqueSerials) {
  fedtune::testing::TempDir tmp;
  const std::string dir = tmp.Join("ca");
  ASSERT_NE(MakeCa(dir, "C"), nullptr);
  // Each thread opens its own CA object, like separate `fedtune pki sign` processes; the lock file serializes them.
  std::vector<std::vector<std::string>> serials(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      absl::StatusOr<std::unique_ptr<CertificateAuthority>> ca = CertificateAuthority::Open(dir);
      ASSERT_TRUE(ca.ok()) << ca.status();
      for (int i = 0; i < 5; ++i) {
        serials[t].push_back(Enroll(**ca, absl::StrCat("site-", t, "-", i), Role::kSite).serial);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  std::set<std::string> all;
  for (const auto& list : serials) all.insert(list.begin(), list.end());
  EXPECT_EQ(all.size(), 20u);
  absl::StatusOr<std::unique_ptr<CertificateAuthority>> ca = CertificateAuthority::Open(dir);
  ASSERT_TRUE(ca.ok());
  absl::StatusOr<CaIndex> index = (*ca)->ReadIndex();
  ASSERT_TRUE(index.ok());
  EXPECT_EQ(index->entries.size(), 20u);
  EXPECT_EQ(index->next_serial, 21);
}

// One common name, one valid certificate: SignCsr refuses a CN with a valid site or operator certificate (either
// role), names the CN and serial, and `replace` revokes the old certificate in the same index update. Concurrent
// signers of one name (separate processes) cannot both get a certificate.
TEST(CertificateAuthorityTest, OneValidCertificatePerCommonName) {
  fedtune::testing::TempDir tmp;
  const std::string dir = tmp.Join("ca");
  auto ca = MakeCa(dir, "C");
  ASSERT_NE(ca, nullptr);
  auto csr_for = [](const std::string& cn) {
    absl::StatusOr<KeyPair> key = KeyPair::Generate();
    EXPECT_TRUE(key.ok());
    return *CreateCsrPem(*key, cn);
  };
  auto first = ca->SignCsr(csr_for("oslo"), Role::kSite);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->replaced.empty());
  for (Role role : {Role::kSite, Role::kOperator}) {
    absl::Status again = ca->SignCsr(csr_for("oslo"), role).status();
    EXPECT_EQ(again.code(), absl::StatusCode::kAlreadyExists) << again;
    EXPECT_THAT(again.message(), HasSubstr("'oslo'"));
    EXPECT_THAT(again.message(), HasSubstr(absl::StrCat("serial ", first->info.serial)));
  }
  EXPECT_EQ(ca->ReadIndex()->entries.size(), 1u);

  IssueOptions replace;
  replace.replace = true;
  auto second = ca->SignCsr(csr_for("oslo"), Role::kSite, replace);
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_EQ(second->replaced.size(), 1u);
  EXPECT_EQ(second->replaced[0].serial, first->info.serial);
  absl::StatusOr<CaIndex> index = ca->ReadIndex();
  ASSERT_TRUE(index.ok());
  EXPECT_EQ(index->FindBySerial(first->info.serial)->status, CertificateStatus::kRevoked);
  EXPECT_EQ(index->FindBySerial(second->info.serial)->status, CertificateStatus::kEnrolled);
  X509CrlPtr crl = ReadCrl(dir);
  ASSERT_TRUE(crl);
  X509_REVOKED* entry = nullptr;
  EXPECT_EQ(X509_CRL_get0_by_serial(crl.get(), &entry, SerialFromString(first->info.serial)->get()), 1);
  // replace with nothing to replace simply issues.
  auto fresh = ca->SignCsr(csr_for("bergen"), Role::kSite, replace);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_TRUE(fresh->replaced.empty());

  // Expired and revoked certificates do not block.
  IssueOptions past;
  past.not_before = absl::Now() - absl::Hours(48);
  past.not_after = absl::Now() - absl::Hours(24);
  ASSERT_TRUE(ca->SignCsr(csr_for("old"), Role::kSite, past).ok());
  EXPECT_TRUE(ca->SignCsr(csr_for("old"), Role::kSite).ok());
  ASSERT_TRUE(ca->RevokeByName("bergen", Role::kSite).ok());
  EXPECT_TRUE(ca->SignCsr(csr_for("bergen"), Role::kSite).ok());
  // Server certificates are outside the rule.
  absl::StatusOr<KeyPair> server_key = KeyPair::Generate();
  ServerCertificateSpec spec;
  spec.common_name = "oslo";
  spec.dns_names = {"localhost"};
  EXPECT_TRUE(ca->IssueServerCertificate(*server_key, spec).ok());

  // Four processes race to enrol the same new name: exactly one wins.
  std::vector<std::string> csrs;
  for (int t = 0; t < 4; ++t) csrs.push_back(csr_for("tromso"));
  std::vector<absl::StatusCode> codes(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      absl::StatusOr<std::unique_ptr<CertificateAuthority>> other = CertificateAuthority::Open(dir);
      ASSERT_TRUE(other.ok());
      codes[t] = (*other)->SignCsr(csrs[t], Role::kSite).status().code();
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(std::count(codes.begin(), codes.end(), absl::StatusCode::kOk), 1);
  EXPECT_EQ(std::count(codes.begin(), codes.end(), absl::StatusCode::kAlreadyExists), 3);
}

}  // namespace
}  // namespace fedtune::pki
