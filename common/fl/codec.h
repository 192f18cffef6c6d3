// Tensor payload codecs: a named set of tensors (a model or a delta) <-> a fedtune.v1.TensorBundle
// (protos/fedtune/v1/tensor.proto), with a chosen lossy or lossless encoding of the floating tensors, and the
// error-feedback residual a site keeps when it sends compressed deltas.
//
// Encodings of floating tensors that are not BatchNorm running statistics (see tensor_map.h):
//   kDenseFp32  exact for float32 (float64 rounds to float32);
//   kDenseFp16  IEEE half: relative error <= 2^-11 in the normal range; values beyond +-65504 saturate;
//   kInt8       symmetric, one scale per tensor: scale = max|x| / 127, q = round(x / scale); |error| <= scale / 2;
//   kTopK       the k = ceil(fraction * numel) (at least 1) elements of largest |x|, as fp32 values at sorted
//               indices; the rest are 0.
// BatchNorm running_mean / running_var always go dense fp32, and integer tensors (num_batches_tracked) dense
// int64, whatever the encoding. Decoded tensors have the dtype recorded at encoding (float16 weights come back
// float16).
//
// Thread safety: the free functions are reentrant. ErrorFeedback is not thread-safe (one per site).
#ifndef FEDTUNE_COMMON_FL_CODEC_H_
#define FEDTUNE_COMMON_FL_CODEC_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/fl/encoding.h"
#include "common/fl/tensor_map.h"
#include "fedtune/v1/tensor.pb.h"

namespace fedtune::fl {

struct EncodeOptions {
  Encoding encoding = Encoding::kDenseFp32;  // Default: lossless for float32 tensors.
  // kTopK only: fraction of each tensor's elements kept, in (0, 1]. Default 0.01 (1%).
  double topk_fraction = 0.01;
};

struct EncodedBundle {
  v1::TensorBundle bundle;
  int64_t num_tensors = 0;
  // Sum over tensors of numel * 4 for floating tensors and numel * 8 for integer ones: the dense fp32 payload.
  int64_t dense_fp32_bytes = 0;
  // Size of the serialized bundle (bundle.ByteSizeLong()), i.e. what goes on the wire.
  int64_t encoded_bytes = 0;
};

// Encodes `tensors` (in the map's key order). Tensors may live on any device; they are copied to the CPU.
// InvalidArgument naming the tensor for: an undefined tensor, a dtype other than float32/float16/bfloat16/float64/
// int64/int32, a non-finite value, a kTopK tensor with more than 2^32 - 1 elements; and for
// options.topk_fraction outside (0, 1] when the encoding is kTopK.
absl::StatusOr<EncodedBundle> EncodeTensors(const TensorMap& tensors, const EncodeOptions& options = {});

// Decodes one tensor into a contiguous CPU tensor of its recorded dtype and shape. InvalidArgument naming the
// tensor for: an empty name, unknown or unspecified dtype/encoding, an integer encoding for a floating dtype or
// the reverse, more than model::kMaxTensorDims (64) dimensions, a negative dimension, an element count that overflows
// or a shape whose strides would (an empty tensor of shape [0, 2^62, 2^62]), a data size inconsistent with the shape
// (and with the indices for kTopK), kTopK indices not strictly increasing or out of range, a kTopK tensor of more
// than 2^32 - 1 elements, an int8 value of -128, a non-finite or negative scale, non-finite values (also after
// conversion to a float16 dtype).
// When `expected` is given (the global model's tensor of that name), the shape and dtype must equal its
// (InvalidArgument), checked before anything is allocated. A server should always pass it: a kTopK tensor's dense
// size is not bounded by its data, so without it a tiny message can ask for up to 16 GiB.
absl::StatusOr<at::Tensor> DecodeTensor(const v1::NamedTensor& tensor, const at::Tensor* expected = nullptr);

// Decodes every tensor; InvalidArgument as DecodeTensor, and for a name that occurs twice. With `expected` (the
// global model), every tensor is checked against its namesake as above, and the names must be exactly expected's
// (InvalidArgument naming an unexpected tensor, or listing the missing ones).
absl::StatusOr<TensorMap> DecodeTensors(const v1::TensorBundle& bundle, const TensorMap* expected = nullptr);

// Parses serialized bundle bytes; InvalidArgument naming `what` when they are not a valid TensorBundle (the
// tensors themselves are checked by DecodeTensors).
absl::StatusOr<v1::TensorBundle> ParseTensorBundle(absl::string_view bytes, absl::string_view what = "payload");

// Error feedback (Seide et al. 2014; Karimireddy et al. 2019) for lossy encodings at a site: the part of a delta
// that compression dropped is carried into the next delta instead of being lost.
//   corrected = delta + residual;  sent = Encode(corrected);  residual = corrected - Decode(sent).
// Only floating tensors that are not BatchNorm statistics keep a residual (the others go exactly or are not
// gradient-like). The residual is float32.
//
// If an update is refused and never counted, the site may restore the residual it had before (copy residual()
// before Encode and SetResidual it back); otherwise the dropped part of that round is simply lost.
class ErrorFeedback {
 public:
  ErrorFeedback() = default;

  // Encodes delta + residual and updates the residual. On error (EncodeTensors' errors, or InvalidArgument when a
  // tensor's shape differs from its residual's) the residual is unchanged.
  absl::StatusOr<EncodedBundle> Encode(const TensorMap& delta, const EncodeOptions& options);

  // The residual to add to the next delta, by tensor name (empty before the first Encode).
  const TensorMap& residual() const { return residual_; }
  // Replaces the residual, e.g. restored from the site's state after a restart. Tensors are converted to contiguous
  // float32 CPU copies. InvalidArgument for a non-floating or non-finite tensor (named).
  absl::Status SetResidual(const TensorMap& residual);
  void Reset() { residual_.clear(); }

 private:
  TensorMap residual_;
};

}  // namespace fedtune::fl

#endif  // FEDTUNE_COMMON_FL_CODEC_H_
