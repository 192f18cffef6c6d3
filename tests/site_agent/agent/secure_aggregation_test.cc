// The site's secure aggregation logic without gRPC: the reveal decision ("never both shares of one peer"), its record,
// roster verification against a test CA (foreign certificate, CN mismatch, substituted key, own keys replaced), and
// DP-FedAvg's clipping and noise share.
#include "site_agent/agent/secure_aggregation.h"

#include <torch/torch.h>

#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/pki/certificate.h"
#include "common/secagg/session.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/pki/pki_test_util.h"
#include "tests/site_agent/agent/secagg_peers.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::agent {
namespace {

using testing::AsBytes;
using ::testing::HasSubstr;
using testing::SimulatedPeer;

v1::SecAggUnmaskRequest Request(const std::vector<std::string>& survivors, const std::vector<std::string>& dropped) {
  v1::SecAggUnmaskRequest request;
  request.set_ready(true);
  for (const std::string& s : survivors) request.add_survivors(s);
  for (const std::string& d : dropped) request.add_dropped(d);
  return request;
}

const std::set<std::string> kU2 = {"site-a", "site-b", "site-c", "site-d"};

TEST(DecideRevealTest, SelfMaskSharesForSurvivorsAndMaskKeySharesForDroppedSites) {
  auto plan = DecideReveal(Request({"site-a", "site-b", "site-c"}, {"site-d"}), "site-a", kU2, {});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->self_mask, (std::set<std::string>{"site-a", "site-b", "site-c"}));  // Its own too.
  EXPECT_EQ(plan->mask_key, (std::set<std::string>{"site-d"}));
  // The same request again (a retry) gives the same plan.
  const RevealRecord before = {{"site-a", RevealKind::kSelfMask},
                               {"site-b", RevealKind::kSelfMask},
                               {"site-c", RevealKind::kSelfMask},
                               {"site-d", RevealKind::kMaskKey}};
  auto again = DecideReveal(Request({"site-a", "site-b", "site-c"}, {"site-d"}), "site-a", kU2, before);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->self_mask, plan->self_mask);
  EXPECT_EQ(again->mask_key, plan->mask_key);
}

TEST(DecideRevealTest, BothSharesOfALivePeerAreRefused) {
  auto plan = DecideReveal(Request({"site-a", "site-b"}, {"site-b"}), "site-a", kU2, {});
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(plan.status().message(), HasSubstr("protocol violation"));
  EXPECT_THAT(plan.status().message(), HasSubstr("site-b"));
}

TEST(DecideRevealTest, ContradictingAnEarlierRevealIsRefused) {
  // site-c's self-mask share went out; now site-c is "dropped".
  const RevealRecord before = {{"site-b", RevealKind::kSelfMask}, {"site-c", RevealKind::kSelfMask}};
  auto plan = DecideReveal(Request({"site-a", "site-b"}, {"site-c"}), "site-a", kU2, before);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(plan.status().message(), HasSubstr("site-c"));
  // And the other way round.
  const RevealRecord key_before = {{"site-d", RevealKind::kMaskKey}};
  auto back = DecideReveal(Request({"site-a", "site-d"}, {}), "site-a", kU2, key_before);
  EXPECT_EQ(back.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(back.status().message(), HasSubstr("site-d"));
}

TEST(DecideRevealTest, SitesOutsideU2AndThisSiteDroppedAreRefused) {
  auto outsider = DecideReveal(Request({"site-a", "site-x"}, {}), "site-a", kU2, {});
  EXPECT_EQ(outsider.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(outsider.status().message(), HasSubstr("site-x"));
  auto dropped_outsider = DecideReveal(Request({"site-a"}, {"site-y"}), "site-a", kU2, {});
  EXPECT_EQ(dropped_outsider.status().code(), absl::StatusCode::kFailedPrecondition);
  auto self = DecideReveal(Request({"site-b"}, {"site-a"}), "site-a", kU2, {});
  EXPECT_EQ(self.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(self.status().message(), HasSubstr("site-a"));
}

TEST(RevealRecordTest, RoundTripsAndRefusesAMalformedFile) {
  fedtune::testing::TempDir tmp;
  const std::string path = tmp.Join("reveals.txt");
  auto empty = ReadRevealRecord(path);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->empty());
  const RevealRecord record = {{"site-b", RevealKind::kSelfMask}, {"site-d", RevealKind::kMaskKey}};
  ASSERT_TRUE(WriteRevealRecord(path, record).ok());
  EXPECT_EQ(pki::testing::FileMode(path), 0600);
  auto read = ReadRevealRecord(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, record);
  ASSERT_TRUE(io::WriteFileAtomically(path, "site-b self-mask\nsite-c both\n").ok());
  auto bad = ReadRevealRecord(path);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(bad.status().message(), HasSubstr("line 2"));
}

// A roster of site-a (this site) and two peers, all with certificates from the consortium CA.
class VerifyRosterTest : public ::testing::Test {
 protected:
  VerifyRosterTest() {
    ca_ = pki::testing::MakeCa(tmp_.Join("ca"), "Consortium");
    other_ca_ = pki::testing::MakeCa(tmp_.Join("other-ca"), "Consortium");
    peers_.push_back(std::make_unique<SimulatedPeer>(*ca_, "site-a", 1, 30));
    peers_.push_back(std::make_unique<SimulatedPeer>(*ca_, "site-b", 2, 50));
    peers_.push_back(std::make_unique<SimulatedPeer>(*ca_, "site-c", 3, 40));
    auto ca_cert = pki::ParseCertificatePem(ca_->ca_pem());
    EXPECT_TRUE(ca_cert.ok());
    ca_cert_ = *std::move(ca_cert);
  }

  v1::SecAggRoster Roster() const {
    v1::SecAggRoster roster;
    roster.set_ready(true);
    for (const auto& peer : peers_) *roster.add_peers() = peer->Entry(session_);
    roster.set_threshold(2);
    roster.set_range(1.0);
    roster.set_vector_length(100);
    roster.set_max_num_samples(50);
    return roster;
  }
  OwnKeys Own() const { return OwnKeys{"site-a", peers_[0]->cipher->public_key(), peers_[0]->mask->public_key(), 30}; }
  absl::StatusOr<VerifiedRoster> Verify(const v1::SecAggRoster& roster) const {
    return VerifyRoster(roster, session_, Own(), ca_cert_.get());
  }

  fedtune::testing::TempDir tmp_;
  std::unique_ptr<pki::CertificateAuthority> ca_;
  std::unique_ptr<pki::CertificateAuthority> other_ca_;
  std::vector<std::unique_ptr<SimulatedPeer>> peers_;
  pki::X509Ptr ca_cert_;
  secagg::SessionId session_{"run-1", 2, 1};
};

TEST_F(VerifyRosterTest, AValidRosterIsAccepted) {
  auto verified = Verify(Roster());
  ASSERT_TRUE(verified.ok()) << verified.status();
  EXPECT_EQ(verified->own_index, 1);
  EXPECT_EQ(verified->n, 3);
  EXPECT_EQ(verified->threshold, 2);
  EXPECT_EQ(verified->site_of.at(3), "site-c");
  EXPECT_EQ(verified->max_num_samples, 50);
}

TEST_F(VerifyRosterTest, APeerCertificateFromAnotherCaIsRefused) {
  SimulatedPeer impostor(*other_ca_, "site-b", 2, 50);
  v1::SecAggRoster roster = Roster();
  *roster.mutable_peers(1) = impostor.Entry(session_);  // Correctly signed, but not under the consortium CA.
  auto verified = Verify(roster);
  EXPECT_EQ(verified.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(verified.status().message(), HasSubstr("site-b"));
  EXPECT_THAT(verified.status().message(), HasSubstr("consortium CA"));
}

TEST_F(VerifyRosterTest, ACommonNameThatIsNotTheSiteIdIsRefused) {
  // site-c's entry carries site-b's certificate (a valid certificate, for another site).
  v1::SecAggRoster roster = Roster();
  roster.mutable_peers(2)->set_certificate_pem(peers_[1]->credentials.cert_pem);
  auto verified = Verify(roster);
  EXPECT_EQ(verified.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(verified.status().message(), HasSubstr("site-c"));
  EXPECT_THAT(verified.status().message(), HasSubstr("common name"));
}

TEST_F(VerifyRosterTest, AnOperatorCertificateIsNotASiteCertificate) {
  pki::IssueOptions replace;
  replace.replace = true;
  const pki::testing::Credentials op = pki::testing::Enroll(*ca_, "site-b", pki::Role::kOperator, replace);
  v1::SecAggRoster roster = Roster();
  roster.mutable_peers(1)->set_certificate_pem(op.cert_pem);
  auto verified = Verify(roster);
  EXPECT_EQ(verified.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(verified.status().message(), HasSubstr("site-b"));
}

TEST_F(VerifyRosterTest, ASubstitutedKeyIsRefused) {
  // The coordinator swaps site-b's mask key for one it holds the private key of.
  auto substitute = secagg::KeyPair::Generate();
  ASSERT_TRUE(substitute.ok());
  v1::SecAggRoster roster = Roster();
  roster.mutable_peers(1)->set_mask_public_key(testing::AsString(substitute->public_key()));
  auto verified = Verify(roster);
  EXPECT_EQ(verified.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(verified.status().message(), HasSubstr("site-b"));
  EXPECT_THAT(verified.status().message(), HasSubstr("signature"));
}

TEST_F(VerifyRosterTest, OwnEntryWithOtherKeysIsRefused) {
  SimulatedPeer replaced(*ca_, "site-a", 1, 30, /*replace=*/true);  // Validly signed by another key of "site-a".
  v1::SecAggRoster roster = Roster();
  *roster.mutable_peers(0) = replaced.Entry(session_);
  auto verified = Verify(roster);
  EXPECT_EQ(verified.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(verified.status().message(), HasSubstr("own entry"));
}

TEST_F(VerifyRosterTest, MalformedRostersAreRefused) {
  v1::SecAggRoster duplicate = Roster();
  duplicate.mutable_peers(2)->set_index(2);
  EXPECT_EQ(Verify(duplicate).status().code(), absl::StatusCode::kInvalidArgument);
  v1::SecAggRoster out_of_range = Roster();
  out_of_range.mutable_peers(2)->set_index(4);
  EXPECT_EQ(Verify(out_of_range).status().code(), absl::StatusCode::kInvalidArgument);
  v1::SecAggRoster threshold = Roster();
  threshold.set_threshold(1);
  EXPECT_EQ(Verify(threshold).status().code(), absl::StatusCode::kInvalidArgument);
  v1::SecAggRoster without_self = Roster();
  without_self.mutable_peers()->DeleteSubrange(0, 1);
  without_self.mutable_peers(0)->set_index(1);
  without_self.mutable_peers(1)->set_index(2);
  auto missing = Verify(without_self);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(missing.status().message(), HasSubstr("not in the roster"));
  // A session other than the one signed for: every signature fails.
  auto other_session = VerifyRoster(Roster(), secagg::SessionId{"run-1", 2, 2}, Own(), ca_cert_.get());
  EXPECT_EQ(other_session.status().code(), absl::StatusCode::kPermissionDenied);
}

double Norm(const std::vector<float>& values) {
  double sum = 0;
  for (float v : values) sum += static_cast<double>(v) * v;
  return std::sqrt(sum);
}

TEST(DpFedAvgTest, ClippingBoundsTheNormAndKeepsSmallDeltas) {
  std::vector<float> big = {3, 4};  // norm 5
  auto norm = ClipL2Norm(big, 1.0);
  ASSERT_TRUE(norm.ok());
  EXPECT_NEAR(*norm, 5.0, 1e-9);
  EXPECT_NEAR(Norm(big), 1.0, 1e-6);
  EXPECT_NEAR(big[0] / big[1], 0.75, 1e-6);  // Direction kept.
  std::vector<float> small = {0.3f, 0.4f};
  ASSERT_TRUE(ClipL2Norm(small, 1.0).ok());
  EXPECT_FLOAT_EQ(small[0], 0.3f);
  EXPECT_EQ(ClipL2Norm(small, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DpFedAvgTest, ClippingADeltaScalesItsFloatingTensorsOnly) {
  fl::TensorMap delta = {{"a.weight", torch::full({2, 2}, 3.0)},
                         {"a.running_var", torch::full({2}, 3.0)},
                         {"a.num_batches_tracked", torch::full({}, 5, torch::kInt64)}};
  auto norm = ClipDeltaL2Norm(delta, 1.0);
  ASSERT_TRUE(norm.ok()) << norm.status();
  EXPECT_NEAR(*norm, std::sqrt(6 * 9.0), 1e-5);
  EXPECT_NEAR(fl::L2Norm(delta), 1.0, 1e-5);
  EXPECT_EQ(delta.at("a.num_batches_tracked").item<int64_t>(), 5);  // Counters are not scaled.
  auto again = ClipDeltaL2Norm(delta, 2.0);                         // Within the bound: unchanged.
  ASSERT_TRUE(again.ok());
  EXPECT_NEAR(fl::L2Norm(delta), 1.0, 1e-5);
  EXPECT_EQ(ClipDeltaL2Norm(delta, -1).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DpFedAvgTest, NoiseShareHasTheRequestedDeviationAndIsSeeded) {
  const double sigma = 0.5;
  secagg::Seed seed = {};
  seed[0] = 7;
  std::vector<float> noise(200001, 0.0f);  // Odd: the last value of a Box-Muller pair is used alone.
  ASSERT_TRUE(AddGaussianNoise(noise, sigma, seed).ok());
  double sum = 0, sum_sq = 0;
  for (float v : noise) {
    sum += v;
    sum_sq += static_cast<double>(v) * v;
  }
  const double n = static_cast<double>(noise.size());
  const double mean = sum / n;
  const double sd = std::sqrt(sum_sq / n - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.01);  // sigma / sqrt(n) ~ 0.0011
  EXPECT_NEAR(sd, sigma, 0.01);  // relative error ~ 1/sqrt(2n) ~ 0.0016
  EXPECT_NE(noise.back(), 0.0f);
  std::vector<float> again(200001, 0.0f);
  ASSERT_TRUE(AddGaussianNoise(again, sigma, seed).ok());
  EXPECT_EQ(again, noise);
  seed[0] = 8;
  std::vector<float> other(200001, 0.0f);
  ASSERT_TRUE(AddGaussianNoise(other, sigma, seed).ok());
  EXPECT_NE(other, noise);
  auto random_a = RandomSeed();
  auto random_b = RandomSeed();
  ASSERT_TRUE(random_a.ok() && random_b.ok());
  EXPECT_NE(*random_a, *random_b);
}

// Each site's share has variance (sigma C)^2 / t (t = the roster's threshold, not n): the sum of any t survivors'
// shares, the fewest the coordinator can unmask, carries the full variance (sigma C)^2.
TEST(DpFedAvgTest, NoiseSharesOfThresholdSitesSumToTheFullVariance) {
  const double sigma = 1.3;
  const double clip = 0.5;
  const int n = 5;
  const int threshold = 3;
  const double share = DpFedAvgNoiseStddev(sigma, clip, threshold);
  EXPECT_NEAR(share * share, (sigma * clip) * (sigma * clip) / threshold, 1e-12);
  EXPECT_GT(share, sigma * clip / std::sqrt(static_cast<double>(n)));
  std::vector<double> sum(100000, 0.0);
  for (int site = 0; site < threshold; ++site) {
    std::vector<float> noise(sum.size(), 0.0f);
    secagg::Seed seed = {};
    seed[0] = static_cast<uint8_t>(site + 1);
    ASSERT_TRUE(AddGaussianNoise(noise, share, seed).ok());
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += noise[i];
  }
  double mean = 0;
  for (double v : sum) mean += v;
  mean /= static_cast<double>(sum.size());
  double variance = 0;
  for (double v : sum) variance += (v - mean) * (v - mean);
  variance /= static_cast<double>(sum.size() - 1);
  const double full = (sigma * clip) * (sigma * clip);
  EXPECT_NEAR(variance, full, 0.05 * full);  // The old share, / n, would give 3/5 of it.
  EXPECT_EQ(DpFedAvgNoiseStddev(sigma, clip, 0), sigma * clip);
}

TEST(DpFedAvgTest, PrepareInputClipsThenNoisesThenScales) {
  fl::TensorMap global = {{"a.weight", torch::zeros({2, 2})},
                          {"b.bias", torch::zeros({2})},
                          {"b.num_batches_tracked", torch::zeros({}, torch::kInt64)}};
  auto layout = secagg::MakeLayout(global);
  ASSERT_TRUE(layout.ok()) << layout.status();
  ASSERT_EQ(layout->length, 6);  // The integer counter is not aggregated.
  fl::TensorMap delta = {{"a.weight", torch::full({2, 2}, 3.0)},
                         {"b.bias", torch::full({2}, 3.0)},
                         {"b.num_batches_tracked", torch::ones({}, torch::kInt64)}};
  const double norm = std::sqrt(6 * 9.0);
  InputOptions plain;
  plain.scale = 0.5;
  auto scaled = PrepareInput(delta, *layout, plain);
  ASSERT_TRUE(scaled.ok()) << scaled.status();
  EXPECT_NEAR(scaled->l2_norm, norm, 1e-5);
  EXPECT_FALSE(scaled->norm_clipped);
  for (float v : scaled->values) EXPECT_FLOAT_EQ(v, 1.5f);
  InputOptions dp;
  dp.dp_clip_norm = 1.0;
  auto clipped = PrepareInput(delta, *layout, dp);
  ASSERT_TRUE(clipped.ok()) << clipped.status();
  EXPECT_TRUE(clipped->norm_clipped);
  EXPECT_NEAR(Norm(clipped->values), 1.0, 1e-5);
  dp.noise_stddev = 0.1;
  dp.noise_seed[3] = 1;
  auto noised = PrepareInput(delta, *layout, dp);
  ASSERT_TRUE(noised.ok()) << noised.status();
  double moved = 0;
  for (size_t i = 0; i < noised->values.size(); ++i) moved += std::fabs(noised->values[i] - clipped->values[i]);
  EXPECT_GT(moved, 0);
  plain.scale = 0;
  EXPECT_EQ(PrepareInput(delta, *layout, plain).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtune::agent
