#include "site_agent/agent/secure_aggregation.h"

#include <openssl/rand.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/io/file_util.h"
#include "common/logging.h"
#include "common/pki/certificate.h"
#include "common/pki/key_pair.h"
#include "common/secagg/fixed_point.h"
#include "common/secagg/prg.h"
#include "common/status_macros.h"

namespace fedtune::agent {
namespace {

constexpr char kRevealRecordName[] = "reveals.txt";
constexpr double kPi = 3.14159265358979323846;

std::string Describe(const secagg::SessionId& session) {
  return absl::StrCat("secure aggregation of run ", session.run_id, " round ", session.round, " attempt ",
                      session.attempt);
}

std::vector<uint8_t> Bytes(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

absl::Status Refuse(const secagg::SessionId& session, absl::string_view site, absl::string_view why) {
  return absl::PermissionDeniedError(
      absl::StrCat(Describe(session), ": roster entry of site \"", site, "\" refused: ", why));
}

// The coordinator answers PERMISSION_DENIED to a site outside a phase's set (e.g. its shares came too late). That is
// this session's end, not a revoked certificate: the agent's task loop stops on PERMISSION_DENIED, so it becomes
// FAILED_PRECONDITION here (a revoked site is still stopped by its next GetTask).
absl::Status FromCoordinator(absl::Status status) {
  if (status.code() != absl::StatusCode::kPermissionDenied) return status;
  return absl::FailedPreconditionError(
      absl::StrCat("the coordinator does not count this site in the session's phase: ", status.message()));
}
template <typename T>
absl::StatusOr<T> FromCoordinator(absl::StatusOr<T> result) {
  if (result.ok()) return result;
  return FromCoordinator(result.status());
}

}  // namespace

// ---- Roster verification

absl::StatusOr<pki::EvpPkeyPtr> VerifyPeerCertificate(absl::string_view certificate_pem, absl::string_view site_id,
                                                      X509* ca_certificate) {
  auto refuse = [&](absl::string_view why) {
    return absl::PermissionDeniedError(absl::StrCat("certificate of site \"", site_id, "\": ", why));
  };
  if (ca_certificate == nullptr) return absl::InvalidArgumentError("VerifyPeerCertificate: no CA certificate");
  absl::StatusOr<pki::X509Ptr> cert = pki::ParseCertificatePem(certificate_pem, "peer certificate");
  if (!cert.ok()) return refuse(cert.status().message());
  pki::X509StorePtr store(X509_STORE_new());
  pki::X509StoreCtxPtr context(X509_STORE_CTX_new());
  if (store == nullptr || context == nullptr || X509_STORE_add_cert(store.get(), ca_certificate) != 1 ||
      X509_STORE_CTX_init(context.get(), store.get(), cert->get(), nullptr) != 1 ||
      X509_STORE_CTX_set_purpose(context.get(), X509_PURPOSE_SSL_CLIENT) != 1) {
    return pki::OpenSslInternal("setting up the certificate check");
  }
  if (X509_verify_cert(context.get()) != 1) {
    const int error = X509_STORE_CTX_get_error(context.get());
    pki::DrainOpenSslErrors();
    return refuse(
        absl::StrCat("does not verify against the consortium CA (", X509_verify_cert_error_string(error), ")"));
  }
  absl::StatusOr<pki::CertificateInfo> info = pki::DescribeCertificate(cert->get());
  if (!info.ok()) return refuse(info.status().message());
  if (info->is_ca) return refuse("is a CA certificate");
  if (info->role != pki::Role::kSite) return refuse(absl::StrCat("is not a site certificate (", info->subject, ")"));
  if (info->common_name != site_id) {
    return refuse(absl::StrCat("its common name is \"", info->common_name, "\", not the roster's site id"));
  }
  pki::EvpPkeyPtr key(X509_get_pubkey(cert->get()));
  if (key == nullptr) return refuse(absl::StrCat("no usable public key: ", pki::DrainOpenSslErrors()));
  return key;
}

absl::StatusOr<VerifiedRoster> VerifyRoster(const v1::SecAggRoster& roster, const secagg::SessionId& session,
                                            const OwnKeys& own, X509* ca_certificate) {
  const std::string what = Describe(session);
  VerifiedRoster out;
  out.n = roster.peers_size();
  if (out.n < 2 || out.n > secagg::kMaxSecAggSites) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": a roster of ", out.n, " sites (must be 2..", secagg::kMaxSecAggSites, ")"));
  }
  out.threshold = roster.threshold();
  if (out.threshold < 2 || out.threshold > out.n) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": roster field 'threshold' is ", out.threshold, ", not in [2, ", out.n, "]"));
  }
  out.range = roster.range();
  if (!std::isfinite(out.range) || !(out.range > 0) || out.range > secagg::kMaxClip) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": roster field 'range' is ", out.range));
  }
  out.vector_length = roster.vector_length();
  if (out.vector_length < 1 || out.vector_length > secagg::kMaxPrgLength) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": roster field 'vector_length' is ", out.vector_length));
  }
  out.max_num_samples = roster.max_num_samples();
  // Structure first (indices, names), then the certificates and signatures.
  for (const v1::SecAggPeer& peer : roster.peers()) {
    const absl::Status name = pki::ValidateIdentityName(peer.site_id(), "roster site id");
    if (!name.ok()) return absl::InvalidArgumentError(absl::StrCat(what, ": ", name.message()));
    if (peer.index() < 1 || peer.index() > out.n) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": site \"", peer.site_id(), "\" has index ", peer.index(), ", not in [1, ", out.n, "]"));
    }
    if (!out.by_site.emplace(peer.site_id(), peer).second) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": site \"", peer.site_id(), "\" is twice in the roster"));
    }
    if (!out.site_of.emplace(peer.index(), peer.site_id()).second) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": index ", peer.index(), " is given to both \"",
                                                     out.site_of[peer.index()], "\" and \"", peer.site_id(), "\""));
    }
    if (peer.num_samples() < 0 || peer.num_samples() > out.max_num_samples) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": site \"", peer.site_id(), "\" has num_samples ",
                                                     peer.num_samples(), " (max_num_samples ", out.max_num_samples,
                                                     ")"));
    }
  }
  auto self = out.by_site.find(own.site_id);
  if (self == out.by_site.end()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": this site (\"", own.site_id, "\") is not in the roster"));
  }
  if (Bytes(self->second.cipher_public_key()) != own.cipher_public_key ||
      Bytes(self->second.mask_public_key()) != own.mask_public_key) {
    return Refuse(session, own.site_id, "this site's own entry carries other keys than it advertised");
  }
  if (self->second.num_samples() != own.num_samples) {
    return Refuse(session, own.site_id,
                  absl::StrCat("this site's own entry says num_samples ", self->second.num_samples(),
                               ", it advertised ", own.num_samples));
  }
  if (out.max_num_samples < own.num_samples || out.max_num_samples < 1) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": roster field 'max_num_samples' is ", out.max_num_samples,
                                                   ", below this site's ", own.num_samples));
  }
  out.own_index = self->second.index();
  for (const v1::SecAggPeer& peer : roster.peers()) {
    absl::StatusOr<pki::EvpPkeyPtr> key = VerifyPeerCertificate(peer.certificate_pem(), peer.site_id(), ca_certificate);
    if (!key.ok()) return Refuse(session, peer.site_id(), key.status().message());
    const absl::Status keys = secagg::VerifyPeerKeys(key->get(), session, peer);
    if (!keys.ok()) {
      return Refuse(session, peer.site_id(), absl::StrCat("its keys' signature does not verify: ", keys.message()));
    }
  }
  return out;
}

// ---- The reveal decision

const char* RevealKindName(RevealKind kind) { return kind == RevealKind::kSelfMask ? "self-mask" : "mask-key"; }

absl::StatusOr<RevealPlan> DecideReveal(const v1::SecAggUnmaskRequest& request, absl::string_view own_site_id,
                                        const std::set<std::string>& u2, const RevealRecord& previous) {
  const std::set<std::string> survivors(request.survivors().begin(), request.survivors().end());
  const std::set<std::string> dropped(request.dropped().begin(), request.dropped().end());
  auto violation = [](absl::string_view site, absl::string_view why) {
    return absl::FailedPreconditionError(
        absl::StrCat("protocol violation: the unmask request ", why, " (site \"", site,
                     "\"); this site reveals nothing for it (never both shares of one peer)"));
  };
  const std::string own(own_site_id);
  if (dropped.count(own) > 0) return violation(own, "lists this site itself as dropped");
  RevealPlan plan;
  for (const std::string& site : survivors) {
    if (dropped.count(site) > 0) return violation(site, "lists a site as both a survivor and dropped");
    if (u2.count(site) == 0) return violation(site, "lists a survivor that did not share keys with this site (U2)");
    auto before = previous.find(site);
    if (before != previous.end() && before->second != RevealKind::kSelfMask) {
      return violation(site, "asks for the self-mask share of a site whose mask-key shares this site revealed");
    }
    plan.self_mask.insert(site);
  }
  for (const std::string& site : dropped) {
    if (u2.count(site) == 0) return violation(site, "lists a dropped site that did not share keys with this site (U2)");
    auto before = previous.find(site);
    if (before != previous.end() && before->second != RevealKind::kMaskKey) {
      return violation(site, "asks for the mask-key shares of a site whose self-mask share this site revealed");
    }
    plan.mask_key.insert(site);
  }
  return plan;
}

absl::StatusOr<RevealRecord> ReadRevealRecord(const std::string& path) {
  RevealRecord record;
  if (!std::filesystem::exists(path)) return record;
  ASSIGN_OR_RETURN(const std::string text, io::ReadFile(path));
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    ++line_number;
    const std::vector<std::string> fields = absl::StrSplit(line, ' ');
    const bool self_mask = fields.size() == 2 && fields[1] == RevealKindName(RevealKind::kSelfMask);
    const bool mask_key = fields.size() == 2 && fields[1] == RevealKindName(RevealKind::kMaskKey);
    if (!self_mask && !mask_key) {
      return absl::DataLossError(
          absl::StrCat(path, " line ", line_number, ": expected \"<site> self-mask\" or ", "\"<site> mask-key\""));
    }
    record[fields[0]] = self_mask ? RevealKind::kSelfMask : RevealKind::kMaskKey;
  }
  return record;
}

absl::Status WriteRevealRecord(const std::string& path, const RevealRecord& record) {
  std::string text;
  for (const auto& [site, kind] : record) absl::StrAppend(&text, site, " ", RevealKindName(kind), "\n");
  return pki::WritePrivateFileAtomically(path, text, /*overwrite=*/true);
}

// ---- Input and DP-FedAvg

absl::StatusOr<double> ClipL2Norm(std::vector<float>& values, double clip_norm) {
  if (!std::isfinite(clip_norm) || !(clip_norm > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("dp_clip_norm ", clip_norm, " (must be finite and > 0)"));
  }
  double sum = 0;
  for (float v : values) sum += static_cast<double>(v) * static_cast<double>(v);
  const double norm = std::sqrt(sum);
  if (norm > clip_norm) {
    const double factor = clip_norm / norm;
    for (float& v : values) v = static_cast<float>(static_cast<double>(v) * factor);
  }
  return norm;
}

absl::StatusOr<double> ClipDeltaL2Norm(fl::TensorMap& delta, double clip_norm) {
  if (!std::isfinite(clip_norm) || !(clip_norm > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("dp_clip_norm ", clip_norm, " (must be finite and > 0)"));
  }
  const fl::NormOptions options;  // The norm the coordinator's clipping uses (aggregate.h).
  const double norm = fl::L2Norm(delta, options);
  if (!std::isfinite(norm)) return absl::InvalidArgumentError("the delta has a non-finite value");
  if (norm > clip_norm) {
    const double factor = clip_norm / norm;
    for (auto& [name, tensor] : delta) {
      if (fl::CountsInNorm(name, tensor, options)) tensor.mul_(factor);
    }
  }
  return norm;
}

double DpFedAvgNoiseStddev(double noise_multiplier, double clip_norm, int threshold) {
  return noise_multiplier * clip_norm / std::sqrt(static_cast<double>(std::max(1, threshold)));
}

absl::Status AddGaussianNoise(std::vector<float>& values, double stddev, const secagg::Seed& seed) {
  if (!std::isfinite(stddev) || stddev < 0) {
    return absl::InvalidArgumentError(absl::StrCat("noise standard deviation ", stddev, " (must be finite, >= 0)"));
  }
  if (stddev == 0) return absl::OkStatus();
  // Chunks of 2^20 values, each from its own key (the seed with the chunk number folded into its last 4 bytes), so
  // that no expansion exceeds secagg::kMaxPrgLength and memory stays bounded.
  constexpr size_t kChunk = size_t{1} << 20;
  const auto uniform = [](uint32_t hi, uint32_t lo) {  // (0, 1], 53 bits
    const uint64_t bits = ((static_cast<uint64_t>(hi) << 32) | lo) >> 11;
    return (static_cast<double>(bits) + 1.0) / 9007199254740992.0;
  };
  for (size_t start = 0, chunk = 0; start < values.size(); start += kChunk, ++chunk) {
    const size_t count = std::min(kChunk, values.size() - start);
    secagg::Seed key = seed;
    for (int b = 0; b < 4; ++b) key[12 + b] ^= static_cast<uint8_t>((chunk >> (8 * b)) & 0xff);
    const size_t pairs = (count + 1) / 2;
    ASSIGN_OR_RETURN(const std::vector<uint32_t> words, secagg::ExpandSeed(key, static_cast<int64_t>(4 * pairs)));
    for (size_t p = 0; p < pairs; ++p) {
      const double u1 = uniform(words[4 * p], words[4 * p + 1]);
      const double u2 = uniform(words[4 * p + 2], words[4 * p + 3]);
      const double r = std::sqrt(-2.0 * std::log(u1));
      const size_t i = start + 2 * p;
      values[i] = static_cast<float>(values[i] + stddev * r * std::cos(2 * kPi * u2));
      if (2 * p + 1 < count) values[i + 1] = static_cast<float>(values[i + 1] + stddev * r * std::sin(2 * kPi * u2));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<secagg::Seed> RandomSeed() {
  secagg::Seed seed;
  if (RAND_bytes(seed.data(), static_cast<int>(seed.size())) != 1) {
    return pki::OpenSslInternal("RAND_bytes for the noise seed");
  }
  return seed;
}

absl::StatusOr<PreparedInput> PrepareInput(const fl::TensorMap& delta, const secagg::Layout& layout,
                                           const InputOptions& options) {
  if (!std::isfinite(options.scale) || !(options.scale > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("pre-scaling factor ", options.scale, " (must be finite, > 0)"));
  }
  PreparedInput out;
  ASSIGN_OR_RETURN(out.values, secagg::Flatten(delta, layout, 1.0));
  double sum = 0;
  for (float v : out.values) sum += static_cast<double>(v) * static_cast<double>(v);
  out.l2_norm = std::sqrt(sum);
  if (options.dp_clip_norm > 0) {
    ASSIGN_OR_RETURN(const double norm, ClipL2Norm(out.values, options.dp_clip_norm));
    out.norm_clipped = norm > options.dp_clip_norm;
  }
  if (options.noise_stddev > 0) RETURN_IF_ERROR(AddGaussianNoise(out.values, options.noise_stddev, options.noise_seed));
  if (options.scale != 1) {
    for (float& v : out.values) v = static_cast<float>(static_cast<double>(v) * options.scale);
  }
  return out;
}

// ---- The session

SiteSecAggSession::SiteSecAggSession(const SecAggSite& site, const secagg::SessionId& session,
                                     const SecAggOptions& options, secagg::KeyPair cipher_key, secagg::KeyPair mask_key)
    : site_(site),
      session_(session),
      options_(options),
      cipher_key_(std::move(cipher_key)),
      mask_key_(std::move(mask_key)) {}

SiteSecAggSession::~SiteSecAggSession() = default;

template <typename T>
absl::StatusOr<T> SiteSecAggSession::PollUntilReady(const char* what, absl::Duration limit,
                                                    const std::function<absl::StatusOr<T>(int)>& poll,
                                                    const std::function<bool(const T&)>& ready) {
  const absl::Time until = absl::Now() + limit;
  while (true) {
    if (site_.cancelled && site_.cancelled()) {
      return absl::CancelledError(absl::StrCat(Describe(session_), ": cancelled while waiting for the ", what));
    }
    const absl::Duration left = until - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(
          absl::StrCat(Describe(session_), ": the ", what, " did not come within ", absl::FormatDuration(limit)));
    }
    const int wait = static_cast<int>(std::clamp<int64_t>(absl::ToInt64Seconds(left) + 1, 0, options_.wait_seconds));
    const absl::Time asked = absl::Now();
    ASSIGN_OR_RETURN(T answer, poll(wait));
    if (ready(answer)) return answer;
    // A coordinator that answers "not ready" at once must not make this a busy loop.
    if (absl::Now() - asked < absl::Milliseconds(50)) absl::SleepFor(absl::Milliseconds(100));
  }
}

absl::StatusOr<std::unique_ptr<SiteSecAggSession>> SiteSecAggSession::Begin(const SecAggSite& site,
                                                                            const v1::Task& task,
                                                                            const fl::TensorMap& global_shared,
                                                                            int64_t num_samples,
                                                                            const SecAggOptions& options) {
  if (site.client == nullptr) return absl::InvalidArgumentError("SiteSecAggSession::Begin: no client");
  const secagg::SessionId session{task.run_id(), task.round(), task.attempt()};
  const std::string what = Describe(session);
  const v1::TrainingPlan& plan = task.plan();
  const std::string dp = plan.dp().empty() ? "none" : plan.dp();
  if (dp != "none" && dp != "dp-sgd" && dp != "dp-fedavg") {
    return absl::InvalidArgumentError(absl::StrCat(what, ": plan field 'dp' is \"", plan.dp(), "\""));
  }
  if (dp == "dp-fedavg" && (!std::isfinite(plan.dp_clip_norm()) || !(plan.dp_clip_norm() > 0) ||
                            !std::isfinite(plan.dp_noise_multiplier()) || plan.dp_noise_multiplier() < 0)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": dp-fedavg with dp_clip_norm ", plan.dp_clip_norm(),
                                                   " and dp_noise_multiplier ", plan.dp_noise_multiplier()));
  }
  if (num_samples < 1) {
    return absl::FailedPreconditionError(absl::StrCat(what, ": this site has no training images"));
  }
  ASSIGN_OR_RETURN(pki::KeyPair site_key, pki::KeyPair::ReadPrivateKeyFile(site.site_key_path));
  ASSIGN_OR_RETURN(pki::X509Ptr ca, pki::ReadCertificateFile(site.ca_cert_path));
  ASSIGN_OR_RETURN(secagg::Layout layout, secagg::MakeLayout(global_shared));
  ASSIGN_OR_RETURN(secagg::KeyPair cipher_key, secagg::KeyPair::Generate());
  ASSIGN_OR_RETURN(secagg::KeyPair mask_key, secagg::KeyPair::Generate());
  std::unique_ptr<SiteSecAggSession> self(
      new SiteSecAggSession(site, session, options, std::move(cipher_key), std::move(mask_key)));
  self->dp_ = dp;
  self->dp_noise_multiplier_ = plan.dp_noise_multiplier();
  self->dp_clip_norm_ = plan.dp_clip_norm();
  if (task.deadline_ms() > 0) self->task_deadline_ = absl::FromUnixMillis(task.deadline_ms());
  self->num_samples_ = num_samples;
  self->layout_ = std::move(layout);

  // Phase 1: keys.
  if (site.set_state) site.set_state("secure aggregation: keys", 0.02);
  v1::SecAggKeys keys;
  keys.set_run_id(session.run_id);
  keys.set_round(session.round);
  keys.set_attempt(session.attempt);
  const std::vector<uint8_t>& c = self->cipher_key_.public_key();
  const std::vector<uint8_t>& s = self->mask_key_.public_key();
  keys.set_cipher_public_key(std::string(c.begin(), c.end()));
  keys.set_mask_public_key(std::string(s.begin(), s.end()));
  keys.set_num_samples(num_samples);
  RETURN_IF_ERROR(secagg::SignKeys(site_key.get(), session, site.site_id, &keys));
  RETURN_IF_ERROR(FromCoordinator(site.client->SecAggAdvertiseKeys(keys)));
  LOG(INFO) << what << ": keys advertised (num_samples " << num_samples << "); waiting for the roster";
  v1::SecAggPhaseRequest request;
  request.set_run_id(session.run_id);
  request.set_round(session.round);
  request.set_attempt(session.attempt);
  ASSIGN_OR_RETURN(const v1::SecAggRoster roster, self->PollUntilReady<v1::SecAggRoster>(
                                                      "roster", options.phase_wait,
                                                      [&](int wait) {
                                                        v1::SecAggPhaseRequest poll = request;
                                                        poll.set_wait_seconds(wait);
                                                        return FromCoordinator(site.client->SecAggGetRoster(poll));
                                                      },
                                                      [](const v1::SecAggRoster& r) { return r.ready(); }));
  const OwnKeys own{site.site_id, c, s, num_samples};
  ASSIGN_OR_RETURN(self->roster_, VerifyRoster(roster, session, own, ca.get()));
  const VerifiedRoster& verified = self->roster_;
  if (verified.vector_length != self->layout_.length) {
    return absl::FailedPreconditionError(absl::StrCat(what, ": the roster's vector_length ", verified.vector_length,
                                                      " is not this round's model layout (", self->layout_.length,
                                                      " values): another global model?"));
  }
  LOG(INFO) << what << ": roster of " << verified.n << " sites verified against the consortium CA (threshold "
            << verified.threshold << ", range " << verified.range << "; this site is index " << verified.own_index
            << "; no revocation check at the site)";
  if (plan.secagg_range() > 0 && plan.secagg_range() != verified.range) {
    LOG(WARNING) << what << ": the roster's range " << verified.range << " is not the plan's secagg_range "
                 << plan.secagg_range() << "; the roster's is used (it is the one the sum is decoded with)";
  }
  if (2 * verified.threshold <= verified.n) {
    LOG(WARNING) << what << ": threshold " << verified.threshold << " of " << verified.n
                 << " sites is not a majority: a coordinator that lies about who dropped could collect both shares of "
                 << "one site from different peers";
  }

  // Phase 2: shares.
  if (site.set_state) site.set_state("secure aggregation: shares", 0.04);
  ASSIGN_OR_RETURN(self->secrets_,
                   secagg::MakeSiteSecrets(verified.own_index, self->mask_key_, verified.threshold, verified.n));
  v1::SecAggShareUpload upload;
  upload.set_run_id(session.run_id);
  upload.set_round(session.round);
  upload.set_attempt(session.attempt);
  for (const auto& [peer_site, peer] : verified.by_site) {
    if (peer_site == site.site_id) continue;
    auto payload = self->secrets_.payloads.find(peer.index());
    if (payload == self->secrets_.payloads.end()) {
      return absl::InternalError(absl::StrCat(what, ": no share payload for index ", peer.index()));
    }
    ASSIGN_OR_RETURN(std::string ciphertext,
                     secagg::EncryptShares(self->cipher_key_, Bytes(peer.cipher_public_key()), session,
                                           verified.own_index, peer.index(), payload->second));
    v1::SecAggEncryptedShares* shares = upload.add_shares();
    shares->set_site_id(peer_site);
    shares->set_ciphertext(std::move(ciphertext));
  }
  RETURN_IF_ERROR(FromCoordinator(site.client->SecAggShareKeys(upload)));
  LOG(INFO) << what << ": encrypted shares sent to " << upload.shares_size() << " peers";
  return self;
}

absl::StatusOr<MaskedUpdate> SiteSecAggSession::MaskUpdate(const fl::TensorMap& delta) {
  const std::string what = Describe(session_);
  if (site_.set_state) site_.set_state("secure aggregation: shares", 0.8);
  v1::SecAggPhaseRequest request;
  request.set_run_id(session_.run_id);
  request.set_round(session_.round);
  request.set_attempt(session_.attempt);
  ASSIGN_OR_RETURN(const v1::SecAggInbox inbox, PollUntilReady<v1::SecAggInbox>(
                                                    "shares of the other sites", options_.phase_wait,
                                                    [&](int wait) {
                                                      v1::SecAggPhaseRequest poll = request;
                                                      poll.set_wait_seconds(wait);
                                                      return FromCoordinator(site_.client->SecAggGetInbox(poll));
                                                    },
                                                    [](const v1::SecAggInbox& i) { return i.ready(); }));
  // U2: a subset of U1 holding this site; exactly one ciphertext from each other site of it.
  std::set<std::string> u2;
  for (const std::string& site : inbox.participants()) {
    if (roster_.by_site.count(site) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": inbox participant \"", site, "\" is not in the roster"));
    }
    if (!u2.insert(site).second) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": inbox participant \"", site, "\" is listed twice"));
    }
  }
  if (u2.count(site_.site_id) == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": this site is not among the inbox's participants (its shares did not arrive in time)"));
  }
  std::map<std::string, secagg::SharePayload> received;
  for (const v1::SecAggEncryptedShares& shares : inbox.shares()) {
    const std::string& from = shares.site_id();
    if (from == site_.site_id || u2.count(from) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": the inbox has shares from \"", from, "\", which is not another participant"));
    }
    if (received.count(from) > 0) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": the inbox has two ciphertexts from \"", from, "\""));
    }
    const int from_index = roster_.by_site.at(from).index();
    absl::StatusOr<secagg::SharePayload> payload =
        secagg::DecryptShares(cipher_key_, Bytes(roster_.by_site.at(from).cipher_public_key()), session_, from_index,
                              roster_.own_index, shares.ciphertext());
    if (!payload.ok()) {
      return absl::Status(payload.status().code(), absl::StrCat(what, ": the shares from site \"", from,
                                                                "\" do not decrypt: ", payload.status().message()));
    }
    if (payload->x != roster_.own_index || payload->from != from_index) {
      return absl::PermissionDeniedError(absl::StrCat(what, ": the shares from site \"", from, "\" are for index ",
                                                      payload->x, " from index ", payload->from, ", not ",
                                                      roster_.own_index, " from ", from_index));
    }
    received.emplace(from, *std::move(payload));
  }
  for (const std::string& site : u2) {
    if (site != site_.site_id && received.count(site) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": the inbox lacks the shares of participant \"", site, "\""));
    }
  }
  u2_ = std::move(u2);
  received_ = std::move(received);

  // The input: DP-FedAvg clipping and noise share, pre-scaling, fixed point, masks.
  if (site_.set_state) site_.set_state("encoding", 0.82);
  InputOptions input;
  const bool dp_fedavg = dp_ == "dp-fedavg";
  if (dp_fedavg) {
    input.dp_clip_norm = dp_clip_norm_;
    input.noise_stddev = DpFedAvgNoiseStddev(dp_noise_multiplier_, dp_clip_norm_, roster_.threshold);
    ASSIGN_OR_RETURN(input.noise_seed, RandomSeed());
    input.scale = 1;
  } else {
    input.scale = static_cast<double>(num_samples_) / static_cast<double>(roster_.max_num_samples);
  }
  ASSIGN_OR_RETURN(PreparedInput prepared, PrepareInput(delta, layout_, input));
  ASSIGN_OR_RETURN(const secagg::FixedPointCodec codec, secagg::FixedPointCodec::Create(roster_.range, roster_.n));
  MaskedUpdate out;
  out.l2_norm = prepared.l2_norm;
  out.norm_clipped = prepared.norm_clipped;
  for (float v : prepared.values) {
    if (std::fabs(static_cast<double>(v)) > roster_.range) ++out.clipped_values;
  }
  ASSIGN_OR_RETURN(const std::vector<uint32_t> encoded, codec.Encode(prepared.values));
  std::map<int, std::vector<uint8_t>> peer_mask_keys;
  for (const std::string& site : u2_) {
    const v1::SecAggPeer& peer = roster_.by_site.at(site);
    peer_mask_keys[peer.index()] = Bytes(peer.mask_public_key());
  }
  ASSIGN_OR_RETURN(
      const std::vector<uint32_t> masked,
      secagg::MaskForPeers(roster_.own_index, encoded, secrets_.self_seed, mask_key_, peer_mask_keys, session_));
  out.bundle = secagg::MaskedBundle(masked);
  LOG(INFO) << what << ": masked update of " << masked.size() << " values for " << u2_.size()
            << " participants; delta L2 norm " << prepared.l2_norm
            << (dp_fedavg ? absl::StrCat(" (dp-fedavg: clipped to ", dp_clip_norm_,
                                         prepared.norm_clipped ? "" : ", not needed", "; noise share sd ",
                                         input.noise_stddev, ")")
                          : absl::StrCat(" (pre-scaled by ", input.scale, ")"))
            << "; " << out.clipped_values << " values clipped to +-" << roster_.range;
  if (out.clipped_values > 0) {
    LOG(WARNING) << what << ": " << out.clipped_values << " of " << masked.size() << " values were beyond +-"
                 << roster_.range << " and were clipped (a large count means the run's secagg_range is too small)";
  }
  return out;
}

absl::Status SiteSecAggSession::Unmask() {
  const std::string what = Describe(session_);
  if (u2_.empty()) return absl::FailedPreconditionError(absl::StrCat(what, ": Unmask before MaskUpdate"));
  if (site_.set_state) site_.set_state("secure aggregation: unmasking", 0.87);
  v1::SecAggPhaseRequest request;
  request.set_run_id(session_.run_id);
  request.set_round(session_.round);
  request.set_attempt(session_.attempt);
  const absl::Duration to_deadline = std::max(absl::ZeroDuration(), task_deadline_ - absl::Now());
  const absl::Duration limit =
      to_deadline == absl::InfiniteDuration() ? options_.phase_wait * 2 : to_deadline + options_.phase_wait;
  ASSIGN_OR_RETURN(const v1::SecAggUnmaskRequest unmask,
                   PollUntilReady<v1::SecAggUnmaskRequest>(
                       "unmask request", limit,
                       [&](int wait) {
                         v1::SecAggPhaseRequest poll = request;
                         poll.set_wait_seconds(wait);
                         return FromCoordinator(site_.client->SecAggGetUnmaskRequest(poll));
                       },
                       [](const v1::SecAggUnmaskRequest& u) { return u.ready(); }));
  const std::string record_path = (std::filesystem::path(site_.round_dir) / kRevealRecordName).string();
  ASSIGN_OR_RETURN(RevealRecord record, ReadRevealRecord(record_path));
  absl::StatusOr<RevealPlan> plan = DecideReveal(unmask, site_.site_id, u2_, record);
  if (!plan.ok()) {
    LOG(ERROR) << what << ": " << plan.status().message();
    return absl::FailedPreconditionError(absl::StrCat(what, ": ", plan.status().message()));
  }
  v1::SecAggReveal reveal;
  reveal.set_run_id(session_.run_id);
  reveal.set_round(session_.round);
  reveal.set_attempt(session_.attempt);
  for (const std::string& site : plan->self_mask) {
    // Its own share too: with exactly t answers the coordinator needs every survivor's share of every self seed
    // (two sites with t = 2 could not be unmasked otherwise); a survivor's seed is meant to be revealed.
    const secagg::SharePayload& payload =
        site == site_.site_id ? secrets_.payloads.at(roster_.own_index) : received_.at(site);
    *reveal.add_self_mask_shares() = secagg::SelfMaskReveal(site, payload.self_mask);
    record[site] = RevealKind::kSelfMask;
  }
  for (const std::string& site : plan->mask_key) {
    *reveal.add_mask_key_shares() = secagg::MaskKeyReveal(site, received_.at(site).mask_key);
    record[site] = RevealKind::kMaskKey;
  }
  // Recorded before it leaves the site: a later request in this session cannot make it reveal the other kind.
  RETURN_IF_ERROR(WriteRevealRecord(record_path, record));
  RETURN_IF_ERROR(FromCoordinator(site_.client->SecAggRevealShares(reveal)));
  LOG(INFO) << what << ": revealed self-mask shares of " << plan->self_mask.size() << " survivors and mask-key "
            << "shares of " << plan->mask_key.size() << " dropped sites"
            << (plan->mask_key.empty() ? "" : absl::StrCat(" (", absl::StrJoin(plan->mask_key, ", "), ")"));
  return absl::OkStatus();
}

}  // namespace fedtune::agent
