#include "coordinator/secure_aggregation.h"

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/secagg/fixed_point.h"
#include "common/secagg/session.h"
#include "gtest/gtest.h"

namespace fedtune::coordinator {
namespace {

using Phase = SecAggSession::Phase;
using secagg::KeyPair;
using secagg::PkeyPtr;

constexpr int64_t kLength = 40;
const secagg::SessionId kSession = {"run-42", 2, 1};
const absl::Time kT0 = absl::FromUnixSeconds(1800000000);
constexpr absl::Duration kPhase = absl::Seconds(60);

std::string SelfSignedPem(EVP_PKEY* key, const std::string& cn) {
  std::unique_ptr<X509, decltype(&X509_free)> x(X509_new(), &X509_free);
  X509_set_version(x.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x.get()), 1);
  X509_gmtime_adj(X509_getm_notBefore(x.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), 3600);
  X509_set_pubkey(x.get(), key);
  X509_NAME* name = X509_get_subject_name(x.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x.get(), name);
  EXPECT_GT(X509_sign(x.get(), key, EVP_sha256()), 0);
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), &BIO_free);
  PEM_write_bio_X509(bio.get(), x.get());
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

// The public key of a relayed certificate, as a peer reads it.
PkeyPtr CertificateKey(const std::string& pem) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), &BIO_free);
  std::unique_ptr<X509, decltype(&X509_free)> x(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr), &X509_free);
  if (x == nullptr) return nullptr;
  EVP_PKEY* k = X509_get_pubkey(x.get());
  return PkeyPtr(k);
}

std::vector<uint8_t> Bytes(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

// A site's side of the protocol, built from common/secagg/session.h.
struct SimSite {
  std::string id;
  PkeyPtr long_term;
  std::string certificate_pem;
  std::optional<KeyPair> cipher, mask;
  int64_t num_samples = 0;
  std::vector<float> delta;  // its raw update (before pre-scaling)

  int index = 0;
  int n = 0;
  secagg::SiteSecrets secrets;
  std::map<int, secagg::SharePayload> received;  // by sender index
  std::map<std::string, int> index_of;
  v1::SecAggRoster roster;

  v1::SecAggKeys Keys() const {
    v1::SecAggKeys k;
    k.set_run_id(kSession.run_id);
    k.set_round(kSession.round);
    k.set_attempt(kSession.attempt);
    k.set_cipher_public_key(std::string(cipher->public_key().begin(), cipher->public_key().end()));
    k.set_mask_public_key(std::string(mask->public_key().begin(), mask->public_key().end()));
    k.set_num_samples(num_samples);
    EXPECT_TRUE(secagg::SignKeys(long_term.get(), kSession, id, &k).ok());
    return k;
  }

  // Reads the roster (verifying every peer against its relayed certificate) and makes the share upload.
  v1::SecAggShareUpload Share(const v1::SecAggRoster& r) {
    roster = r;
    n = r.peers_size();
    for (const v1::SecAggPeer& p : r.peers()) {
      PkeyPtr key = CertificateKey(p.certificate_pem());
      EXPECT_NE(key, nullptr);
      EXPECT_TRUE(secagg::VerifyPeerKeys(key.get(), kSession, p).ok()) << p.site_id();
      index_of[p.site_id()] = p.index();
      if (p.site_id() == id) index = p.index();
    }
    auto s = secagg::MakeSiteSecrets(index, *mask, r.threshold(), n);
    EXPECT_TRUE(s.ok()) << s.status();
    secrets = std::move(*s);
    received[index] = secrets.payloads.at(index);
    v1::SecAggShareUpload upload;
    upload.set_run_id(kSession.run_id);
    upload.set_round(kSession.round);
    upload.set_attempt(kSession.attempt);
    for (const v1::SecAggPeer& p : r.peers()) {
      if (p.index() == index) continue;
      auto ct = secagg::EncryptShares(*cipher, Bytes(p.cipher_public_key()), kSession, index, p.index(),
                                      secrets.payloads.at(p.index()));
      EXPECT_TRUE(ct.ok()) << ct.status();
      v1::SecAggEncryptedShares* e = upload.add_shares();
      e->set_site_id(p.site_id());
      e->set_ciphertext(*ct);
    }
    return upload;
  }

  const v1::SecAggPeer& Peer(const std::string& site) const {
    for (const v1::SecAggPeer& p : roster.peers()) {
      if (p.site_id() == site) return p;
    }
    ADD_FAILURE() << "no peer " << site;
    return roster.peers(0);
  }

  // The pre-scaled update: delta * num_samples / max_num_samples.
  std::vector<float> Scaled() const {
    std::vector<float> out(delta.size());
    const double scale = static_cast<double>(num_samples) / static_cast<double>(roster.max_num_samples());
    for (size_t i = 0; i < delta.size(); ++i) out[i] = static_cast<float>(scale * delta[i]);
    return out;
  }

  // Decrypts the inbox and masks the pre-scaled update for U2.
  std::vector<uint32_t> Masked(const v1::SecAggInbox& inbox) {
    EXPECT_TRUE(inbox.ready());
    std::map<int, std::vector<uint8_t>> mask_keys;
    for (const std::string& s : inbox.participants()) mask_keys[index_of.at(s)] = Bytes(Peer(s).mask_public_key());
    for (const v1::SecAggEncryptedShares& e : inbox.shares()) {
      const v1::SecAggPeer& from = Peer(e.site_id());
      auto p = secagg::DecryptShares(*cipher, Bytes(from.cipher_public_key()), kSession, from.index(), index,
                                     e.ciphertext());
      EXPECT_TRUE(p.ok()) << p.status();
      received[from.index()] = *p;
    }
    auto codec = secagg::FixedPointCodec::Create(roster.range(), n);
    EXPECT_TRUE(codec.ok());
    auto encoded = codec->Encode(Scaled());
    EXPECT_TRUE(encoded.ok());
    auto y = secagg::MaskForPeers(index, *encoded, secrets.self_seed, *mask, mask_keys, kSession);
    EXPECT_TRUE(y.ok()) << y.status();
    return *y;
  }

  v1::SecAggReveal Reveal(const v1::SecAggUnmaskRequest& request) const {
    v1::SecAggReveal r;
    r.set_run_id(kSession.run_id);
    r.set_round(kSession.round);
    r.set_attempt(kSession.attempt);
    for (const std::string& s : request.survivors()) {
      *r.add_self_mask_shares() = secagg::SelfMaskReveal(s, received.at(index_of.at(s)).self_mask);
    }
    for (const std::string& s : request.dropped()) {
      *r.add_mask_key_shares() = secagg::MaskKeyReveal(s, received.at(index_of.at(s)).mask_key);
    }
    return r;
  }
};

class SecAggSessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> dist(-0.5f, 0.5f);
    for (const char* id : {"site-a", "site-b", "site-c", "site-d"}) {
      SimSite s;
      s.id = id;
      s.long_term = PkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
      ASSERT_NE(s.long_term, nullptr);
      s.certificate_pem = SelfSignedPem(s.long_term.get(), id);
      auto c = KeyPair::Generate();
      auto m = KeyPair::Generate();
      ASSERT_TRUE(c.ok() && m.ok());
      s.cipher.emplace(std::move(*c));
      s.mask.emplace(std::move(*m));
      s.num_samples = 100 * static_cast<int64_t>(sites_.size() + 1);
      s.delta.resize(kLength);
      for (float& v : s.delta) v = dist(rng);
      sites_[id] = std::move(s);
    }
  }

  SecAggSessionOptions Options() const {
    SecAggSessionOptions o;
    o.session = kSession;
    for (const auto& [id, s] : sites_) o.expected_sites.insert(id);
    o.range = 1.0;
    o.vector_length = kLength;
    o.phase_timeout = kPhase;
    o.round_deadline = kT0 + absl::Seconds(600);
    o.min_participants = 2;
    return o;
  }

  std::unique_ptr<SecAggSession> NewSession(const SecAggSessionOptions& o) {
    auto s = SecAggSession::Create(o, kT0);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }

  absl::Status Advertise(SecAggSession& session, const std::string& id, absl::Time now) {
    return session.AdvertiseKeys(id, sites_.at(id).certificate_pem, sites_.at(id).Keys(), now);
  }

  absl::Status Share(SecAggSession& session, const std::string& id, absl::Time now) {
    auto roster = session.Roster(id);
    EXPECT_TRUE(roster.ok() && roster->ready()) << roster.status();
    if (!roster.ok()) return roster.status();
    return session.ShareKeys(id, sites_.at(id).Share(*roster), now);
  }

  absl::Status Upload(SecAggSession& session, const std::string& id, absl::Time now) {
    auto inbox = session.Inbox(id);
    EXPECT_TRUE(inbox.ok()) << inbox.status();
    if (!inbox.ok()) return inbox.status();
    return session.AddMaskedInput(id, sites_.at(id).Masked(*inbox), sites_.at(id).num_samples, now);
  }

  absl::Status RevealShares(SecAggSession& session, const std::string& id, absl::Time now) {
    auto request = session.UnmaskRequest(id);
    EXPECT_TRUE(request.ok() && request->ready()) << request.status();
    if (!request.ok()) return request.status();
    return session.Reveal(id, sites_.at(id).Reveal(*request), now);
  }

  // The expected decoded sum: the pre-scaled updates of `survivors`.
  void ExpectSum(const SecAggSession::Result& r, const std::set<std::string>& survivors) {
    ASSERT_EQ(r.sum.size(), static_cast<size_t>(kLength));
    EXPECT_EQ(r.survivors, survivors);
    int64_t total = 0;
    std::vector<double> expected(kLength, 0.0);
    for (const std::string& id : survivors) {
      const std::vector<float> scaled = sites_.at(id).Scaled();
      for (int64_t i = 0; i < kLength; ++i) expected[i] += scaled[i];
      total += sites_.at(id).num_samples;
    }
    EXPECT_EQ(r.total_samples, total);
    EXPECT_GT(r.error_bound, 0);
    EXPECT_LT(r.error_bound, 1e-6);
    double max_err = 0;
    for (int64_t i = 0; i < kLength; ++i) max_err = std::max(max_err, std::abs(r.sum[i] - expected[i]));
    EXPECT_LE(max_err, r.error_bound + 1e-9);
  }

  std::map<std::string, SimSite> sites_;
};

TEST_F(SecAggSessionTest, FullRoundRecoversTheSumOfThePreScaledUpdates) {
  auto session = NewSession(Options());
  ASSERT_NE(session, nullptr);
  EXPECT_EQ(session->phase(), Phase::kKeys);
  EXPECT_EQ(session->NextDeadline(), kT0 + kPhase);
  absl::Time now = kT0 + absl::Seconds(1);
  auto early = session->Roster("site-a");
  ASSERT_TRUE(early.ok());
  EXPECT_FALSE(early->ready());
  for (const char* id : {"site-b", "site-d", "site-a"}) ASSERT_TRUE(Advertise(*session, id, now).ok()) << id;
  EXPECT_EQ(session->Describe(), "secure aggregation: keys 3/4");
  ASSERT_TRUE(Advertise(*session, "site-c", now).ok());
  ASSERT_EQ(session->phase(), Phase::kShares);  // all four: no need to wait for the deadline
  EXPECT_EQ(session->NextDeadline(), now + kPhase);
  EXPECT_EQ(session->resolved_threshold(), 3);  // floor(4/2)+1

  auto roster = session->Roster("site-c");
  ASSERT_TRUE(roster.ok());
  ASSERT_EQ(roster->peers_size(), 4);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(roster->peers(i).index(), i + 1);
    EXPECT_EQ(roster->peers(i).site_id(), std::string("site-") + static_cast<char>('a' + i));
    EXPECT_EQ(roster->peers(i).certificate_pem(), sites_.at(roster->peers(i).site_id()).certificate_pem);
  }
  EXPECT_EQ(roster->threshold(), 3);
  EXPECT_EQ(roster->vector_length(), kLength);
  EXPECT_EQ(roster->max_num_samples(), 400);
  EXPECT_DOUBLE_EQ(roster->range(), 1.0);

  auto inbox_early = session->Inbox("site-a");
  ASSERT_TRUE(inbox_early.ok());
  EXPECT_FALSE(inbox_early->ready());
  for (const char* id : {"site-a", "site-b", "site-c", "site-d"}) {
    ASSERT_TRUE(Share(*session, id, now).ok()) << id;
  }
  ASSERT_EQ(session->phase(), Phase::kMasked);
  EXPECT_EQ(session->NextDeadline(), kT0 + absl::Seconds(600));  // the round's deadline
  EXPECT_EQ(session->share_sites().size(), 4u);
  for (const char* id : {"site-a", "site-b", "site-c"}) ASSERT_TRUE(Upload(*session, id, now).ok()) << id;
  EXPECT_EQ(session->Describe(), "secure aggregation: masked updates 3/4");
  EXPECT_TRUE(session->HasMaskedInput("site-a"));
  EXPECT_FALSE(session->HasMaskedInput("site-d"));
  auto pending = session->UnmaskRequest("site-a");
  ASSERT_TRUE(pending.ok());
  EXPECT_FALSE(pending->ready());
  ASSERT_TRUE(Upload(*session, "site-d", now).ok());
  ASSERT_EQ(session->phase(), Phase::kUnmask);
  auto request = session->UnmaskRequest("site-b");
  ASSERT_TRUE(request.ok());
  EXPECT_EQ(request->survivors_size(), 4);
  EXPECT_EQ(request->dropped_size(), 0);
  for (const char* id : {"site-a", "site-b", "site-c"}) ASSERT_TRUE(RevealShares(*session, id, now).ok()) << id;
  EXPECT_EQ(session->phase(), Phase::kUnmask);  // waits for site-d (or the deadline)
  ASSERT_TRUE(RevealShares(*session, "site-d", now).ok());
  ASSERT_EQ(session->phase(), Phase::kDone) << session->failure();
  EXPECT_EQ(session->NextDeadline(), absl::InfiniteFuture());
  auto result = session->TakeResult();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->max_num_samples, 400);
  ExpectSum(*result, {"site-a", "site-b", "site-c", "site-d"});
  EXPECT_EQ(session->TakeResult().status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(SecAggSessionTest, ASiteDroppingAfterSharingLeavesTheSurvivorsSum) {
  auto session = NewSession(Options());
  ASSERT_NE(session, nullptr);
  absl::Time now = kT0;
  for (const auto& [id, s] : sites_) ASSERT_TRUE(Advertise(*session, id, now).ok());
  for (const auto& [id, s] : sites_) ASSERT_TRUE(Share(*session, id, now).ok());
  for (const char* id : {"site-a", "site-b", "site-d"}) ASSERT_TRUE(Upload(*session, id, now).ok());
  now = kT0 + absl::Seconds(599);
  session->Tick(now);
  EXPECT_EQ(session->phase(), Phase::kMasked);
  now = kT0 + absl::Seconds(600);
  session->Tick(now);
  ASSERT_EQ(session->phase(), Phase::kUnmask) << session->failure();
  auto request = session->UnmaskRequest("site-a");
  ASSERT_TRUE(request.ok());
  EXPECT_EQ(std::set<std::string>(request->dropped().begin(), request->dropped().end()),
            std::set<std::string>{"site-c"});
  EXPECT_EQ(request->survivors_size(), 3);
  EXPECT_EQ(session->UnmaskRequest("site-c").status().code(), absl::StatusCode::kPermissionDenied);
  // The late upload of site-c is refused.
  EXPECT_EQ(session->AddMaskedInput("site-c", std::vector<uint32_t>(kLength), 300, now).code(),
            absl::StatusCode::kFailedPrecondition);
  for (const char* id : {"site-a", "site-b", "site-d"}) ASSERT_TRUE(RevealShares(*session, id, now).ok()) << id;
  ASSERT_EQ(session->phase(), Phase::kDone) << session->failure();
  auto result = session->TakeResult();
  ASSERT_TRUE(result.ok()) << result.status();
  ExpectSum(*result, {"site-a", "site-b", "site-d"});
  EXPECT_EQ(session->Describe(), "secure aggregation: done (3 sites summed, 1 dropped)");
}

TEST_F(SecAggSessionTest, ASiteMissingAtTheKeyDeadlineLeavesARosterOfThree) {
  auto session = NewSession(Options());
  ASSERT_NE(session, nullptr);
  for (const char* id : {"site-a", "site-b", "site-c"}) ASSERT_TRUE(Advertise(*session, id, kT0).ok());
  session->Tick(kT0 + kPhase - absl::Seconds(1));
  EXPECT_EQ(session->phase(), Phase::kKeys);
  const absl::Time now = kT0 + kPhase;
  session->Tick(now);
  ASSERT_EQ(session->phase(), Phase::kShares);
  EXPECT_EQ(session->keys_sites(), (std::set<std::string>{"site-a", "site-b", "site-c"}));
  EXPECT_EQ(session->resolved_threshold(), 2);  // floor(3/2)+1
  auto roster = session->Roster("site-b");
  ASSERT_TRUE(roster.ok());
  EXPECT_EQ(roster->peers_size(), 3);
  EXPECT_EQ(roster->peers(2).index(), 3);
  // site-d is out: late keys, roster, shares.
  EXPECT_EQ(Advertise(*session, "site-d", now).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(session->Roster("site-d").status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(session->ShareKeys("site-d", v1::SecAggShareUpload(), now).code(),
            absl::StatusCode::kFailedPrecondition);  // wrong session fields first
  v1::SecAggShareUpload from_d;
  from_d.set_run_id(kSession.run_id);
  from_d.set_round(kSession.round);
  from_d.set_attempt(kSession.attempt);
  EXPECT_EQ(session->ShareKeys("site-d", from_d, now).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(session->Inbox("site-d").status().code(), absl::StatusCode::kPermissionDenied);

  for (const char* id : {"site-a", "site-b", "site-c"}) ASSERT_TRUE(Share(*session, id, now).ok());
  for (const char* id : {"site-a", "site-b", "site-c"}) ASSERT_TRUE(Upload(*session, id, now).ok());
  for (const char* id : {"site-a", "site-b", "site-c"}) ASSERT_TRUE(RevealShares(*session, id, now).ok());
  ASSERT_EQ(session->phase(), Phase::kDone) << session->failure();
  auto result = session->TakeResult();
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->max_num_samples, 300);
  ExpectSum(*result, {"site-a", "site-b", "site-c"});
}

TEST_F(SecAggSessionTest, TooFewSitesFailWithAMessage) {
  {
    auto session = NewSession(Options());
    ASSERT_TRUE(Advertise(*session, "site-a", kT0).ok());
    session->Tick(kT0 + kPhase);
    ASSERT_EQ(session->phase(), Phase::kFailed);
    EXPECT_NE(session->failure().find("only 1 of 4 sites advertised keys"), std::string::npos) << session->failure();
    EXPECT_EQ(session->Describe(), session->failure());
    EXPECT_EQ(session->NextDeadline(), absl::InfiniteFuture());
    EXPECT_EQ(session->TakeResult().status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(session->Roster("site-a").status().code(), absl::StatusCode::kFailedPrecondition);
    absl::Status retry = Advertise(*session, "site-a", kT0 + kPhase);  // even a retry learns of the failure
    EXPECT_EQ(retry.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(retry.message().find("only 1 of 4"), std::string::npos) << retry;
  }
  {
    // The configured threshold 4 and one site never shares.
    SecAggSessionOptions o = Options();
    o.configured_threshold = 4;
    auto session = NewSession(o);
    for (const auto& [id, s] : sites_) ASSERT_TRUE(Advertise(*session, id, kT0).ok());
    EXPECT_EQ(session->resolved_threshold(), 4);
    for (const char* id : {"site-a", "site-b", "site-c"}) ASSERT_TRUE(Share(*session, id, kT0).ok());
    session->Tick(kT0 + kPhase);
    ASSERT_EQ(session->phase(), Phase::kFailed);
    EXPECT_NE(session->failure().find("only 3 of 4 sites shared"), std::string::npos) << session->failure();
  }
  {
    // Too few reveals by the unmask deadline (t = 3; only two reveal).
    auto session = NewSession(Options());
    for (const auto& [id, s] : sites_) ASSERT_TRUE(Advertise(*session, id, kT0).ok());
    for (const auto& [id, s] : sites_) ASSERT_TRUE(Share(*session, id, kT0).ok());
    for (const auto& [id, s] : sites_) ASSERT_TRUE(Upload(*session, id, kT0).ok());
    ASSERT_EQ(session->phase(), Phase::kUnmask);
    for (const char* id : {"site-a", "site-b"}) ASSERT_TRUE(RevealShares(*session, id, kT0).ok());
    session->Tick(kT0 + kPhase);
    ASSERT_EQ(session->phase(), Phase::kFailed);
    EXPECT_NE(session->failure().find("only 2 of 4 sites revealed"), std::string::npos) << session->failure();
  }
  {
    // Two masked updates by the round deadline, min_participants 3.
    SecAggSessionOptions o = Options();
    o.min_participants = 3;
    auto session = NewSession(o);
    for (const auto& [id, s] : sites_) ASSERT_TRUE(Advertise(*session, id, kT0).ok());
    for (const auto& [id, s] : sites_) ASSERT_TRUE(Share(*session, id, kT0).ok());
    for (const char* id : {"site-a", "site-b"}) ASSERT_TRUE(Upload(*session, id, kT0).ok());
    session->Tick(o.round_deadline);
    ASSERT_EQ(session->phase(), Phase::kFailed);
    EXPECT_NE(session->failure().find("only 2 of 4 sites uploaded"), std::string::npos) << session->failure();
  }
}

TEST_F(SecAggSessionTest, ThreeOfFourRevealingAtTheDeadlineSuffice) {
  auto session = NewSession(Options());
  for (const auto& [id, s] : sites_) ASSERT_TRUE(Advertise(*session, id, kT0).ok());
  for (const auto& [id, s] : sites_) ASSERT_TRUE(Share(*session, id, kT0).ok());
  for (const auto& [id, s] : sites_) ASSERT_TRUE(Upload(*session, id, kT0).ok());
  for (const char* id : {"site-a", "site-c", "site-d"}) ASSERT_TRUE(RevealShares(*session, id, kT0).ok());
  EXPECT_EQ(session->Describe(), "secure aggregation: unmasking 3/4 (threshold 3)");
  session->Tick(kT0 + kPhase);
  ASSERT_EQ(session->phase(), Phase::kDone) << session->failure();
  auto result = session->TakeResult();
  ASSERT_TRUE(result.ok());
  ExpectSum(*result, {"site-a", "site-b", "site-c", "site-d"});
}

TEST_F(SecAggSessionTest, CallsOutOfPhaseOrFromOutsideTheSetAreRefused) {
  auto session = NewSession(Options());
  v1::SecAggShareUpload upload;
  upload.set_run_id(kSession.run_id);
  upload.set_round(kSession.round);
  upload.set_attempt(kSession.attempt);
  v1::SecAggReveal reveal;
  reveal.set_run_id(kSession.run_id);
  reveal.set_round(kSession.round);
  reveal.set_attempt(kSession.attempt);
  absl::Status s = session->ShareKeys("site-a", upload, kT0);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("keys"), std::string::npos) << s;
  EXPECT_EQ(session->AddMaskedInput("site-a", std::vector<uint32_t>(kLength), 100, kT0).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(session->Reveal("site-a", reveal, kT0).code(), absl::StatusCode::kFailedPrecondition);
  // A site not expected.
  SimSite stranger;
  stranger.id = "site-x";
  stranger.long_term = PkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  stranger.certificate_pem = SelfSignedPem(stranger.long_term.get(), "site-x");
  stranger.cipher.emplace(std::move(*KeyPair::Generate()));
  stranger.mask.emplace(std::move(*KeyPair::Generate()));
  stranger.num_samples = 10;
  EXPECT_EQ(session->AdvertiseKeys("site-x", stranger.certificate_pem, stranger.Keys(), kT0).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(session->Roster("site-x").status().code(), absl::StatusCode::kPermissionDenied);

  for (const auto& [id, st] : sites_) ASSERT_TRUE(Advertise(*session, id, kT0).ok());
  EXPECT_EQ(session->Reveal("site-a", reveal, kT0).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(session->AddMaskedInput("site-a", std::vector<uint32_t>(kLength), 100, kT0).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(session->ShareKeys("site-x", upload, kT0).code(), absl::StatusCode::kPermissionDenied);
  // Wrong attempt.
  v1::SecAggShareUpload other_attempt = upload;
  other_attempt.set_attempt(2);
  EXPECT_EQ(session->ShareKeys("site-a", other_attempt, kT0).code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(SecAggSessionTest, KeysAreCheckedAgainstTheCertificate) {
  auto session = NewSession(Options());
  SimSite& a = sites_.at("site-a");
  v1::SecAggKeys keys = a.Keys();
  // Substituted mask key.
  v1::SecAggKeys substituted = keys;
  substituted.set_mask_public_key(sites_.at("site-b").Keys().mask_public_key());
  EXPECT_EQ(session->AdvertiseKeys("site-a", a.certificate_pem, substituted, kT0).code(),
            absl::StatusCode::kPermissionDenied);
  // Another site's certificate (its CN is not site-a), or a certificate for site-a with another key.
  EXPECT_EQ(session->AdvertiseKeys("site-a", sites_.at("site-b").certificate_pem, keys, kT0).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(
      session->AdvertiseKeys("site-a", SelfSignedPem(sites_.at("site-b").long_term.get(), "site-a"), keys, kT0).code(),
      absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(session->AdvertiseKeys("site-a", "not a certificate", keys, kT0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(session->AdvertiseKeys("site-a", std::string(17 * 1024, 'x'), keys, kT0).code(),
            absl::StatusCode::kInvalidArgument);
  v1::SecAggKeys other_attempt = keys;
  other_attempt.set_attempt(7);
  EXPECT_EQ(session->AdvertiseKeys("site-a", a.certificate_pem, other_attempt, kT0).code(),
            absl::StatusCode::kFailedPrecondition);
  v1::SecAggKeys no_samples = keys;
  no_samples.set_num_samples(0);
  EXPECT_EQ(session->AdvertiseKeys("site-a", a.certificate_pem, no_samples, kT0).code(),
            absl::StatusCode::kInvalidArgument);
  v1::SecAggKeys bad_point = keys;
  bad_point.set_cipher_public_key("\x04" + std::string(64, 'z'));
  EXPECT_EQ(session->AdvertiseKeys("site-a", a.certificate_pem, bad_point, kT0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(session->keys_sites().empty());

  ASSERT_TRUE(session->AdvertiseKeys("site-a", a.certificate_pem, keys, kT0).ok());
  EXPECT_TRUE(session->AdvertiseKeys("site-a", a.certificate_pem, keys, kT0).ok());  // a retry
  EXPECT_TRUE(Advertise(*session, "site-a", kT0).ok());                              // the same keys signed again
  a.mask.emplace(std::move(*KeyPair::Generate()));
  EXPECT_EQ(session->AdvertiseKeys("site-a", a.certificate_pem, a.Keys(), kT0).code(),
            absl::StatusCode::kAlreadyExists);
  // site-b replaying site-a's cipher key (signed by site-b).
  SimSite& b = sites_.at("site-b");
  b.cipher.emplace(std::move(*KeyPair::FromPkey(PkeyPtr(EVP_PKEY_dup(sites_.at("site-a").cipher->pkey())))));
  EXPECT_EQ(Advertise(*session, "site-b", kT0).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SecAggSessionTest, SharesAndMaskedInputsAreValidated) {
  auto session = NewSession(Options());
  for (const auto& [id, s] : sites_) ASSERT_TRUE(Advertise(*session, id, kT0).ok());
  auto roster = session->Roster("site-a");
  ASSERT_TRUE(roster.ok());
  const v1::SecAggShareUpload good = sites_.at("site-a").Share(*roster);
  ASSERT_EQ(good.shares_size(), 3);
  v1::SecAggShareUpload missing = good;
  missing.mutable_shares()->RemoveLast();
  absl::Status s = session->ShareKeys("site-a", missing, kT0);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("site-d"), std::string::npos) << s;
  v1::SecAggShareUpload twice = good;
  *twice.mutable_shares(2) = twice.shares(1);
  EXPECT_EQ(session->ShareKeys("site-a", twice, kT0).code(), absl::StatusCode::kInvalidArgument);
  v1::SecAggShareUpload to_self = good;
  to_self.mutable_shares(0)->set_site_id("site-a");
  EXPECT_EQ(session->ShareKeys("site-a", to_self, kT0).code(), absl::StatusCode::kInvalidArgument);
  v1::SecAggShareUpload stranger = good;
  stranger.mutable_shares(0)->set_site_id("site-x");
  EXPECT_EQ(session->ShareKeys("site-a", stranger, kT0).code(), absl::StatusCode::kInvalidArgument);
  v1::SecAggShareUpload huge = good;
  huge.mutable_shares(0)->set_ciphertext(std::string(secagg::kMaxEncryptedSharesBytes + 1, 'x'));
  s = session->ShareKeys("site-a", huge, kT0);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("site-b"), std::string::npos) << s;
  EXPECT_TRUE(session->share_sites().empty());
  ASSERT_TRUE(session->ShareKeys("site-a", good, kT0).ok());
  EXPECT_TRUE(session->ShareKeys("site-a", good, kT0).ok());  // a retry
  v1::SecAggShareUpload other = good;
  other.mutable_shares(0)->set_ciphertext(std::string(109, 'y'));
  EXPECT_EQ(session->ShareKeys("site-a", other, kT0).code(), absl::StatusCode::kAlreadyExists);
  for (const char* id : {"site-b", "site-c", "site-d"}) ASSERT_TRUE(Share(*session, id, kT0).ok());
  ASSERT_EQ(session->phase(), Phase::kMasked);

  auto inbox = session->Inbox("site-a");
  ASSERT_TRUE(inbox.ok());
  ASSERT_TRUE(inbox->ready());
  EXPECT_EQ(inbox->participants_size(), 4);
  EXPECT_EQ(inbox->shares_size(), 3);
  const std::vector<uint32_t> y = sites_.at("site-a").Masked(*inbox);
  EXPECT_EQ(session->AddMaskedInput("site-a", std::vector<uint32_t>(kLength - 1), 100, kT0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(session->AddMaskedInput("site-a", y, 99, kT0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(session->AddMaskedInput("site-x", y, 100, kT0).code(), absl::StatusCode::kPermissionDenied);
  ASSERT_TRUE(session->AddMaskedInput("site-a", y, 100, kT0).ok());
  EXPECT_EQ(session->AddMaskedInput("site-a", y, 100, kT0).code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(SecAggSessionTest, RevealsAreValidated) {
  auto session = NewSession(Options());
  for (const auto& [id, s] : sites_) ASSERT_TRUE(Advertise(*session, id, kT0).ok());
  for (const auto& [id, s] : sites_) ASSERT_TRUE(Share(*session, id, kT0).ok());
  for (const char* id : {"site-a", "site-b", "site-c"}) ASSERT_TRUE(Upload(*session, id, kT0).ok());
  session->Tick(kT0 + absl::Seconds(600));
  ASSERT_EQ(session->phase(), Phase::kUnmask);
  auto request = session->UnmaskRequest("site-b");
  ASSERT_TRUE(request.ok());
  const SimSite& b = sites_.at("site-b");
  const v1::SecAggReveal good = b.Reveal(*request);
  ASSERT_EQ(good.self_mask_shares_size(), 3);
  ASSERT_EQ(good.mask_key_shares_size(), 1);

  auto refused = [&](const v1::SecAggReveal& r, const std::string& names) {
    absl::Status s = session->Reveal("site-b", r, kT0);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find(names), std::string::npos) << s;
  };
  v1::SecAggReveal wrong_x = good;
  wrong_x.mutable_self_mask_shares(0)->set_x(1);
  refused(wrong_x, "site-a");
  // Both kinds for the dropped site: a self-mask share of site-d.
  v1::SecAggReveal both = good;
  *both.add_self_mask_shares() = secagg::SelfMaskReveal("site-d", b.received.at(4).self_mask);
  refused(both, "site-d");
  // A mask-key share of a survivor.
  v1::SecAggReveal key_of_survivor = good;
  *key_of_survivor.add_mask_key_shares() = secagg::MaskKeyReveal("site-a", b.received.at(1).mask_key);
  refused(key_of_survivor, "site-a");
  v1::SecAggReveal repeated = good;
  *repeated.add_self_mask_shares() = good.self_mask_shares(0);
  refused(repeated, good.self_mask_shares(0).site_id());
  v1::SecAggReveal short_y = good;
  short_y.mutable_mask_key_shares(0)->mutable_y()->RemoveLast();
  refused(short_y, "site-d");
  v1::SecAggReveal stranger = good;
  stranger.mutable_self_mask_shares(0)->set_site_id("site-x");
  refused(stranger, "site-x");
  EXPECT_TRUE(session->revealed_sites().empty());
  // Only sites of U3 reveal.
  EXPECT_EQ(session->Reveal("site-d", good, kT0).code(), absl::StatusCode::kPermissionDenied);

  ASSERT_TRUE(session->Reveal("site-b", good, kT0).ok());
  EXPECT_TRUE(session->Reveal("site-b", good, kT0).ok());  // a retry
  EXPECT_EQ(session->Reveal("site-b", wrong_x, kT0).code(), absl::StatusCode::kAlreadyExists);
  for (const char* id : {"site-a", "site-c"}) ASSERT_TRUE(RevealShares(*session, id, kT0).ok());
  ASSERT_EQ(session->phase(), Phase::kDone) << session->failure();
  auto result = session->TakeResult();
  ASSERT_TRUE(result.ok());
  ExpectSum(*result, {"site-a", "site-b", "site-c"});
}

TEST_F(SecAggSessionTest, DeclinesShrinkTheExpectedSetsAndCountAsDropped) {
  {
    // In kKeys: the phase ends as soon as the others advertised.
    auto session = NewSession(Options());
    for (const char* id : {"site-a", "site-b", "site-d"}) ASSERT_TRUE(Advertise(*session, id, kT0).ok());
    EXPECT_EQ(session->phase(), Phase::kKeys);
    session->Decline("site-c", kT0);
    ASSERT_EQ(session->phase(), Phase::kShares);
    EXPECT_EQ(session->keys_sites(), (std::set<std::string>{"site-a", "site-b", "site-d"}));
    EXPECT_EQ(Advertise(*session, "site-c", kT0).code(), absl::StatusCode::kFailedPrecondition);
  }
  {
    // A site that advertised and then declines is forgotten.
    auto session = NewSession(Options());
    ASSERT_TRUE(Advertise(*session, "site-a", kT0).ok());
    session->Decline("site-a", kT0);
    for (const char* id : {"site-b", "site-c", "site-d"}) ASSERT_TRUE(Advertise(*session, id, kT0).ok());
    ASSERT_EQ(session->phase(), Phase::kShares);
    EXPECT_EQ(session->keys_sites().count("site-a"), 0u);
  }
  {
    // After sharing: the masked phase stops waiting for it; it is dropped.
    auto session = NewSession(Options());
    for (const auto& [id, s] : sites_) ASSERT_TRUE(Advertise(*session, id, kT0).ok());
    for (const auto& [id, s] : sites_) ASSERT_TRUE(Share(*session, id, kT0).ok());
    for (const char* id : {"site-a", "site-b", "site-d"}) ASSERT_TRUE(Upload(*session, id, kT0).ok());
    EXPECT_EQ(session->phase(), Phase::kMasked);
    session->Decline("site-c", kT0 + absl::Seconds(5));
    ASSERT_EQ(session->phase(), Phase::kUnmask);
    auto request = session->UnmaskRequest("site-a");
    ASSERT_TRUE(request.ok());
    ASSERT_EQ(request->dropped_size(), 1);
    EXPECT_EQ(request->dropped(0), "site-c");
    for (const char* id : {"site-a", "site-b", "site-d"}) ASSERT_TRUE(RevealShares(*session, id, kT0).ok());
    ASSERT_EQ(session->phase(), Phase::kDone) << session->failure();
    auto result = session->TakeResult();
    ASSERT_TRUE(result.ok());
    ExpectSum(*result, {"site-a", "site-b", "site-d"});
  }
  {
    // Declines that leave fewer than the configured threshold fail the session at once.
    SecAggSessionOptions o = Options();
    o.configured_threshold = 4;
    auto session = NewSession(o);
    session->Decline("site-x", kT0);  // unknown: no effect
    EXPECT_EQ(session->phase(), Phase::kKeys);
    session->Decline("site-b", kT0);
    ASSERT_EQ(session->phase(), Phase::kFailed);
    EXPECT_NE(session->failure().find("site-b"), std::string::npos) << session->failure();
  }
}

TEST_F(SecAggSessionTest, DeclinesWhileSharingAndUnmaskingEndThePhaseEarly) {
  auto session = NewSession(Options());
  for (const auto& [id, s] : sites_) ASSERT_TRUE(Advertise(*session, id, kT0).ok());
  for (const char* id : {"site-a", "site-b", "site-c"}) ASSERT_TRUE(Share(*session, id, kT0).ok());
  session->Decline("site-d", kT0);
  ASSERT_EQ(session->phase(), Phase::kMasked);
  EXPECT_EQ(session->share_sites(), (std::set<std::string>{"site-a", "site-b", "site-c"}));
  for (const char* id : {"site-a", "site-b", "site-c"}) ASSERT_TRUE(Upload(*session, id, kT0).ok());
  ASSERT_EQ(session->phase(), Phase::kUnmask);
  auto request = session->UnmaskRequest("site-a");
  ASSERT_TRUE(request.ok());
  EXPECT_EQ(request->dropped_size(), 0);  // site-d never shared: nothing of it is in the sum
  for (const char* id : {"site-a", "site-b", "site-c"}) ASSERT_TRUE(RevealShares(*session, id, kT0).ok());
  ASSERT_EQ(session->phase(), Phase::kDone) << session->failure();
  auto result = session->TakeResult();
  ASSERT_TRUE(result.ok());
  ExpectSum(*result, {"site-a", "site-b", "site-c"});
}

TEST_F(SecAggSessionTest, RevealsWithoutTheirOwnShareCannotReachThresholdEqualToU3) {
  // t = 3, site-d drops: each survivor's self seed has only 2 shares when the revealers leave out their own.
  auto session = NewSession(Options());
  for (const auto& [id, s] : sites_) ASSERT_TRUE(Advertise(*session, id, kT0).ok());
  for (const auto& [id, s] : sites_) ASSERT_TRUE(Share(*session, id, kT0).ok());
  for (const char* id : {"site-a", "site-b", "site-c"}) ASSERT_TRUE(Upload(*session, id, kT0).ok());
  session->Tick(kT0 + absl::Seconds(600));
  ASSERT_EQ(session->phase(), Phase::kUnmask);
  for (const char* id : {"site-a", "site-b", "site-c"}) {
    auto request = session->UnmaskRequest(id);
    ASSERT_TRUE(request.ok());
    v1::SecAggReveal r = sites_.at(id).Reveal(*request);
    auto* shares = r.mutable_self_mask_shares();
    for (int i = shares->size() - 1; i >= 0; --i) {
      if (shares->Get(i).site_id() == id) shares->DeleteSubrange(i, 1);
    }
    ASSERT_EQ(r.self_mask_shares_size(), 2);
    ASSERT_TRUE(session->Reveal(id, r, kT0).ok()) << id;
  }
  ASSERT_EQ(session->phase(), Phase::kFailed);
  EXPECT_NE(session->failure().find("2 shares of the self-mask seed"), std::string::npos) << session->failure();
}

TEST_F(SecAggSessionTest, CreateRefusesBadOptions) {
  SecAggSessionOptions o = Options();
  o.expected_sites = {"site-a"};
  EXPECT_EQ(SecAggSession::Create(o, kT0).status().code(), absl::StatusCode::kInvalidArgument);
  o = Options();
  o.configured_threshold = 5;
  EXPECT_EQ(SecAggSession::Create(o, kT0).status().code(), absl::StatusCode::kInvalidArgument);
  o = Options();
  o.threshold = 1;
  EXPECT_EQ(SecAggSession::Create(o, kT0).status().code(), absl::StatusCode::kInvalidArgument);
  o = Options();
  o.vector_length = 0;
  EXPECT_EQ(SecAggSession::Create(o, kT0).status().code(), absl::StatusCode::kInvalidArgument);
  o = Options();
  o.range = 0;
  EXPECT_EQ(SecAggSession::Create(o, kT0).status().code(), absl::StatusCode::kInvalidArgument);
  o = Options();
  o.session.run_id = "";
  EXPECT_EQ(SecAggSession::Create(o, kT0).status().code(), absl::StatusCode::kInvalidArgument);
  o = Options();
  o.phase_timeout = absl::ZeroDuration();
  EXPECT_EQ(SecAggSession::Create(o, kT0).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtune::coordinator
