#include "coordinator/secure_aggregation.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/secagg/fixed_point.h"
#include "common/status_macros.h"

namespace fedtune::coordinator {
namespace {

constexpr size_t kMaxCertificatePemBytes = 16 * 1024;
constexpr int64_t kMaxNumSamples = int64_t{1} << 40;
constexpr size_t kMinCiphertextBytes = 12 + 16 + 1;

struct X509Deleter {
  void operator()(X509* p) const { X509_free(p); }
};
struct BioDeleter {
  void operator()(BIO* p) const { BIO_free(p); }
};

std::string SessionName(const secagg::SessionId& s) {
  return absl::StrCat("run ", s.run_id, " round ", s.round, " attempt ", s.attempt);
}

absl::Status CheckSession(const secagg::SessionId& s, const std::string& run_id, int round, int attempt,
                          const std::string& site_id) {
  if (s.run_id == run_id && s.round == round && s.attempt == attempt) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat("secure aggregation: site '", site_id, "' sent a message for run ",
                                                    run_id, " round ", round, " attempt ", attempt,
                                                    "; the open session is ", SessionName(s)));
}

// The certificate's public key, after checking that its CN is `site_id`.
absl::StatusOr<std::unique_ptr<X509, X509Deleter>> ParseCertificate(const std::string& pem,
                                                                    const std::string& site_id) {
  if (pem.empty() || pem.size() > kMaxCertificatePemBytes) {
    return absl::InvalidArgumentError(absl::StrCat("secure aggregation: the certificate of site '", site_id, "' has ",
                                                   pem.size(), " bytes, expected 1..", kMaxCertificatePemBytes));
  }
  std::unique_ptr<BIO, BioDeleter> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  std::unique_ptr<X509, X509Deleter> cert(bio == nullptr ? nullptr
                                                         : PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (cert == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat("secure aggregation: the certificate of site '", site_id, "' is not a PEM certificate"));
  }
  char cn[256] = {0};
  const int len = X509_NAME_get_text_by_NID(X509_get_subject_name(cert.get()), NID_commonName, cn, sizeof(cn));
  ERR_clear_error();
  if (len < 0 || std::string(cn, static_cast<size_t>(len)) != site_id) {
    return absl::PermissionDeniedError(absl::StrCat("secure aggregation: the certificate's common name '",
                                                    len < 0 ? "" : std::string(cn, static_cast<size_t>(len)),
                                                    "' is not site '", site_id, "'"));
  }
  if (X509_get0_pubkey(cert.get()) == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat("secure aggregation: the certificate of site '", site_id, "' has no usable public key"));
  }
  return cert;
}

std::string Count(const std::set<std::string>& done, size_t of) { return absl::StrCat(done.size(), "/", of); }

}  // namespace

struct SecAggSession::State {
  SecAggSessionOptions options;
  Phase phase = Phase::kKeys;
  std::string failure;
  absl::Time deadline;
  std::set<std::string> expected;  // kKeys: who may advertise
  std::set<std::string> declined;  // after kKeys

  // Phase 1.
  struct Advertised {
    v1::SecAggKeys keys;
    std::string certificate_pem;
  };
  std::map<std::string, Advertised> keys;  // U1 once kKeys ended
  std::map<std::string, int> index;        // site -> 1..n
  int threshold = 0;                       // resolved at the end of kKeys
  int64_t max_num_samples = 0;
  v1::SecAggRoster roster;

  // Phase 2: sender -> receiver -> ciphertext.
  std::map<std::string, std::map<std::string, std::string>> shares;
  std::set<std::string> u2;

  // Phase 3.
  std::vector<uint32_t> sum;
  std::set<std::string> masked;  // U3 once kMasked ended
  int64_t total_samples = 0;
  std::set<std::string> dropped;  // U2 \ U3

  // Phase 4.
  std::map<std::string, std::string> reveals;  // site -> serialized reveal (idempotence)
  secagg::RevealedShares revealed;

  std::optional<Result> result;
  bool result_taken = false;

  bool Terminal() const { return phase == Phase::kDone || phase == Phase::kFailed; }
  int ConfiguredThreshold() const {
    return options.configured_threshold > 0 ? options.configured_threshold : options.threshold;
  }
  // The size every set needs with threshold t.
  int MinimumFor(int t) const { return std::max({t, options.min_participants, 2}); }
  std::string Name() const { return SessionName(options.session); }

  void Fail(std::string message) {
    phase = Phase::kFailed;
    failure = absl::StrCat("secure aggregation (", Name(), "): ", message);
    std::vector<uint32_t>().swap(sum);
    shares.clear();
  }

  // Every deadline passed by `now`.
  void Advance(absl::Time now) {
    for (int guard = 0; guard < 8 && !Terminal() && now >= deadline; ++guard) {
      switch (phase) {
        case Phase::kKeys:
          EndKeys(now);
          break;
        case Phase::kShares:
          EndShares(now);
          break;
        case Phase::kMasked:
          EndMasked(now);
          break;
        case Phase::kUnmask:
          FinishUnmask(/*at_deadline=*/true);
          break;
        default:
          return;
      }
    }
  }

  void EndKeys(absl::Time now) {
    const int n = static_cast<int>(keys.size());
    const int configured = ConfiguredThreshold();
    const int t = configured > 0 ? configured : n / 2 + 1;
    const int need = MinimumFor(t);
    if (n < need) {
      Fail(absl::StrCat("only ", n, " of ", expected.size(), " sites advertised keys, need ", need, " (threshold ", t,
                        ", min_sites ", options.min_participants, ")"));
      return;
    }
    threshold = t;
    roster.Clear();
    roster.set_ready(true);
    roster.set_threshold(t);
    roster.set_range(options.range);
    roster.set_vector_length(options.vector_length);
    int i = 0;
    for (const auto& [site, adv] : keys) {  // sorted by site id
      index[site] = ++i;
      v1::SecAggPeer* peer = roster.add_peers();
      peer->set_site_id(site);
      peer->set_index(i);
      peer->set_cipher_public_key(adv.keys.cipher_public_key());
      peer->set_mask_public_key(adv.keys.mask_public_key());
      peer->set_signature(adv.keys.signature());
      peer->set_certificate_pem(adv.certificate_pem);
      peer->set_num_samples(adv.keys.num_samples());
      max_num_samples = std::max(max_num_samples, adv.keys.num_samples());
    }
    roster.set_max_num_samples(max_num_samples);
    phase = Phase::kShares;
    deadline = now + options.phase_timeout;
    MaybeEndShares(now);  // every site may have declined already
  }

  // Sites of `set` still expected to act (not declined).
  size_t Active(const std::set<std::string>& set) const {
    size_t n = 0;
    for (const std::string& s : set) n += declined.count(s) == 0;
    return n;
  }
  bool AllActiveIn(const std::set<std::string>& set, const std::set<std::string>& done) const {
    for (const std::string& s : set) {
      if (declined.count(s) == 0 && done.count(s) == 0) return false;
    }
    return true;
  }
  std::set<std::string> U1() const {
    std::set<std::string> u1;
    for (const auto& [site, adv] : keys) u1.insert(site);
    return u1;
  }

  void MaybeEndShares(absl::Time now) {
    std::set<std::string> sent;
    for (const auto& [site, m] : shares) sent.insert(site);
    if (phase == Phase::kShares && AllActiveIn(U1(), sent)) EndShares(now);
  }

  void EndShares(absl::Time now) {
    u2.clear();
    for (const auto& [site, m] : shares) u2.insert(site);
    const int need = MinimumFor(threshold);
    if (static_cast<int>(u2.size()) < need) {
      Fail(absl::StrCat("only ", u2.size(), " of ", keys.size(), " sites shared their keys, need ", need));
      return;
    }
    sum.assign(static_cast<size_t>(options.vector_length), 0);
    phase = Phase::kMasked;
    deadline = std::max(options.round_deadline, now);
    MaybeEndMasked(now);
  }

  void MaybeEndMasked(absl::Time now) {
    if (phase == Phase::kMasked && AllActiveIn(u2, masked)) EndMasked(now);
  }

  void EndMasked(absl::Time now) {
    const int need = MinimumFor(threshold);
    if (static_cast<int>(masked.size()) < need) {
      Fail(absl::StrCat("only ", masked.size(), " of ", u2.size(), " sites uploaded a masked update, need ", need));
      return;
    }
    dropped.clear();
    for (const std::string& s : u2) {
      if (masked.count(s) == 0) dropped.insert(s);
    }
    shares.clear();  // delivered (or never to be)
    phase = Phase::kUnmask;
    deadline = now + options.phase_timeout;
    MaybeFinishUnmask();
  }

  void MaybeFinishUnmask() {
    std::set<std::string> done;
    for (const auto& [site, r] : reveals) done.insert(site);
    if (phase == Phase::kUnmask && AllActiveIn(masked, done)) FinishUnmask(/*at_deadline=*/false);
  }

  void FinishUnmask(bool at_deadline) {
    if (static_cast<int>(reveals.size()) < threshold) {
      Fail(absl::StrCat("only ", reveals.size(), " of ", masked.size(), " sites revealed their shares",
                        at_deadline ? " by the deadline" : "", ", need ", threshold));
      return;
    }
    std::map<int, std::vector<uint8_t>> mask_keys;
    for (const std::string& s : u2) {
      const std::string& k = keys.at(s).keys.mask_public_key();
      mask_keys[index.at(s)] = std::vector<uint8_t>(k.begin(), k.end());
    }
    std::vector<int> survivors, dropped_indices;
    for (const std::string& s : masked) survivors.push_back(index.at(s));
    for (const std::string& s : dropped) dropped_indices.push_back(index.at(s));
    absl::StatusOr<std::vector<uint32_t>> encoded =
        secagg::RecoverSum(sum, mask_keys, survivors, dropped_indices, revealed, threshold, options.session);
    if (!encoded.ok()) {
      Fail(absl::StrCat("recovering the sum failed: ", encoded.status().ToString()));
      return;
    }
    absl::StatusOr<secagg::FixedPointCodec> codec =
        secagg::FixedPointCodec::Create(options.range, static_cast<int64_t>(keys.size()));
    if (!codec.ok()) {  // checked in Create for |expected| >= |U1|
      Fail(absl::StrCat("fixed point: ", codec.status().ToString()));
      return;
    }
    Result r;
    r.sum = codec->DecodeSum(*encoded);
    r.total_samples = total_samples;
    r.max_num_samples = max_num_samples;
    r.survivors = masked;
    r.error_bound = codec->SumErrorBound();
    result = std::move(r);
    std::vector<uint32_t>().swap(sum);
    revealed = {};
    phase = Phase::kDone;
  }
};

SecAggSession::~SecAggSession() = default;

absl::StatusOr<std::unique_ptr<SecAggSession>> SecAggSession::Create(const SecAggSessionOptions& options,
                                                                     absl::Time now) {
  const std::string name = SessionName(options.session);
  if (options.session.run_id.empty()) return absl::InvalidArgumentError("secure aggregation: empty run id");
  const int n = static_cast<int>(options.expected_sites.size());
  if (n < 2 || n > secagg::kMaxSecAggSites) {
    return absl::InvalidArgumentError(
        absl::StrCat("secure aggregation (", name, "): ", n, " expected sites, need 2..", secagg::kMaxSecAggSites));
  }
  const int configured = options.configured_threshold > 0 ? options.configured_threshold : options.threshold;
  if (options.configured_threshold < 0 || options.threshold < 0 ||
      (configured != 0 && (configured < 2 || configured > n))) {
    return absl::InvalidArgumentError(absl::StrCat("secure aggregation (", name, "): threshold ", configured,
                                                   " is outside [2, ", n, "] (the expected sites)"));
  }
  if (options.min_participants > n) {
    return absl::InvalidArgumentError(absl::StrCat("secure aggregation (", name, "): min_participants ",
                                                   options.min_participants, " exceeds the ", n, " expected sites"));
  }
  if (options.vector_length < 1 || options.vector_length > secagg::kMaxPrgLength) {
    return absl::InvalidArgumentError(absl::StrCat("secure aggregation (", name, "): vector_length ",
                                                   options.vector_length, " is outside [1, ", secagg::kMaxPrgLength,
                                                   "]"));
  }
  absl::StatusOr<secagg::FixedPointCodec> codec = secagg::FixedPointCodec::Create(options.range, n);
  if (!codec.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("secure aggregation (", name, "): range: ", codec.status().message()));
  }
  if (options.phase_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("secure aggregation (", name, "): phase timeout must be > 0"));
  }
  for (const std::string& site : options.expected_sites) {
    if (site.empty()) return absl::InvalidArgumentError("secure aggregation: an empty expected site id");
  }
  std::unique_ptr<SecAggSession> session(new SecAggSession());
  session->state_ = std::make_unique<State>();
  State& st = *session->state_;
  st.options = options;
  st.expected = options.expected_sites;
  st.deadline = now + options.phase_timeout;
  return session;
}

SecAggSession::Phase SecAggSession::phase() const { return state_->phase; }

const char* SecAggSession::PhaseName(Phase phase) {
  switch (phase) {
    case Phase::kKeys:
      return "keys";
    case Phase::kShares:
      return "shares";
    case Phase::kMasked:
      return "masked input";
    case Phase::kUnmask:
      return "unmasking";
    case Phase::kDone:
      return "done";
    case Phase::kFailed:
      return "failed";
  }
  return "unknown";
}

const std::string& SecAggSession::failure() const { return state_->failure; }

namespace {
absl::Status OutOfPhase(SecAggSession::Phase phase, const std::string& site_id, const char* what,
                        const std::string& failure) {
  return absl::FailedPreconditionError(absl::StrCat(
      "secure aggregation: ", what, " from site '", site_id, "' in phase '", SecAggSession::PhaseName(phase), "'",
      phase == SecAggSession::Phase::kFailed ? absl::StrCat(" (", failure, ")") : ""));
}
absl::Status NotInSet(const std::string& site_id, const char* set) {
  return absl::PermissionDeniedError(absl::StrCat("secure aggregation: site '", site_id, "' is not in ", set));
}
}  // namespace

// ---- Phase 1

absl::Status SecAggSession::AdvertiseKeys(const std::string& site_id, const std::string& certificate_pem,
                                          const v1::SecAggKeys& keys, absl::Time now) {
  State& st = *state_;
  st.Advance(now);
  RETURN_IF_ERROR(CheckSession(st.options.session, keys.run_id(), keys.round(), keys.attempt(), site_id));
  if (st.phase == Phase::kFailed) return OutOfPhase(st.phase, site_id, "keys", st.failure);
  auto existing = st.keys.find(site_id);
  if (existing != st.keys.end()) {
    const v1::SecAggKeys& old = existing->second.keys;
    if (old.cipher_public_key() == keys.cipher_public_key() && old.mask_public_key() == keys.mask_public_key() &&
        old.num_samples() == keys.num_samples()) {
      return absl::OkStatus();  // a retry (perhaps re-signed: ECDSA signatures differ each time)
    }
    return absl::AlreadyExistsError(
        absl::StrCat("secure aggregation: site '", site_id, "' already advertised other keys for ", st.Name()));
  }
  if (st.phase != Phase::kKeys) return OutOfPhase(st.phase, site_id, "keys", st.failure);
  if (st.expected.count(site_id) == 0) return NotInSet(site_id, "the sites expected in this round");
  if (keys.num_samples() < 1 || keys.num_samples() > kMaxNumSamples) {
    return absl::InvalidArgumentError(absl::StrCat("secure aggregation: site '", site_id, "' num_samples ",
                                                   keys.num_samples(), " is outside [1, ", kMaxNumSamples, "]"));
  }
  ASSIGN_OR_RETURN(auto cert, ParseCertificate(certificate_pem, site_id));
  v1::SecAggPeer peer;
  peer.set_site_id(site_id);
  peer.set_cipher_public_key(keys.cipher_public_key());
  peer.set_mask_public_key(keys.mask_public_key());
  peer.set_signature(keys.signature());
  peer.set_num_samples(keys.num_samples());
  RETURN_IF_ERROR(secagg::VerifyPeerKeys(X509_get0_pubkey(cert.get()), st.options.session, peer));
  // A key another site already advertised is a replay.
  for (const auto& [other, adv] : st.keys) {
    for (const std::string* k : {&adv.keys.cipher_public_key(), &adv.keys.mask_public_key()}) {
      if (*k == keys.cipher_public_key() || *k == keys.mask_public_key()) {
        return absl::InvalidArgumentError(absl::StrCat("secure aggregation: site '", site_id,
                                                       "' advertised a public key that site '", other,
                                                       "' already advertised"));
      }
    }
  }
  State::Advertised& adv = st.keys[site_id];
  adv.keys = keys;
  adv.certificate_pem = certificate_pem;
  if (st.keys.size() == st.expected.size()) st.EndKeys(now);
  return absl::OkStatus();
}

absl::StatusOr<v1::SecAggRoster> SecAggSession::Roster(const std::string& site_id) const {
  const State& st = *state_;
  if (st.phase == Phase::kKeys) {
    if (st.expected.count(site_id) == 0) return NotInSet(site_id, "the sites expected in this round");
    v1::SecAggRoster not_ready;
    not_ready.set_ready(false);
    return not_ready;
  }
  if (st.phase == Phase::kFailed) return OutOfPhase(st.phase, site_id, "roster request", st.failure);
  if (st.keys.count(site_id) == 0) return NotInSet(site_id, "the key roster (U1)");
  return st.roster;
}

// ---- Phase 2

absl::Status SecAggSession::ShareKeys(const std::string& site_id, const v1::SecAggShareUpload& upload, absl::Time now) {
  State& st = *state_;
  st.Advance(now);
  RETURN_IF_ERROR(CheckSession(st.options.session, upload.run_id(), upload.round(), upload.attempt(), site_id));
  if (st.phase == Phase::kKeys || st.phase == Phase::kFailed) {
    return OutOfPhase(st.phase, site_id, "shares", st.failure);
  }
  if (st.keys.count(site_id) == 0) return NotInSet(site_id, "the key roster (U1)");
  // Validate fully before keeping anything.
  std::map<std::string, std::string> by_receiver;
  for (const v1::SecAggEncryptedShares& s : upload.shares()) {
    if (s.site_id() == site_id) {
      return absl::InvalidArgumentError(
          absl::StrCat("secure aggregation: site '", site_id, "' sent shares addressed to itself"));
    }
    if (st.keys.count(s.site_id()) == 0) {
      return absl::InvalidArgumentError(absl::StrCat("secure aggregation: site '", site_id, "' sent shares for '",
                                                     s.site_id(), "', not in the roster"));
    }
    if (s.ciphertext().size() < kMinCiphertextBytes || s.ciphertext().size() > secagg::kMaxEncryptedSharesBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "secure aggregation: site '", site_id, "' sent ", s.ciphertext().size(), " bytes of shares for '",
          s.site_id(), "', expected ", kMinCiphertextBytes, "..", secagg::kMaxEncryptedSharesBytes));
    }
    if (!by_receiver.emplace(s.site_id(), s.ciphertext()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("secure aggregation: site '", site_id, "' sent shares for '", s.site_id(), "' twice"));
    }
  }
  auto existing = st.shares.find(site_id);
  if (existing != st.shares.end()) {
    if (existing->second == by_receiver) return absl::OkStatus();  // a retry
    return absl::AlreadyExistsError(
        absl::StrCat("secure aggregation: site '", site_id, "' already shared other keys for ", st.Name()));
  }
  if (st.u2.count(site_id) > 0) return absl::OkStatus();  // a retry after the ciphertexts were delivered
  if (st.phase != Phase::kShares) return OutOfPhase(st.phase, site_id, "shares", st.failure);
  if (st.declined.count(site_id) > 0) {
    return absl::FailedPreconditionError(absl::StrCat("secure aggregation: site '", site_id, "' declined the round"));
  }
  if (by_receiver.size() != st.keys.size() - 1) {
    std::vector<std::string> missing;
    for (const auto& [other, adv] : st.keys) {
      if (other != site_id && by_receiver.count(other) == 0) missing.push_back(other);
    }
    return absl::InvalidArgumentError(
        absl::StrCat("secure aggregation: site '", site_id, "' sent no shares for ", absl::StrJoin(missing, ", ")));
  }
  st.shares[site_id] = std::move(by_receiver);
  st.MaybeEndShares(now);
  return absl::OkStatus();
}

absl::StatusOr<v1::SecAggInbox> SecAggSession::Inbox(const std::string& site_id) const {
  const State& st = *state_;
  if (st.phase == Phase::kKeys) {
    if (st.expected.count(site_id) == 0) return NotInSet(site_id, "the sites expected in this round");
    v1::SecAggInbox not_ready;
    return not_ready;
  }
  if (st.phase == Phase::kFailed) return OutOfPhase(st.phase, site_id, "inbox request", st.failure);
  if (st.keys.count(site_id) == 0) return NotInSet(site_id, "the key roster (U1)");
  v1::SecAggInbox inbox;
  if (st.phase == Phase::kShares) return inbox;  // ready = false
  if (st.u2.count(site_id) == 0) return NotInSet(site_id, "the sites that shared their keys (U2)");
  if (st.phase != Phase::kMasked) {
    return absl::FailedPreconditionError(
        absl::StrCat("secure aggregation: inbox request from site '", site_id, "' after the masked-input phase ended"));
  }
  inbox.set_ready(true);
  for (const std::string& s : st.u2) inbox.add_participants(s);
  for (const std::string& sender : st.u2) {
    if (sender == site_id) continue;
    const std::string& ct = st.shares.at(sender).at(site_id);
    v1::SecAggEncryptedShares* e = inbox.add_shares();
    e->set_site_id(sender);
    e->set_ciphertext(ct);
  }
  return inbox;
}

// ---- Phase 3

absl::Status SecAggSession::AddMaskedInput(const std::string& site_id, const std::vector<uint32_t>& masked,
                                           int64_t num_samples, absl::Time now) {
  State& st = *state_;
  st.Advance(now);
  if (st.masked.count(site_id) > 0) {
    return absl::AlreadyExistsError(
        absl::StrCat("secure aggregation: site '", site_id, "' already uploaded its masked update for ", st.Name()));
  }
  if (st.phase != Phase::kMasked) return OutOfPhase(st.phase, site_id, "masked update", st.failure);
  if (st.u2.count(site_id) == 0) return NotInSet(site_id, "the sites that shared their keys (U2)");
  if (st.declined.count(site_id) > 0) {
    return absl::FailedPreconditionError(absl::StrCat("secure aggregation: site '", site_id, "' declined the round"));
  }
  if (static_cast<int64_t>(masked.size()) != st.options.vector_length) {
    return absl::InvalidArgumentError(absl::StrCat("secure aggregation: the masked update of site '", site_id, "' has ",
                                                   masked.size(), " entries, expected ", st.options.vector_length));
  }
  const int64_t advertised = st.keys.at(site_id).keys.num_samples();
  if (num_samples != advertised) {
    return absl::InvalidArgumentError(absl::StrCat("secure aggregation: site '", site_id, "' reports num_samples ",
                                                   num_samples, " but advertised ", advertised));
  }
  secagg::AddInto(st.sum, masked);
  st.masked.insert(site_id);
  st.total_samples += num_samples;
  st.MaybeEndMasked(now);
  return absl::OkStatus();
}

bool SecAggSession::HasMaskedInput(const std::string& site_id) const { return state_->masked.count(site_id) > 0; }

// ---- Phase 4

absl::StatusOr<v1::SecAggUnmaskRequest> SecAggSession::UnmaskRequest(const std::string& site_id) const {
  const State& st = *state_;
  if (st.phase == Phase::kFailed) return OutOfPhase(st.phase, site_id, "unmask request", st.failure);
  if (st.phase == Phase::kKeys) {
    if (st.expected.count(site_id) == 0) return NotInSet(site_id, "the sites expected in this round");
    return v1::SecAggUnmaskRequest();
  }
  if (st.keys.count(site_id) == 0) return NotInSet(site_id, "the key roster (U1)");
  if (st.phase == Phase::kShares) return v1::SecAggUnmaskRequest();
  if (st.u2.count(site_id) == 0) return NotInSet(site_id, "the sites that shared their keys (U2)");
  if (st.phase == Phase::kMasked) return v1::SecAggUnmaskRequest();
  if (st.masked.count(site_id) == 0) return NotInSet(site_id, "the sites that uploaded a masked update (U3)");
  v1::SecAggUnmaskRequest request;
  request.set_ready(true);
  for (const std::string& s : st.masked) request.add_survivors(s);
  for (const std::string& s : st.dropped) request.add_dropped(s);
  return request;
}

absl::Status SecAggSession::Reveal(const std::string& site_id, const v1::SecAggReveal& reveal, absl::Time now) {
  State& st = *state_;
  st.Advance(now);
  RETURN_IF_ERROR(CheckSession(st.options.session, reveal.run_id(), reveal.round(), reveal.attempt(), site_id));
  if (st.phase == Phase::kFailed) return OutOfPhase(st.phase, site_id, "reveal", st.failure);
  auto existing = st.reveals.find(site_id);
  if (existing != st.reveals.end()) {
    if (existing->second == reveal.SerializeAsString()) return absl::OkStatus();
    return absl::AlreadyExistsError(
        absl::StrCat("secure aggregation: site '", site_id, "' already revealed its shares for ", st.Name()));
  }
  if (st.phase != Phase::kUnmask) return OutOfPhase(st.phase, site_id, "reveal", st.failure);
  if (st.masked.count(site_id) == 0) return NotInSet(site_id, "the sites that uploaded a masked update (U3)");
  if (st.declined.count(site_id) > 0) {
    return absl::FailedPreconditionError(absl::StrCat("secure aggregation: site '", site_id, "' declined the round"));
  }
  const int x = st.index.at(site_id);
  const std::string who = absl::StrCat("secure aggregation: site '", site_id, "'");
  std::map<int, secagg::Share> self_shares;
  std::map<int, std::array<secagg::Share, 2>> key_shares;
  std::set<std::string> seen;
  for (const v1::SecAggRevealedShare& r : reveal.self_mask_shares()) {
    if (st.masked.count(r.site_id()) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(who, " revealed a self-mask share of '", r.site_id(), "', which is not a survivor (U3)"));
    }
    if (!seen.insert(r.site_id()).second) {
      return absl::InvalidArgumentError(absl::StrCat(who, " revealed two shares of '", r.site_id(), "'"));
    }
    if (r.x() != x) {
      return absl::InvalidArgumentError(
          absl::StrCat(who, " revealed a share of '", r.site_id(), "' with x = ", r.x(), ", its index is ", x));
    }
    absl::StatusOr<secagg::Share> share = secagg::ParseSelfMaskReveal(r);
    if (!share.ok()) return absl::InvalidArgumentError(absl::StrCat(who, ": ", share.status().message()));
    self_shares[st.index.at(r.site_id())] = *share;
  }
  for (const v1::SecAggRevealedShare& r : reveal.mask_key_shares()) {
    if (st.dropped.count(r.site_id()) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(who, " revealed a mask-key share of '", r.site_id(), "', which is not a dropped site"));
    }
    if (!seen.insert(r.site_id()).second) {
      return absl::InvalidArgumentError(absl::StrCat(who, " revealed two shares of '", r.site_id(), "'"));
    }
    if (r.x() != x) {
      return absl::InvalidArgumentError(
          absl::StrCat(who, " revealed a share of '", r.site_id(), "' with x = ", r.x(), ", its index is ", x));
    }
    absl::StatusOr<std::array<secagg::Share, 2>> shares = secagg::ParseMaskKeyReveal(r);
    if (!shares.ok()) return absl::InvalidArgumentError(absl::StrCat(who, ": ", shares.status().message()));
    key_shares[st.index.at(r.site_id())] = *shares;
  }
  for (const auto& [owner, share] : self_shares) st.revealed.self_shares[owner].push_back(share);
  for (const auto& [owner, shares] : key_shares) st.revealed.key_shares[owner].push_back(shares);
  st.reveals[site_id] = reveal.SerializeAsString();
  st.MaybeFinishUnmask();
  return absl::OkStatus();
}

// ---- Declines and deadlines

void SecAggSession::Decline(const std::string& site_id, absl::Time now) {
  State& st = *state_;
  st.Advance(now);
  if (st.Terminal()) return;
  if (st.phase == Phase::kKeys) {
    if (st.expected.erase(site_id) == 0) return;
    st.keys.erase(site_id);
    const int configured = st.ConfiguredThreshold();
    const int need = st.MinimumFor(configured);
    if (static_cast<int>(st.expected.size()) < need) {
      st.Fail(
          absl::StrCat("site '", site_id, "' declined; ", st.expected.size(), " sites remain expected, need ", need));
      return;
    }
    if (st.keys.size() == st.expected.size()) st.EndKeys(now);
    return;
  }
  if (st.keys.count(site_id) == 0 || !st.declined.insert(site_id).second) return;
  switch (st.phase) {
    case Phase::kShares:
      if (st.shares.count(site_id) == 0) st.MaybeEndShares(now);
      break;
    case Phase::kMasked:
      st.MaybeEndMasked(now);
      break;
    case Phase::kUnmask:
      st.MaybeFinishUnmask();
      break;
    default:
      break;
  }
}

void SecAggSession::Tick(absl::Time now) { state_->Advance(now); }

absl::Time SecAggSession::NextDeadline() const {
  return state_->Terminal() ? absl::InfiniteFuture() : state_->deadline;
}

absl::StatusOr<SecAggSession::Result> SecAggSession::TakeResult() {
  State& st = *state_;
  if (st.phase != Phase::kDone) {
    return absl::FailedPreconditionError(
        absl::StrCat("secure aggregation (", st.Name(), "): no result in phase '", PhaseName(st.phase), "'",
                     st.phase == Phase::kFailed ? absl::StrCat(" (", st.failure, ")") : ""));
  }
  if (st.result_taken || !st.result.has_value()) {
    return absl::FailedPreconditionError(
        absl::StrCat("secure aggregation (", st.Name(), "): the result was already taken"));
  }
  st.result_taken = true;
  Result r = std::move(*st.result);
  st.result.reset();
  return r;
}

std::set<std::string> SecAggSession::keys_sites() const { return state_->U1(); }

std::set<std::string> SecAggSession::share_sites() const {
  const State& st = *state_;
  if (!st.u2.empty()) return st.u2;
  std::set<std::string> sent;
  for (const auto& [site, m] : st.shares) sent.insert(site);
  return sent;
}

std::set<std::string> SecAggSession::masked_sites() const { return state_->masked; }

std::set<std::string> SecAggSession::revealed_sites() const {
  std::set<std::string> done;
  for (const auto& [site, r] : state_->reveals) done.insert(site);
  return done;
}

int SecAggSession::resolved_threshold() const { return state_->threshold; }

std::string SecAggSession::Describe() const {
  const State& st = *state_;
  switch (st.phase) {
    case Phase::kKeys:
      return absl::StrCat("secure aggregation: keys ", st.keys.size(), "/", st.expected.size());
    case Phase::kShares:
      return absl::StrCat("secure aggregation: shares ", st.shares.size(), "/", st.Active(st.U1()));
    case Phase::kMasked:
      return absl::StrCat("secure aggregation: masked updates ", Count(st.masked, st.Active(st.u2)));
    case Phase::kUnmask:
      return absl::StrCat("secure aggregation: unmasking ", st.reveals.size(), "/", st.Active(st.masked),
                          " (threshold ", st.threshold, ")");
    case Phase::kDone:
      return absl::StrCat("secure aggregation: done (", st.masked.size(), " sites summed, ", st.dropped.size(),
                          " dropped)");
    case Phase::kFailed:
      return st.failure;
  }
  return "secure aggregation";
}

}  // namespace fedtune::coordinator
