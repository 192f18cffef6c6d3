// The torch.save file format (PyTorch >= 1.6: a zip archive with data.pkl and one data/<key> record per tensor
// storage), read through a RESTRICTED unpickler and written by a minimal pickler. Used by state_dict.h (imports)
// and checkpoint.h (fedtune's own checkpoints, which Python reads with a plain torch.load).
//
// The unpickler interprets only what tensor containers use: protocol 2-5 framing, None/bool/int/float/str,
// tuples, lists, dicts, memo opcodes, and the globals collections.OrderedDict, torch._utils._rebuild_tensor_v2,
// torch._utils._rebuild_parameter and torch.<Type>Storage (as a persistent id). Any other opcode or global is
// refused with InvalidArgument: no pickled code is ever executed.
//
// Thread safety: all functions are reentrant.
#ifndef FEDTUNE_COMMON_MODEL_TORCH_ARCHIVE_H_
#define FEDTUNE_COMMON_MODEL_TORCH_ARCHIVE_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fedtune::model {

// A value of a restricted pickle.
struct PickleValue {
  enum class Kind { kNone, kBool, kInt, kFloat, kString, kTuple, kList, kDict, kTensor, kGlobal, kMark };
  Kind kind = Kind::kNone;
  bool b = false;
  int64_t i = 0;
  double d = 0;
  std::string s;                                    // kString; the qualified name of a kGlobal.
  std::vector<std::shared_ptr<PickleValue>> items;  // kTuple, kList.
  std::vector<std::pair<std::shared_ptr<PickleValue>, std::shared_ptr<PickleValue>>> entries;  // kDict, in order.
  at::Tensor tensor;                          // kTensor (CPU, contiguous, owning).
  int global_id = 0;                          // kGlobal: internal tag.
  at::ScalarType storage_dtype = at::kFloat;  // kGlobal of a storage type.

  // Convenience constructors for writers.
  static std::shared_ptr<PickleValue> String(std::string s);
  static std::shared_ptr<PickleValue> Int(int64_t i);
  static std::shared_ptr<PickleValue> Tensor(at::Tensor t);
  static std::shared_ptr<PickleValue> List(std::vector<std::shared_ptr<PickleValue>> items);
  static std::shared_ptr<PickleValue> Dict();  // Add entries with AddEntry.
  void AddEntry(const std::string& key, std::shared_ptr<PickleValue> value);
  // The value of string key `key` in a dict, or nullptr.
  const PickleValue* Find(absl::string_view key) const;
};
using PickleValuePtr = std::shared_ptr<PickleValue>;

// "None", "int", "dict", ... for messages.
const char* PickleKindName(PickleValue::Kind kind);

// Reads a torch.save archive held in memory. `name` (usually the path) prefixes every message. InvalidArgument when
// the bytes are not a zip archive, lack data.pkl, hold a refused opcode or global, are malformed, or reference
// storage records that are missing or too short.
absl::StatusOr<PickleValuePtr> ReadTorchArchive(absl::string_view archive, absl::string_view name);

// Serializes `root` (None/bool/int/float/str/list/tuple/dict with str keys/tensor, nested) as a torch.save archive
// that Python's torch.load returns as the corresponding plain objects (dicts as dict, tensors as torch.Tensor).
// Output is deterministic for equal inputs. InvalidArgument for kinds that cannot be written (globals, marks) or
// tensor dtypes without a storage type.
absl::StatusOr<std::string> WriteTorchArchive(const PickleValue& root);

}  // namespace fedtune::model

#endif  // FEDTUNE_COMMON_MODEL_TORCH_ARCHIVE_H_
