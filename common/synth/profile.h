// Site profiles for the synthetic generator: loading (built-in name or text-format file), parsing and validation of
// fedtune.v1.SynthProfile (protos/fedtune/v1/synth_profile.proto documents every field).
#ifndef FEDTUNE_COMMON_SYNTH_PROFILE_H_
#define FEDTUNE_COMMON_SYNTH_PROFILE_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "fedtune/v1/synth_profile.pb.h"

namespace fedtune::synth {

// Names of the built-in profiles ("public", "site-a", "site-b", "site-c"), sorted.
std::vector<std::string> BuiltinProfileNames();

// Parses a profile in protobuf text format and validates it. `source` names the text in messages (a file name).
// InvalidArgument on a syntax error or unknown field ("SOURCE:LINE:COLUMN: ...") or a validation failure (the
// message names the field, e.g. "SOURCE: detector.gamma.min must be > 0").
absl::StatusOr<fedtune::v1::SynthProfile> ParseProfile(absl::string_view text, absl::string_view source);

// `name_or_path` is a built-in profile name, or else the path of a text-format profile file. NotFound when it is
// neither (the message lists the built-in names); file read errors as io::ReadFile; otherwise as ParseProfile.
absl::StatusOr<fedtune::v1::SynthProfile> LoadProfile(const std::string& name_or_path);

// Checks every field's range (probabilities in [0, 1], ranges with min <= max, gamma/scale/sign strength > 0,
// resolution in (0, 1], the scanner's fields within the bounds synth_profile.proto gives, known and unique label
// names, "No Finding" not listed). InvalidArgument naming the field.
absl::Status ValidateProfile(const fedtune::v1::SynthProfile& profile);

// The range's bounds with a neutral default for an absent message.
struct RangeValue {
  double min = 0;
  double max = 0;
};
RangeValue RangeOr(bool has, const fedtune::v1::SynthRange& range, double default_value);

}  // namespace fedtune::synth

#endif  // FEDTUNE_COMMON_SYNTH_PROFILE_H_
