// Tests of common/pki/key_pair.h and csr.h: P-256 generation, PEM round trips, 0600 atomic key files, CSR creation
// and verification (tampered requests, wrong key types, bad names, garbage input).
#include "common/pki/key_pair.h"

#include <openssl/evp.h>
#include <openssl/pem.h>

#include <filesystem>
#include <string>

#include "common/io/file_util.h"
#include "common/pki/csr.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/pki/pki_test_util.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::pki {
namespace {

using ::fedtune::pki::testing::EditPemDer;
using ::fedtune::pki::testing::FileMode;
using ::testing::HasSubstr;

TEST(KeyPairTest, GeneratesP256AndRoundTripsThroughPem) {
  absl::StatusOr<KeyPair> key = KeyPair::Generate();
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_TRUE(CheckIsP256(key->get(), "key").ok());
  EXPECT_EQ(EVP_PKEY_get_bits(key->get()), 256);
  absl::StatusOr<std::string> pem = key->PrivateKeyPem();
  ASSERT_TRUE(pem.ok());
  EXPECT_THAT(*pem, HasSubstr("-----BEGIN PRIVATE KEY-----"));
  absl::StatusOr<KeyPair> back = KeyPair::FromPrivateKeyPem(*pem);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(EVP_PKEY_eq(key->get(), back->get()), 1);
  EXPECT_EQ(*back->PublicKeyPem(), *key->PublicKeyPem());
  // Two generations differ.
  absl::StatusOr<KeyPair> other = KeyPair::Generate();
  ASSERT_TRUE(other.ok());
  EXPECT_NE(*other->PublicKeyPem(), *key->PublicKeyPem());
}

TEST(KeyPairTest, GarbageAndNonP256KeysAreInvalidArgument) {
  absl::StatusOr<KeyPair> garbage = KeyPair::FromPrivateKeyPem("hello, not a key", "site.key");
  EXPECT_EQ(garbage.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(garbage.status().message(), HasSubstr("site.key"));
  EXPECT_THAT(garbage.status().message(), HasSubstr("not an unencrypted PEM private key"));

  EvpPkeyPtr p384(EVP_EC_gen("P-384"));
  ASSERT_TRUE(p384);
  absl::Status wrong_curve = CheckIsP256(p384.get(), "key");
  EXPECT_EQ(wrong_curve.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong_curve.message(), HasSubstr("secp384r1"));
  EvpPkeyPtr ed(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
  ASSERT_TRUE(ed);
  EXPECT_THAT(CheckIsP256(ed.get(), "key").message(), HasSubstr("not an EC key"));
}

TEST(KeyPairTest, PrivateKeyFileIsWrittenWithMode0600AndNeverReplaced) {
  fedtune::testing::TempDir dir;
  absl::StatusOr<KeyPair> key = KeyPair::Generate();
  ASSERT_TRUE(key.ok());
  const std::string path = dir.Join("site.key");
  ASSERT_TRUE(key->WritePrivateKeyFile(path).ok());
  EXPECT_EQ(FileMode(path), 0600);
  absl::StatusOr<KeyPair> read = KeyPair::ReadPrivateKeyFile(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(EVP_PKEY_eq(key->get(), read->get()), 1);

  absl::StatusOr<KeyPair> second = KeyPair::Generate();
  absl::Status again = second->WritePrivateKeyFile(path);
  EXPECT_EQ(again.code(), absl::StatusCode::kAlreadyExists) << again;
  // The original key is intact and no temporary file is left behind.
  EXPECT_EQ(EVP_PKEY_eq(KeyPair::ReadPrivateKeyFile(path)->get(), key->get()), 1);
  int files = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(dir.path())) ++files;
  EXPECT_EQ(files, 1);

  // With overwrite the file is replaced, still 0600.
  ASSERT_TRUE(WritePrivateFileAtomically(path, "x", /*overwrite=*/true).ok());
  EXPECT_EQ(*io::ReadFile(path), "x");
  EXPECT_EQ(FileMode(path), 0600);
  EXPECT_EQ(WritePrivateFileAtomically(dir.Join("missing/site.key"), "x").code(), absl::StatusCode::kNotFound);
}

TEST(CsrTest, CreatesAndVerifiesARequest) {
  absl::StatusOr<KeyPair> key = KeyPair::Generate();
  ASSERT_TRUE(key.ok());
  absl::StatusOr<std::string> csr = CreateCsrPem(*key, "site-a");
  ASSERT_TRUE(csr.ok()) << csr.status();
  EXPECT_THAT(*csr, HasSubstr("-----BEGIN CERTIFICATE REQUEST-----"));
  EXPECT_THAT(*csr, ::testing::Not(HasSubstr("PRIVATE")));
  absl::StatusOr<VerifiedCsr> parsed = ParseAndVerifyCsrPem(*csr);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->common_name, "site-a");
  EXPECT_EQ(EVP_PKEY_eq(parsed->public_key.get(), key->get()), 1);
}

TEST(CsrTest, TamperedRequestIsRejected) {
  absl::StatusOr<KeyPair> key = KeyPair::Generate();
  absl::StatusOr<std::string> csr = CreateCsrPem(*key, "site-a");
  ASSERT_TRUE(csr.ok());
  // Rewrite the CN inside the signed body: "site-a" -> "site-b".
  std::string tampered = EditPemDer(*csr, [](std::string& der) {
    size_t at = der.find("site-a");
    ASSERT_NE(at, std::string::npos);
    der[at + 5] = 'b';
  });
  ASSERT_NE(tampered, *csr);
  absl::StatusOr<VerifiedCsr> parsed = ParseAndVerifyCsrPem(tampered, "req.csr");
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(parsed.status().message(), HasSubstr("req.csr"));
  EXPECT_THAT(parsed.status().message(), HasSubstr("signature does not verify"));
}

TEST(CsrTest, GarbageWrongKeyAndBadNamesAreInvalidArgument) {
  absl::StatusOr<VerifiedCsr> garbage = ParseAndVerifyCsrPem("-----BEGIN NONSENSE-----\nxx\n", "x.csr");
  EXPECT_EQ(garbage.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(garbage.status().message(), HasSubstr("no PEM certificate request"));

  absl::StatusOr<KeyPair> key = KeyPair::Generate();
  for (const char* bad : {"", "-site", "site a", "site/../../etc", "s\xc3\xa9te"}) {
    absl::StatusOr<std::string> csr = CreateCsrPem(*key, bad);
    EXPECT_EQ(csr.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(CreateCsrPem(*key, std::string(65, 'a')).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(CreateCsrPem(*key, std::string(64, 'a')).ok());

  // A CSR made with another curve (by OpenSSL directly) is refused.
  EvpPkeyPtr p384(EVP_EC_gen("P-384"));
  X509ReqPtr req(X509_REQ_new());
  X509_NAME_add_entry_by_NID(X509_REQ_get_subject_name(req.get()), NID_commonName, MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>("site-x"), -1, -1, 0);
  X509_REQ_set_pubkey(req.get(), p384.get());
  ASSERT_GT(X509_REQ_sign(req.get(), p384.get(), EVP_sha256()), 0);
  BioPtr bio = NewMemBio();
  PEM_write_bio_X509_REQ(bio.get(), req.get());
  absl::StatusOr<VerifiedCsr> p384_csr = ParseAndVerifyCsrPem(BioContents(bio.get()));
  EXPECT_EQ(p384_csr.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(p384_csr.status().message(), HasSubstr("P-256"));
}

}  // namespace
}  // namespace fedtune::pki
