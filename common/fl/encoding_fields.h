// The delta encoding (codec.h's Encoding) in the federation protocol: its wire form, tensor.proto's
// NamedTensor.Encoding, and the message fields that carry it (TrainingPlan, UploadHeader, Capabilities), each still
// paired with a deprecated text field ("fp32", ...) for peers of the previous release (federation.proto says how).
// Only this file reads or writes those text fields.
//
// Thread safety: reentrant (no state).
#ifndef FEDTUNE_COMMON_FL_ENCODING_FIELDS_H_
#define FEDTUNE_COMMON_FL_ENCODING_FIELDS_H_

#include <optional>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/fl/codec.h"
#include "fedtune/v1/federation.pb.h"
#include "fedtune/v1/tensor.pb.h"

namespace fedtune::fl {

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

#endif  // FEDTUNE_COMMON_FL_ENCODING_FIELDS_H_
