#include "common/secagg/key_agreement.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fedtune::secagg {
namespace {

TEST(KeyAgreementTest, BothSidesDeriveTheSameSeed) {
  auto a = KeyPair::Generate();
  auto b = KeyPair::Generate();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->public_key().size(), kPublicKeyBytes);
  EXPECT_EQ(a->public_key()[0], 0x04);
  EXPECT_NE(a->public_key(), b->public_key());
  const std::string ctx_ab = PairwiseContext("run-1", 3, 7, 2);
  EXPECT_EQ(ctx_ab, PairwiseContext("run-1", 3, 2, 7));
  auto s_ab = DerivePairwiseSeed(*a, b->public_key(), ctx_ab);
  auto s_ba = DerivePairwiseSeed(*b, a->public_key(), PairwiseContext("run-1", 3, 2, 7));
  ASSERT_TRUE(s_ab.ok()) << s_ab.status();
  ASSERT_TRUE(s_ba.ok()) << s_ba.status();
  EXPECT_EQ(*s_ab, *s_ba);

  auto other_round = DerivePairwiseSeed(*a, b->public_key(), PairwiseContext("run-1", 4, 2, 7));
  auto other_run = DerivePairwiseSeed(*a, b->public_key(), PairwiseContext("run-2", 3, 2, 7));
  ASSERT_TRUE(other_round.ok() && other_run.ok());
  EXPECT_NE(*other_round, *s_ab);
  EXPECT_NE(*other_run, *s_ab);

  auto c = KeyPair::Generate();
  ASSERT_TRUE(c.ok());
  auto s_ac = DerivePairwiseSeed(*a, c->public_key(), ctx_ab);
  ASSERT_TRUE(s_ac.ok());
  EXPECT_NE(*s_ac, *s_ab);
}

TEST(KeyAgreementTest, ImportRefusesBadPoints) {
  auto a = KeyPair::Generate();
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(ImportPublicKey(a->public_key()).ok());
  std::vector<uint8_t> off_curve = a->public_key();
  off_curve[64] ^= 0x01;  // changes Y: (X, Y') is not on the curve
  EXPECT_EQ(ImportPublicKey(off_curve).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<uint8_t> short_key(a->public_key().begin(), a->public_key().end() - 1);
  EXPECT_EQ(ImportPublicKey(short_key).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<uint8_t> compressed_prefix = a->public_key();
  compressed_prefix[0] = 0x02;
  EXPECT_EQ(ImportPublicKey(compressed_prefix).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ImportPublicKey(std::vector<uint8_t>(kPublicKeyBytes, 0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DerivePairwiseSeed(*a, off_curve, "ctx").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DerivePairwiseSeed(*a, a->public_key(), std::string(kMaxContextBytes + 1, 'x')).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(KeyAgreementTest, FromPkeyNeedsAPrivateP256Key) {
  auto a = KeyPair::Generate();
  ASSERT_TRUE(a.ok());
  // A copy of the whole key pair is accepted and keeps its public point.
  auto copy = KeyPair::FromPkey(PkeyPtr(EVP_PKEY_dup(a->pkey())));
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_EQ(copy->public_key(), a->public_key());
  // The same point without its private part is refused.
  auto public_only = ImportPublicKey(a->public_key());
  ASSERT_TRUE(public_only.ok()) << public_only.status();
  auto refused = KeyPair::FromPkey(std::move(*public_only));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(refused.status().message()), ::testing::HasSubstr("private"));
  EXPECT_EQ(KeyPair::FromPkey(nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KeyPair::FromPkey(PkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-384"))).status().code(),
            absl::StatusCode::kInvalidArgument);
}

void CheckSigning(EVP_PKEY* long_term) {
  auto eph = KeyPair::Generate();
  auto other = KeyPair::Generate();
  ASSERT_TRUE(eph.ok() && other.ok());
  const std::string ctx = "fedtune-secagg|run=r|round=1|site=5";
  auto sig = SignPublicKey(long_term, eph->public_key(), ctx);
  ASSERT_TRUE(sig.ok()) << sig.status();
  EXPECT_TRUE(VerifyPublicKeySignature(long_term, eph->public_key(), ctx, *sig).ok());
  EXPECT_EQ(VerifyPublicKeySignature(long_term, other->public_key(), ctx, *sig).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(VerifyPublicKeySignature(long_term, eph->public_key(), "another context", *sig).code(),
            absl::StatusCode::kPermissionDenied);
  std::vector<uint8_t> bad = *sig;
  bad[bad.size() / 2] ^= 0x10;
  EXPECT_EQ(VerifyPublicKeySignature(long_term, eph->public_key(), ctx, bad).code(),
            absl::StatusCode::kPermissionDenied);
}

TEST(KeyAgreementTest, SignsAndVerifiesWithEcLongTermKey) {
  PkeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  ASSERT_NE(key, nullptr);
  CheckSigning(key.get());
  PkeyPtr stranger(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  auto eph = KeyPair::Generate();
  auto sig = SignPublicKey(key.get(), eph->public_key(), "c");
  ASSERT_TRUE(sig.ok());
  EXPECT_EQ(VerifyPublicKeySignature(stranger.get(), eph->public_key(), "c", *sig).code(),
            absl::StatusCode::kPermissionDenied);
}

TEST(KeyAgreementTest, SignsAndVerifiesWithRsaLongTermKey) {
  PkeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048}));
  ASSERT_NE(key, nullptr);
  CheckSigning(key.get());
}

TEST(KeyAgreementTest, RefusesNullKeys) {
  std::vector<uint8_t> pub(kPublicKeyBytes, 4);
  EXPECT_EQ(SignPublicKey(nullptr, pub, "c").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(VerifyPublicKeySignature(nullptr, pub, "c", pub).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtune::secagg
