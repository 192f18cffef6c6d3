#include "site_agent/loadgen/delta_payloads.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/fl/codec.h"
#include "common/fl/model_tensors.h"
#include "common/fl/tensor_map.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "common/model/checkpoint.h"
#include "common/status_macros.h"

namespace fedtune::loadgen {

DeltaPayloads::DeltaPayloads(std::string dir, double delta_value) : dir_(std::move(dir)), delta_value_(delta_value) {}

absl::Status DeltaPayloads::LearnSchema(const std::string& model_path) {
  absl::MutexLock lock(&mu_);
  if (has_schema_) return absl::OkStatus();
  ASSIGN_OR_RETURN(model::Checkpoint checkpoint, model::LoadCheckpoint(model_path));
  for (const auto& [name, tensor] : fl::CheckpointTensors(checkpoint)) {
    schema_.push_back({name, tensor.sizes().vec(), static_cast<int>(tensor.scalar_type())});
  }
  has_schema_ = true;
  return absl::OkStatus();
}

bool DeltaPayloads::has_schema() const {
  absl::MutexLock lock(&mu_);
  return has_schema_;
}

int64_t DeltaPayloads::model_elements() const {
  absl::MutexLock lock(&mu_);
  int64_t n = 0;
  for (const TensorSpec& spec : schema_) {
    int64_t numel = 1;
    for (int64_t d : spec.shape) numel *= d;
    n += numel;
  }
  return n;
}

absl::StatusOr<DeltaPayload> DeltaPayloads::Get(fl::Encoding encoding, double topk_fraction, int variant) {
  if (encoding != fl::Encoding::kTopK) topk_fraction = 0;
  absl::MutexLock lock(&mu_);  // Held while building: the other sites wait for the one payload.
  if (!has_schema_) {
    return absl::FailedPreconditionError("delta payloads: no model downloaded yet to take the tensor shapes from");
  }
  const auto key = std::make_tuple(static_cast<int>(encoding), topk_fraction, variant);
  if (auto it = built_.find(key); it != built_.end()) return it->second;
  ASSIGN_OR_RETURN(DeltaPayload payload, Build(encoding, topk_fraction, variant));
  built_[key] = payload;
  return payload;
}

absl::StatusOr<DeltaPayload> DeltaPayloads::Build(fl::Encoding encoding, double topk_fraction, int variant) {
  if (variant < 0) return absl::InvalidArgumentError(absl::StrCat("delta variant ", variant, " is negative"));
  RETURN_IF_ERROR(io::MakeDirectories(dir_));
  std::string name = fl::EncodingName(encoding);
  if (encoding == fl::Encoding::kTopK) absl::StrAppend(&name, absl::StrFormat("-%g", topk_fraction));
  DeltaPayload payload;
  payload.path = (std::filesystem::path(dir_) / absl::StrCat(name, "-v", variant, ".bin")).string();
  const std::string tmp = absl::StrCat(payload.path, ".tmp");
  std::filesystem::remove(tmp);
  fl::EncodeOptions options;
  options.encoding = encoding;
  if (encoding == fl::Encoding::kTopK) options.topk_fraction = topk_fraction;
  const double value = variant * delta_value_;
  io::Sha256 sha;
  {
    ASSIGN_OR_RETURN(io::AppendOnlyFile file, io::AppendOnlyFile::Open(tmp));
    // A serialized TensorBundle is the concatenation of its tensors' fields (a repeated field): each tensor is
    // encoded and appended alone, so one tensor at a time is in memory.
    for (const TensorSpec& spec : schema_) {
      const auto dtype = static_cast<at::ScalarType>(spec.dtype);
      const at::TensorOptions type = at::TensorOptions().dtype(dtype);
      const bool floating = at::isFloatingType(dtype);
      fl::TensorMap one;
      one[spec.name] = floating ? at::full(spec.shape, value, type) : at::zeros(spec.shape, type);
      ASSIGN_OR_RETURN(fl::EncodedBundle encoded, fl::EncodeTensors(one, options));
      const std::string bytes = encoded.bundle.SerializeAsString();
      sha.Update(bytes);
      RETURN_IF_ERROR(file.Append(bytes));
      payload.bytes += static_cast<int64_t>(bytes.size());
    }
    RETURN_IF_ERROR(file.Close());
  }
  std::error_code ec;
  std::filesystem::rename(tmp, payload.path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", payload.path, ": ", ec.message()));
  payload.sha256 = sha.HexDigest();
  return payload;
}

}  // namespace fedtune::loadgen
