#include "common/model/state_dict.h"

#include <torch/nn/module.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <tuple>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/io/file_util.h"
#include "common/model/classifier.h"
#include "common/model/torch_archive.h"
#include "common/status_macros.h"

namespace fedtune::model {
namespace {

// Turns the unpickled object into a StateDict: a dict of tensors, or a dict with such a dict under "state_dict".
absl::StatusOr<StateDict> ToStateDict(const PickleValue& root, absl::string_view name) {
  if (root.kind != PickleValue::Kind::kDict) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": the pickled object is a ", PickleKindName(root.kind),
                                                   ", not a state dict (dict of tensors)"));
  }
  for (const auto& [key, value] : root.entries) {
    if (key->kind == PickleValue::Kind::kString && key->s == "state_dict" && value->kind == PickleValue::Kind::kDict) {
      return ToStateDict(*value, absl::StrCat(name, "[\"state_dict\"]"));
    }
  }
  StateDict out;
  for (const auto& [key, value] : root.entries) {
    if (key->kind != PickleValue::Kind::kString) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": state-dict key is a ", PickleKindName(key->kind)));
    }
    if (value->kind != PickleValue::Kind::kTensor) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": value of key '", key->s, "' is a ", PickleKindName(value->kind), ", not a tensor"));
    }
    out[key->s] = value->tensor;
  }
  return out;
}

bool IsZip(absl::string_view bytes) {
  return bytes.size() >= 4 && bytes.substr(0, 4) == absl::string_view("PK\3\4", 4);
}

// ---------------------------------------------------------------------------------------------------------------
// safetensors.

struct SafetensorsType {
  const char* name;
  at::ScalarType dtype;
};
constexpr SafetensorsType kSafetensorsTypes[] = {
    {"F32", at::kFloat}, {"F16", at::kHalf},  {"BF16", at::kBFloat16}, {"F64", at::kDouble}, {"I64", at::kLong},
    {"I32", at::kInt},   {"I16", at::kShort}, {"I8", at::kChar},       {"U8", at::kByte},    {"BOOL", at::kBool}};

std::string ShapeString(at::IntArrayRef shape) { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

}  // namespace

absl::StatusOr<StateDict> ParseTorchStateDict(absl::string_view archive, absl::string_view name) {
  ASSIGN_OR_RETURN(PickleValuePtr root, ReadTorchArchive(archive, name));
  return ToStateDict(*root, name);
}

absl::StatusOr<StateDict> ReadTorchStateDict(const std::string& path) {
  ASSIGN_OR_RETURN(std::string bytes, io::ReadFile(path));
  return ParseTorchStateDict(bytes, path);
}

absl::StatusOr<StateDict> ParseSafetensors(absl::string_view bytes, absl::string_view name) {
  auto error = [&](const auto&... args) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": safetensors: ", args...));
  };
  if (bytes.size() < 8) return error("file shorter than its 8-byte header length");
  uint64_t header_len = 0;
  for (int k = 0; k < 8; ++k) header_len |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[k])) << (8 * k);
  if (header_len > bytes.size() - 8) return error("header length ", header_len, " exceeds the file");
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return error("header of ", header_len,
                 " bytes is larger than kMaxSafetensorsHeaderBytes = ", kMaxSafetensorsHeaderBytes);
  }
  absl::string_view header_text = bytes.substr(8, header_len);
  absl::string_view data = bytes.substr(8 + header_len);
  try {
    nlohmann::json header = nlohmann::json::parse(header_text.begin(), header_text.end(), nullptr, false);
    if (header.is_discarded() || !header.is_object()) return error("header is not a JSON object");
    // First every entry is checked (no tensor is allocated before all of them are), then the data is copied.
    struct Entry {
      std::string key;
      at::ScalarType dtype;
      std::vector<int64_t> shape;
      uint64_t begin, end;
    };
    std::vector<Entry> entries;
    for (const auto& [key, entry] : header.items()) {
      if (key == "__metadata__") continue;
      if (!entry.is_object()) return error("entry '", key, "' is not an object");
      const std::string dtype_name = entry.at("dtype").get<std::string>();
      const SafetensorsType* type = nullptr;
      for (const auto& t : kSafetensorsTypes) {
        if (dtype_name == t.name) type = &t;
      }
      if (type == nullptr) return error("tensor '", key, "' has unsupported dtype ", dtype_name);
      // Integers only: nlohmann converts a float to int64 with a cast that is undefined out of range.
      const nlohmann::json& shape_json = entry.at("shape");
      if (!shape_json.is_array() || shape_json.size() > static_cast<size_t>(kMaxTensorDims)) {
        return error("tensor '", key, "': shape must be a list of at most kMaxTensorDims = ", kMaxTensorDims,
                     " dimensions");
      }
      std::vector<int64_t> shape;
      uint64_t numel = 1, extent = 1;  // extent: the product of max(d, 1), which strides must represent.
      for (const nlohmann::json& d : shape_json) {
        if (!d.is_number_integer() || (d.is_number_unsigned() && d.get<uint64_t>() > (uint64_t{1} << 62)) ||
            (!d.is_number_unsigned() && d.get<int64_t>() < 0)) {
          return error("tensor '", key, "': shape ", shape_json.dump(), " is not a list of non-negative integers");
        }
        const uint64_t n = d.get<uint64_t>();
        if (n > 0 && numel > bytes.size() / n) {
          return error("tensor '", key, "' has more elements than the file has bytes");
        }
        numel *= n;
        if (__builtin_mul_overflow(extent, std::max<uint64_t>(n, 1), &extent) || extent > (uint64_t{1} << 62)) {
          return error("tensor '", key, "': shape ", shape_json.dump(), " is too large");
        }
        shape.push_back(static_cast<int64_t>(n));
      }
      const nlohmann::json& offsets = entry.at("data_offsets");
      if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
          !offsets[1].is_number_unsigned()) {
        return error("tensor '", key, "': data_offsets must be two non-negative integers");
      }
      const uint64_t begin = offsets[0].get<uint64_t>(), end = offsets[1].get<uint64_t>();
      if (begin > end || end > data.size()) {
        return error("tensor '", key, "' has data_offsets outside the data (", data.size(), " bytes)");
      }
      const uint64_t nbytes = numel * c10::elementSize(type->dtype);
      if (end - begin != nbytes) {
        return error("tensor '", key, "' spans ", end - begin, " bytes, its shape ", ShapeString(shape), " needs ",
                     nbytes);
      }
      entries.push_back({key, type->dtype, std::move(shape), begin, end});
    }
    // Tensors sharing bytes would let a small file materialize many times its size.
    std::vector<const Entry*> by_offset;
    for (const Entry& e : entries) by_offset.push_back(&e);
    std::sort(by_offset.begin(), by_offset.end(),
              [](const Entry* a, const Entry* b) { return std::tie(a->begin, a->end) < std::tie(b->begin, b->end); });
    for (size_t k = 1; k < by_offset.size(); ++k) {
      if (by_offset[k]->begin < by_offset[k - 1]->end) {
        return error("tensors '", by_offset[k - 1]->key, "' and '", by_offset[k]->key, "' overlap in the data");
      }
    }
    StateDict out;
    for (const Entry& e : entries) {
      at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.dtype));
      if (e.end > e.begin) std::memcpy(t.data_ptr(), data.data() + e.begin, e.end - e.begin);
      out[e.key] = std::move(t);
    }
    return out;
  } catch (const nlohmann::json::exception& e) {
    return error("malformed header entry: ", e.what());
  } catch (const c10::Error& e) {
    return error(e.what_without_backtrace());
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(name, ": safetensors: out of memory"));
  }
}

absl::StatusOr<StateDict> ReadSafetensors(const std::string& path) {
  ASSIGN_OR_RETURN(std::string bytes, io::ReadFile(path));
  return ParseSafetensors(bytes, path);
}

absl::Status WriteSafetensors(const StateDict& tensors, const std::string& path) {
  nlohmann::json header = nlohmann::json::object();
  std::string data;
  for (const auto& [key, tensor] : tensors) {
    const SafetensorsType* type = nullptr;
    for (const auto& t : kSafetensorsTypes) {
      if (tensor.scalar_type() == t.dtype) type = &t;
    }
    if (type == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("safetensors: tensor '", key, "' has unsupported dtype ", c10::toString(tensor.scalar_type())));
    }
    at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
    const size_t begin = data.size();
    data.append(static_cast<const char*>(t.data_ptr()), t.nbytes());
    header[key] = {{"dtype", type->name}, {"shape", t.sizes().vec()}, {"data_offsets", {begin, data.size()}}};
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');  // Align the data, as the reference writer does.
  std::string out(8, '\0');
  for (int k = 0; k < 8; ++k) out[k] = static_cast<char>((header_text.size() >> (8 * k)) & 0xff);
  out += header_text;
  out += data;
  return io::WriteFileAtomically(path, out);
}

absl::StatusOr<StateDict> ReadStateDictFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string bytes, io::ReadFile(path));
  if (IsZip(bytes)) return ParseTorchStateDict(bytes, path);
  return ParseSafetensors(bytes, path);
}

StateDict ModuleStateDict(const torch::nn::Module& module) {
  StateDict out;
  for (const auto& p : module.named_parameters()) out[p.key()] = p.value().detach().to(at::kCPU).contiguous().clone();
  for (const auto& b : module.named_buffers()) out[b.key()] = b.value().detach().to(at::kCPU).contiguous().clone();
  return out;
}

std::string ImportReport::Summary() const {
  auto list = [](const std::vector<std::string>& keys) {
    std::vector<std::string> head(keys.begin(), keys.begin() + std::min<size_t>(keys.size(), 10));
    return absl::StrCat(absl::StrJoin(head, ", "), keys.size() > 10 ? ", ..." : "");
  };
  std::string s = absl::StrCat("loaded ", loaded, " tensors");
  if (stripped_module_prefix) absl::StrAppend(&s, "; stripped the DataParallel prefix \"module.\"");
  if (renamed_legacy_densenet_keys) absl::StrAppend(&s, "; read legacy DenseNet keys (norm.1 -> norm1)");
  if (stem_folded) absl::StrAppend(&s, "; folded the ", source_stem_channels, "-channel stem into 1 channel");
  if (head_replaced) {
    absl::StrAppend(&s, "; replaced the head (source weight ", ShapeString(source_head_shape),
                    ") with a freshly initialized one");
  }
  if (!missing_keys.empty()) absl::StrAppend(&s, "; ", missing_keys.size(), " missing: ", list(missing_keys));
  if (!unexpected_keys.empty()) {
    absl::StrAppend(&s, "; ", unexpected_keys.size(), " unexpected (ignored): ", list(unexpected_keys));
  }
  return s;
}

namespace {

// Old torchvision DenseNet checkpoints name "denselayer1.norm.1.weight" what is now "denselayer1.norm1.weight".
std::optional<std::string> ModernDenseNetKey(const std::string& key) {
  static const char* kParts[] = {".norm.1.", ".relu.1.", ".conv.1.", ".norm.2.", ".relu.2.", ".conv.2."};
  if (key.find("denselayer") == std::string::npos) return std::nullopt;
  for (const char* part : kParts) {
    size_t at = key.find(part);
    if (at != std::string::npos) {
      std::string out = key;
      out.erase(at + 5, 1);  // ".norm.1." -> ".norm1."
      return out;
    }
  }
  return std::nullopt;
}

}  // namespace

absl::StatusOr<ImportReport> LoadStateDictIntoModel(const StateDict& source, ClassifierImpl& model,
                                                    const ImportOptions& options) {
  ImportReport report;
  // Normalize source keys.
  StateDict src;
  for (const auto& [raw_key, tensor] : source) {
    std::string key = raw_key;
    if (absl::StartsWith(key, "module.")) {
      key = key.substr(7);
      report.stripped_module_prefix = true;
    }
    if (auto modern = ModernDenseNetKey(key); modern && model.config().arch == Architecture::kDenseNet) {
      key = *modern;
      report.renamed_legacy_densenet_keys = true;
    }
    src[key] = tensor;
  }
  const std::string stem_key = model.stem_weight_key();
  const std::string head_prefix = model.head_prefix();
  std::set<std::string> used;
  try {
    torch::NoGradGuard no_grad;
    std::vector<std::pair<std::string, at::Tensor>> targets;
    for (const auto& p : model.named_parameters()) targets.emplace_back(p.key(), p.value());
    for (const auto& b : model.named_buffers()) targets.emplace_back(b.key(), b.value());
    for (auto& [key, target] : targets) {
      auto it = src.find(key);
      if (it == src.end()) {
        // A source without any head (a feature extractor) gets a fresh one, like a mismatching head.
        if (absl::StartsWith(key, head_prefix) && options.replace_mismatched_head) {
          report.head_replaced = true;
        } else {
          report.missing_keys.push_back(key);
        }
        continue;
      }
      used.insert(key);
      at::Tensor value = it->second;
      if (key == stem_key) report.source_stem_channels = value.dim() == 4 ? value.size(1) : 0;
      if (key == head_prefix + "weight") report.source_head_shape = value.sizes().vec();
      if (value.sizes() != target.sizes()) {
        if (key == stem_key && options.fold_stem && value.dim() == 4 && target.size(1) == 1 &&
            value.size(0) == target.size(0) && value.size(2) == target.size(2) && value.size(3) == target.size(3)) {
          value = value.to(at::kDouble).sum(1, /*keepdim=*/true);
          report.stem_folded = true;
        } else if (absl::StartsWith(key, head_prefix) && options.replace_mismatched_head) {
          report.head_replaced = true;
          continue;
        } else {
          return absl::InvalidArgumentError(absl::StrCat("state dict key '", key, "': shape ",
                                                         ShapeString(value.sizes()), " does not match the model's ",
                                                         ShapeString(target.sizes())));
        }
      }
      target.copy_(value.to(target.scalar_type()));
      ++report.loaded;
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("loading state dict: ", e.what_without_backtrace()));
  }
  for (const auto& [key, tensor] : src) {
    if (!used.count(key)) report.unexpected_keys.push_back(key);
  }
  if (!report.missing_keys.empty() && !options.allow_missing) {
    return absl::InvalidArgumentError(
        absl::StrCat("state dict lacks ", report.missing_keys.size(), " of the model's keys: ", report.Summary()));
  }
  return report;
}

}  // namespace fedtune::model
