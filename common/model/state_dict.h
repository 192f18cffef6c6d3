// Reading PyTorch weights: state dicts saved by Python's `torch.save(model.state_dict(), f)` and `.safetensors`
// files, and loading them by name into a fedtune classifier.
//
// Security: a pickle is a program. fedtune never runs one: ParseTorchStateDict interprets only the handful of
// opcodes and globals that a state dict uses (collections.OrderedDict, torch._utils._rebuild_tensor_v2,
// torch._utils._rebuild_parameter, torch.<Type>Storage) and refuses anything else with InvalidArgument naming the
// opcode or global. Only the zip format of PyTorch >= 1.6 is read (data.pkl + data/N records); the legacy pre-1.6
// format is refused with InvalidArgument.
//
// Thread safety: the functions are reentrant; LoadStateDictIntoModel needs exclusive access to the model.
#ifndef FEDTUNE_COMMON_MODEL_STATE_DICT_H_
#define FEDTUNE_COMMON_MODEL_STATE_DICT_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace torch::nn {
class Module;
}  // namespace torch::nn

namespace fedtune::model {

class ClassifierImpl;

// Tensors by state-dict key ("features.conv0.weight"), on the CPU, contiguous, owning their memory.
using StateDict = std::map<std::string, at::Tensor>;

// Reads a state dict written by `torch.save(obj, f)` where obj is a (Ordered)dict of tensors, or a dict holding
// such a dict under "state_dict" (a common training-checkpoint layout). Tensor dtypes are preserved (float16 stays
// float16). NotFound/PermissionDenied when the file cannot be read; InvalidArgument for anything that is not such a
// state dict (not a zip archive, refused opcode or global, malformed pickle, non-tensor values, storage records too
// short for the tensors that view them). Messages name the file.
absl::StatusOr<StateDict> ReadTorchStateDict(const std::string& path);
// The same on an in-memory archive; `name` is used in messages only.
absl::StatusOr<StateDict> ParseTorchStateDict(absl::string_view archive, absl::string_view name = "<memory>");

// Largest accepted .safetensors JSON header: 16 MiB, ~30x the header of a 5,000-tensor model. Parsed JSON takes
// 10-20x its text in memory; the safetensors reference reader's own bound is 100 MB.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = uint64_t{16} << 20;

// Reads a .safetensors file (8-byte little-endian header length, JSON header, raw little-endian data). Supported
// dtypes: F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL. The optional "__metadata__" entry is ignored.
// InvalidArgument naming the file and tensor on a malformed header (longer than kMaxSafetensorsHeaderBytes, a shape
// that is not a list of at most kMaxTensorDims (torch_archive.h) non-negative integers, or data_offsets that are not
// two non-negative integers), an unknown dtype, offsets outside the data, a size that does not match the shape, or
// tensors whose data overlap (each byte is read into at most one tensor, so the result is never larger than the
// file). ResourceExhausted when memory runs out. No exception escapes.
absl::StatusOr<StateDict> ReadSafetensors(const std::string& path);
absl::StatusOr<StateDict> ParseSafetensors(absl::string_view bytes, absl::string_view name = "<memory>");
// Writes tensors as .safetensors (keys sorted; F32/F16/BF16/F64/I64/I32/I16/I8/U8/BOOL), atomically.
// InvalidArgument for other dtypes.
absl::Status WriteSafetensors(const StateDict& tensors, const std::string& path);

// Reads either format, chosen by content (a zip archive is a torch.save file, anything else is tried as
// safetensors).
absl::StatusOr<StateDict> ReadStateDictFile(const std::string& path);

// The parameters and buffers of a module by their state-dict keys (detached, contiguous CPU copies).
StateDict ModuleStateDict(const torch::nn::Module& module);

struct ImportOptions {
  // Fold a stem convolution with more input channels (an RGB ImageNet model) into the model's single channel by
  // summing the filters over input channels: the same response to a gray image replicated to RGB. Default true.
  bool fold_stem = true;
  // Keep the model's freshly initialized final linear layer when the source head has a different shape (another
  // number of outputs) or the source has no head at all. Default true; when false such a mismatch is an error like
  // any other (and an absent head counts as missing keys).
  bool replace_mismatched_head = true;
  // Accept model keys absent from the source (they keep their initialization). Default false: missing keys are an
  // error.
  bool allow_missing = false;
};

struct ImportReport {
  int64_t loaded = 0;                         // Model tensors set from the source.
  std::vector<std::string> missing_keys;      // Model keys absent from the source.
  std::vector<std::string> unexpected_keys;   // Source keys the model does not have (ignored).
  bool stem_folded = false;                   // The stem's input channels were summed.
  int64_t source_stem_channels = 0;           // Input channels of the source stem (0 if absent).
  bool head_replaced = false;                 // The source head was dropped for a fresh one.
  std::vector<int64_t> source_head_shape;     // Shape of the source head weight (empty if absent).
  bool stripped_module_prefix = false;        // Keys began with DataParallel's "module.".
  bool renamed_legacy_densenet_keys = false;  // Old DenseNet keys "norm.1" were read as "norm1".
  // One human-readable paragraph: counts, folding, head replacement, and up to 10 missing/unexpected keys.
  std::string Summary() const;
};

// Copies `source` into the model by key. Accepted source keys: the model's own, optionally prefixed "module."
// (DataParallel), and old torchvision DenseNet keys ("denselayer1.norm.1.weight"). Values are converted to the
// model's dtype. InvalidArgument naming the key when shapes differ (other than the folded stem and replaced head
// above), and when keys are missing and !options.allow_missing (listing them). On error the model may be partly
// loaded. The model must not be in use by other threads.
absl::StatusOr<ImportReport> LoadStateDictIntoModel(const StateDict& source, ClassifierImpl& model,
                                                    const ImportOptions& options = {});

}  // namespace fedtune::model

#endif  // FEDTUNE_COMMON_MODEL_STATE_DICT_H_
