// Label policies: how CheXpert's raw observations (positive, negative,
// uncertain, blank) become training targets and loss masks, and CheXpert's
// hierarchy correction (a positive child makes its parent positive).
//
// The default is the study's: blank -> 0; uncertain -> a soft label drawn once
// per (image, label) from U(0.55, 0.85), with a recorded seed; hierarchy
// correction on. The draw is a pure function of (seed, image key, label), so it
// does not depend on the order in which images are visited, on threads, or on
// which other images are in the manifest. Every function here is pure and
// thread-safe.
#ifndef FEDTUNE_COMMON_DATA_LABEL_POLICY_H_
#define FEDTUNE_COMMON_DATA_LABEL_POLICY_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/data/chexpert_labels.h"
#include "common/data/manifest.h"

namespace fedtune::data {

// What an uncertain (-1.0) observation becomes.
enum class UncertainPolicy : int8_t {
  kSoft = 0,    // "u-soft": a value drawn from U(soft_low, soft_high) once per
                // (image, label). The study's default.
  kOnes = 1,    // "u-ones": 1.
  kZeros = 2,   // "u-zeros": 0.
  kIgnore = 3,  // "u-ignore": masked out of the loss.
};

// What a blank (not mentioned) observation becomes.
enum class BlankPolicy : int8_t {
  kZero = 0,    // "zero": 0. The study's default.
  kIgnore = 1,  // "ignore": masked out of the loss.
};

struct LabelPolicy {
  UncertainPolicy uncertain = UncertainPolicy::kSoft;
  BlankPolicy blank = BlankPolicy::kZero;
  // Range of soft labels for UncertainPolicy::kSoft, with
  // 0 <= soft_low <= soft_high <= 1. Defaults 0.55 and 0.85.
  double soft_low = 0.55;
  double soft_high = 0.85;
  // Seed of the soft-label draws. Record it with the run: the same seed gives
  // the same soft labels. Default 0.
  uint64_t seed = 0;
  // Apply kChexpertHierarchy after the policy. Default true.
  bool hierarchy_correction = true;
};

// InvalidArgument when soft_low or soft_high is outside [0, 1], or when
// soft_low > soft_high.
absl::Status ValidateLabelPolicy(const LabelPolicy& policy);

// Parses "u-soft" (or "soft"), "u-ones", "u-zeros", "u-ignore" (the "u-" is
// optional, case-insensitive). InvalidArgument naming the accepted values
// otherwise.
absl::StatusOr<UncertainPolicy> ParseUncertainPolicy(absl::string_view name);
// Parses "zero" or "ignore" (case-insensitive).
absl::StatusOr<BlankPolicy> ParseBlankPolicy(absl::string_view name);
std::string UncertainPolicyName(UncertainPolicy policy);  // "u-soft", "u-ones", ...
std::string BlankPolicyName(BlankPolicy policy);          // "zero", "ignore".

// One line for run records and logs, e.g. "uncertain=u-soft[0.55,0.85] seed=42
// blank=zero hierarchy=on".
std::string DescribeLabelPolicy(const LabelPolicy& policy);

// Training targets of one image: target[l] in [0, 1]; mask[l] is 1 when label l
// enters the loss, 0 when ignored (target is then 0).
struct LabelTargets {
  std::array<float, kNumChexpertLabels> target{};
  std::array<float, kNumChexpertLabels> mask{};
};

// The soft label of (image_key, label) for `policy`'s seed and range:
// deterministic, uniform in [soft_low, soft_high). Exposed for tests and
// reports.
float SoftLabel(const LabelPolicy& policy, absl::string_view image_key, int label);

// Applies the policy to one image's raw labels, then (if enabled) the hierarchy
// correction: for each (child, parent) of kChexpertHierarchy in order, when the
// child enters the loss with a target > 0, the parent enters the loss with
// target max(parent, child). So a positive child makes its parent positive, a
// soft child lifts its parent to at least its own soft value, and an ignored
// child changes nothing. `image_key` identifies the image for soft draws: use
// the manifest path. The policy must be valid (ValidateLabelPolicy); a bad one
// CHECK-fails.
LabelTargets ApplyLabelPolicy(const RawLabels& raw, absl::string_view image_key, const LabelPolicy& policy);

// The targets of the given entries of `manifest` (indices into entries(), e.g.
// DatasetSplit::EntriesIn(Split::kTrain)), in that order, each keyed by its
// manifest path. Indices must be in range (CHECK).
std::vector<LabelTargets> TargetsForEntries(const Manifest& manifest, const std::vector<size_t>& entries,
                                            const LabelPolicy& policy);

// Corrects targets in place as ApplyLabelPolicy does (exposed for callers with
// their own targets, e.g. the synthetic generator).
void ApplyHierarchyCorrection(LabelTargets* targets);

}  // namespace fedtune::data

#endif  // FEDTUNE_COMMON_DATA_LABEL_POLICY_H_
