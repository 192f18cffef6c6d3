// The coordinator's side of secure aggregation for ONE round attempt (federation.proto, "Secure aggregation";
// the cryptography is common/secagg/session.h): the phases, who is in each set (U1 keys, U2 shares, U3 masked
// inputs), the relayed keys and encrypted shares, the running sum of the masked vectors, the revealed shares, and
// the recovered sum. No gRPC and no database: RoundManager owns one per open attempt of a run with
// secure_aggregation, calls it under its mutex, and drives time with Tick(now).
//
// What the coordinator holds is what it must not be able to read: public keys, ciphertexts it has no key for, masked
// vectors (each one indistinguishable from uniform noise without the masks), and after phase 4 the sum. It never
// holds an individual site's unmasked vector, and it never asks a site for both shares of one peer (the sites refuse
// it anyway: site_agent/agent/secure_aggregation.h).
//
// Phases and transitions (each with its own deadline, now + phase_seconds when it begins; the masked-input phase
// ends at the round's deadline instead):
//   kKeys    -> kShares  when every expected site advertised, or at its deadline with >= max(t, min_participants)
//                        (U1; t resolved on U1)
//   kShares  -> kMasked  when every site of U1 sent its shares, or at its deadline with >= max(t, min_participants)
//                        (U2)
//   kMasked  -> kUnmask  when every site of U2 uploaded its masked vector, or at the round deadline with
//                        >= max(threshold, min_participants) (U3)
//   kUnmask  -> kDone    when every site of U3 revealed, or at its deadline with >= threshold reveals, and the sum is
//                        recovered (TakeResult())
//   any      -> kFailed  when a set falls below its minimum at a deadline (or can no longer reach it after
//                        declines), or recovery fails (failure() says why).
// A site declining the round (RoundManager's DeclineTask; Decline()) is removed from the expected sites while the
// session is in kKeys; later it counts as dropped: the current phase stops waiting for it.
//
// Roster: the sites of U1 get indices 1..n in sorted site-id order. The threshold is resolved when kKeys ends:
// configured_threshold (or threshold) when > 0, else floor(|U1|/2)+1. Every call that takes `now` first handles the
// deadlines passed by then (as Tick(now) would).
//
// Reveals: a site of U3 sends, with x = its own index, a self-mask share (session.h SelfMaskReveal) for survivors of
// U3 (its own one optional but recommended) and a mask-key share (MaskKeyReveal) for every dropped site; a subset
// is accepted (a peer whose shares it could not decrypt), a share of the wrong kind, for a site outside the asked
// sets, repeated, or with another x is InvalidArgument naming the site.
//
// Bounds: 2..kMaxSecAggSites expected sites; threshold in [2, number of expected sites]; vector_length in
// [1, kMaxPrgLength]; per-call checks name the field and site (InvalidArgument), calls out of phase are
// FailedPrecondition naming the phase, sites outside the phase's set PermissionDenied.
//
// Thread safety: thread-compatible (the caller serializes).
#ifndef FEDTUNE_COORDINATOR_SECURE_AGGREGATION_H_
#define FEDTUNE_COORDINATOR_SECURE_AGGREGATION_H_

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/secagg/session.h"
#include "fedtune/v1/federation.pb.h"

namespace fedtune::coordinator {

struct SecAggSessionOptions {
  secagg::SessionId session;
  std::set<std::string> expected_sites;  // The attempt's selected, approved, not declined sites.
  // t as configured: configured_threshold when > 0, else threshold when > 0, else floor(|U1|/2)+1 (resolved when
  // kKeys ends). A configured t outside [2, |expected_sites|]: InvalidArgument. Set either one (both mean
  // RunConfig.secagg_threshold; configured_threshold wins).
  int threshold = 0;
  int configured_threshold = 0;
  int min_participants = 2;   // The run's min_sites: U1, U2 and U3 need >= max(t, min_participants, 2) sites.
  double range = 1.0;         // RunConfig.secagg_range.
  int64_t vector_length = 0;  // secagg::MakeLayout(global).length.
  absl::Duration phase_timeout = absl::Seconds(120);
  absl::Time round_deadline;  // The masked-input phase ends here.
};

class SecAggSession {
 public:
  enum class Phase { kKeys, kShares, kMasked, kUnmask, kDone, kFailed };

  // A session in kKeys (deadline now + phase_timeout). InvalidArgument naming the option: expected sites outside
  // [2, kMaxSecAggSites] or an empty id, a configured threshold outside [2, |expected|], min_participants above
  // |expected|, vector_length outside [1, kMaxPrgLength], a range FixedPointCodec refuses, phase_timeout <= 0, an
  // empty run id.
  static absl::StatusOr<std::unique_ptr<SecAggSession>> Create(const SecAggSessionOptions& options, absl::Time now);

  Phase phase() const;
  static const char* PhaseName(Phase phase);
  // Why the session failed (kFailed), for the round's message.
  const std::string& failure() const;

  // Phase 1. `certificate_pem`: the certificate the site authenticated with on this call (at most 16 KiB; its CN must
  // be site_id, else PermissionDenied; unparsable InvalidArgument). The signature is checked against its key
  // (PermissionDenied); keys run/round/attempt other than the session's: FailedPrecondition; num_samples outside
  // [1, 2^40]: InvalidArgument. Idempotent for the same keys (also after the phase ended, for a site of U1); other
  // keys again: AlreadyExists.
  absl::Status AdvertiseKeys(const std::string& site_id, const std::string& certificate_pem, const v1::SecAggKeys& keys,
                             absl::Time now);
  // The roster (ready once phase 1 ended, for sites of U1; ready = false before).
  absl::StatusOr<v1::SecAggRoster> Roster(const std::string& site_id) const;
  // Phase 2: one ciphertext for each other site of U1 (each exactly once; at most kMaxEncryptedSharesBytes;
  // InvalidArgument naming the receiver). Idempotent for the same upload; another one again: AlreadyExists.
  absl::Status ShareKeys(const std::string& site_id, const v1::SecAggShareUpload& upload, absl::Time now);
  // The shares addressed to the site from the other sites of U2 (ready once phase 2 ended).
  absl::StatusOr<v1::SecAggInbox> Inbox(const std::string& site_id) const;
  // Phase 3: the site's masked vector (secagg::ReadMaskedBundle'd by the caller) and its num_samples (must be the
  // advertised one, else InvalidArgument; a length other than vector_length InvalidArgument); added to the running
  // sum mod 2^32 at once (the vector is not kept). A second one from the same site: AlreadyExists.
  absl::Status AddMaskedInput(const std::string& site_id, const std::vector<uint32_t>& masked, int64_t num_samples,
                              absl::Time now);
  bool HasMaskedInput(const std::string& site_id) const;
  // Phase 4's request to the site (ready once phase 3 ended, for sites of U3).
  absl::StatusOr<v1::SecAggUnmaskRequest> UnmaskRequest(const std::string& site_id) const;
  // Phase 4: the site's revealed shares; every share must be for the set it was asked (survivors: self mask,
  // dropped: mask key), with the site's own index as x. When enough have come, the sum is recovered.
  absl::Status Reveal(const std::string& site_id, const v1::SecAggReveal& reveal, absl::Time now);

  // A site declines the round (RoundManager's DeclineTask): in kKeys it leaves the expected sites (and its keys, if
  // it advertised, are forgotten), and the phase ends at once if every remaining site advertised; later it counts as
  // dropped (the phase stops waiting for it). Unknown sites and terminal phases: no effect. If the expected sites can
  // no longer reach the minimum, the session fails.
  void Decline(const std::string& site_id, absl::Time now);

  // Deadlines.
  void Tick(absl::Time now);
  // The time of the next deadline (for the caller's timer), or InfiniteFuture when done/failed.
  absl::Time NextDeadline() const;

  // kDone: the decoded sum of U3's pre-scaled inputs (secagg::FixedPointCodec(range, |U1|).DecodeSum), the sum of their
  // num_samples, and U3. FailedPrecondition before, and after the result was taken once.
  // Each site of U3 pre-scaled its delta by num_samples / max_num_samples (the roster's), so the FedAvg mean delta
  // is sum * max_num_samples / total_samples, entry by entry in the secagg::MakeLayout order (secagg::Unflatten).
  struct Result {
    std::vector<double> sum;
    int64_t total_samples = 0;
    int64_t max_num_samples = 0;  // The roster's pre-scaling divisor.
    std::set<std::string> survivors;
    double error_bound = 0;  // FixedPointCodec::SumErrorBound of the pre-scaled sum, per entry.
  };
  absl::StatusOr<Result> TakeResult();

  // The sets, for status and tests.
  std::set<std::string> keys_sites() const;      // U1 (so far, in kKeys)
  std::set<std::string> share_sites() const;     // U2 (so far, in kShares)
  std::set<std::string> masked_sites() const;    // U3 so far
  std::set<std::string> revealed_sites() const;  // the sites of U3 that revealed so far
  // The resolved threshold (0 while in kKeys).
  int resolved_threshold() const;
  // One line for the round's status message, e.g. "secure aggregation: shares 3/4" or "secure aggregation failed:
  // ...".
  std::string Describe() const;

 private:
  SecAggSession() = default;
  struct State;
  std::unique_ptr<State> state_;

 public:
  ~SecAggSession();
};

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_SECURE_AGGREGATION_H_
