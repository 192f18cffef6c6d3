// Reading integers out of untrusted JSON (checkpoint metadata, the CA index). nlohmann::json's get<int>() converts a
// floating-point number with a plain cast, which is undefined behaviour when the value does not fit (fuzzing found
// 3.3e121 in a CA index), and silently truncates 2.7 to 2. JsonInteger accepts only JSON integers within a range.
//
// Thread safety: reentrant.
#ifndef FEDTUNE_COMMON_IO_JSON_NUMBER_H_
#define FEDTUNE_COMMON_IO_JSON_NUMBER_H_

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace fedtune::io {

// `value` as an integer in [min, max]. InvalidArgument "WHAT is not an integer" for any other JSON type (floats
// included, even 2.0) and "WHAT is V, not in [min, max]" for an integer outside the range.
inline absl::StatusOr<int64_t> JsonInteger(const nlohmann::json& value, absl::string_view what,
                                           int64_t min = std::numeric_limits<int64_t>::min(),
                                           int64_t max = std::numeric_limits<int64_t>::max()) {
  if (!value.is_number_integer()) return absl::InvalidArgumentError(absl::StrCat(what, " is not an integer"));
  if (value.is_number_unsigned()) {
    const uint64_t u = value.get<uint64_t>();
    if (max < 0 || u > static_cast<uint64_t>(max)) {
      return absl::InvalidArgumentError(absl::StrCat(what, " is ", u, ", not in [", min, ", ", max, "]"));
    }
    return static_cast<int64_t>(u);
  }
  const int64_t i = value.get<int64_t>();
  if (i < min || i > max) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is ", i, ", not in [", min, ", ", max, "]"));
  }
  return i;
}

}  // namespace fedtune::io

#endif  // FEDTUNE_COMMON_IO_JSON_NUMBER_H_
