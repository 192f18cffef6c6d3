#include "common/model/torch_archive.h"

#include <ATen/Functions.h>
#include <c10/core/ScalarType.h>
#include <caffe2/serialize/in_memory_adapter.h>
#include <caffe2/serialize/inline_container.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace fedtune::model {
namespace {

namespace Global {
enum : int { kOrderedDict, kRebuildTensorV2, kRebuildParameter, kStorageType };
}

using Value = PickleValue;
using ValuePtr = PickleValuePtr;

ValuePtr Make(Value::Kind kind) {
  auto v = std::make_shared<Value>();
  v->kind = kind;
  return v;
}

const char* KindName(Value::Kind k) { return PickleKindName(k); }

// Maps an allowed global to its meaning; nullopt for everything else.
std::optional<std::pair<int, at::ScalarType>> LookUpGlobal(const std::string& module, const std::string& name) {
  if (module == "collections" && name == "OrderedDict") return std::make_pair(int{Global::kOrderedDict}, at::kFloat);
  if (module == "torch._utils" && name == "_rebuild_tensor_v2") {
    return std::make_pair(int{Global::kRebuildTensorV2}, at::kFloat);
  }
  if (module == "torch._utils" && name == "_rebuild_parameter") {
    return std::make_pair(int{Global::kRebuildParameter}, at::kFloat);
  }
  if (module == "torch") {
    static const std::map<std::string, at::ScalarType> kStorages = {
        {"FloatStorage", at::kFloat},   {"HalfStorage", at::kHalf}, {"BFloat16Storage", at::kBFloat16},
        {"DoubleStorage", at::kDouble}, {"LongStorage", at::kLong}, {"IntStorage", at::kInt},
        {"ShortStorage", at::kShort},   {"CharStorage", at::kChar}, {"ByteStorage", at::kByte},
        {"BoolStorage", at::kBool}};
    auto it = kStorages.find(name);
    if (it != kStorages.end()) return std::make_pair(int{Global::kStorageType}, it->second);
  }
  return std::nullopt;
}

// Loads storage record `key` holding `numel` elements of `dtype` as a 1-D tensor.
using StorageLoader = std::function<absl::StatusOr<at::Tensor>(const std::string& key, at::ScalarType, int64_t)>;

class Unpickler {
 public:
  Unpickler(absl::string_view data, std::string name, StorageLoader loader)
      : data_(data), name_(std::move(name)), loader_(std::move(loader)) {}

  absl::StatusOr<ValuePtr> Run() {
    while (true) {
      if (pos_ >= data_.size()) return Error("pickle ends without STOP");
      const size_t op_pos = pos_;
      const uint8_t op = static_cast<uint8_t>(data_[pos_++]);
      if (op == '.') {  // STOP
        if (stack_.size() != 1) return Error("STOP with a stack of size ", stack_.size());
        return stack_.back();
      }
      absl::Status status = Step(op);
      if (!status.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(status.message(), " (opcode 0x", absl::Hex(op, absl::kZeroPad2), " at byte ", op_pos, ")"));
      }
    }
  }

 private:
  template <typename... Args>
  absl::Status Error(const Args&... args) const {
    return absl::InvalidArgumentError(absl::StrCat(name_, ": data.pkl: ", args...));
  }

  absl::StatusOr<absl::string_view> Take(size_t n) {
    if (n > data_.size() - pos_) return Error("truncated pickle");
    absl::string_view out = data_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  absl::StatusOr<uint64_t> ReadLE(size_t n) {
    ASSIGN_OR_RETURN(absl::string_view bytes, Take(n));
    uint64_t v = 0;
    for (size_t k = 0; k < n; ++k) v |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[k])) << (8 * k);
    return v;
  }
  absl::StatusOr<std::string> ReadLine() {
    size_t end = data_.find('\n', pos_);
    if (end == absl::string_view::npos) return Error("truncated pickle (no newline)");
    std::string line(data_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return line;
  }

  absl::StatusOr<ValuePtr> Pop() {
    if (stack_.empty()) return Error("stack underflow");
    ValuePtr v = stack_.back();
    stack_.pop_back();
    if (v->kind == Value::Kind::kMark) return Error("unexpected MARK on the stack");
    return v;
  }
  // Pops everything above the topmost MARK (and the mark).
  absl::StatusOr<std::vector<ValuePtr>> PopToMark() {
    size_t k = stack_.size();
    while (k > 0 && stack_[k - 1]->kind != Value::Kind::kMark) --k;
    if (k == 0) return Error("no MARK on the stack");
    std::vector<ValuePtr> items(stack_.begin() + k, stack_.end());
    stack_.resize(k - 1);
    return items;
  }
  absl::Status Push(ValuePtr v) {
    if (stack_.size() >= kMaxStack) return Error("stack too deep");
    stack_.push_back(std::move(v));
    return absl::OkStatus();
  }
  absl::Status Memoize(uint64_t index) {
    if (stack_.empty()) return Error("memoizing an empty stack");
    if (index > kMaxMemo) return Error("memo index ", index, " too large");
    memo_[index] = stack_.back();
    return absl::OkStatus();
  }
  absl::Status Recall(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) return Error("memo index ", index, " not set");
    return Push(it->second);
  }
  absl::Status PushGlobal(const std::string& module, const std::string& name) {
    auto global = LookUpGlobal(module, name);
    if (!global) {
      return Error("refusing global '", module, ".", name,
                   "': a state dict holds only tensors (fedtune never executes pickled code)");
    }
    ValuePtr v = Make(Value::Kind::kGlobal);
    v->global_id = global->first;
    v->storage_dtype = global->second;
    v->s = absl::StrCat(module, ".", name);
    return Push(v);
  }
  absl::Status PushTuple(std::vector<ValuePtr> items) {
    ValuePtr v = Make(Value::Kind::kTuple);
    v->items = std::move(items);
    return Push(v);
  }
  static absl::StatusOr<int64_t> AsInt(const ValuePtr& v, const char* what) {
    if (v->kind == Value::Kind::kInt) return v->i;
    return absl::InvalidArgumentError(absl::StrCat(what, " must be an int, got ", KindName(v->kind)));
  }
  static absl::StatusOr<std::vector<int64_t>> AsIntTuple(const ValuePtr& v, const char* what) {
    if (v->kind != Value::Kind::kTuple) {
      return absl::InvalidArgumentError(absl::StrCat(what, " must be a tuple, got ", KindName(v->kind)));
    }
    std::vector<int64_t> out;
    for (const auto& item : v->items) {
      ASSIGN_OR_RETURN(int64_t x, AsInt(item, what));
      out.push_back(x);
    }
    return out;
  }

  absl::Status SetItems(const ValuePtr& dict, const std::vector<ValuePtr>& kv) {
    if (dict->kind != Value::Kind::kDict) return Error("SETITEM(S) on a ", KindName(dict->kind));
    if (kv.size() % 2 != 0) return Error("SETITEMS with an odd number of items");
    for (size_t k = 0; k < kv.size(); k += 2) dict->entries.emplace_back(kv[k], kv[k + 1]);
    return absl::OkStatus();
  }

  absl::StatusOr<ValuePtr> PersistentLoad(const ValuePtr& pid) {
    // ('storage', <storage type>, key, location, numel)
    if (pid->kind != Value::Kind::kTuple || pid->items.size() != 5 || pid->items[0]->kind != Value::Kind::kString ||
        pid->items[0]->s != "storage" || pid->items[1]->kind != Value::Kind::kGlobal ||
        pid->items[1]->global_id != Global::kStorageType || pid->items[2]->kind != Value::Kind::kString ||
        pid->items[4]->kind != Value::Kind::kInt) {
      return Error("unsupported persistent id (expected ('storage', torch.<Type>Storage, key, location, numel))");
    }
    const std::string& key = pid->items[2]->s;
    auto cached = storages_.find(key);
    if (cached != storages_.end()) return cached->second;
    if (pid->items[4]->i < 0) return Error("negative storage size for record ", key);
    ASSIGN_OR_RETURN(at::Tensor storage, loader_(key, pid->items[1]->storage_dtype, pid->items[4]->i));
    ValuePtr v = Make(Value::Kind::kTensor);
    v->tensor = storage;
    storages_[key] = v;
    return v;
  }

  absl::StatusOr<ValuePtr> Reduce(const ValuePtr& callable, const ValuePtr& args) {
    if (callable->kind != Value::Kind::kGlobal || args->kind != Value::Kind::kTuple) {
      return Error("REDUCE of a ", KindName(callable->kind), " is not allowed");
    }
    const auto& a = args->items;
    switch (callable->global_id) {
      case Global::kOrderedDict:
        if (!a.empty()) return Error("OrderedDict with arguments is not supported");
        return Make(Value::Kind::kDict);
      case Global::kRebuildTensorV2: {
        // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
        if (a.size() < 6 || a[0]->kind != Value::Kind::kTensor) return Error("malformed _rebuild_tensor_v2 call");
        auto offset = AsInt(a[1], "storage_offset");
        auto size = AsIntTuple(a[2], "size");
        auto stride = AsIntTuple(a[3], "stride");
        if (!offset.ok()) return Error(offset.status().message());
        if (!size.ok()) return Error(size.status().message());
        if (!stride.ok()) return Error(stride.status().message());
        if (size->size() != stride->size()) return Error("size and stride differ in length");
        const at::Tensor& storage = a[0]->tensor;
        // Bounds: the largest element index must lie inside the storage.
        // Bounds: the largest element index must lie inside the storage, and the tensor may not have more
        // elements than its storage (state dicts never hold expanded, stride-0 views; refusing them also bounds
        // the memory a file can make us allocate). Checked before any multiplication can overflow.
        const int64_t storage_numel = storage.numel();
        int64_t max_index = *offset, numel = 1;
        for (size_t k = 0; k < size->size(); ++k) {
          const int64_t n = (*size)[k], st = (*stride)[k];
          if (n < 0 || st < 0) return Error("negative size or stride");
          if (n > 0 && numel > std::max<int64_t>(storage_numel, 1) / n) {
            return Error("tensor has more elements than its storage (", storage_numel, ")");
          }
          numel *= n;
          if (n > 1 && st > storage_numel)
            return Error("tensor view exceeds its storage (", storage_numel, " elements)");
          max_index += (n > 0 ? n - 1 : 0) * st;
        }
        if (*offset < 0 || (numel > 0 && max_index >= storage.numel())) {
          return Error("tensor view exceeds its storage (", storage.numel(), " elements)");
        }
        ValuePtr v = Make(Value::Kind::kTensor);
        v->tensor = numel == 0 ? at::empty(*size, storage.options())
                               : storage.as_strided(*size, *stride, *offset).clone(at::MemoryFormat::Contiguous);
        return v;
      }
      case Global::kRebuildParameter:
        // (data, requires_grad, backward_hooks)
        if (a.size() != 3 || a[0]->kind != Value::Kind::kTensor) return Error("malformed _rebuild_parameter call");
        return a[0];
      case Global::kStorageType:
        break;
    }
    return Error("calling '", callable->s, "' is not allowed");
  }

  absl::Status Step(uint8_t op) {
    switch (op) {
      case 0x80: {  // PROTO
        ASSIGN_OR_RETURN(uint64_t proto, ReadLE(1));
        if (proto > 5) return Error("unsupported pickle protocol ", proto);
        return absl::OkStatus();
      }
      case 0x95:  // FRAME: a length hint only.
        return ReadLE(8).status();
      case '(':
        return Push(Make(Value::Kind::kMark));
      case '}':
      case ']': {
        return Push(Make(op == '}' ? Value::Kind::kDict : Value::Kind::kList));
      }
      case ')':
        return PushTuple({});
      case 't': {
        ASSIGN_OR_RETURN(auto items, PopToMark());
        return PushTuple(std::move(items));
      }
      case 0x85:
      case 0x86:
      case 0x87: {
        const size_t n = op - 0x84;
        std::vector<ValuePtr> items(n);
        for (size_t k = n; k-- > 0;) {
          ASSIGN_OR_RETURN(items[k], Pop());
        }
        return PushTuple(std::move(items));
      }
      case 'X':
      case 0x8c: {  // BINUNICODE, SHORT_BINUNICODE
        ASSIGN_OR_RETURN(uint64_t n, ReadLE(op == 'X' ? 4 : 1));
        ASSIGN_OR_RETURN(absl::string_view bytes, Take(n));
        ValuePtr v = Make(Value::Kind::kString);
        v->s = std::string(bytes);
        return Push(v);
      }
      case 'J':
      case 'K':
      case 'M': {  // BININT (signed 4 bytes), BININT1, BININT2 (unsigned)
        ASSIGN_OR_RETURN(uint64_t raw, ReadLE(op == 'J' ? 4 : op == 'K' ? 1 : 2));
        ValuePtr v = Make(Value::Kind::kInt);
        v->i = op == 'J' ? static_cast<int64_t>(static_cast<int32_t>(raw)) : static_cast<int64_t>(raw);
        return Push(v);
      }
      case 0x8a: {  // LONG1: little-endian two's complement of n <= 8 bytes.
        ASSIGN_OR_RETURN(uint64_t n, ReadLE(1));
        if (n > 8) return Error("integer wider than 64 bits");
        ASSIGN_OR_RETURN(uint64_t raw, ReadLE(n));
        if (n > 0 && n < 8 && (raw >> (8 * n - 1)) & 1) raw |= ~uint64_t{0} << (8 * n);  // Sign-extend.
        ValuePtr v = Make(Value::Kind::kInt);
        v->i = static_cast<int64_t>(raw);
        return Push(v);
      }
      case 'G': {  // BINFLOAT, big-endian.
        ASSIGN_OR_RETURN(absl::string_view bytes, Take(8));
        uint64_t raw = 0;
        for (char c : bytes) raw = (raw << 8) | static_cast<uint8_t>(c);
        ValuePtr v = Make(Value::Kind::kFloat);
        std::memcpy(&v->d, &raw, 8);
        return Push(v);
      }
      case 'N':
        return Push(Make(Value::Kind::kNone));
      case 0x88:
      case 0x89: {
        ValuePtr v = Make(Value::Kind::kBool);
        v->b = op == 0x88;
        return Push(v);
      }
      case 'c': {  // GLOBAL "module\nname\n"
        ASSIGN_OR_RETURN(std::string module, ReadLine());
        ASSIGN_OR_RETURN(std::string name, ReadLine());
        return PushGlobal(module, name);
      }
      case 0x93: {  // STACK_GLOBAL
        ASSIGN_OR_RETURN(ValuePtr name, Pop());
        ASSIGN_OR_RETURN(ValuePtr module, Pop());
        if (name->kind != Value::Kind::kString || module->kind != Value::Kind::kString) {
          return Error("STACK_GLOBAL needs two strings");
        }
        return PushGlobal(module->s, name->s);
      }
      case 'q':
      case 'r': {  // BINPUT, LONG_BINPUT
        ASSIGN_OR_RETURN(uint64_t index, ReadLE(op == 'q' ? 1 : 4));
        return Memoize(index);
      }
      case 0x94:  // MEMOIZE
        return Memoize(memo_.size());
      case 'h':
      case 'j': {  // BINGET, LONG_BINGET
        ASSIGN_OR_RETURN(uint64_t index, ReadLE(op == 'h' ? 1 : 4));
        return Recall(index);
      }
      case 'Q': {  // BINPERSID
        ASSIGN_OR_RETURN(ValuePtr pid, Pop());
        ASSIGN_OR_RETURN(ValuePtr storage, PersistentLoad(pid));
        return Push(storage);
      }
      case 'R': {
        ASSIGN_OR_RETURN(ValuePtr args, Pop());
        ASSIGN_OR_RETURN(ValuePtr callable, Pop());
        ASSIGN_OR_RETURN(ValuePtr result, Reduce(callable, args));
        return Push(result);
      }
      case 'b': {  // BUILD: only the OrderedDict's attributes (state_dict()._metadata), which are dropped.
        ASSIGN_OR_RETURN(ValuePtr state, Pop());
        if (stack_.empty() || stack_.back()->kind != Value::Kind::kDict) {
          return Error("BUILD is allowed on an OrderedDict only");
        }
        return absl::OkStatus();
      }
      case 's': {
        ASSIGN_OR_RETURN(ValuePtr value, Pop());
        ASSIGN_OR_RETURN(ValuePtr key, Pop());
        if (stack_.empty()) return Error("SETITEM without a dict");
        return SetItems(stack_.back(), {key, value});
      }
      case 'u': {
        ASSIGN_OR_RETURN(auto kv, PopToMark());
        if (stack_.empty()) return Error("SETITEMS without a dict");
        return SetItems(stack_.back(), kv);
      }
      case 'a':
      case 'e': {  // APPEND, APPENDS
        std::vector<ValuePtr> items;
        if (op == 'a') {
          ASSIGN_OR_RETURN(ValuePtr item, Pop());
          items.push_back(item);
        } else {
          ASSIGN_OR_RETURN(items, PopToMark());
        }
        if (stack_.empty() || stack_.back()->kind != Value::Kind::kList) return Error("APPEND(S) without a list");
        for (auto& item : items) stack_.back()->items.push_back(item);
        return absl::OkStatus();
      }
      default:
        return Error("refusing pickle opcode 0x", absl::Hex(op, absl::kZeroPad2),
                     " (not used by state dicts; fedtune never executes pickled code)");
    }
  }

  static constexpr size_t kMaxStack = 1 << 16;
  static constexpr uint64_t kMaxMemo = 1 << 24;

  absl::string_view data_;
  size_t pos_ = 0;
  std::string name_;
  StorageLoader loader_;
  std::vector<ValuePtr> stack_;
  std::map<uint64_t, ValuePtr> memo_;
  std::map<std::string, ValuePtr> storages_;
};

bool IsZip(absl::string_view bytes) {
  return bytes.size() >= 4 && bytes.substr(0, 4) == absl::string_view("PK\3\4", 4);
}

absl::StatusOr<PickleValuePtr> ParseArchive(caffe2::serialize::PyTorchStreamReader& reader, const std::string& name) {
  if (!reader.hasRecord("data.pkl")) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": archive has no data.pkl (not a torch.save file)"));
  }
  if (reader.hasRecord("byteorder")) {
    auto [ptr, size] = reader.getRecord("byteorder");
    std::string order(static_cast<const char*>(ptr.get()), size);
    if (order != "little") {
      return absl::InvalidArgumentError(absl::StrCat(name, ": byte order '", order, "' is not supported"));
    }
  }
  auto [pkl_ptr, pkl_size] = reader.getRecord("data.pkl");
  absl::string_view pickle(static_cast<const char*>(pkl_ptr.get()), pkl_size);
  StorageLoader loader = [&reader, &name](const std::string& key, at::ScalarType dtype,
                                          int64_t numel) -> absl::StatusOr<at::Tensor> {
    const std::string record = "data/" + key;
    if (key.empty() || key.find('/') != std::string::npos || !reader.hasRecord(record)) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": missing storage record '", record, "'"));
    }
    auto [ptr, size] = reader.getRecord(record);
    const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
    if (size < bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": storage record '", record, "' has ", size, " bytes, expected ", bytes));
    }
    at::Tensor t = at::empty({numel}, at::TensorOptions().dtype(dtype));
    if (bytes > 0) std::memcpy(t.data_ptr(), ptr.get(), bytes);
    return t;
  };
  Unpickler unpickler(pickle, name, loader);
  return unpickler.Run();
}

// ---------------------------------------------------------------------------------------------------------------
// The pickler (protocol 2, as torch.save writes).

class Pickler {
 public:
  absl::Status Write(const PickleValue& v) {
    switch (v.kind) {
      case PickleValue::Kind::kNone:
        out_ += 'N';
        return absl::OkStatus();
      case PickleValue::Kind::kBool:
        out_ += static_cast<char>(v.b ? 0x88 : 0x89);
        return absl::OkStatus();
      case PickleValue::Kind::kInt:
        WriteInt(v.i);
        return absl::OkStatus();
      case PickleValue::Kind::kFloat: {
        uint64_t raw;
        std::memcpy(&raw, &v.d, 8);
        out_ += 'G';
        for (int k = 7; k >= 0; --k) out_ += static_cast<char>((raw >> (8 * k)) & 0xff);
        return absl::OkStatus();
      }
      case PickleValue::Kind::kString:
        WriteString(v.s);
        return absl::OkStatus();
      case PickleValue::Kind::kTuple:
        out_ += '(';
        for (const auto& item : v.items) RETURN_IF_ERROR(Write(*item));
        out_ += 't';
        return absl::OkStatus();
      case PickleValue::Kind::kList:
        out_ += ']';
        if (!v.items.empty()) {
          out_ += '(';
          for (const auto& item : v.items) RETURN_IF_ERROR(Write(*item));
          out_ += 'e';
        }
        return absl::OkStatus();
      case PickleValue::Kind::kDict:
        out_ += '}';
        if (!v.entries.empty()) {
          out_ += '(';
          for (const auto& [key, value] : v.entries) {
            RETURN_IF_ERROR(Write(*key));
            RETURN_IF_ERROR(Write(*value));
          }
          out_ += 'u';
        }
        return absl::OkStatus();
      case PickleValue::Kind::kTensor:
        return WriteTensor(v.tensor);
      case PickleValue::Kind::kGlobal:
      case PickleValue::Kind::kMark:
        break;
    }
    return absl::InvalidArgumentError(absl::StrCat("cannot pickle a ", PickleKindName(v.kind)));
  }

  std::string& bytes() { return out_; }
  std::vector<at::Tensor>& storages() { return storages_; }

 private:
  void WriteInt(int64_t i) {
    if (i >= 0 && i < 256) {
      out_ += 'K';
      out_ += static_cast<char>(i);
    } else if (i >= 0 && i < 65536) {
      out_ += 'M';
      out_ += static_cast<char>(i & 0xff);
      out_ += static_cast<char>(i >> 8);
    } else if (i >= INT32_MIN && i <= INT32_MAX) {
      out_ += 'J';
      const uint32_t u = static_cast<uint32_t>(static_cast<int32_t>(i));
      for (int k = 0; k < 4; ++k) out_ += static_cast<char>((u >> (8 * k)) & 0xff);
    } else {
      out_ += static_cast<char>(0x8a);
      out_ += static_cast<char>(8);
      const uint64_t u = static_cast<uint64_t>(i);
      for (int k = 0; k < 8; ++k) out_ += static_cast<char>((u >> (8 * k)) & 0xff);
    }
  }
  void WriteString(const std::string& s) {
    out_ += 'X';
    const uint32_t n = static_cast<uint32_t>(s.size());
    for (int k = 0; k < 4; ++k) out_ += static_cast<char>((n >> (8 * k)) & 0xff);
    out_ += s;
  }
  absl::Status WriteTensor(const at::Tensor& tensor) {
    const char* storage_type = StorageTypeName(tensor.scalar_type());
    if (storage_type == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot save a tensor of dtype ", c10::toString(tensor.scalar_type())));
    }
    at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
    const std::string key = std::to_string(storages_.size());
    storages_.push_back(t);
    out_ += "ctorch._utils\n_rebuild_tensor_v2\n(";
    out_ += '(';
    WriteString("storage");
    out_ += "ctorch\n";
    out_ += storage_type;
    out_ += '\n';
    WriteString(key);
    WriteString("cpu");
    WriteInt(t.numel());
    out_ += "tQ";
    WriteInt(0);
    out_ += '(';
    for (int64_t d : t.sizes()) WriteInt(d);
    out_ += "t(";
    for (int64_t s : t.strides()) WriteInt(s);
    out_ += 't';
    out_ += static_cast<char>(0x89);
    out_ += "ccollections\nOrderedDict\n)R";
    out_ += "tR";
    return absl::OkStatus();
  }
  static const char* StorageTypeName(at::ScalarType dtype) {
    switch (dtype) {
      case at::kFloat:
        return "FloatStorage";
      case at::kHalf:
        return "HalfStorage";
      case at::kBFloat16:
        return "BFloat16Storage";
      case at::kDouble:
        return "DoubleStorage";
      case at::kLong:
        return "LongStorage";
      case at::kInt:
        return "IntStorage";
      case at::kShort:
        return "ShortStorage";
      case at::kChar:
        return "CharStorage";
      case at::kByte:
        return "ByteStorage";
      case at::kBool:
        return "BoolStorage";
      default:
        return nullptr;
    }
  }

  std::string out_;
  std::vector<at::Tensor> storages_;
};

}  // namespace

const char* PickleKindName(PickleValue::Kind k) {
  switch (k) {
    case PickleValue::Kind::kNone:
      return "None";
    case PickleValue::Kind::kBool:
      return "bool";
    case PickleValue::Kind::kInt:
      return "int";
    case PickleValue::Kind::kFloat:
      return "float";
    case PickleValue::Kind::kString:
      return "str";
    case PickleValue::Kind::kTuple:
      return "tuple";
    case PickleValue::Kind::kList:
      return "list";
    case PickleValue::Kind::kDict:
      return "dict";
    case PickleValue::Kind::kTensor:
      return "tensor";
    case PickleValue::Kind::kGlobal:
      return "global";
    case PickleValue::Kind::kMark:
      return "mark";
  }
  return "?";
}

PickleValuePtr PickleValue::String(std::string s) {
  auto v = Make(Kind::kString);
  v->s = std::move(s);
  return v;
}
PickleValuePtr PickleValue::Int(int64_t i) {
  auto v = Make(Kind::kInt);
  v->i = i;
  return v;
}
PickleValuePtr PickleValue::Tensor(at::Tensor t) {
  auto v = Make(Kind::kTensor);
  v->tensor = std::move(t);
  return v;
}
PickleValuePtr PickleValue::List(std::vector<PickleValuePtr> items) {
  auto v = Make(Kind::kList);
  v->items = std::move(items);
  return v;
}
PickleValuePtr PickleValue::Dict() { return Make(Kind::kDict); }
void PickleValue::AddEntry(const std::string& key, PickleValuePtr value) {
  entries.emplace_back(String(key), std::move(value));
}
const PickleValue* PickleValue::Find(absl::string_view key) const {
  for (const auto& [k, v] : entries) {
    if (k->kind == Kind::kString && k->s == key) return v.get();
  }
  return nullptr;
}

absl::StatusOr<PickleValuePtr> ReadTorchArchive(absl::string_view archive, absl::string_view name) {
  const std::string file(name);
  if (!IsZip(archive)) {
    return absl::InvalidArgumentError(absl::StrCat(
        file,
        ": not a zip archive; only torch.save files of PyTorch >= 1.6 are read (re-save a legacy file with "
        "torch.save(torch.load(f), f2) in Python)"));
  }
  try {
    caffe2::serialize::PyTorchStreamReader reader(
        std::make_shared<caffe2::serialize::MemoryReadAdapter>(archive.data(), archive.size()));
    return ParseArchive(reader, file);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": malformed torch.save archive: ", e.what_without_backtrace()));
  }
}

absl::StatusOr<std::string> WriteTorchArchive(const PickleValue& root) {
  Pickler pickler;
  pickler.bytes() += "\x80\x02";
  RETURN_IF_ERROR(pickler.Write(root));
  pickler.bytes() += '.';
  std::string out;
  try {
    caffe2::serialize::PyTorchStreamWriter writer([&out](const void* data, size_t n) {
      out.append(static_cast<const char*>(data), n);
      return n;
    });
    writer.writeRecord("data.pkl", pickler.bytes().data(), pickler.bytes().size());
    writer.writeRecord("byteorder", "little", 6);
    for (size_t k = 0; k < pickler.storages().size(); ++k) {
      const at::Tensor& t = pickler.storages()[k];
      writer.writeRecord("data/" + std::to_string(k), t.data_ptr(), t.nbytes());
    }
    writer.writeEndOfFile();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("writing torch archive: ", e.what_without_backtrace()));
  }
  return out;
}

}  // namespace fedtune::model
