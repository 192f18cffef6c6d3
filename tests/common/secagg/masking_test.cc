#include "common/secagg/masking.h"

#include <openssl/rand.h>

#include <cmath>
#include <random>
#include <vector>

#include "common/secagg/fixed_point.h"
#include "common/secagg/key_agreement.h"
#include "common/secagg/shamir.h"
#include "gtest/gtest.h"

namespace fedtune::secagg {
namespace {

Seed RandomSeed() {
  Seed s{};
  EXPECT_EQ(RAND_bytes(s.data(), static_cast<int>(s.size())), 1);
  return s;
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

// Four sites agree pairwise seeds by ECDH; site 3 drops after key sharing. The server recovers the survivors' self
// seeds and site 3's pairwise seeds from Shamir shares (t = 3 of 4) and unmasks the survivors' exact sum.
TEST(MaskingTest, FourSitesOneDropsUnmaskedSumIsExact) {
  constexpr int kSites = 4;
  constexpr int kLength = 2000;
  constexpr int64_t kDropped = 3;
  const std::vector<int64_t> ids = {1, 2, 3, 4};
  std::vector<KeyPair> keys;
  for (int i = 0; i < kSites; ++i) {
    auto k = KeyPair::Generate();
    ASSERT_TRUE(k.ok());
    keys.push_back(std::move(*k));
  }
  // s[i][j] as site i derives it.
  std::vector<std::vector<Seed>> s(kSites, std::vector<Seed>(kSites));
  for (int i = 0; i < kSites; ++i) {
    for (int j = 0; j < kSites; ++j) {
      if (i == j) continue;
      auto seed = DerivePairwiseSeed(keys[i], keys[j].public_key(), PairwiseContext("run", 1, ids[i], ids[j]));
      ASSERT_TRUE(seed.ok()) << seed.status();
      s[i][j] = *seed;
    }
  }
  auto codec = FixedPointCodec::Create(1.0, kSites);
  ASSERT_TRUE(codec.ok());
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<Seed> self(kSites);
  std::vector<std::vector<uint32_t>> masked(kSites), encoded(kSites);
  std::vector<double> float_sum(kLength, 0.0);
  for (int i = 0; i < kSites; ++i) {
    std::vector<float> x(kLength);
    for (float& v : x) v = dist(rng);
    if (ids[i] != kDropped) {
      for (int e = 0; e < kLength; ++e) float_sum[e] += x[e];
    }
    encoded[i] = *codec->Encode(x);
    self[i] = RandomSeed();
    std::vector<PeerSeed> peers;
    for (int j = 0; j < kSites; ++j) {
      if (j != i) peers.push_back({ids[j], s[i][j]});
    }
    auto y = MaskInput(ids[i], encoded[i], self[i], peers);
    ASSERT_TRUE(y.ok()) << y.status();
    masked[i] = std::move(*y);
  }

  std::vector<uint32_t> masked_sum(kLength, 0), plain_sum(kLength, 0);
  std::vector<Seed> survivor_self;
  std::vector<DroppedPairSeed> dropped;
  const int d = static_cast<int>(kDropped - 1);
  // Each secret is Shamir-shared among the four sites (t = 3), and recovered from three survivors' shares (the
  // protocol shares site 3's ECDH secret key instead of its seeds; this checks the arithmetic end to end).
  for (int i = 0; i < kSites; ++i) {
    if (i == d) continue;
    AddInto(masked_sum, masked[i]);
    AddInto(plain_sum, encoded[i]);
    auto shares = SplitSecret(self[i], 3, kSites);
    ASSERT_TRUE(shares.ok());
    std::vector<Share> from_survivors = {(*shares)[0], (*shares)[1], (*shares)[3]};
    auto b = ReconstructSecret(from_survivors, 3);
    ASSERT_TRUE(b.ok());
    survivor_self.push_back(*b);
    auto pair_shares = SplitSecret(s[d][i], 3, kSites);
    ASSERT_TRUE(pair_shares.ok());
    std::vector<Share> pick = {(*pair_shares)[3], (*pair_shares)[0], (*pair_shares)[1]};
    auto s_du = ReconstructSecret(pick, 3);
    ASSERT_TRUE(s_du.ok());
    dropped.push_back({kDropped, ids[i], *s_du});
  }
  auto unmasked = Unmask(masked_sum, survivor_self, dropped);
  ASSERT_TRUE(unmasked.ok()) << unmasked.status();
  EXPECT_EQ(*unmasked, plain_sum);
  const std::vector<double> decoded = codec->DecodeSum(*unmasked);
  const double bound = 3 * codec->quantum() / 2 * (1 + 1e-9);  // three summands
  for (int e = 0; e < kLength; ++e) EXPECT_LE(std::abs(decoded[e] - float_sum[e]), bound) << e;

  // Without the dropped site's seeds the sum is noise.
  auto wrong = Unmask(masked_sum, survivor_self, {});
  ASSERT_TRUE(wrong.ok());
  EXPECT_NE(*wrong, plain_sum);
}

TEST(MaskingTest, AllSitesPresentPairwiseMasksCancel) {
  const Seed s12 = RandomSeed(), s13 = RandomSeed(), s23 = RandomSeed();
  const Seed b1 = RandomSeed(), b2 = RandomSeed(), b3 = RandomSeed();
  const std::vector<uint32_t> x1 = {1, 2, 3}, x2 = {10, 20, 0xFFFFFFFFu}, x3 = {100, 200, 300};
  auto y1 = MaskInput(1, x1, b1, std::vector<PeerSeed>{{2, s12}, {3, s13}});
  auto y2 = MaskInput(2, x2, b2, std::vector<PeerSeed>{{1, s12}, {3, s23}});
  auto y3 = MaskInput(3, x3, b3, std::vector<PeerSeed>{{1, s13}, {2, s23}});
  ASSERT_TRUE(y1.ok() && y2.ok() && y3.ok());
  std::vector<uint32_t> sum(3, 0);
  AddInto(sum, *y1);
  AddInto(sum, *y2);
  AddInto(sum, *y3);
  auto out = Unmask(sum, std::vector<Seed>{b1, b2, b3}, {});
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out, (std::vector<uint32_t>{111, 222, 302}));
}

TEST(MaskingTest, MaskedVectorIsUncorrelatedWithInput) {
  constexpr int kLength = 100000;
  auto codec = FixedPointCodec::Create(1.0, 10);
  ASSERT_TRUE(codec.ok());
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> x(kLength);
  for (float& v : x) v = dist(rng);
  auto enc = codec->Encode(x);
  ASSERT_TRUE(enc.ok());
  auto y = MaskInput(5, *enc, RandomSeed(), std::vector<PeerSeed>{{2, RandomSeed()}, {9, RandomSeed()}});
  ASSERT_TRUE(y.ok());
  std::vector<double> truth(x.begin(), x.end()), masked(y->begin(), y->end());
  const double r = Correlation(truth, masked);
  EXPECT_LT(std::abs(r), 0.05) << r;
  // Sanity: the unmasked encoding (as signed levels) is strongly correlated with the input.
  std::vector<double> levels(kLength);
  for (int i = 0; i < kLength; ++i) levels[i] = static_cast<double>(static_cast<int32_t>((*enc)[i]));
  EXPECT_GT(Correlation(truth, levels), 0.99);
}

TEST(MaskingTest, RefusesBadPeers) {
  const Seed s = RandomSeed();
  const std::vector<uint32_t> x = {1};
  EXPECT_EQ(MaskInput(1, x, s, std::vector<PeerSeed>{{1, s}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MaskInput(1, x, s, std::vector<PeerSeed>{{2, s}, {2, s}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Unmask(x, {}, std::vector<DroppedPairSeed>{{3, 3, s}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Unmask(x, {}, std::vector<DroppedPairSeed>{{3, 1, s}, {3, 1, s}}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtune::secagg
