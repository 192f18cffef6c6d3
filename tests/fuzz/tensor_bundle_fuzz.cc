// Fuzzes the fedtune.v1.TensorBundle codec (common/fl/codec.h, bundle_file.h): parsing, decoding on its own and as a
// delta against a small fixed model (what the coordinator does with every upload), then validating, aggregating and
// applying that delta, and re-encoding what decoded. Any bytes give a value or a Status, never a crash.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/fl/aggregate.h"
#include "common/fl/bundle_file.h"
#include "common/fl/codec.h"
#include "common/fl/tensor_map.h"
#include "common/fl/validate.h"

namespace {

using fedtune::fl::TensorMap;

// The model the corpus's bundles are deltas of: every dtype and BatchNorm kind the codec treats specially.
const TensorMap& Model() {
  static const TensorMap* model = [] {
    auto* m = new TensorMap;
    (*m)["conv.weight"] = at::arange(36, at::kFloat).reshape({4, 1, 3, 3}).div(10);
    (*m)["bn.running_mean"] = at::zeros({4}, at::kFloat);
    (*m)["bn.running_var"] = at::ones({4}, at::kFloat);
    (*m)["bn.num_batches_tracked"] = at::scalar_tensor(3, at::kLong);
    (*m)["fc.weight"] = at::ones({2, 4}, at::kHalf);
    (*m)["fc.bias"] = at::zeros({2}, at::kDouble);
    return m;
  }();
  return *model;
}

// Decoding without a schema allocates what the shapes say for TOPK (codec.h: a server always passes the model), so
// that path only runs on bundles whose shapes are small.
bool DenseSizeIsSmall(const fedtune::v1::TensorBundle& bundle) {
  int64_t total = 0;
  for (const auto& t : bundle.tensors()) {
    int64_t numel = 1;
    for (int64_t d : t.shape()) {
      if (d < 0 || (d > 0 && numel > (int64_t{1} << 22) / d)) return false;
      numel *= d;
    }
    total += numel;
    if (total > (int64_t{1} << 22)) return false;
  }
  return true;
}

// A memory file holding the input, so that the streaming file reader runs without touching the disk.
int MemoryFile() {
  static const int fd = memfd_create("tensor_bundle_fuzz", 0);
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  at::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  const TensorMap& model = Model();

  auto bundle = fedtune::fl::ParseTensorBundle(bytes, "fuzz");
  if (bundle.ok()) {
    auto delta = fedtune::fl::DecodeTensors(*bundle, &model);
    if (delta.ok()) {
      fedtune::fl::ValidationOptions options;
      options.max_l2_norm = 100.0;
      (void)fedtune::fl::ValidateUpdate(model, *delta, options, "fuzz update");
      (void)fedtune::fl::ApplyDelta(model, *delta);
      auto aggregator = fedtune::fl::MakeAggregator({fedtune::fl::AggregationMethod::kTrimmedMean, 0.1, 1.0, {}});
      if (aggregator.ok() && (*aggregator)->Add(*delta, 5).ok() && (*aggregator)->Add(*delta, 7).ok()) {
        (void)(*aggregator)->Result();
      }
    }
    if (DenseSizeIsSmall(*bundle)) {
      auto tensors = fedtune::fl::DecodeTensors(*bundle);
      if (tensors.ok()) {
        for (auto encoding :
             {fedtune::fl::Encoding::kDenseFp16, fedtune::fl::Encoding::kInt8, fedtune::fl::Encoding::kTopK}) {
          auto encoded = fedtune::fl::EncodeTensors(*tensors, {encoding, 0.3});
          if (encoded.ok()) (void)fedtune::fl::DecodeTensors(encoded->bundle);
        }
      }
    }
  }

  const int fd = MemoryFile();
  if (fd >= 0 && ftruncate(fd, 0) == 0 && pwrite(fd, data, size, 0) == static_cast<ssize_t>(size)) {
    (void)fedtune::fl::DecodeTensorBundleFile(absl::StrCat("/proc/self/fd/", fd), &model);
  }
  return 0;
}
