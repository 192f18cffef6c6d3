// The simulated sites' credentials: enrolled with the CA (the project's PKI code) when missing, reused when present,
// refused when half there or when there is no CA to enrol them.
#include "site_agent/loadgen/site_credentials.h"

#include <filesystem>

#include "common/io/file_util.h"
#include "common/pki/certificate.h"
#include "common/pki/certificate_authority.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/pki/pki_test_util.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::loadgen {
namespace {

using ::testing::HasSubstr;

TEST(SiteCredentialsTest, EnrolsMissingSitesThenReusesThem) {
  fedtune::testing::TempDir tmp;
  std::unique_ptr<pki::CertificateAuthority> ca = pki::testing::MakeCa(tmp.Join("ca"), "Consortium");
  ASSERT_NE(ca, nullptr);
  const std::string certs = tmp.Join("certs");
  absl::StatusOr<std::vector<SiteCredentials>> first =
      EnsureSiteCredentials({"lg-0000", "lg-0001"}, certs, tmp.Join("ca"), tmp.Join("ca/ca.pem"));
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->size(), 2u);
  for (const SiteCredentials& site : *first) {
    EXPECT_TRUE(site.enrolled_now);
    EXPECT_EQ(site.files.ca, tmp.Join("ca/ca.pem"));
    absl::StatusOr<pki::X509Ptr> cert = pki::ReadCertificateFile(site.files.cert);
    ASSERT_TRUE(cert.ok()) << cert.status();
    absl::StatusOr<pki::CertificateInfo> info = pki::DescribeCertificate(cert->get());
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->common_name, site.site_id);
    EXPECT_EQ(info->role, pki::Role::kSite);
    EXPECT_EQ(pki::testing::FileMode(site.files.key), 0600);
  }
  absl::StatusOr<pki::CaIndex> index = ca->ReadIndex();
  ASSERT_TRUE(index.ok());
  const size_t issued = index->entries.size();

  // A second call reuses the files (the coordinator pins each site's key): nothing new is signed.
  const std::string pem = *io::ReadFile((*first)[0].files.cert);
  absl::StatusOr<std::vector<SiteCredentials>> again =
      EnsureSiteCredentials({"lg-0000", "lg-0001", "lg-0002"}, certs, tmp.Join("ca"), tmp.Join("ca/ca.pem"));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE((*again)[0].enrolled_now);
  EXPECT_FALSE((*again)[1].enrolled_now);
  EXPECT_TRUE((*again)[2].enrolled_now);
  EXPECT_EQ(*io::ReadFile((*again)[0].files.cert), pem);
  index = ca->ReadIndex();
  ASSERT_TRUE(index.ok());
  EXPECT_EQ(index->entries.size(), issued + 1);
}

TEST(SiteCredentialsTest, RefusesHalfPairsAndMissingFilesWithoutCa) {
  fedtune::testing::TempDir tmp;
  std::unique_ptr<pki::CertificateAuthority> ca = pki::testing::MakeCa(tmp.Join("ca"), "Consortium");
  ASSERT_NE(ca, nullptr);
  const std::string certs = tmp.Join("certs");
  std::filesystem::create_directories(certs);
  tmp.WriteFile("certs/lg-0000.pem", "not used");
  absl::StatusOr<std::vector<SiteCredentials>> half =
      EnsureSiteCredentials({"lg-0000"}, certs, tmp.Join("ca"), tmp.Join("ca/ca.pem"));
  ASSERT_FALSE(half.ok());
  EXPECT_EQ(half.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(half.status().message(), HasSubstr("lg-0000.key"));

  absl::StatusOr<std::vector<SiteCredentials>> no_ca =
      EnsureSiteCredentials({"lg-0001"}, certs, "", tmp.Join("ca/ca.pem"));
  ASSERT_FALSE(no_ca.ok());
  EXPECT_EQ(no_ca.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(no_ca.status().message(), HasSubstr("lg-0001.pem"));

  absl::StatusOr<std::vector<SiteCredentials>> no_ca_cert =
      EnsureSiteCredentials({"lg-0001"}, certs, tmp.Join("ca"), tmp.Join("nowhere/ca.pem"));
  ASSERT_FALSE(no_ca_cert.ok());
  EXPECT_EQ(no_ca_cert.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(no_ca_cert.status().message(), HasSubstr("nowhere/ca.pem"));
}

}  // namespace
}  // namespace fedtune::loadgen
