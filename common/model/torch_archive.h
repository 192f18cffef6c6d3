// The torch.save file format (PyTorch >= 1.6: a zip archive with data.pkl and one data/<key> record per tensor
// storage), read through a RESTRICTED unpickler and written by a minimal pickler. Used by state_dict.h (imports)
// and checkpoint.h (fedtune's own checkpoints, which Python reads with a plain torch.load).
//
// The unpickler interprets only what tensor containers use: protocol 2-5 framing, None/bool/int/float/str,
// tuples, lists, dicts, memo opcodes, and the globals collections.OrderedDict, torch._utils._rebuild_tensor_v2,
// torch._utils._rebuild_parameter and torch.<Type>Storage (as a persistent id). Any other opcode or global is
// refused with InvalidArgument: no pickled code is ever executed.
//
// Hostile files. The same reader opens `fedtune-site model import` files and every checkpoint a coordinator sends,
// so a file must not be able to crash or exhaust the process. Before any record is read, the zip directory is
// checked against the file (every record stored, not compressed, lying inside the file, records not overlapping);
// while unpickling, the bounds below are enforced before the allocation each guards; the resulting value graph is
// checked for cycles, depth and expanded size in one linear pass; and values are destroyed without recursion.
// Every refusal is InvalidArgument naming the file and the bound.
//
// Thread safety: all functions are reentrant.
#ifndef FEDTUNE_COMMON_MODEL_TORCH_ARCHIVE_H_
#define FEDTUNE_COMMON_MODEL_TORCH_ARCHIVE_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fedtune::model {

// Bounds on what one archive may make ReadTorchArchive build, each a generous multiple of what real checkpoints
// need (fedtune's SoloNet checkpoint: ~190 MB, a few thousand tensors, ~25 pickle values and nesting 4 per tensor;
// torchvision and CheXpert state dicts alike).
//
// Nesting: containers (tuple/list/dict) on the longest path from any value of the pickle down to a leaf. State
// dicts nest 3-5 deep, training checkpoints with optimizer state < 10.
inline constexpr int kMaxPickleDepth = 256;
// Values pushed while unpickling (every value created, and every memo recall), and memo entries: 2,097,152 each,
// ~16x a 5,000-tensor checkpoint. Bounds the unpickler's own memory to ~300 MB however the pickle is written.
inline constexpr int64_t kMaxPickleValues = int64_t{1} << 21;
// Values of the result counted as a tree (a sub-graph reachable along several paths counts once per path): what a
// consumer walking the result recursively visits. Real pickles share only leaves (memoized strings and globals).
inline constexpr int64_t kMaxPickleExpandedValues = int64_t{1} << 23;
// Dimensions of one tensor (real ones have <= 5).
inline constexpr int kMaxTensorDims = 64;
// Bytes materialized from one archive (strings, storages read from records, tensors rebuilt from storages) are at
// most kMaterializedBytesPerArchiveByte x the archive's size + kMaterializedBytesAllowance. A real checkpoint
// materializes about 2x its size (each storage, then its tensor); a file that rebuilds one storage again and again
// is stopped here.
inline constexpr int64_t kMaterializedBytesPerArchiveByte = 4;
inline constexpr int64_t kMaterializedBytesAllowance = int64_t{16} << 20;  // 16 MiB.

// A value of a restricted pickle. Destroying one never recurses (deeply nested values are freed with a worklist),
// so values of any depth may be built and dropped; the reader never returns a graph with a cycle.
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

  PickleValue();
  PickleValue(const PickleValue& other);
  PickleValue(PickleValue&& other) noexcept;
  PickleValue& operator=(const PickleValue& other) = default;
  PickleValue& operator=(PickleValue&& other) = default;
  ~PickleValue();

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

// PickleValue objects alive in this process (for tests and diagnostics: a refused graph must be freed).
int64_t PickleValueLiveCount();

// Reads a torch.save archive held in memory. `name` (usually the path) prefixes every message. InvalidArgument when
// the bytes are not a zip archive, lack data.pkl, hold a refused opcode or global, are malformed, reference storage
// records that are missing or too short, or exceed a bound above (a compressed, oversized or overlapping zip
// record; nesting, value count, expanded size or materialized bytes; a reference cycle). ResourceExhausted when
// memory runs out within the bounds. No exception escapes. The result is acyclic, nested at most kMaxPickleDepth
// deep and at most kMaxPickleExpandedValues large as a tree.
absl::StatusOr<PickleValuePtr> ReadTorchArchive(absl::string_view archive, absl::string_view name);

// Serializes `root` (None/bool/int/float/str/list/tuple/dict with str keys/tensor, nested) as a torch.save archive
// that Python's torch.load returns as the corresponding plain objects (dicts as dict, tensors as torch.Tensor).
// Output is deterministic for equal inputs. InvalidArgument for kinds that cannot be written (globals, marks),
// tensor dtypes without a storage type, and values nested deeper than kMaxPickleDepth (which the reader refuses).
absl::StatusOr<std::string> WriteTorchArchive(const PickleValue& root);

// The same archive, handed to `sink` piece by piece instead of built in memory (a model-sized checkpoint is written
// to its file without a copy of it in memory). The first error of `sink` stops the writing and is returned; other
// errors as above.
absl::Status WriteTorchArchive(const PickleValue& root, const std::function<absl::Status(absl::string_view)>& sink);

}  // namespace fedtune::model

#endif  // FEDTUNE_COMMON_MODEL_TORCH_ARCHIVE_H_
