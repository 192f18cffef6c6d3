// Test helper shared by the model tests: a torch.save-shaped zip archive around an arbitrary pickle, written by
// LibTorch's own zip writer (stored records, 64-byte aligned, as torch.save writes them).
#ifndef FEDTUNE_TESTS_COMMON_MODEL_ARCHIVE_BYTES_H_
#define FEDTUNE_TESTS_COMMON_MODEL_ARCHIVE_BYTES_H_

#include <caffe2/serialize/inline_container.h>

#include <map>
#include <string>

namespace fedtune::testing {

// data.pkl = `pickle`, plus each of `records` (name -> bytes) as given.
inline std::string Archive(const std::string& pickle, const std::map<std::string, std::string>& records = {}) {
  std::string out;
  caffe2::serialize::PyTorchStreamWriter writer([&out](const void* data, size_t n) {
    out.append(static_cast<const char*>(data), n);
    return n;
  });
  writer.writeRecord("data.pkl", pickle.data(), pickle.size());
  for (const auto& [name, bytes] : records) writer.writeRecord(name, bytes.data(), bytes.size());
  writer.writeEndOfFile();
  return out;
}

}  // namespace fedtune::testing

#endif  // FEDTUNE_TESTS_COMMON_MODEL_ARCHIVE_BYTES_H_
