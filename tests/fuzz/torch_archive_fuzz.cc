// Fuzzes the torch.save reader (common/model/torch_archive.h) and the state-dict import on top of it
// (common/model/state_dict.h): on any bytes they return a value or a Status, never crash, leak, or use memory beyond
// the bounds in torch_archive.h.
//
// Input: bytes starting with "PK\3\4" are a whole archive (the zip directory checks, LibTorch's reader). Any other
// bytes are a pickle, wrapped in a valid archive with two storage records ("data/0": 64 bytes, "data/1": 16 bytes)
// so that mutations reach the unpickler instead of failing the zip's CRC.
#include <ATen/Parallel.h>
#include <caffe2/serialize/inline_container.h>

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "common/model/state_dict.h"
#include "common/model/torch_archive.h"

namespace {

std::string WrapPickle(absl::string_view pickle) {
  std::string out;
  caffe2::serialize::PyTorchStreamWriter writer([&out](const void* data, size_t n) {
    out.append(static_cast<const char*>(data), n);
    return n;
  });
  const std::string storage0(64, '\x01'), storage1(16, '\x02');
  writer.writeRecord("data.pkl", pickle.data(), pickle.size());
  writer.writeRecord("data/0", storage0.data(), storage0.size());
  writer.writeRecord("data/1", storage1.data(), storage1.size());
  writer.writeEndOfFile();
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  at::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  const std::string archive =
      input.substr(0, 4) == absl::string_view("PK\3\4", 4) ? std::string(input) : WrapPickle(input);
  auto root = fedtune::model::ReadTorchArchive(archive, "fuzz.pt");
  if (root.ok()) {
    // Whatever the reader accepts, the writer handles (it refuses globals; it must not recurse or blow up).
    (void)fedtune::model::WriteTorchArchive(**root);
  }
  (void)fedtune::model::ParseTorchStateDict(archive, "fuzz.pt");
  return 0;
}
