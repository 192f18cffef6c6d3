// The load generator's shared update payloads: for each delta variant and encoding, ONE serialized TensorBundle
// file that every simulated site of that variant uploads, so the generator's memory does not grow with the number
// of sites. The tensor names, shapes and dtypes come from the coordinator's model as the first site downloaded it
// (LearnSchema); variant j has every floating element equal to j * delta_value and every integer element 0, encoded
// with common/fl's codec (codec.h) exactly as a site agent encodes a real delta (without error feedback).
//
// Files: <dir>/<encoding>[-<topk fraction>]-v<j>.bin, written once (temporary file, fsync, rename), tensor by tensor:
// building one holds a single tensor in memory at a time.
//
// Thread safety: thread-safe; concurrent first requests of a payload wait for one build.
#ifndef FEDTUNE_SITE_AGENT_LOADGEN_DELTA_PAYLOADS_H_
#define FEDTUNE_SITE_AGENT_LOADGEN_DELTA_PAYLOADS_H_

#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/fl/encoding.h"

namespace fedtune::loadgen {

struct DeltaPayload {
  std::string path;
  std::string sha256;  // Of the file (lowercase hex).
  int64_t bytes = 0;
};

class DeltaPayloads {
 public:
  // `dir` is created on the first build. delta_value: the step between variants (finite).
  DeltaPayloads(std::string dir, double delta_value);

  // Records the tensor names, shapes and dtypes of the checkpoint at `model_path` (fl::CheckpointTensors) the first
  // time; later calls return OK at once. Errors of model::LoadCheckpoint naming the file.
  absl::Status LearnSchema(const std::string& model_path);
  bool has_schema() const;

  // The payload of `variant` (>= 0) in `encoding` (topk_fraction in (0, 1] for kTopK, ignored otherwise), built on
  // the first request. FailedPrecondition before LearnSchema; the codec's InvalidArgument; I/O errors naming the file.
  absl::StatusOr<DeltaPayload> Get(fl::Encoding encoding, double topk_fraction, int variant);

  // Sum over the model's tensors of their element counts (0 before LearnSchema).
  int64_t model_elements() const;

 private:
  struct TensorSpec {
    std::string name;
    std::vector<int64_t> shape;
    int dtype = 0;  // c10::ScalarType, kept as int so this header needs no LibTorch.
  };
  absl::StatusOr<DeltaPayload> Build(fl::Encoding encoding, double topk_fraction, int variant);

  const std::string dir_;
  const double delta_value_;
  mutable absl::Mutex mu_;
  std::vector<TensorSpec> schema_ ABSL_GUARDED_BY(mu_);
  bool has_schema_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::tuple<int, double, int>, DeltaPayload> built_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fedtune::loadgen

#endif  // FEDTUNE_SITE_AGENT_LOADGEN_DELTA_PAYLOADS_H_
