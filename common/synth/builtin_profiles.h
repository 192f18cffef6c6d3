// The built-in site profiles (`public`, `site-a`, `site-b`, `site-c`): the text of common/synth/profiles/*.textproto,
// embedded into the library at build time so that `fedtune synth --profile public` works from any directory.
#ifndef FEDTUNE_COMMON_SYNTH_BUILTIN_PROFILES_H_
#define FEDTUNE_COMMON_SYNTH_BUILTIN_PROFILES_H_

#include <vector>

namespace fedtune::synth {

struct BuiltinProfile {
  const char* name;  // The file name without ".textproto", e.g. "site-a".
  const char* text;  // The file's contents (protobuf text format of fedtune.v1.SynthProfile).
};

// All built-in profiles, sorted by name. Thread-safe; the returned reference lives for the whole program.
const std::vector<BuiltinProfile>& BuiltinProfiles();

}  // namespace fedtune::synth

#endif  // FEDTUNE_COMMON_SYNTH_BUILTIN_PROFILES_H_
