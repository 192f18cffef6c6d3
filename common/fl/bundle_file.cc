#include "common/fl/bundle_file.h"

#include <fcntl.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <set>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/fl/codec.h"
#include "common/io/file_util.h"
#include "common/status_macros.h"

namespace fedtune::fl {
namespace {

using google::protobuf::io::CodedInputStream;
using google::protobuf::io::FileInputStream;

// TensorBundle.tensors: field 1, wire type 2 (length-delimited).
constexpr uint32_t kTensorsTag = (1 << 3) | 2;

absl::Status OpenError(const std::string& path, int err) {
  const std::string message = absl::StrCat("cannot open tensor bundle ", path, ": ", std::strerror(err));
  if (err == ENOENT || err == ENOTDIR) return absl::NotFoundError(message);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(message);
  return absl::InternalError(message);
}

}  // namespace

absl::Status ForEachNamedTensorInFile(const std::string& path,
                                      const std::function<absl::Status(v1::NamedTensor&)>& fn) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return OpenError(path, errno);
  FileInputStream file(fd);
  file.SetCloseOnDelete(true);
  int64_t offset = 0;
  while (true) {
    // A fresh CodedInputStream per tensor keeps each one under protobuf's 2 GiB limit, not the whole file.
    CodedInputStream in(&file);
    const uint32_t tag = in.ReadTag();
    if (tag == 0) {
      if (file.GetErrno() != 0) {
        return absl::InternalError(absl::StrCat("reading tensor bundle ", path, ": ", std::strerror(file.GetErrno())));
      }
      if (in.ConsumedEntireMessage()) return absl::OkStatus();  // Clean end of file.
      return absl::InvalidArgumentError(absl::StrCat(path, ": not a tensor bundle (bad tag at byte ", offset, ")"));
    }
    if (tag != kTensorsTag) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": not a tensor bundle (field ", tag >> 3, ", wire type ",
                                                     tag & 7, " at byte ", offset, ")"));
    }
    uint32_t length = 0;
    if (!in.ReadVarint32(&length) || length > static_cast<uint32_t>(std::numeric_limits<int>::max())) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": bad tensor length at byte ", offset));
    }
    const int header = in.CurrentPosition();
    v1::NamedTensor tensor;
    const CodedInputStream::Limit limit = in.PushLimit(static_cast<int>(length));
    // In 64 bits: header + length overflows an int for a length near 2 GiB (found by fuzzing).
    if (!tensor.ParseFromCodedStream(&in) || !in.ConsumedEntireMessage() ||
        static_cast<int64_t>(in.CurrentPosition()) != static_cast<int64_t>(header) + length) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": truncated or malformed tensor message at byte ", offset, " (", length, " bytes)"));
    }
    in.PopLimit(limit);
    offset += header + static_cast<int64_t>(length);
    absl::Status status = fn(tensor);
    if (!status.ok()) return status;
  }
}

absl::Status ForEachDecodedTensorInFile(const std::string& path, const TensorMap* expected,
                                        const std::function<absl::Status(const std::string&, at::Tensor)>& fn) {
  return ForEachDecodedTensorInFile(path, expected, fn, nullptr);
}

absl::Status ForEachDecodedTensorInFile(const std::string& path, const TensorMap* expected,
                                        const std::function<absl::Status(const std::string&, at::Tensor)>& fn,
                                        const std::function<absl::Status(const std::string&)>& explain_unexpected) {
  std::set<std::string> seen;
  RETURN_IF_ERROR(ForEachNamedTensorInFile(path, [&](v1::NamedTensor& tensor) -> absl::Status {
    const at::Tensor* want = nullptr;
    if (expected != nullptr) {
      auto it = expected->find(tensor.name());
      if (it == expected->end()) {
        if (explain_unexpected) RETURN_IF_ERROR(explain_unexpected(tensor.name()));
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": tensor '", tensor.name(), "': not a tensor of the model"));
      }
      want = &it->second;
    }
    if (!seen.insert(tensor.name()).second) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", tensor.name(), "' occurs twice"));
    }
    absl::StatusOr<at::Tensor> decoded = DecodeTensor(tensor, want);
    if (!decoded.ok()) {
      return absl::Status(decoded.status().code(), absl::StrCat(path, ": ", decoded.status().message()));
    }
    // The encoded bytes are not needed any more: free them before fn allocates.
    std::string().swap(*tensor.mutable_data());
    google::protobuf::RepeatedField<uint32_t>().Swap(tensor.mutable_indices());
    return fn(tensor.name(), *std::move(decoded));
  }));
  if (expected != nullptr && seen.size() != expected->size()) {
    // Every name seen is expected's: CheckSameSchema then lists the missing ones.
    TensorMap present;
    for (const std::string& name : seen) present.emplace(name, expected->at(name));
    return CheckSameSchema(*expected, present, path);
  }
  return absl::OkStatus();
}

absl::StatusOr<TensorMap> DecodeTensorBundleFile(const std::string& path, const TensorMap* expected) {
  TensorMap out;
  RETURN_IF_ERROR(ForEachDecodedTensorInFile(path, expected, [&](const std::string& name, at::Tensor tensor) {
    out.emplace(name, std::move(tensor));
    return absl::OkStatus();
  }));
  return out;
}

absl::Status WriteTensorBundleFile(const std::string& path, const TensorMap& tensors, const EncodeOptions& options) {
  return io::WriteFileAtomicallyWith(path, [&](const io::ByteSink& sink) -> absl::Status {
    for (const auto& [name, tensor] : tensors) {
      // A bundle's repeated field serializes as the concatenation of one-tensor bundles.
      ASSIGN_OR_RETURN(EncodedBundle one, EncodeTensors(TensorMap{{name, tensor}}, options));
      RETURN_IF_ERROR(sink(one.bundle.SerializeAsString()));
    }
    return absl::OkStatus();
  });
}

}  // namespace fedtune::fl
