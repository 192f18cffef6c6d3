#include "common/fl/codec.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/model/torch_archive.h"

namespace fedtune::fl {
namespace {

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "fedtune's tensor payloads copy memory as little-endian bytes"
#endif

using v1::NamedTensor;

constexpr double kFp16Max = 65504.0;
using model::kMaxTensorDims;  // The model readers' bound on dimensions.

absl::Status Invalid(absl::string_view name, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': ", problem));
}

absl::StatusOr<NamedTensor::DType> ToProtoDType(const std::string& name, const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return NamedTensor::FLOAT32;
    case at::kHalf:
      return NamedTensor::FLOAT16;
    case at::kBFloat16:
      return NamedTensor::BFLOAT16;
    case at::kDouble:
      return NamedTensor::FLOAT64;
    case at::kLong:
      return NamedTensor::INT64;
    case at::kInt:
      return NamedTensor::INT32;
    default:
      return Invalid(name, absl::StrCat("unsupported dtype ", DTypeName(t),
                                        " (float32, float16, bfloat16, float64, int64 and int32 are)"));
  }
}

// The ATen type of a proto dtype; nullopt for unknown values.
std::optional<at::ScalarType> ToScalarType(int dtype) {
  switch (dtype) {
    case NamedTensor::FLOAT32:
      return at::kFloat;
    case NamedTensor::FLOAT16:
      return at::kHalf;
    case NamedTensor::BFLOAT16:
      return at::kBFloat16;
    case NamedTensor::FLOAT64:
      return at::kDouble;
    case NamedTensor::INT64:
      return at::kLong;
    case NamedTensor::INT32:
      return at::kInt;
    default:
      return std::nullopt;
  }
}

std::string Bytes(const at::Tensor& contiguous) {
  return std::string(static_cast<const char*>(contiguous.data_ptr()), contiguous.nbytes());
}

// A new CPU tensor of `numel` elements of `type` filled from `bytes` (whose size the caller checked).
at::Tensor FromBytes(const std::string& bytes, int64_t numel, at::ScalarType type) {
  at::Tensor t = at::empty({numel}, at::TensorOptions().dtype(type));
  if (!bytes.empty()) std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
  return t;
}

bool AllFinite(const at::Tensor& t) { return t.numel() == 0 || at::isfinite(t).all().item<bool>(); }

// k for a top-k fraction; guards against 0.01 * 100 = 1.0000000000000002 becoming 2.
int64_t TopKCount(double fraction, int64_t numel) {
  if (numel == 0) return 0;
  const double x = fraction * static_cast<double>(numel);
  int64_t k = std::llround(x);
  if (std::fabs(x - static_cast<double>(k)) > 1e-9 * std::max(1.0, x)) k = static_cast<int64_t>(std::ceil(x));
  return std::clamp<int64_t>(k, 1, numel);
}

absl::Status EncodeOne(const std::string& name, const at::Tensor& input, const EncodeOptions& options, NamedTensor* out,
                       int64_t* dense_fp32_bytes) {
  if (!input.defined()) return Invalid(name, "undefined tensor");
  absl::StatusOr<NamedTensor::DType> dtype = ToProtoDType(name, input);
  if (!dtype.ok()) return dtype.status();
  out->set_name(name);
  for (int64_t d : input.sizes()) out->add_shape(d);
  out->set_dtype(*dtype);
  const at::Tensor t = input.detach().to(at::kCPU).contiguous();
  const int64_t numel = t.numel();

  if (!IsFloating(t)) {
    out->set_encoding(NamedTensor::DENSE_INT64);
    out->set_data(Bytes(t.to(at::kLong).contiguous()));
    *dense_fp32_bytes += numel * 8;
    return absl::OkStatus();
  }
  *dense_fp32_bytes += numel * 4;
  const at::Tensor f = t.to(at::kFloat).contiguous();
  if (!AllFinite(f)) return Invalid(name, "non-finite value (NaN or infinity, possibly after conversion to float32)");

  const Encoding encoding = IsBatchNormStatistic(name) ? Encoding::kDenseFp32 : options.encoding;
  switch (encoding) {
    case Encoding::kDenseFp32:
      out->set_encoding(NamedTensor::DENSE_FP32);
      out->set_data(Bytes(f));
      break;
    case Encoding::kDenseFp16:
      out->set_encoding(NamedTensor::DENSE_FP16);
      out->set_data(Bytes(f.clamp(-kFp16Max, kFp16Max).to(at::kHalf).contiguous()));
      break;
    case Encoding::kInt8: {
      const float max_abs = numel == 0 ? 0.0f : f.abs().max().item<float>();
      const float scale = max_abs / 127.0f;
      at::Tensor q = scale > 0.0f ? f.div(scale).round().clamp(-127, 127).to(at::kChar).contiguous()
                                  : at::zeros({numel}, at::TensorOptions().dtype(at::kChar));
      out->set_encoding(NamedTensor::INT8);
      out->set_scale(scale);
      out->set_data(Bytes(q));
      break;
    }
    case Encoding::kTopK: {
      if (numel > static_cast<int64_t>(std::numeric_limits<uint32_t>::max())) {
        return Invalid(name, absl::StrCat(numel, " elements is too many for top-k (uint32 indices)"));
      }
      const int64_t k = TopKCount(options.topk_fraction, numel);
      out->set_encoding(NamedTensor::TOPK);
      if (k == 0) break;
      const at::Tensor flat = f.reshape({-1});
      at::Tensor indices = std::get<1>(at::topk(flat.abs(), k, /*dim=*/0, /*largest=*/true, /*sorted=*/false));
      indices = std::get<0>(at::sort(indices)).contiguous();
      out->set_data(Bytes(flat.index_select(0, indices).contiguous()));
      const int64_t* idx = indices.data_ptr<int64_t>();
      out->mutable_indices()->Reserve(static_cast<int>(k));
      for (int64_t i = 0; i < k; ++i) out->add_indices(static_cast<uint32_t>(idx[i]));
      break;
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<EncodedBundle> EncodeTensors(const TensorMap& tensors, const EncodeOptions& options) {
  if (options.encoding == Encoding::kTopK && !(options.topk_fraction > 0.0 && options.topk_fraction <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("top-k fraction ", options.topk_fraction, " is not in (0, 1]"));
  }
  EncodedBundle result;
  for (const auto& [name, tensor] : tensors) {
    try {
      absl::Status status = EncodeOne(name, tensor, options, result.bundle.add_tensors(), &result.dense_fp32_bytes);
      if (!status.ok()) return status;
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat("encoding tensor '", name, "': ", e.what_without_backtrace()));
    }
    ++result.num_tensors;
  }
  result.encoded_bytes = static_cast<int64_t>(result.bundle.ByteSizeLong());
  return result;
}

absl::StatusOr<at::Tensor> DecodeTensor(const NamedTensor& tensor, const at::Tensor* expected) {
  const std::string& name = tensor.name();
  if (name.empty()) return absl::InvalidArgumentError("a tensor has an empty name");
  const std::optional<at::ScalarType> type = ToScalarType(tensor.dtype());
  if (!type) return Invalid(name, absl::StrCat("unknown dtype ", tensor.dtype()));
  if (tensor.shape_size() > kMaxTensorDims) {
    return Invalid(name, absl::StrCat(tensor.shape_size(), " dimensions, more than ", kMaxTensorDims));
  }
  std::vector<int64_t> shape(tensor.shape().begin(), tensor.shape().end());
  // extent, the product of max(d, 1), is what LibTorch's stride computation multiplies: an empty tensor of shape
  // [0, 2^62, 2^62] has 0 elements but strides that overflow.
  int64_t numel = 1, extent = 1;
  for (int64_t d : shape) {
    if (d < 0) return Invalid(name, absl::StrCat("negative dimension ", d));
    if (d != 0 && numel > std::numeric_limits<int64_t>::max() / 8 / d) {
      return Invalid(name, "element count overflows");
    }
    numel *= d;
    if (__builtin_mul_overflow(extent, std::max<int64_t>(d, 1), &extent) ||
        extent > std::numeric_limits<int64_t>::max() / 8) {
      return Invalid(name, absl::StrCat("shape [", absl::StrJoin(shape, ", "), "] is too large"));
    }
  }
  if (expected != nullptr) {
    if (!expected->defined() || expected->sizes() != at::IntArrayRef(shape)) {
      return Invalid(name, absl::StrCat("shape [", absl::StrJoin(shape, ", "), "], the model's is ",
                                        expected->defined() ? ShapeString(*expected) : "undefined"));
    }
    if (expected->scalar_type() != *type) {
      return Invalid(name, absl::StrCat("dtype ", absl::AsciiStrToLower(NamedTensor::DType_Name(tensor.dtype())),
                                        ", the model's is ", DTypeName(*expected)));
    }
  }
  if (tensor.encoding() == NamedTensor::TOPK && numel > static_cast<int64_t>(std::numeric_limits<uint32_t>::max())) {
    return Invalid(name, absl::StrCat(numel, " elements is too many for TOPK (uint32 indices)"));
  }
  const bool floating = *type != at::kLong && *type != at::kInt;
  const std::string& data = tensor.data();
  const int64_t size = static_cast<int64_t>(data.size());
  auto expect_size = [&](int64_t want) -> absl::Status {
    if (size == want) return absl::OkStatus();
    return Invalid(name, absl::StrCat("data has ", size, " bytes, shape [", absl::StrJoin(shape, ", "), "] with ",
                                      NamedTensor::Encoding_Name(tensor.encoding()), " needs ", want));
  };
  if (tensor.encoding() != NamedTensor::TOPK && tensor.indices_size() > 0) {
    return Invalid(name, "indices are only allowed with TOPK encoding");
  }
  if (tensor.encoding() != NamedTensor::INT8 && tensor.scale() != 0.0f) {
    return Invalid(name, "scale is only allowed with INT8 encoding");
  }
  try {
    at::Tensor flat;  // float32 for floating dtypes, int64 for integer ones.
    switch (tensor.encoding()) {
      case NamedTensor::DENSE_INT64: {
        if (floating) return Invalid(name, "DENSE_INT64 encoding for a floating dtype");
        if (absl::Status s = expect_size(numel * 8); !s.ok()) return s;
        flat = FromBytes(data, numel, at::kLong);
        if (*type == at::kInt && numel > 0 &&
            (flat.min().item<int64_t>() < std::numeric_limits<int32_t>::min() ||
             flat.max().item<int64_t>() > std::numeric_limits<int32_t>::max())) {
          return Invalid(name, "value out of int32 range");
        }
        break;
      }
      case NamedTensor::DENSE_FP32:
      case NamedTensor::DENSE_FP16:
      case NamedTensor::INT8:
      case NamedTensor::TOPK: {
        if (!floating) {
          return Invalid(name, absl::StrCat(NamedTensor::Encoding_Name(tensor.encoding()),
                                            " encoding for an integer dtype (integers use DENSE_INT64)"));
        }
        if (tensor.encoding() == NamedTensor::DENSE_FP32) {
          if (absl::Status s = expect_size(numel * 4); !s.ok()) return s;
          flat = FromBytes(data, numel, at::kFloat);
        } else if (tensor.encoding() == NamedTensor::DENSE_FP16) {
          if (absl::Status s = expect_size(numel * 2); !s.ok()) return s;
          flat = FromBytes(data, numel, at::kHalf).to(at::kFloat);
        } else if (tensor.encoding() == NamedTensor::INT8) {
          if (absl::Status s = expect_size(numel); !s.ok()) return s;
          const float scale = tensor.scale();
          if (!std::isfinite(scale) || scale < 0.0f) return Invalid(name, absl::StrCat("invalid int8 scale ", scale));
          at::Tensor q = FromBytes(data, numel, at::kChar);
          if (numel > 0 && q.eq(-128).any().item<bool>()) return Invalid(name, "int8 value -128 (range is +-127)");
          flat = q.to(at::kFloat).mul(scale);
        } else {
          const int64_t k = tensor.indices_size();
          if (k > numel) return Invalid(name, absl::StrCat(k, " top-k indices for ", numel, " elements"));
          if (absl::Status s = expect_size(k * 4); !s.ok()) return s;
          std::vector<int64_t> idx(static_cast<size_t>(k));
          for (int64_t i = 0; i < k; ++i) {
            const int64_t v = tensor.indices(static_cast<int>(i));
            if (v >= numel) return Invalid(name, absl::StrCat("top-k index ", v, " out of range [0, ", numel, ")"));
            if (i > 0 && v <= idx[i - 1]) return Invalid(name, "top-k indices are not strictly increasing");
            idx[i] = v;
          }
          flat = at::zeros({numel}, at::TensorOptions().dtype(at::kFloat));
          if (k > 0) {
            at::Tensor index = at::from_blob(idx.data(), {k}, at::TensorOptions().dtype(at::kLong)).clone();
            flat.index_copy_(0, index, FromBytes(data, k, at::kFloat));
          }
        }
        if (!AllFinite(flat)) return Invalid(name, "non-finite value (NaN or infinity)");
        break;
      }
      default:
        return Invalid(name, absl::StrCat("unknown encoding ", tensor.encoding()));
    }
    at::Tensor result = flat.to(*type).reshape(shape).contiguous();
    if (floating && *type != at::kFloat && !AllFinite(result)) {
      return Invalid(name, absl::StrCat("value out of ", DTypeName(result), " range"));
    }
    return result;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("decoding tensor '", name, "': ", e.what_without_backtrace()));
  }
}

absl::StatusOr<TensorMap> DecodeTensors(const v1::TensorBundle& bundle, const TensorMap* expected) {
  TensorMap out;
  for (const NamedTensor& tensor : bundle.tensors()) {
    const at::Tensor* want = nullptr;
    if (expected != nullptr) {
      auto it = expected->find(tensor.name());
      if (it == expected->end()) return Invalid(tensor.name(), "not a tensor of the model");
      want = &it->second;
    }
    absl::StatusOr<at::Tensor> decoded = DecodeTensor(tensor, want);
    if (!decoded.ok()) return decoded.status();
    if (!out.emplace(tensor.name(), *std::move(decoded)).second) {
      return Invalid(tensor.name(), "occurs twice in the bundle");
    }
  }
  if (expected != nullptr && out.size() != expected->size()) return CheckSameSchema(*expected, out, "tensor bundle");
  return out;
}

absl::StatusOr<v1::TensorBundle> ParseTensorBundle(absl::string_view bytes, absl::string_view what) {
  v1::TensorBundle bundle;
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max()) ||
      !bundle.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": ", bytes.size(), " bytes are not a valid fedtune.v1.TensorBundle"));
  }
  return bundle;
}

absl::StatusOr<EncodedBundle> ErrorFeedback::Encode(const TensorMap& delta, const EncodeOptions& options) {
  TensorMap corrected;    // What is sent, in the delta's dtypes.
  TensorMap corrected_f;  // The same in float32, for tensors that keep a residual.
  try {
    for (const auto& [name, d] : delta) {
      if (!d.defined() || !IsFloating(d) || IsBatchNormStatistic(name)) {
        corrected.emplace(name, d);
        continue;
      }
      at::Tensor c = d.detach().to(at::kCPU, at::kFloat);
      auto it = residual_.find(name);
      if (it != residual_.end()) {
        if (it->second.sizes() != d.sizes()) {
          return Invalid(
              name, absl::StrCat("shape ", ShapeString(d), " differs from its residual's ", ShapeString(it->second)));
        }
        c = c + it->second;
      }
      corrected_f.emplace(name, c);
      corrected.emplace(name, c.to(d.scalar_type()));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("error feedback: ", e.what_without_backtrace()));
  }
  absl::StatusOr<EncodedBundle> encoded = EncodeTensors(corrected, options);
  if (!encoded.ok()) return encoded.status();
  TensorMap residual;
  for (const NamedTensor& sent : encoded->bundle.tensors()) {
    auto it = corrected_f.find(sent.name());
    if (it == corrected_f.end()) continue;
    absl::StatusOr<at::Tensor> decoded = DecodeTensor(sent);
    if (!decoded.ok()) {
      return absl::InternalError(
          absl::StrCat("error feedback: own encoding does not decode: ", decoded.status().message()));
    }
    residual.emplace(sent.name(), (it->second - decoded->to(at::kFloat)).contiguous());
  }
  residual_ = std::move(residual);
  return encoded;
}

absl::Status ErrorFeedback::SetResidual(const TensorMap& residual) {
  TensorMap copy;
  for (const auto& [name, r] : residual) {
    if (!r.defined() || !IsFloating(r)) return Invalid(name, "residual must be a floating tensor");
    at::Tensor f = r.detach().to(at::kCPU, at::kFloat).contiguous().clone();
    if (!AllFinite(f)) return Invalid(name, "non-finite residual");
    copy.emplace(name, std::move(f));
  }
  residual_ = std::move(copy);
  return absl::OkStatus();
}

}  // namespace fedtune::fl
