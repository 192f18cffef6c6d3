// The encoding of a delta's floating tensors (codec.h applies it) in its three forms: the enum, the text form of
// configs, logs and the previous protocol ("fp32", "fp16", "int8", "topk"), and the wire form, tensor.proto's
// NamedTensor.Encoding; and the protocol message fields that carry it (TrainingPlan, UploadHeader, Capabilities),
// each still paired with a deprecated text field for peers of the previous release (federation.proto says how).
// Only this file reads or writes those text fields. Torch-free.
//
// Thread safety: reentrant (no state).
#ifndef FEDTUNE_COMMON_FL_ENCODING_H_
#define FEDTUNE_COMMON_FL_ENCODING_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "fedtune/v1/federation.pb.h"
#include "fedtune/v1/tensor.pb.h"

namespace fedtune::fl {

enum class Encoding { kDenseFp32, kDenseFp16, kInt8, kTopK };

// "fp32", "fp16", "int8", "topk".
std::string EncodingName(Encoding encoding);
// Parses the names above; InvalidArgument listing them otherwise.
absl::StatusOr<Encoding> ParseEncoding(absl::string_view name);

// kDenseFp32 <-> DENSE_FP32, kDenseFp16 <-> DENSE_FP16, kInt8 <-> INT8, kTopK <-> TOPK.
v1::NamedTensor::Encoding ToProto(Encoding encoding);
// InvalidArgument naming `field` for ENCODING_UNSPECIFIED, for DENSE_INT64 (a tensor encoding, not a delta
// encoding) and for a value this build does not know.
absl::StatusOr<Encoding> EncodingFromProto(v1::NamedTensor::Encoding value, absl::string_view field);

// Write delta_encoding and the deprecated text field `encoding`.
void SetEncoding(Encoding encoding, v1::TrainingPlan* plan);
void SetEncoding(Encoding encoding, v1::UploadHeader* header);
// Lists every encoding in delta_encodings and, as text, in the deprecated `encodings`.
void SetSupportedEncodings(v1::Capabilities* capabilities);

// The plan's delta_encoding; when unspecified (a coordinator of the previous release), its text field `encoding`;
// when neither is set, kDenseFp32. InvalidArgument naming the field for an unknown value or text.
absl::StatusOr<Encoding> GetEncoding(const v1::TrainingPlan& plan);
// The header's delta_encoding; when unspecified, its text field `encoding`; std::nullopt when neither is set.
// InvalidArgument naming the field for an unknown value or text.
absl::StatusOr<std::optional<Encoding>> GetEncoding(const v1::UploadHeader& header);

}  // namespace fedtune::fl

#endif  // FEDTUNE_COMMON_FL_ENCODING_H_
