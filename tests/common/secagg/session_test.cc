#include "common/secagg/session.h"

#include <ATen/ATen.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/secagg/fixed_point.h"
#include "gtest/gtest.h"

namespace fedtune::secagg {
namespace {

std::vector<uint8_t> Bytes(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }
std::string Str(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }

PkeyPtr NewSiteKey() { return PkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256")); }

const SessionId kSession = {"run-7", 3, 2};

// One simulated site: its long-term (certificate) key, its two ephemeral key pairs and what it made.
struct Site {
  std::string id;
  int index = 0;
  PkeyPtr long_term;
  std::optional<KeyPair> cipher;
  std::optional<KeyPair> mask;
  int64_t num_samples = 0;
  v1::SecAggPeer peer;
  SiteSecrets secrets;
  std::map<int, SharePayload> received;  // by sender index
  std::vector<uint32_t> encoded;
};

std::vector<Site> MakeSites(int n) {
  std::vector<Site> sites(n);
  for (int i = 0; i < n; ++i) {
    Site& s = sites[i];
    s.id = std::string("site-") + static_cast<char>('a' + i);
    s.index = i + 1;  // ids are in sorted order already
    s.long_term = NewSiteKey();
    EXPECT_NE(s.long_term, nullptr);
    auto c = KeyPair::Generate();
    auto m = KeyPair::Generate();
    EXPECT_TRUE(c.ok() && m.ok());
    s.cipher.emplace(std::move(*c));
    s.mask.emplace(std::move(*m));
    s.num_samples = 100 + 10 * i;
    v1::SecAggKeys keys;
    keys.set_cipher_public_key(Str(s.cipher->public_key()));
    keys.set_mask_public_key(Str(s.mask->public_key()));
    keys.set_num_samples(s.num_samples);
    EXPECT_TRUE(SignKeys(s.long_term.get(), kSession, s.id, &keys).ok());
    s.peer.set_site_id(s.id);
    s.peer.set_index(s.index);
    s.peer.set_cipher_public_key(keys.cipher_public_key());
    s.peer.set_mask_public_key(keys.mask_public_key());
    s.peer.set_signature(keys.signature());
    s.peer.set_num_samples(s.num_samples);
  }
  return sites;
}

TEST(SessionKeysTest, SignedKeysVerifyAndSubstitutionsAreRefused) {
  std::vector<Site> sites = MakeSites(2);
  const Site& a = sites[0];
  EXPECT_TRUE(VerifyPeerKeys(a.long_term.get(), kSession, a.peer).ok());

  v1::SecAggPeer substituted = a.peer;  // the coordinator swaps in its own mask key
  substituted.set_mask_public_key(sites[1].peer.mask_public_key());
  absl::Status s = VerifyPeerKeys(a.long_term.get(), kSession, substituted);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_NE(s.message().find("site-a"), std::string::npos) << s;

  substituted = a.peer;
  substituted.set_cipher_public_key(sites[1].peer.cipher_public_key());
  EXPECT_EQ(VerifyPeerKeys(a.long_term.get(), kSession, substituted).code(), absl::StatusCode::kPermissionDenied);

  v1::SecAggPeer other_samples = a.peer;
  other_samples.set_num_samples(a.num_samples + 1);
  EXPECT_EQ(VerifyPeerKeys(a.long_term.get(), kSession, other_samples).code(), absl::StatusCode::kPermissionDenied);

  v1::SecAggPeer other_site = a.peer;
  other_site.set_site_id("site-b");
  EXPECT_EQ(VerifyPeerKeys(a.long_term.get(), kSession, other_site).code(), absl::StatusCode::kPermissionDenied);

  for (SessionId other : {SessionId{"run-8", 3, 2}, SessionId{"run-7", 4, 2}, SessionId{"run-7", 3, 3}}) {
    EXPECT_EQ(VerifyPeerKeys(a.long_term.get(), other, a.peer).code(), absl::StatusCode::kPermissionDenied);
  }
  // Another site's certificate key.
  EXPECT_EQ(VerifyPeerKeys(sites[1].long_term.get(), kSession, a.peer).code(), absl::StatusCode::kPermissionDenied);

  v1::SecAggPeer bad_point = a.peer;
  std::string k = bad_point.mask_public_key();
  k[10] ^= 0x01;  // almost surely off the curve
  bad_point.set_mask_public_key(k);
  s = VerifyPeerKeys(a.long_term.get(), kSession, bad_point);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("mask"), std::string::npos) << s;

  v1::SecAggPeer short_key = a.peer;
  short_key.set_cipher_public_key("\x04short");
  EXPECT_EQ(VerifyPeerKeys(a.long_term.get(), kSession, short_key).code(), absl::StatusCode::kInvalidArgument);

  v1::SecAggPeer same = a.peer;
  same.set_mask_public_key(same.cipher_public_key());
  EXPECT_EQ(VerifyPeerKeys(a.long_term.get(), kSession, same).code(), absl::StatusCode::kInvalidArgument);

  v1::SecAggKeys keys;
  EXPECT_EQ(SignKeys(nullptr, kSession, "site-a", &keys).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SignKeys(a.long_term.get(), kSession, std::string(2000, 'x'), &keys).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SessionKeysTest, PrivateScalarRoundTripsAndOutOfRangeScalarsAreRefused) {
  auto key = KeyPair::Generate();
  ASSERT_TRUE(key.ok());
  auto scalar = ExportPrivateScalar(*key);
  ASSERT_TRUE(scalar.ok()) << scalar.status();
  auto rebuilt = KeyPairFromPrivateScalar(*scalar);
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.status();
  EXPECT_EQ(rebuilt->public_key(), key->public_key());
  auto peer = KeyPair::Generate();
  ASSERT_TRUE(peer.ok());
  auto s1 = DerivePairwiseSeed(*key, peer->public_key(), "ctx");
  auto s2 = DerivePairwiseSeed(*rebuilt, peer->public_key(), "ctx");
  ASSERT_TRUE(s1.ok() && s2.ok());
  EXPECT_EQ(*s1, *s2);

  PrivateScalar one{};
  one[31] = 1;
  auto g = KeyPairFromPrivateScalar(one);
  ASSERT_TRUE(g.ok()) << g.status();
  // The P-256 generator's x coordinate starts 6B17D1F2 E12C4247.
  const std::vector<uint8_t> gx = {0x04, 0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47};
  EXPECT_TRUE(std::equal(gx.begin(), gx.end(), g->public_key().begin()));

  EXPECT_EQ(KeyPairFromPrivateScalar(PrivateScalar{}).status().code(), absl::StatusCode::kInvalidArgument);
  PrivateScalar order = {0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
                         0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17,
                         0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51};
  EXPECT_EQ(KeyPairFromPrivateScalar(order).status().code(), absl::StatusCode::kInvalidArgument);
  PrivateScalar below = order;
  below[31] -= 1;  // n - 1 is valid
  EXPECT_TRUE(KeyPairFromPrivateScalar(below).ok());
  PrivateScalar all_ff;
  all_ff.fill(0xff);
  EXPECT_EQ(KeyPairFromPrivateScalar(all_ff).status().code(), absl::StatusCode::kInvalidArgument);
}

SharePayload SamplePayload() {
  SharePayload p;
  p.x = 3;
  p.from = 5;
  p.self_mask = {3, {1, 2, kShamirPrime - 1}};
  p.mask_key = {Share{3, {4, 5, 6}}, Share{3, {7, 8, 9}}};
  return p;
}

TEST(SessionSharesTest, PayloadRoundTripsAndMalformedPayloadsAreRefused) {
  const SharePayload p = SamplePayload();
  const std::string bytes = SerializeSharePayload(p);
  EXPECT_EQ(bytes.size(), kSharePayloadBytes);
  auto parsed = ParseSharePayload(bytes);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->x, 3);
  EXPECT_EQ(parsed->from, 5);
  EXPECT_EQ(parsed->self_mask.y, p.self_mask.y);
  EXPECT_EQ(parsed->mask_key[0].y, p.mask_key[0].y);
  EXPECT_EQ(parsed->mask_key[1].y, p.mask_key[1].y);
  EXPECT_EQ(parsed->mask_key[1].x, 3);

  EXPECT_EQ(ParseSharePayload(bytes.substr(1)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseSharePayload(bytes + "x").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseSharePayload("").status().code(), absl::StatusCode::kInvalidArgument);
  std::string bad = bytes;
  bad[0] = 2;  // version
  EXPECT_EQ(ParseSharePayload(bad).status().code(), absl::StatusCode::kInvalidArgument);
  SharePayload zero_x = p;
  zero_x.x = 0;
  EXPECT_EQ(ParseSharePayload(SerializeSharePayload(zero_x)).status().code(), absl::StatusCode::kInvalidArgument);
  SharePayload big = p;
  big.mask_key[1].y[2] = kShamirPrime;
  EXPECT_EQ(ParseSharePayload(SerializeSharePayload(big)).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SessionSharesTest, EncryptedSharesDecryptOnlyForTheirPairAndSession) {
  std::vector<Site> sites = MakeSites(3);
  const Site& u = sites[0];
  const Site& v = sites[1];
  const Site& w = sites[2];
  SharePayload p = SamplePayload();
  p.x = v.index;
  p.from = u.index;
  auto ct = EncryptShares(*u.cipher, v.cipher->public_key(), kSession, u.index, v.index, p);
  ASSERT_TRUE(ct.ok()) << ct.status();
  EXPECT_EQ(ct->size(), kEncryptedSharesBytes);
  auto again = EncryptShares(*u.cipher, v.cipher->public_key(), kSession, u.index, v.index, p);
  ASSERT_TRUE(again.ok());
  EXPECT_NE(ct->substr(0, 12), again->substr(0, 12));  // random nonces

  auto got = DecryptShares(*v.cipher, u.cipher->public_key(), kSession, u.index, v.index, *ct);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->self_mask.y, p.self_mask.y);
  EXPECT_EQ(got->mask_key[0].y, p.mask_key[0].y);
  EXPECT_EQ(got->mask_key[1].y, p.mask_key[1].y);

  // A flipped bit anywhere (nonce, body, tag).
  for (size_t pos : {size_t{0}, size_t{11}, size_t{12}, size_t{50}, ct->size() - 1}) {
    std::string tampered = *ct;
    tampered[pos] ^= 0x20;
    EXPECT_EQ(DecryptShares(*v.cipher, u.cipher->public_key(), kSession, u.index, v.index, tampered).status().code(),
              absl::StatusCode::kPermissionDenied)
        << "byte " << pos;
  }
  // Another receiver (w with its own key), a reversed pair, another session, the wrong sender key.
  EXPECT_EQ(DecryptShares(*w.cipher, u.cipher->public_key(), kSession, u.index, w.index, *ct).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(DecryptShares(*v.cipher, u.cipher->public_key(), kSession, v.index, u.index, *ct).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(
      DecryptShares(*v.cipher, u.cipher->public_key(), SessionId{"run-7", 3, 3}, u.index, v.index, *ct).status().code(),
      absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(DecryptShares(*v.cipher, w.cipher->public_key(), kSession, u.index, v.index, *ct).status().code(),
            absl::StatusCode::kPermissionDenied);
  // Malformed.
  EXPECT_EQ(
      DecryptShares(*v.cipher, u.cipher->public_key(), kSession, u.index, v.index, ct->substr(0, 20)).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecryptShares(*v.cipher, u.cipher->public_key(), kSession, u.index, v.index, std::string(5000, 'x'))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecryptShares(*v.cipher, Bytes("junk"), kSession, u.index, v.index, *ct).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncryptShares(*u.cipher, v.cipher->public_key(), kSession, 1, 1, p).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncryptShares(*u.cipher, v.cipher->public_key(), kSession, 0, 2, p).status().code(),
            absl::StatusCode::kInvalidArgument);
  // An authentic ciphertext whose payload names other indices (a confused sender).
  SharePayload wrong = p;
  wrong.x = w.index;
  auto ct_wrong = EncryptShares(*u.cipher, v.cipher->public_key(), kSession, u.index, v.index, wrong);
  ASSERT_TRUE(ct_wrong.ok());
  EXPECT_EQ(DecryptShares(*v.cipher, u.cipher->public_key(), kSession, u.index, v.index, *ct_wrong).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SessionSharesTest, SiteSecretsBounds) {
  auto key = KeyPair::Generate();
  ASSERT_TRUE(key.ok());
  EXPECT_EQ(MakeSiteSecrets(1, *key, 2, 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeSiteSecrets(1, *key, 1, 4).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeSiteSecrets(1, *key, 5, 4).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeSiteSecrets(5, *key, 3, 4).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeSiteSecrets(0, *key, 3, 4).status().code(), absl::StatusCode::kInvalidArgument);
  auto secrets = MakeSiteSecrets(2, *key, 3, 4);
  ASSERT_TRUE(secrets.ok()) << secrets.status();
  ASSERT_EQ(secrets->payloads.size(), 4u);
  for (const auto& [x, p] : secrets->payloads) {
    EXPECT_EQ(p.x, x);
    EXPECT_EQ(p.from, 2);
    EXPECT_EQ(p.self_mask.x, x);
    EXPECT_EQ(p.mask_key[0].x, x);
  }
}

// The whole protocol in process for n sites, `dropped` of which drop after sharing. `revealers`: how many of the
// survivors reveal; `include_own`: whether a revealer includes its own self-mask share.
struct Simulation {
  std::vector<Site> sites;
  std::vector<uint32_t> masked_sum;
  std::vector<uint32_t> plain_sum;
  std::map<int, std::vector<uint8_t>> mask_keys;
  std::vector<int> survivors, dropped;
  RevealedShares revealed;
  int threshold = 0;
};

void Simulate(int n, int threshold, const std::set<int>& dropped_indices, int revealers, bool include_own, int length,
              Simulation* sim) {
  sim->threshold = threshold;
  sim->sites = MakeSites(n);
  std::vector<Site>& sites = sim->sites;
  // Phase 1: every site checks the roster.
  for (const Site& s : sites) {
    for (const Site& peer : sites) ASSERT_TRUE(VerifyPeerKeys(peer.long_term.get(), kSession, peer.peer).ok());
    sim->mask_keys[s.index] = s.mask->public_key();
  }
  // Phase 2: shares, encrypted for each peer and decrypted by it.
  std::map<std::pair<int, int>, std::string> ciphertexts;  // (from, to)
  for (Site& s : sites) {
    auto secrets = MakeSiteSecrets(s.index, *s.mask, threshold, n);
    ASSERT_TRUE(secrets.ok()) << secrets.status();
    s.secrets = std::move(*secrets);
    s.received[s.index] = s.secrets.payloads.at(s.index);
    for (const Site& peer : sites) {
      if (peer.index == s.index) continue;
      auto ct = EncryptShares(*s.cipher, peer.cipher->public_key(), kSession, s.index, peer.index,
                              s.secrets.payloads.at(peer.index));
      ASSERT_TRUE(ct.ok()) << ct.status();
      ciphertexts[{s.index, peer.index}] = *ct;
    }
  }
  for (Site& s : sites) {
    for (const Site& peer : sites) {
      if (peer.index == s.index) continue;
      auto p = DecryptShares(*s.cipher, peer.cipher->public_key(), kSession, peer.index, s.index,
                             ciphertexts.at({peer.index, s.index}));
      ASSERT_TRUE(p.ok()) << p.status();
      s.received[peer.index] = *p;
    }
  }
  // Phase 3: survivors mask their encodings (random levels of a codec for n summands).
  auto codec = FixedPointCodec::Create(1.0, n);
  ASSERT_TRUE(codec.ok());
  std::mt19937 rng(1234 + n);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  sim->masked_sum.assign(length, 0);
  sim->plain_sum.assign(length, 0);
  for (Site& s : sites) {
    std::vector<float> values(length);
    for (float& v : values) v = dist(rng);
    auto enc = codec->Encode(values);
    ASSERT_TRUE(enc.ok());
    s.encoded = *enc;
    if (dropped_indices.count(s.index)) {
      sim->dropped.push_back(s.index);
      continue;
    }
    sim->survivors.push_back(s.index);
    auto y = MaskForPeers(s.index, s.encoded, s.secrets.self_seed, *s.mask, sim->mask_keys, kSession);
    ASSERT_TRUE(y.ok()) << y.status();
    AddInto(sim->masked_sum, *y);
    AddInto(sim->plain_sum, s.encoded);
  }
  // Phase 4: the first `revealers` survivors reveal.
  int revealed = 0;
  for (const Site& s : sites) {
    if (dropped_indices.count(s.index) || revealed == revealers) continue;
    ++revealed;
    for (int u : sim->survivors) {
      if (u == s.index && !include_own) continue;
      sim->revealed.self_shares[u].push_back(s.received.at(u).self_mask);
    }
    for (int v : sim->dropped) sim->revealed.key_shares[v].push_back(s.received.at(v).mask_key);
  }
}

TEST(SessionProtocolTest, RecoveredSumIsTheExactSumWithAndWithoutDropouts) {
  for (int n = 4; n <= 8; ++n) {
    for (int drops = 0; drops <= 2; ++drops) {
      const int t = std::min(n / 2 + 1, n - drops);
      std::set<int> dropped;
      for (int d = 0; d < drops; ++d) dropped.insert(2 + 2 * d);  // indices 2 and 4
      SCOPED_TRACE(absl::StrCat("n=", n, " dropped=", drops));
      Simulation sim;
      Simulate(n, t, dropped, /*revealers=*/n - drops, /*include_own=*/true, /*length=*/257, &sim);
      if (HasFatalFailure()) return;
      auto sum = RecoverSum(sim.masked_sum, sim.mask_keys, sim.survivors, sim.dropped, sim.revealed, t, kSession);
      ASSERT_TRUE(sum.ok()) << sum.status();
      EXPECT_EQ(*sum, sim.plain_sum);
      EXPECT_NE(sim.masked_sum, sim.plain_sum);
    }
  }
}

TEST(SessionProtocolTest, ExactlyThresholdRevealersWithoutOwnSharesSuffice) {
  // n = 6, t = 3, one dropped; 4 survivors reveal without their own share: each secret still has >= 3 shares.
  Simulation sim;
  Simulate(6, 3, {5}, /*revealers=*/4, /*include_own=*/false, 64, &sim);
  ASSERT_FALSE(HasFatalFailure());
  auto sum = RecoverSum(sim.masked_sum, sim.mask_keys, sim.survivors, sim.dropped, sim.revealed, 3, kSession);
  ASSERT_TRUE(sum.ok()) << sum.status();
  EXPECT_EQ(*sum, sim.plain_sum);
}

TEST(SessionProtocolTest, TooFewSharesIsFailedPrecondition) {
  Simulation sim;
  Simulate(5, 3, {2}, /*revealers=*/2, /*include_own=*/true, 32, &sim);
  ASSERT_FALSE(HasFatalFailure());
  auto sum = RecoverSum(sim.masked_sum, sim.mask_keys, sim.survivors, sim.dropped, sim.revealed, 3, kSession);
  EXPECT_EQ(sum.status().code(), absl::StatusCode::kFailedPrecondition) << sum.status();
  EXPECT_NE(sum.status().message().find("index"), std::string::npos);
}

TEST(SessionProtocolTest, AWrongReconstructedKeyIsDataLoss) {
  Simulation sim;
  Simulate(5, 3, {2}, /*revealers=*/4, /*include_own=*/true, 32, &sim);
  ASSERT_FALSE(HasFatalFailure());
  // The shares revealed for dropped index 2 are really index 3's mask-key shares (valid, but another key).
  RevealedShares forged = sim.revealed;
  forged.key_shares[2].clear();
  for (const Site& s : sim.sites) {
    if (s.index == 2) continue;
    forged.key_shares[2].push_back(s.received.at(3).mask_key);
  }
  auto sum = RecoverSum(sim.masked_sum, sim.mask_keys, sim.survivors, sim.dropped, forged, 3, kSession);
  EXPECT_EQ(sum.status().code(), absl::StatusCode::kDataLoss) << sum.status();
  EXPECT_NE(sum.status().message().find("index 2"), std::string::npos) << sum.status();

  // Shares of different splits mixed: they do not interpolate to a secret.
  RevealedShares mixed = sim.revealed;
  mixed.key_shares[2][0] = sim.sites[3].received.at(3).mask_key;  // x = 4's share of another secret... same x
  mixed.key_shares[2][0][0].x = mixed.key_shares[2][0][1].x = sim.revealed.key_shares[2][0][0].x;
  auto mixed_sum = RecoverSum(sim.masked_sum, sim.mask_keys, sim.survivors, sim.dropped, mixed, 3, kSession);
  EXPECT_EQ(mixed_sum.status().code(), absl::StatusCode::kDataLoss) << mixed_sum.status();

  // Bad lists.
  EXPECT_EQ(RecoverSum(sim.masked_sum, sim.mask_keys, {1, 1}, {}, sim.revealed, 3, kSession).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RecoverSum(sim.masked_sum, sim.mask_keys, {1, 9}, {}, sim.revealed, 3, kSession).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RecoverSum(sim.masked_sum, sim.mask_keys, {1, 3}, {3}, sim.revealed, 3, kSession).status().code(),
            absl::StatusCode::kInvalidArgument);
}

double Correlation(const std::vector<double>& a, const std::vector<double>& b) {
  const double n = static_cast<double>(a.size());
  double ma = 0, mb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ma += a[i];
    mb += b[i];
  }
  ma /= n;
  mb /= n;
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
  }
  return sab / std::sqrt(saa * sbb);
}

TEST(SessionProtocolTest, AMaskedVectorIsUncorrelatedWithItsInput) {
  std::vector<Site> sites = MakeSites(3);
  std::map<int, std::vector<uint8_t>> keys;
  for (const Site& s : sites) keys[s.index] = s.mask->public_key();
  constexpr int kLength = 20000;
  auto codec = FixedPointCodec::Create(1.0, 3);
  ASSERT_TRUE(codec.ok());
  std::vector<float> ramp(kLength);
  for (int i = 0; i < kLength; ++i) ramp[i] = -1.0f + 2.0f * static_cast<float>(i) / kLength;
  auto enc = codec->Encode(ramp);
  ASSERT_TRUE(enc.ok());
  auto secrets = MakeSiteSecrets(1, *sites[0].mask, 2, 3);
  ASSERT_TRUE(secrets.ok());
  auto y = MaskForPeers(1, *enc, secrets->self_seed, *sites[0].mask, keys, kSession);
  ASSERT_TRUE(y.ok()) << y.status();
  std::vector<double> in(kLength), out(kLength);
  for (int i = 0; i < kLength; ++i) {
    in[i] = ramp[i];
    out[i] = static_cast<double>((*y)[i]);
  }
  EXPECT_LT(std::abs(Correlation(in, out)), 0.05);  // |r| ~ 0.007 for independent vectors of this length
  // Bad peer key or index.
  std::map<int, std::vector<uint8_t>> bad = keys;
  bad[2] = {4, 1, 2};
  EXPECT_EQ(MaskForPeers(1, *enc, secrets->self_seed, *sites[0].mask, bad, kSession).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad = keys;
  bad[0] = keys[2];
  EXPECT_EQ(MaskForPeers(1, *enc, secrets->self_seed, *sites[0].mask, bad, kSession).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SessionRevealTest, RevealedSharesRoundTripAndMalformedOnesAreRefused) {
  const Share s{4, {1, 2, 3}};
  v1::SecAggRevealedShare r = SelfMaskReveal("site-b", s);
  EXPECT_EQ(r.site_id(), "site-b");
  auto back = ParseSelfMaskReveal(r);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->x, 4);
  EXPECT_EQ(back->y, s.y);
  EXPECT_EQ(ParseMaskKeyReveal(r).status().code(), absl::StatusCode::kInvalidArgument);  // 3 values, not 6

  const std::array<Share, 2> k = {Share{4, {1, 2, 3}}, Share{4, {4, 5, 6}}};
  v1::SecAggRevealedShare rk = MaskKeyReveal("site-c", k);
  EXPECT_EQ(rk.y_size(), 6);
  auto kb = ParseMaskKeyReveal(rk);
  ASSERT_TRUE(kb.ok());
  EXPECT_EQ((*kb)[1].y, k[1].y);
  EXPECT_EQ((*kb)[1].x, 4);
  EXPECT_EQ(ParseSelfMaskReveal(rk).status().code(), absl::StatusCode::kInvalidArgument);

  v1::SecAggRevealedShare big = r;
  big.set_y(1, kShamirPrime);
  EXPECT_EQ(ParseSelfMaskReveal(big).status().code(), absl::StatusCode::kInvalidArgument);
  v1::SecAggRevealedShare zero_x = r;
  zero_x.set_x(0);
  EXPECT_EQ(ParseSelfMaskReveal(zero_x).status().code(), absl::StatusCode::kInvalidArgument);
}

fl::TensorMap SmallModel() {
  fl::TensorMap m;
  m["b.weight"] = at::arange(6, at::kFloat).reshape({2, 3});
  m["a.bias"] = at::tensor({0.5, -0.25}, at::kDouble);
  m["bn.num_batches_tracked"] = at::tensor({7}, at::kLong).reshape({});
  m["c.scalar"] = at::tensor({3.0f}).reshape({});
  return m;
}

TEST(SessionLayoutTest, LayoutFlattenAndUnflattenRoundTrip) {
  const fl::TensorMap model = SmallModel();
  auto layout = MakeLayout(model);
  ASSERT_TRUE(layout.ok()) << layout.status();
  ASSERT_EQ(layout->entries.size(), 3u);  // the integer tensor is left out
  EXPECT_EQ(layout->entries[0].name, "a.bias");
  EXPECT_EQ(layout->entries[1].name, "b.weight");
  EXPECT_EQ(layout->entries[2].name, "c.scalar");
  EXPECT_EQ(layout->entries[1].offset, 2);
  EXPECT_EQ(layout->entries[2].offset, 8);
  EXPECT_TRUE(layout->entries[2].shape.empty());
  EXPECT_EQ(layout->length, 9);

  auto flat = Flatten(model, *layout, 2.0);
  ASSERT_TRUE(flat.ok()) << flat.status();
  const std::vector<float> expected = {1.0f, -0.5f, 0, 2, 4, 6, 8, 10, 6};
  EXPECT_EQ(*flat, expected);

  std::vector<double> values(flat->begin(), flat->end());
  auto back = Unflatten(values, *layout);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), 3u);
  EXPECT_EQ(back->at("b.weight").sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(back->at("b.weight").scalar_type(), at::kFloat);
  EXPECT_TRUE(at::allclose(back->at("b.weight"), model.at("b.weight") * 2));
  EXPECT_EQ(back->at("c.scalar").dim(), 0);
  EXPECT_FLOAT_EQ(back->at("a.bias")[1].item<float>(), -0.5f);
}

TEST(SessionLayoutTest, RefusalsNameTheTensor) {
  const fl::TensorMap model = SmallModel();
  auto layout = MakeLayout(model);
  ASSERT_TRUE(layout.ok());
  fl::TensorMap missing = model;
  missing.erase("b.weight");
  auto s = Flatten(missing, *layout, 1.0).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("b.weight"), std::string::npos) << s;
  fl::TensorMap reshaped = model;
  reshaped["b.weight"] = at::zeros({3, 2});
  s = Flatten(reshaped, *layout, 1.0).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("b.weight"), std::string::npos) << s;
  fl::TensorMap nonfinite = model;
  nonfinite["c.scalar"] = at::tensor({std::nanf("")}).reshape({});
  s = Flatten(nonfinite, *layout, 1.0).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("c.scalar"), std::string::npos) << s;
  fl::TensorMap integer = model;
  integer["a.bias"] = at::zeros({2}, at::kLong);
  EXPECT_EQ(Flatten(integer, *layout, 1.0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Flatten(model, *layout, std::nan("")).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Flatten(model, *layout, 1e300).status().code(), absl::StatusCode::kInvalidArgument);  // overflows float

  EXPECT_EQ(Unflatten(std::vector<double>(8), *layout).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<double> inf(9, 0.0);
  inf[3] = INFINITY;
  EXPECT_EQ(Unflatten(inf, *layout).status().code(), absl::StatusCode::kInvalidArgument);
  Layout broken = *layout;
  broken.entries[1].shape = {-2, 3};
  EXPECT_EQ(Unflatten(std::vector<double>(9), broken).status().code(), absl::StatusCode::kInvalidArgument);

  fl::TensorMap only_int;
  only_int["n"] = at::zeros({3}, at::kLong);
  EXPECT_EQ(MakeLayout(only_int).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeLayout({}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SessionBundleTest, MaskedBundleRoundTripsAndOtherShapesAreRefused) {
  const std::vector<uint32_t> masked = {0, 1, 0xffffffffu, 0x80000000u, 12345};
  const v1::TensorBundle bundle = MaskedBundle(masked);
  auto back = ReadMaskedBundle(bundle, 5);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, masked);
  EXPECT_EQ(bundle.tensors(0).data().substr(8, 4), std::string("\xff\xff\xff\xff", 4));  // little-endian

  EXPECT_EQ(ReadMaskedBundle(bundle, 6).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadMaskedBundle(bundle, 0).status().code(), absl::StatusCode::kInvalidArgument);
  auto refuse = [&](auto mutate, const char* what) {
    v1::TensorBundle b = bundle;
    mutate(b);
    absl::Status s = ReadMaskedBundle(b, 5).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << what;
  };
  refuse([](v1::TensorBundle& b) { b.mutable_tensors(0)->set_name("weights"); }, "name");
  refuse([](v1::TensorBundle& b) { b.mutable_tensors(0)->set_dtype(v1::NamedTensor::FLOAT32); }, "dtype");
  refuse([](v1::TensorBundle& b) { b.mutable_tensors(0)->set_encoding(v1::NamedTensor::DENSE_FP32); }, "encoding");
  refuse([](v1::TensorBundle& b) { b.mutable_tensors(0)->add_shape(1); }, "rank");
  refuse([](v1::TensorBundle& b) { b.mutable_tensors(0)->mutable_data()->pop_back(); }, "data");
  refuse([](v1::TensorBundle& b) { *b.add_tensors() = b.tensors(0); }, "two tensors");
  refuse([](v1::TensorBundle& b) { b.clear_tensors(); }, "none");
  refuse([](v1::TensorBundle& b) { b.mutable_tensors(0)->set_scale(1.0f); }, "scale");
}

}  // namespace
}  // namespace fedtune::secagg
