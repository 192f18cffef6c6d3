#include "common/data/label_policy.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/seed.h"

namespace fedtune::data {
namespace {

// FNV-1a: a stable (platform- and library-independent) hash of the image key.
// std::hash is neither.
uint64_t Fnv1a64(absl::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

}  // namespace

absl::Status ValidateLabelPolicy(const LabelPolicy& policy) {
  if (!(policy.soft_low >= 0.0 && policy.soft_high <= 1.0 && policy.soft_low <= policy.soft_high)) {
    return absl::InvalidArgumentError(absl::StrCat("soft label range [", policy.soft_low, ", ", policy.soft_high,
                                                   "] must satisfy 0 <= low <= high <= 1"));
  }
  return absl::OkStatus();
}

absl::StatusOr<UncertainPolicy> ParseUncertainPolicy(absl::string_view name) {
  std::string n = absl::AsciiStrToLower(name);
  if (absl::StartsWith(n, "u-")) n = n.substr(2);
  if (n == "soft") return UncertainPolicy::kSoft;
  if (n == "ones") return UncertainPolicy::kOnes;
  if (n == "zeros") return UncertainPolicy::kZeros;
  if (n == "ignore") return UncertainPolicy::kIgnore;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown uncertainty policy '", name, "' (expected u-soft, u-ones, u-zeros or u-ignore)"));
}

absl::StatusOr<BlankPolicy> ParseBlankPolicy(absl::string_view name) {
  std::string n = absl::AsciiStrToLower(name);
  if (n == "zero") return BlankPolicy::kZero;
  if (n == "ignore") return BlankPolicy::kIgnore;
  return absl::InvalidArgumentError(absl::StrCat("unknown blank-label policy '", name, "' (expected zero or ignore)"));
}

std::string UncertainPolicyName(UncertainPolicy policy) {
  switch (policy) {
    case UncertainPolicy::kSoft:
      return "u-soft";
    case UncertainPolicy::kOnes:
      return "u-ones";
    case UncertainPolicy::kZeros:
      return "u-zeros";
    case UncertainPolicy::kIgnore:
      return "u-ignore";
  }
  LOG(FATAL) << "bad UncertainPolicy " << static_cast<int>(policy);
  return "";
}

std::string BlankPolicyName(BlankPolicy policy) { return policy == BlankPolicy::kZero ? "zero" : "ignore"; }

std::string DescribeLabelPolicy(const LabelPolicy& policy) {
  std::string uncertain = UncertainPolicyName(policy.uncertain);
  if (policy.uncertain == UncertainPolicy::kSoft) {
    absl::StrAppend(&uncertain, "[", policy.soft_low, ",", policy.soft_high, "] seed=", policy.seed);
  }
  return absl::StrCat("uncertain=", uncertain, " blank=", BlankPolicyName(policy.blank),
                      " hierarchy=", policy.hierarchy_correction ? "on" : "off");
}

float SoftLabel(const LabelPolicy& policy, absl::string_view image_key, int label) {
  const uint64_t bits = MixSeed(MixSeed(policy.seed ^ Fnv1a64(image_key)) + static_cast<uint64_t>(label));
  const double u = static_cast<double>(bits >> 11) * 0x1.0p-53;  // Uniform in [0, 1).
  return static_cast<float>(policy.soft_low + (policy.soft_high - policy.soft_low) * u);
}

void ApplyHierarchyCorrection(LabelTargets* t) {
  for (const auto& [child, parent] : kChexpertHierarchy) {
    if (t->mask[child] > 0 && t->target[child] > 0) {
      t->target[parent] = t->mask[parent] > 0 ? std::max(t->target[parent], t->target[child]) : t->target[child];
      t->mask[parent] = 1.0f;
    }
  }
}

LabelTargets ApplyLabelPolicy(const RawLabels& raw, absl::string_view image_key, const LabelPolicy& policy) {
  CHECK(ValidateLabelPolicy(policy).ok()) << DescribeLabelPolicy(policy);
  LabelTargets t;
  for (int l = 0; l < kNumChexpertLabels; ++l) {
    float target = 0.0f;
    float mask = 1.0f;
    switch (raw[l]) {
      case RawLabel::kPositive:
        target = 1.0f;
        break;
      case RawLabel::kNegative:
        break;
      case RawLabel::kBlank:
        if (policy.blank == BlankPolicy::kIgnore) mask = 0.0f;
        break;
      case RawLabel::kUncertain:
        switch (policy.uncertain) {
          case UncertainPolicy::kSoft:
            target = SoftLabel(policy, image_key, l);
            break;
          case UncertainPolicy::kOnes:
            target = 1.0f;
            break;
          case UncertainPolicy::kZeros:
            break;
          case UncertainPolicy::kIgnore:
            mask = 0.0f;
            break;
        }
        break;
    }
    t.target[l] = target;
    t.mask[l] = mask;
  }
  if (policy.hierarchy_correction) ApplyHierarchyCorrection(&t);
  return t;
}

std::vector<LabelTargets> TargetsForEntries(const Manifest& manifest, const std::vector<size_t>& entries,
                                            const LabelPolicy& policy) {
  std::vector<LabelTargets> targets;
  targets.reserve(entries.size());
  for (size_t e : entries) {
    CHECK_LT(e, manifest.entries().size());
    const ManifestEntry& entry = manifest.entries()[e];
    targets.push_back(ApplyLabelPolicy(entry.labels, entry.path, policy));
  }
  return targets;
}

}  // namespace fedtune::data
