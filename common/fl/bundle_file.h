// Reading a serialized fedtune.v1.TensorBundle from a file one NamedTensor at a time, so that a large payload (an
// upload spooled to disk) is decoded with memory for one encoded tensor at a time instead of the whole message
// plus its parsed copy. The file holds exactly what TensorBundle::SerializeToString writes (field 1 repeated);
// other fields are refused.
//
// Thread safety: reentrant.
#ifndef FEDTUNE_COMMON_FL_BUNDLE_FILE_H_
#define FEDTUNE_COMMON_FL_BUNDLE_FILE_H_

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/fl/codec.h"
#include "common/fl/tensor_map.h"
#include "fedtune/v1/tensor.pb.h"

namespace fedtune::fl {

// Calls fn on each NamedTensor of the bundle in `path`, in file order, stopping at (and returning) fn's first
// error. NotFound / PermissionDenied when the file cannot be opened; InvalidArgument naming the path and byte offset
// when the bytes are not a TensorBundle (truncated, unknown field, malformed tensor message); Internal for read
// errors. A single tensor message is limited to 2 GiB (protobuf's limit); the file is not.
absl::Status ForEachNamedTensorInFile(const std::string& path, const std::function<absl::Status(v1::NamedTensor&)>& fn);

// Decodes the bundle in `path` one tensor at a time, calling fn(name, tensor) on each decoded tensor in file order
// and stopping at (and returning) fn's first error: memory for one encoded and one decoded tensor at a time, however
// large the bundle. `tensor` is the caller's to keep or drop. Each tensor is decoded as codec.h's DecodeTensor does,
// with the same optional `expected` schema (a server passes the global model): with it, a name that is not
// expected's is refused before anything is allocated, and once the file ends the names must be exactly expected's
// (InvalidArgument listing the missing ones). A name that occurs twice is InvalidArgument. Errors as
// ForEachNamedTensorInFile and DecodeTensor, messages prefixed with the path; fn's errors are returned unchanged.
// fn has seen every tensor when this returns OK; on an error it may have seen some.
absl::Status ForEachDecodedTensorInFile(const std::string& path, const TensorMap* expected,
                                        const std::function<absl::Status(const std::string&, at::Tensor)>& fn);

// As above, but a name that `expected` lacks is first shown to `explain_unexpected` (when set): an error it returns
// is returned as it is (without the path), before the generic "not a tensor of the model". The coordinator uses it to
// say why a tensor of the model is not expected in a partial bundle (a BatchNorm tensor that stays at the site).
absl::Status ForEachDecodedTensorInFile(const std::string& path, const TensorMap* expected,
                                        const std::function<absl::Status(const std::string&, at::Tensor)>& fn,
                                        const std::function<absl::Status(const std::string&)>& explain_unexpected);

// Decodes every tensor of the bundle in `path` as codec.h's DecodeTensors does, with the same optional `expected`
// schema (a server should pass the global model). Errors as ForEachNamedTensorInFile and DecodeTensors, messages
// prefixed with the path.
absl::StatusOr<TensorMap> DecodeTensorBundleFile(const std::string& path, const TensorMap* expected = nullptr);

// Writes `tensors` to `path` as a serialized TensorBundle, byte for byte what
// EncodeTensors(tensors, options)->bundle.SerializeAsString() is, but encoding one tensor at a time: memory for one
// encoded tensor, however large the map (e.g. FedAdam's state, two models). Atomic: a temporary file beside `path`
// is written, synced and renamed over it. EncodeTensors' errors; io errors naming the path. On error `path` is
// untouched.
absl::Status WriteTensorBundleFile(const std::string& path, const TensorMap& tensors,
                                   const EncodeOptions& options = {});

}  // namespace fedtune::fl

#endif  // FEDTUNE_COMMON_FL_BUNDLE_FILE_H_
