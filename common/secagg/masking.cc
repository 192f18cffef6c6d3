#include "common/secagg/masking.h"

#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace fedtune::secagg {
namespace {

// acc += sign * PRG(seed), entrywise mod 2^32.
absl::Status AddMask(std::vector<uint32_t>& acc, const Seed& seed, bool subtract) {
  absl::StatusOr<std::vector<uint32_t>> mask = ExpandSeed(seed, static_cast<int64_t>(acc.size()));
  if (!mask.ok()) return mask.status();
  if (subtract) {
    for (size_t i = 0; i < acc.size(); ++i) acc[i] -= (*mask)[i];
  } else {
    for (size_t i = 0; i < acc.size(); ++i) acc[i] += (*mask)[i];
  }
  return absl::OkStatus();
}

absl::Status CheckLength(size_t n) {
  if (static_cast<int64_t>(n) > kMaxPrgLength) {
    return absl::InvalidArgumentError(absl::StrCat("masking: ", n, " entries exceed the bound of ", kMaxPrgLength));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<uint32_t>> MaskInput(int64_t own_id, absl::Span<const uint32_t> encoded_input,
                                                const Seed& self_seed, absl::Span<const PeerSeed> peers) {
  if (absl::Status s = CheckLength(encoded_input.size()); !s.ok()) return s;
  std::set<int64_t> seen;
  for (const PeerSeed& p : peers) {
    if (p.peer_id == own_id) {
      return absl::InvalidArgumentError(absl::StrCat("masking: site ", own_id, " lists itself as a peer"));
    }
    if (!seen.insert(p.peer_id).second) {
      return absl::InvalidArgumentError(absl::StrCat("masking: peer ", p.peer_id, " is listed twice"));
    }
  }
  std::vector<uint32_t> y(encoded_input.begin(), encoded_input.end());
  if (absl::Status s = AddMask(y, self_seed, /*subtract=*/false); !s.ok()) return s;
  for (const PeerSeed& p : peers) {
    if (absl::Status s = AddMask(y, p.seed, /*subtract=*/p.peer_id < own_id); !s.ok()) return s;
  }
  return y;
}

absl::StatusOr<std::vector<uint32_t>> Unmask(absl::Span<const uint32_t> masked_sum,
                                             absl::Span<const Seed> survivor_self_seeds,
                                             absl::Span<const DroppedPairSeed> dropped_pairs) {
  if (absl::Status s = CheckLength(masked_sum.size()); !s.ok()) return s;
  std::set<std::pair<int64_t, int64_t>> seen;
  for (const DroppedPairSeed& d : dropped_pairs) {
    if (d.dropped_id == d.survivor_id) {
      return absl::InvalidArgumentError(absl::StrCat("masking: site ", d.dropped_id, " is both dropped and surviving"));
    }
    if (!seen.insert({d.dropped_id, d.survivor_id}).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("masking: pair (dropped ", d.dropped_id, ", survivor ", d.survivor_id, ") is listed twice"));
    }
  }
  std::vector<uint32_t> sum(masked_sum.begin(), masked_sum.end());
  for (const Seed& b : survivor_self_seeds) {
    if (absl::Status s = AddMask(sum, b, /*subtract=*/true); !s.ok()) return s;
  }
  for (const DroppedPairSeed& d : dropped_pairs) {
    // Survivor u added +PRG(s_uv) if v > u, -PRG(s_uv) if v < u: undo it.
    if (absl::Status s = AddMask(sum, d.seed, /*subtract=*/d.dropped_id > d.survivor_id); !s.ok()) return s;
  }
  return sum;
}

}  // namespace fedtune::secagg
