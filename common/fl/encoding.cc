#include "common/fl/encoding.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace fedtune::fl {
namespace {

constexpr Encoding kDeltaEncodings[] = {Encoding::kDenseFp32, Encoding::kDenseFp16, Encoding::kInt8, Encoding::kTopK};

// The enum field, or the deprecated text field when the enum is unspecified (a peer of the previous release);
// std::nullopt when neither is set.
absl::StatusOr<std::optional<Encoding>> ReadField(v1::NamedTensor::Encoding value, const std::string& text,
                                                  absl::string_view field, absl::string_view text_field) {
  if (value != v1::NamedTensor::ENCODING_UNSPECIFIED) return EncodingFromProto(value, field);
  if (text.empty()) return std::optional<Encoding>();
  absl::StatusOr<Encoding> parsed = ParseEncoding(text);
  if (!parsed.ok()) return absl::InvalidArgumentError(absl::StrCat(text_field, ": ", parsed.status().message()));
  return std::optional<Encoding>(*parsed);
}

}  // namespace

std::string EncodingName(Encoding encoding) {
  switch (encoding) {
    case Encoding::kDenseFp32:
      return "fp32";
    case Encoding::kDenseFp16:
      return "fp16";
    case Encoding::kInt8:
      return "int8";
    case Encoding::kTopK:
      return "topk";
  }
  return "unknown";
}

absl::StatusOr<Encoding> ParseEncoding(absl::string_view name) {
  for (Encoding e : kDeltaEncodings) {
    if (name == EncodingName(e)) return e;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown tensor encoding '", name, "' (fp32, fp16, int8, topk)"));
}

v1::NamedTensor::Encoding ToProto(Encoding encoding) {
  switch (encoding) {
    case Encoding::kDenseFp32:
      return v1::NamedTensor::DENSE_FP32;
    case Encoding::kDenseFp16:
      return v1::NamedTensor::DENSE_FP16;
    case Encoding::kInt8:
      return v1::NamedTensor::INT8;
    case Encoding::kTopK:
      return v1::NamedTensor::TOPK;
  }
  return v1::NamedTensor::ENCODING_UNSPECIFIED;
}

absl::StatusOr<Encoding> EncodingFromProto(v1::NamedTensor::Encoding value, absl::string_view field) {
  for (Encoding e : kDeltaEncodings) {
    if (ToProto(e) == value) return e;
  }
  if (value == v1::NamedTensor::ENCODING_UNSPECIFIED)
    return absl::InvalidArgumentError(absl::StrCat(field, " is not set"));
  return absl::InvalidArgumentError(absl::StrCat(field, " has the value ", static_cast<int>(value),
                                                 ", not a delta encoding (DENSE_FP32, DENSE_FP16, INT8, TOPK)"));
}

void SetEncoding(Encoding encoding, v1::TrainingPlan* plan) {
  plan->set_delta_encoding(ToProto(encoding));
  plan->set_encoding(EncodingName(encoding));
}

void SetEncoding(Encoding encoding, v1::UploadHeader* header) {
  header->set_delta_encoding(ToProto(encoding));
  header->set_encoding(EncodingName(encoding));
}

void SetSupportedEncodings(v1::Capabilities* capabilities) {
  for (Encoding e : kDeltaEncodings) {
    capabilities->add_delta_encodings(ToProto(e));
    capabilities->add_encodings(EncodingName(e));
  }
}

absl::StatusOr<Encoding> GetEncoding(const v1::TrainingPlan& plan) {
  absl::StatusOr<std::optional<Encoding>> read =
      ReadField(plan.delta_encoding(), plan.encoding(), "TrainingPlan.delta_encoding", "TrainingPlan.encoding");
  if (!read.ok()) return read.status();
  return read->value_or(Encoding::kDenseFp32);
}

absl::StatusOr<std::optional<Encoding>> GetEncoding(const v1::UploadHeader& header) {
  return ReadField(header.delta_encoding(), header.encoding(), "UploadHeader.delta_encoding", "UploadHeader.encoding");
}

}  // namespace fedtune::fl
