// Fuzzes the .safetensors reader (common/model/state_dict.h, ParseSafetensors): on any bytes it returns tensors or a
// Status, never crashes, and never materializes more than the file holds.
#include <ATen/Parallel.h>

#include <cstdint>
#include <cstdlib>

#include "absl/strings/string_view.h"
#include "common/model/state_dict.h"

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  at::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto tensors = fedtune::model::ParseSafetensors(bytes, "fuzz.safetensors");
  if (tensors.ok()) {
    size_t total = 0;
    for (const auto& [key, t] : *tensors) total += t.nbytes();
    if (total > size) std::abort();  // The contract: each byte is read into at most one tensor.
  }
  return 0;
}
