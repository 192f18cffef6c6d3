// Secure aggregation through RoundManager: four simulated sites built from common/secagg/session.h (signed keys with
// certificates of a real consortium CA, encrypted shares, masked uploads written as spool payloads through the
// upload API, reveals) against the coordinator's session, with a fake clock. The new global model must equal plain
// FedAvg's within the fixed-point bound; a site dropping after sharing leaves the survivors' FedAvg; the stored
// uploads are masked (uncorrelated with the true deltas); a restart fails the attempt.
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/pki/certificate_authority.h"
#include "common/pki/csr.h"
#include "common/pki/key_pair.h"
#include "common/secagg/fixed_point.h"
#include "common/secagg/session.h"
#include "coordinator/round_manager.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/coordinator/coordinator_test_util.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::coordinator {
namespace {

using ::fedtune::coordinator::testing::FakeClock;
using ::fedtune::coordinator::testing::LoadTensors;
using ::testing::HasSubstr;

const std::vector<std::string> kSites = {"site-a", "site-b", "site-c", "site-d"};

std::vector<uint8_t> Bytes(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }
std::string Text(const std::vector<uint8_t>& b) { return std::string(b.begin(), b.end()); }

// One simulated site: its certificate and key, its ephemeral keys and what it learns in the session.
struct SimSite {
  std::string id;
  std::string cert_pem;
  std::unique_ptr<pki::KeyPair> cert_key;
  std::unique_ptr<secagg::KeyPair> cipher;
  std::unique_ptr<secagg::KeyPair> mask;
  int64_t num_samples = 0;
  fl::TensorMap delta;
  v1::SecAggRoster roster;
  int index = 0;
  secagg::SiteSecrets secrets;
  std::map<std::string, secagg::SharePayload> received;  // By sender.
  std::string payload;                                   // The masked upload.
};

class SecAggRoundTest : public ::testing::Test {
 protected:
  void SetUp() override {
    global_ = testing::WriteTinyModel(tmp_.Join("initial.ckpt"));
    Open();
    absl::StatusOr<std::string> digest = blobs_->Import(tmp_.Join("initial.ckpt"));
    ASSERT_TRUE(digest.ok()) << digest.status();
    ModelVersion version;
    version.digest = *digest;
    version.path = blobs_->PathOf(*digest);
    ASSERT_TRUE(store_->PutModelVersion(version).ok());
    pki::CaOptions ca_options;
    ca_options.consortium = "secagg-test";
    auto ca = pki::CertificateAuthority::Initialize(tmp_.Join("ca"), ca_options);
    ASSERT_TRUE(ca.ok()) << ca.status();
    absl::StatusOr<secagg::Layout> layout = secagg::MakeLayout(global_);
    ASSERT_TRUE(layout.ok()) << layout.status();
    layout_ = *layout;
    int64_t samples = 10;
    uint64_t seed = 1;
    for (const std::string& id : kSites) {
      ASSERT_TRUE(store_->SetSiteStatus(id, federation::SiteStatus::kApproved, true, 0).ok());
      SimSite site;
      site.id = id;
      auto key = pki::KeyPair::Generate();
      ASSERT_TRUE(key.ok());
      site.cert_key = std::make_unique<pki::KeyPair>(*std::move(key));
      auto issued = (*ca)->SignCsr(*pki::CreateCsrPem(*site.cert_key, id), pki::Role::kSite);
      ASSERT_TRUE(issued.ok()) << issued.status();
      site.cert_pem = issued->pem;
      site.num_samples = samples;
      samples += 10;
      // A random delta of small values (well inside secagg_range 1).
      at::Generator gen = at::detail::createCPUGenerator(seed++);
      for (const auto& [name, t] : global_) {
        site.delta[name] = fl::IsFloating(t) ? at::randn(t.sizes(), gen, t.options()) * 0.01 : at::zeros_like(t);
      }
      sites_.push_back(std::move(site));
    }
  }

  void Open() {
    auto store = StateStore::Open(tmp_.Join("coordinator.db"));
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    auto blobs = BlobStore::Open(tmp_.Join("blobs"));
    ASSERT_TRUE(blobs.ok()) << blobs.status();
    blobs_ = *std::move(blobs);
    RoundManagerOptions options;
    options.state_dir = tmp_.path();
    options.clock = clock_.AsFunction();
    auto manager = RoundManager::Create(store_.get(), blobs_.get(), options);
    ASSERT_TRUE(manager.ok()) << manager.status();
    manager_ = *std::move(manager);
  }

  void Restart() {
    manager_.reset();
    blobs_.reset();
    store_.reset();
    Open();
  }

  static v1::RunConfig Config() {
    v1::RunConfig config;
    config.set_name("secagg");
    config.set_rounds(1);
    config.set_min_sites(3);
    for (const std::string& s : kSites) config.add_sites(s);
    config.set_round_deadline_seconds(600);
    config.set_final_evaluation(false);
    config.set_secure_aggregation(true);
    return config;
  }

  secagg::SessionId Session(int attempt = 1) const { return secagg::SessionId{run_, 1, attempt}; }
  v1::SecAggPhaseRequest Phase(int attempt = 1) const {
    v1::SecAggPhaseRequest r;
    r.set_run_id(run_);
    r.set_round(1);
    r.set_attempt(attempt);
    return r;
  }

  void AdvertiseKeys(SimSite& s, int attempt = 1) {
    auto cipher = secagg::KeyPair::Generate();
    auto mask = secagg::KeyPair::Generate();
    ASSERT_TRUE(cipher.ok() && mask.ok());
    s.cipher = std::make_unique<secagg::KeyPair>(*std::move(cipher));
    s.mask = std::make_unique<secagg::KeyPair>(*std::move(mask));
    v1::SecAggKeys keys;
    keys.set_run_id(run_);
    keys.set_round(1);
    keys.set_attempt(attempt);
    keys.set_cipher_public_key(Text(s.cipher->public_key()));
    keys.set_mask_public_key(Text(s.mask->public_key()));
    keys.set_num_samples(s.num_samples);
    ASSERT_TRUE(secagg::SignKeys(s.cert_key->get(), Session(attempt), s.id, &keys).ok());
    absl::Status advertised = manager_->SecAggAdvertiseKeys(s.id, s.cert_pem, keys);
    ASSERT_TRUE(advertised.ok()) << s.id << ": " << advertised;
  }

  void ShareKeys(SimSite& s) {
    absl::StatusOr<v1::SecAggRoster> roster = manager_->SecAggGetRoster(s.id, Phase());
    ASSERT_TRUE(roster.ok()) << roster.status();
    ASSERT_TRUE(roster->ready());
    s.roster = *roster;
    for (const v1::SecAggPeer& p : roster->peers()) {
      if (p.site_id() == s.id) s.index = p.index();
    }
    ASSERT_GT(s.index, 0);
    auto secrets = secagg::MakeSiteSecrets(s.index, *s.mask, roster->threshold(), roster->peers_size());
    ASSERT_TRUE(secrets.ok()) << secrets.status();
    s.secrets = *std::move(secrets);
    v1::SecAggShareUpload upload;
    upload.set_run_id(run_);
    upload.set_round(1);
    upload.set_attempt(1);
    for (const v1::SecAggPeer& p : roster->peers()) {
      if (p.site_id() == s.id) continue;
      auto ct = secagg::EncryptShares(*s.cipher, Bytes(p.cipher_public_key()), Session(), s.index, p.index(),
                                      s.secrets.payloads.at(p.index()));
      ASSERT_TRUE(ct.ok()) << ct.status();
      v1::SecAggEncryptedShares* e = upload.add_shares();
      e->set_site_id(p.site_id());
      e->set_ciphertext(*ct);
    }
    absl::Status shared = manager_->SecAggShareKeys(s.id, upload);
    ASSERT_TRUE(shared.ok()) << s.id << ": " << shared;
  }

  const v1::SecAggPeer& PeerOf(const SimSite& s, const std::string& id) {
    for (const v1::SecAggPeer& p : s.roster.peers()) {
      if (p.site_id() == id) return p;
    }
    ADD_FAILURE() << "no peer " << id;
    return s.roster.peers(0);
  }

  // Reads its inbox, masks its pre-scaled delta for U2 and uploads the masked bundle.
  void UploadMasked(SimSite& s) {
    absl::StatusOr<v1::SecAggInbox> inbox = manager_->SecAggGetInbox(s.id, Phase());
    ASSERT_TRUE(inbox.ok()) << inbox.status();
    ASSERT_TRUE(inbox->ready());
    for (const v1::SecAggEncryptedShares& e : inbox->shares()) {
      const v1::SecAggPeer& from = PeerOf(s, e.site_id());
      auto payload = secagg::DecryptShares(*s.cipher, Bytes(from.cipher_public_key()), Session(), from.index(), s.index,
                                           e.ciphertext());
      ASSERT_TRUE(payload.ok()) << payload.status();
      s.received[e.site_id()] = *payload;
    }
    std::map<int, std::vector<uint8_t>> peer_masks;
    for (const std::string& id : inbox->participants()) {
      const v1::SecAggPeer& p = PeerOf(s, id);
      peer_masks[p.index()] = Bytes(p.mask_public_key());
    }
    const double scale = static_cast<double>(s.num_samples) / static_cast<double>(s.roster.max_num_samples());
    auto flat = secagg::Flatten(s.delta, layout_, scale);
    ASSERT_TRUE(flat.ok()) << flat.status();
    auto codec = secagg::FixedPointCodec::Create(s.roster.range(), s.roster.peers_size());
    ASSERT_TRUE(codec.ok());
    auto encoded = codec->Encode(*flat);
    ASSERT_TRUE(encoded.ok());
    auto masked = secagg::MaskForPeers(s.index, *encoded, s.secrets.self_seed, *s.mask, peer_masks, Session());
    ASSERT_TRUE(masked.ok()) << masked.status();
    s.payload = secagg::MaskedBundle(*masked).SerializeAsString();
    auto uploaded = testing::UploadWhole(*manager_, s.id, run_, 1, s.payload, s.num_samples);
    ASSERT_TRUE(uploaded.ok()) << s.id << ": " << uploaded.status();
  }

  void Reveal(SimSite& s) {
    absl::StatusOr<v1::SecAggUnmaskRequest> request = manager_->SecAggGetUnmaskRequest(s.id, Phase());
    ASSERT_TRUE(request.ok()) << request.status();
    ASSERT_TRUE(request->ready());
    v1::SecAggReveal reveal;
    reveal.set_run_id(run_);
    reveal.set_round(1);
    reveal.set_attempt(1);
    for (const std::string& id : request->survivors()) {
      const secagg::SharePayload& p = id == s.id ? s.secrets.payloads.at(s.index) : s.received.at(id);
      *reveal.add_self_mask_shares() = secagg::SelfMaskReveal(id, p.self_mask);
    }
    for (const std::string& id : request->dropped()) {
      *reveal.add_mask_key_shares() = secagg::MaskKeyReveal(id, s.received.at(id).mask_key);
    }
    absl::Status revealed = manager_->SecAggRevealShares(s.id, reveal);
    ASSERT_TRUE(revealed.ok()) << s.id << ": " << revealed;
  }

  // Plain FedAvg of the sites' deltas (sample-weighted, in double) over the layout.
  std::vector<double> FedAvg(const std::vector<const SimSite*>& sites) {
    std::vector<double> sum(layout_.length, 0.0);
    double total = 0;
    for (const SimSite* s : sites) {
      auto flat = secagg::Flatten(s->delta, layout_, static_cast<double>(s->num_samples));
      EXPECT_TRUE(flat.ok());
      for (int64_t i = 0; i < layout_.length; ++i) sum[i] += (*flat)[i];
      total += static_cast<double>(s->num_samples);
    }
    for (double& v : sum) v /= total;
    return sum;
  }

  // The largest |(next global - global) - expected| over the layout, and checks integer tensors are unchanged.
  double MaxError(const std::vector<double>& expected) {
    const fl::TensorMap next = LoadTensors(blobs_->PathOf(store_->GetRun(run_)->final_model_digest));
    double worst = 0;
    for (const secagg::LayoutEntry& e : layout_.entries) {
      at::Tensor d = (next.at(e.name).to(at::kDouble) - global_.at(e.name).to(at::kDouble)).flatten().contiguous();
      const double* v = d.data_ptr<double>();
      for (int64_t i = 0; i < e.numel; ++i) worst = std::max(worst, std::fabs(v[i] - expected[e.offset + i]));
    }
    for (const auto& [name, t] : global_) {
      if (!fl::IsFloating(t)) EXPECT_TRUE(at::equal(next.at(name), t)) << name;
    }
    return worst;
  }

  fedtune::testing::TempDir tmp_;
  FakeClock clock_;
  fl::TensorMap global_;
  secagg::Layout layout_;
  std::vector<SimSite> sites_;
  std::string run_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<BlobStore> blobs_;
  std::unique_ptr<RoundManager> manager_;
};

// Pearson correlation of two equally long vectors.
double Correlation(const std::vector<double>& x, const std::vector<double>& y) {
  const double n = static_cast<double>(x.size());
  double mx = 0, my = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    mx += x[i];
    my += y[i];
  }
  mx /= n;
  my /= n;
  double sxy = 0, sxx = 0, syy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sxy += (x[i] - mx) * (y[i] - my);
    sxx += (x[i] - mx) * (x[i] - mx);
    syy += (y[i] - my) * (y[i] - my);
  }
  return sxy / std::sqrt(sxx * syy);
}

TEST_F(SecAggRoundTest, FourSitesGiveFedAvgWithinTheFixedPointBoundAndStoreOnlyMaskedVectors) {
  auto run = manager_->StartRun(Config());
  ASSERT_TRUE(run.ok()) << run.status();
  run_ = *run;
  auto task = manager_->NextTask("site-a");
  ASSERT_TRUE(task.ok());
  EXPECT_TRUE(task->plan().secure_aggregation());
  EXPECT_DOUBLE_EQ(task->plan().secagg_range(), 1.0);
  // Not ready before every site advertised.
  for (SimSite& s : sites_) AdvertiseKeys(s);
  EXPECT_THAT(manager_->GetRunStatus(run_)->rounds(0).message(), HasSubstr("secure aggregation"));
  for (SimSite& s : sites_) ShareKeys(s);
  for (SimSite& s : sites_) UploadMasked(s);
  // A payload that is not a masked vector is refused (the site already has an accepted upload: another payload).
  // The spool files hold the masked vectors only: uncorrelated with the true (pre-scaled) deltas.
  int64_t entries = 0;
  for (const SimSite& s : sites_) {
    const std::string path =
        tmp_.Join(absl::StrCat("spool/", run_, "/r1-a1-", s.id, "-", io::Sha256Hex(s.payload), ".upload"));
    absl::StatusOr<std::string> stored = io::ReadFile(path);
    ASSERT_TRUE(stored.ok()) << stored.status();
    v1::TensorBundle bundle;
    ASSERT_TRUE(bundle.ParseFromString(*stored));
    auto masked = secagg::ReadMaskedBundle(bundle, layout_.length);
    ASSERT_TRUE(masked.ok()) << masked.status();
    auto flat = secagg::Flatten(s.delta, layout_, 1.0);
    ASSERT_TRUE(flat.ok());
    std::vector<double> x(flat->begin(), flat->end());
    std::vector<double> y;
    y.reserve(masked->size());
    for (uint32_t v : *masked) y.push_back(static_cast<double>(static_cast<int32_t>(v)));  // As signed levels.
    entries += static_cast<int64_t>(x.size());
    ASSERT_GE(x.size(), 10000u);
    const double r = Correlation(x, y);
    EXPECT_LT(std::fabs(r), 0.05) << s.id << " over " << x.size() << " entries";
    RecordProperty(absl::StrCat("correlation_", s.id), absl::StrCat(r));
  }
  for (SimSite& s : sites_) Reveal(s);
  ASSERT_EQ(store_->GetRun(run_)->state, federation::RunState::kCompleted);
  std::vector<const SimSite*> all;
  for (const SimSite& s : sites_) all.push_back(&s);
  // The bound: n * quantum / 2 on the pre-scaled sum (n = 4, quantum = R / K), times max_num_samples /
  // total_samples, plus float32 rounding of the new global model's values (|w| < 4: 2^-21).
  auto codec = secagg::FixedPointCodec::Create(1.0, 4);
  const double bound = codec->SumErrorBound() * 40.0 / 100.0 + std::ldexp(1.0, -21);
  const double error = MaxError(FedAvg(all));
  EXPECT_LE(error, bound);
  RecordProperty("max_error", absl::StrCat(error));
  RecordProperty("bound", absl::StrCat(bound));
  auto rounds = store_->ListRounds(run_);
  EXPECT_THAT((*rounds)[0].message, HasSubstr("secure aggregation of 4 of 4"));
  // The round closed: its spool files went.
  EXPECT_TRUE(std::filesystem::is_empty(tmp_.Join("spool/" + run_)));
}

TEST_F(SecAggRoundTest, ASiteDroppingAfterSharingLeavesTheSurvivorsFedAvg) {
  auto run = manager_->StartRun(Config());
  ASSERT_TRUE(run.ok()) << run.status();
  run_ = *run;
  for (SimSite& s : sites_) AdvertiseKeys(s);
  for (SimSite& s : sites_) ShareKeys(s);
  // site-d shared its keys, then never uploads.
  for (int i = 0; i < 3; ++i) UploadMasked(sites_[i]);
  absl::StatusOr<v1::SecAggUnmaskRequest> early = manager_->SecAggGetUnmaskRequest("site-a", Phase());
  ASSERT_TRUE(early.ok()) << early.status();
  EXPECT_FALSE(early->ready());
  clock_.Advance(absl::Seconds(600));  // The round's deadline ends the masked-input phase.
  ASSERT_TRUE(manager_->Tick().ok());
  for (int i = 0; i < 3; ++i) Reveal(sites_[i]);
  ASSERT_EQ(store_->GetRun(run_)->state, federation::RunState::kCompleted)
      << manager_->GetRunStatus(run_)->rounds(0).message();
  const double bound = secagg::FixedPointCodec::Create(1.0, 4)->SumErrorBound() * 40.0 / 60.0 + std::ldexp(1.0, -21);
  const double error = MaxError(FedAvg({&sites_[0], &sites_[1], &sites_[2]}));
  EXPECT_LE(error, bound);
  RecordProperty("max_error", absl::StrCat(error));
  RecordProperty("bound", absl::StrCat(bound));
  EXPECT_THAT(store_->ListRounds(run_)->at(0).message, HasSubstr("secure aggregation of 3 of 4"));
}

TEST_F(SecAggRoundTest, UploadsThatAreNotMaskedOrFromOutsideU2AreRefused) {
  v1::RunConfig config = Config();
  config.set_secagg_phase_seconds(10);
  auto run = manager_->StartRun(config);
  ASSERT_TRUE(run.ok()) << run.status();
  run_ = *run;
  for (int i = 0; i < 3; ++i) AdvertiseKeys(sites_[i]);
  clock_.Advance(absl::Seconds(10));  // site-d never advertised: U1 = a, b, c.
  ASSERT_TRUE(manager_->Tick().ok());
  for (int i = 0; i < 3; ++i) ShareKeys(sites_[i]);
  // A plain delta where a masked vector is expected.
  auto plain = testing::UploadWhole(*manager_, "site-a", run_, 1,
                                    testing::EncodeDelta(testing::ConstantDelta(global_, 0.01)), 10);
  EXPECT_EQ(plain.status().code(), absl::StatusCode::kInvalidArgument) << plain.status();
  // site-d is not in U2: its (well-formed) masked vector cannot be unmasked.
  auto outsider =
      testing::UploadWhole(*manager_, "site-d", run_, 1,
                           secagg::MaskedBundle(std::vector<uint32_t>(layout_.length, 7)).SerializeAsString(), 10);
  EXPECT_EQ(outsider.status().code(), absl::StatusCode::kInvalidArgument) << outsider.status();
  EXPECT_THAT(outsider.status().message(), HasSubstr("U2"));
}

TEST_F(SecAggRoundTest, ASiteDecliningWhileKeysAreAdvertisedIsNotWaitedFor) {
  auto run = manager_->StartRun(Config());
  ASSERT_TRUE(run.ok()) << run.status();
  run_ = *run;
  for (int i = 0; i < 3; ++i) AdvertiseKeys(sites_[i]);
  // site-d declines: the key phase ends at once with U1 = a, b, c (no wait for secagg_phase_seconds).
  v1::DeclineRequest decline;
  decline.set_run_id(run_);
  decline.set_round(1);
  decline.set_attempt(1);
  decline.set_reason("privacy budget");
  ASSERT_TRUE(manager_->DeclineTask("site-d", decline).ok());
  for (int i = 0; i < 3; ++i) ShareKeys(sites_[i]);
  EXPECT_EQ(sites_[0].roster.peers_size(), 3);
  for (int i = 0; i < 3; ++i) UploadMasked(sites_[i]);
  for (int i = 0; i < 3; ++i) Reveal(sites_[i]);
  ASSERT_EQ(store_->GetRun(run_)->state, federation::RunState::kCompleted);
  // The roster's max_num_samples is 30 (site-c) and the sum 60: the same FedAvg of a, b and c.
  const double bound = secagg::FixedPointCodec::Create(1.0, 3)->SumErrorBound() * 30.0 / 60.0 + std::ldexp(1.0, -21);
  EXPECT_LE(MaxError(FedAvg({&sites_[0], &sites_[1], &sites_[2]})), bound);
  const v1::RunStatus status = *manager_->GetRunStatus(run_);
  int declined = 0;
  for (const v1::UpdateInfo& u : status.rounds(0).updates()) {
    if (u.upload_status() == v1::UPLOAD_STATUS_DECLINED) ++declined;
  }
  EXPECT_EQ(declined, 1);
}

TEST_F(SecAggRoundTest, AFailedSessionFailsTheAttemptWithItsReason) {
  v1::RunConfig config = Config();
  config.set_secagg_phase_seconds(10);
  auto run = manager_->StartRun(config);
  ASSERT_TRUE(run.ok()) << run.status();
  run_ = *run;
  for (int i = 0; i < 2; ++i) AdvertiseKeys(sites_[i]);  // 2 of 4, min_sites 3.
  EXPECT_THAT(manager_->GetRunStatus(run_)->rounds(0).message(), HasSubstr("keys 2/4"));
  clock_.Advance(absl::Seconds(10));
  ASSERT_TRUE(manager_->Tick().ok());
  auto rounds = store_->ListRounds(run_);
  ASSERT_TRUE(rounds.ok());
  ASSERT_EQ(rounds->size(), 2u);
  EXPECT_EQ((*rounds)[0].state, federation::RoundState::kFailed);
  EXPECT_THAT((*rounds)[0].message, HasSubstr("secure aggregation failed"));
  EXPECT_EQ((*rounds)[1].attempt, 2);
}

// A site re-using its keys of a failed attempt in the next one is refused (a dropped site's reconstructed mask key
// plus its self mask revealed as a survivor would unmask it); fresh keys are taken.
TEST_F(SecAggRoundTest, KeysOfAFailedAttemptAreRefusedInTheNext) {
  v1::RunConfig config = Config();
  config.set_secagg_phase_seconds(10);
  auto run = manager_->StartRun(config);
  ASSERT_TRUE(run.ok()) << run.status();
  run_ = *run;
  for (int i = 0; i < 2; ++i) AdvertiseKeys(sites_[i]);  // 2 of 4, min_sites 3: the attempt fails.
  clock_.Advance(absl::Seconds(10));
  ASSERT_TRUE(manager_->Tick().ok());
  SimSite& a = sites_[0];
  v1::SecAggKeys again;
  again.set_run_id(run_);
  again.set_round(1);
  again.set_attempt(2);
  again.set_cipher_public_key(Text(a.cipher->public_key()));
  again.set_mask_public_key(Text(a.mask->public_key()));
  again.set_num_samples(a.num_samples);
  ASSERT_TRUE(secagg::SignKeys(a.cert_key->get(), Session(2), a.id, &again).ok());
  const absl::Status reused = manager_->SecAggAdvertiseKeys(a.id, a.cert_pem, again);
  EXPECT_EQ(reused.code(), absl::StatusCode::kInvalidArgument) << reused;
  EXPECT_THAT(std::string(reused.message()), HasSubstr("earlier attempt"));
  AdvertiseKeys(a, 2);  // Fresh keys: accepted.
}

TEST_F(SecAggRoundTest, ARestartDuringTheSessionFailsTheAttempt) {
  auto run = manager_->StartRun(Config());
  ASSERT_TRUE(run.ok()) << run.status();
  run_ = *run;
  for (SimSite& s : sites_) AdvertiseKeys(s);
  Restart();
  auto rounds = store_->ListRounds(run_);
  ASSERT_TRUE(rounds.ok());
  ASSERT_EQ(rounds->size(), 2u);
  EXPECT_EQ((*rounds)[0].state, federation::RoundState::kFailed);
  EXPECT_EQ((*rounds)[0].message, "coordinator restarted during secure aggregation");
  EXPECT_EQ((*rounds)[1].attempt, 2);
  EXPECT_EQ((*rounds)[1].state, federation::RoundState::kOpen);
  // The old attempt's calls are refused; the new attempt has a fresh session waiting for keys.
  v1::SecAggPhaseRequest old = Phase(1);
  EXPECT_EQ(manager_->SecAggGetRoster("site-a", old).status().code(), absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<v1::SecAggRoster> fresh = manager_->SecAggGetRoster("site-a", Phase(2));
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_FALSE(fresh->ready());
  EXPECT_EQ(manager_->NextTask("site-a")->attempt(), 2);
}

}  // namespace
}  // namespace fedtune::coordinator
