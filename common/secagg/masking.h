// Double masking of secure aggregation (Bonawitz et al., CCS 2017, rounds 2 and 4), over Z_2^32.
//
// Site u with encoded input x_u (fixed_point.h), self seed b_u and pairwise seeds s_uv (key_agreement.h) sends
//   y_u = x_u + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)   (mod 2^32, PRG from prg.h).
// The pairwise masks cancel in the sum over all sites. If sites drop after key sharing, the server sums the survivors'
// y_u, and with the survivors' b_u and each dropped site v's s_uv with every survivor u (both recovered by Shamir
// reconstruction, shamir.h) Unmask removes the self masks and the pairwise masks that no longer cancel:
//   sum_{u surviving} x_u = sum y_u - sum_u PRG(b_u) - sum_{(v dropped, u surviving)} sign(u, v) PRG(s_uv),
// with sign(u, v) = +1 if v > u and -1 if v < u.
//
// Bounds: vectors of at most kMaxPrgLength entries; site ids are any int64 but a site's peers must be distinct and
// differ from its own id (InvalidArgument naming the peer). Thread-safe.
#ifndef FEDTUNE_COMMON_SECAGG_MASKING_H_
#define FEDTUNE_COMMON_SECAGG_MASKING_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/secagg/prg.h"

namespace fedtune::secagg {

struct PeerSeed {
  int64_t peer_id = 0;
  Seed seed = {};  // s_uv, shared with the peer
};

// A dropped site's pairwise seed with one survivor, as recovered by the server.
struct DroppedPairSeed {
  int64_t dropped_id = 0;
  int64_t survivor_id = 0;
  Seed seed = {};
};

// y_u for site `own_id`. Peers repeated or equal to own_id, or input too long: InvalidArgument.
absl::StatusOr<std::vector<uint32_t>> MaskInput(int64_t own_id, absl::Span<const uint32_t> encoded_input,
                                                const Seed& self_seed, absl::Span<const PeerSeed> peers);

// The sum of the survivors' x_u from the sum of their y_u. A pair with dropped_id == survivor_id, a repeated pair or
// a too-long vector: InvalidArgument. (Whether the seeds are the right ones is the caller's: wrong seeds give noise.)
absl::StatusOr<std::vector<uint32_t>> Unmask(absl::Span<const uint32_t> masked_sum,
                                             absl::Span<const Seed> survivor_self_seeds,
                                             absl::Span<const DroppedPairSeed> dropped_pairs);

}  // namespace fedtune::secagg

#endif  // FEDTUNE_COMMON_SECAGG_MASKING_H_
