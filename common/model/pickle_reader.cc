#include "common/model/pickle_reader.h"

#include <ATen/Functions.h>
#include <c10/core/ScalarType.h>
#include <caffe2/serialize/inline_container.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/model/pickle_graph.h"
#include "common/status_macros.h"

namespace fedtune::model::internal {
namespace {

namespace Global {
enum : int { kOrderedDict, kRebuildTensorV2, kRebuildParameter, kStorageType };
}

using Value = PickleValue;
using ValuePtr = PickleValuePtr;

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

// ---------------------------------------------------------------------------------------------------------------
// The unpickler.

class Unpickler {
 public:
  Unpickler(absl::string_view data, std::string name, RecordSource records, int64_t materialized_limit,
            uint64_t archive_size)
      : data_(data),
        name_(std::move(name)),
        records_(records),
        materialized_limit_(materialized_limit),
        archive_size_(archive_size) {}

  // Whatever the outcome, a graph that was not returned is freed without recursion, cycles included.
  ~Unpickler() {
    if (!succeeded_) Dismantle();
  }

  absl::StatusOr<ValuePtr> Run() {
    while (true) {
      if (pos_ >= data_.size()) return Error("pickle ends without STOP");
      const size_t op_pos = pos_;
      const uint8_t op = static_cast<uint8_t>(data_[pos_++]);
      if (op == '.') {  // STOP
        if (stack_.size() != 1) return Error("STOP with a stack of size ", stack_.size());
        RETURN_IF_ERROR(CheckGraph());
        succeeded_ = true;
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

  // Every value the pickle creates goes through here; containers are registered so that CheckGraph can walk them
  // and Dismantle can free them.
  ValuePtr New(Value::Kind kind) {
    ValuePtr v = MakePickleValue(kind);
    if (IsPickleContainer(*v)) containers_.push_back(v);
    return v;
  }

  // Accounts for `bytes` about to be allocated.
  absl::Status Charge(uint64_t bytes) {
    if (bytes > static_cast<uint64_t>(materialized_limit_ - materialized_)) {
      return Error("materializing more than ", materialized_limit_,
                   " bytes of strings and tensors (the bound is kMaterializedBytesPerArchiveByte = ",
                   kMaterializedBytesPerArchiveByte, " x the archive's ", archive_size_,
                   " bytes + kMaterializedBytesAllowance = ", kMaterializedBytesAllowance, ")");
    }
    materialized_ += static_cast<int64_t>(bytes);
    return absl::OkStatus();
  }

  absl::StatusOr<absl::string_view> Take(size_t n) {
    if (n > data_.size() - pos_) return Error("truncated pickle");
    absl::string_view out = data_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  absl::StatusOr<uint64_t> ReadLE(size_t n) {
    ASSIGN_OR_RETURN(absl::string_view bytes, Take(n));
    return ReadLittleEndian(bytes, 0, static_cast<int>(n));
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
    if (++pushed_ > kMaxPickleValues) return Error("more than ", kMaxPickleValues, " values (kMaxPickleValues)");
    stack_.push_back(std::move(v));
    return absl::OkStatus();
  }
  absl::Status Memoize(uint64_t index) {
    if (stack_.empty()) return Error("memoizing an empty stack");
    if (index > kMaxMemo) return Error("memo index ", index, " too large");
    if (memo_.size() >= static_cast<uint64_t>(kMaxPickleValues) && memo_.count(index) == 0) {
      return Error("more than ", kMaxPickleValues, " memo entries (kMaxPickleValues)");
    }
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
    ValuePtr v = New(Value::Kind::kGlobal);
    v->global_id = global->first;
    v->storage_dtype = global->second;
    v->s = absl::StrCat(module, ".", name);
    return Push(v);
  }
  absl::Status PushTuple(std::vector<ValuePtr> items) {
    ValuePtr v = New(Value::Kind::kTuple);
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
    if (v->items.size() > static_cast<size_t>(kMaxTensorDims)) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " has ", v->items.size(), " dimensions, more than kMaxTensorDims = ", kMaxTensorDims));
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
    const at::ScalarType dtype = pid->items[1]->storage_dtype;
    const int64_t numel = pid->items[4]->i;
    if (numel < 0) return Error("negative storage size for record ", key);
    const std::string record = "data/" + key;
    const std::optional<uint64_t> size =
        key.empty() || key.find('/') != std::string::npos ? std::nullopt : records_.directory->RecordSize(record);
    if (!size || !records_.reader->hasRecord(record)) return Error("missing storage record '", record, "'");
    // The record's size is known from the directory: refuse a short one before reading (and allocating) anything.
    const uint64_t element = c10::elementSize(dtype);
    if (static_cast<uint64_t>(numel) > *size / element) {
      const std::string expected = static_cast<uint64_t>(numel) <= std::numeric_limits<uint64_t>::max() / element
                                       ? absl::StrCat(static_cast<uint64_t>(numel) * element)
                                       : absl::StrCat(numel, " x ", element);
      return Error("storage record '", record, "' has ", *size, " bytes, expected ", expected);
    }
    const uint64_t bytes = static_cast<uint64_t>(numel) * element;
    RETURN_IF_ERROR(Charge(bytes));
    auto [ptr, read] = records_.reader->getRecord(record);
    if (read < bytes) return Error("storage record '", record, "' has ", read, " bytes, expected ", bytes);
    at::Tensor t = at::empty({numel}, at::TensorOptions().dtype(dtype));
    if (bytes > 0) std::memcpy(t.data_ptr(), ptr.get(), bytes);
    ValuePtr v = New(Value::Kind::kTensor);
    v->tensor = std::move(t);
    storages_[key] = v;
    return v;
  }

  absl::StatusOr<ValuePtr> RebuildTensor(const std::vector<ValuePtr>& a) {
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
    const int64_t storage_numel = storage.numel();
    // Every product and sum below is checked before it can overflow. The tensor may not have more elements than its
    // storage (state dicts never hold expanded, stride-0 views; refusing them also bounds what a file can make us
    // allocate), and its largest element index must lie inside the storage. An empty tensor only needs a shape
    // whose strides are representable.
    int64_t numel = 1, extent = 1;
    for (size_t k = 0; k < size->size(); ++k) {
      const int64_t n = (*size)[k], st = (*stride)[k];
      if (n < 0 || st < 0) return Error("negative size or stride");
      if (__builtin_mul_overflow(numel, n, &numel) ||
          __builtin_mul_overflow(extent, std::max<int64_t>(n, 1), &extent) || extent > (int64_t{1} << 62)) {
        return Error("tensor shape is too large");
      }
    }
    if (*offset < 0 || *offset > storage_numel) {
      return Error("storage offset ", *offset, " outside its storage (", storage_numel, " elements)");
    }
    ValuePtr v = New(Value::Kind::kTensor);
    if (numel == 0) {
      v->tensor = at::empty(*size, storage.options());
      return v;
    }
    if (numel > storage_numel) return Error("tensor has more elements than its storage (", storage_numel, ")");
    int64_t max_index = *offset;
    for (size_t k = 0; k < size->size(); ++k) {
      int64_t step;
      if (__builtin_mul_overflow((*size)[k] - 1, (*stride)[k], &step) ||
          __builtin_add_overflow(max_index, step, &max_index) || max_index >= storage_numel) {
        return Error("tensor view exceeds its storage (", storage_numel, " elements)");
      }
    }
    // The common case, a tensor that is its whole storage, contiguous: the tensor is the storage itself, not a copy
    // of it (a model loads with one copy of its weights in memory, not two). A storage used again (tied weights)
    // is copied from then on, so that tensors never share memory.
    bool contiguous = *offset == 0 && numel == storage_numel;
    for (int64_t k = static_cast<int64_t>(size->size()) - 1, expected = 1; contiguous && k >= 0; --k) {
      if ((*size)[k] != 1 && (*stride)[k] != expected) contiguous = false;
      expected *= (*size)[k];
    }
    if (contiguous && lent_storages_.insert(a[0].get()).second) {
      v->tensor = storage.view(*size);
      return v;
    }
    RETURN_IF_ERROR(Charge(static_cast<uint64_t>(numel) * storage.element_size()));
    v->tensor = storage.as_strided(*size, *stride, *offset).clone(at::MemoryFormat::Contiguous);
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
        return New(Value::Kind::kDict);
      case Global::kRebuildTensorV2:
        return RebuildTensor(a);
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
        return Push(New(Value::Kind::kMark));
      case '}':
      case ']': {
        return Push(New(op == '}' ? Value::Kind::kDict : Value::Kind::kList));
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
        RETURN_IF_ERROR(Charge(n));
        ValuePtr v = New(Value::Kind::kString);
        v->s = std::string(bytes);
        return Push(v);
      }
      case 'J':
      case 'K':
      case 'M': {  // BININT (signed 4 bytes), BININT1, BININT2 (unsigned)
        ASSIGN_OR_RETURN(uint64_t raw, ReadLE(op == 'J' ? 4 : op == 'K' ? 1 : 2));
        ValuePtr v = New(Value::Kind::kInt);
        v->i = op == 'J' ? static_cast<int64_t>(static_cast<int32_t>(raw)) : static_cast<int64_t>(raw);
        return Push(v);
      }
      case 0x8a: {  // LONG1: little-endian two's complement of n <= 8 bytes.
        ASSIGN_OR_RETURN(uint64_t n, ReadLE(1));
        if (n > 8) return Error("integer wider than 64 bits");
        ASSIGN_OR_RETURN(uint64_t raw, ReadLE(n));
        if (n > 0 && n < 8 && (raw >> (8 * n - 1)) & 1) raw |= ~uint64_t{0} << (8 * n);  // Sign-extend.
        ValuePtr v = New(Value::Kind::kInt);
        v->i = static_cast<int64_t>(raw);
        return Push(v);
      }
      case 'G': {  // BINFLOAT, big-endian.
        ASSIGN_OR_RETURN(absl::string_view bytes, Take(8));
        uint64_t raw = 0;
        for (char c : bytes) raw = (raw << 8) | static_cast<uint8_t>(c);
        ValuePtr v = New(Value::Kind::kFloat);
        std::memcpy(&v->d, &raw, 8);
        return Push(v);
      }
      case 'N':
        return Push(New(Value::Kind::kNone));
      case 0x88:
      case 0x89: {
        ValuePtr v = New(Value::Kind::kBool);
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

  // After STOP, one linear pass over every container the pickle made: refuses reference cycles (which reference
  // counting would never free), nesting deeper than kMaxPickleDepth, and graphs whose expansion as a tree (what a
  // recursive consumer visits) exceeds kMaxPickleExpandedValues.
  absl::Status CheckGraph() {
    absl::Status graph = CheckPickleGraph(containers_);
    if (!graph.ok()) return Error(graph.message());
    return absl::OkStatus();
  }

  // Frees everything the pickle made, whatever its shape: first every container lets go of its children (the
  // registry keeps the containers themselves alive meanwhile, so nothing is destroyed recursively and cycles are
  // broken), then the registry drops the now childless containers. Allocates nothing.
  void Dismantle() noexcept {
    for (const ValuePtr& c : containers_) {
      std::vector<ValuePtr> items;
      std::vector<std::pair<ValuePtr, ValuePtr>> entries;
      items.swap(c->items);
      entries.swap(c->entries);
    }
    containers_.clear();
  }

  static constexpr size_t kMaxStack = 1 << 16;
  static constexpr uint64_t kMaxMemo = 1 << 24;

  absl::string_view data_;
  size_t pos_ = 0;
  std::string name_;
  RecordSource records_;
  int64_t materialized_limit_;
  uint64_t archive_size_;
  int64_t materialized_ = 0;
  int64_t pushed_ = 0;
  bool succeeded_ = false;
  std::vector<ValuePtr> stack_;
  std::map<uint64_t, ValuePtr> memo_;
  std::map<std::string, ValuePtr> storages_;
  std::set<const Value*> lent_storages_;  // Storages that became a tensor without a copy (RebuildTensor).
  std::vector<ValuePtr> containers_;      // Every tuple, list and dict made, in order.
};

}  // namespace

absl::StatusOr<PickleValuePtr> Unpickle(absl::string_view pickle, std::string name, RecordSource records,
                                        int64_t materialized_limit, uint64_t archive_size) {
  Unpickler unpickler(pickle, std::move(name), records, materialized_limit, archive_size);
  return unpickler.Run();
}

}  // namespace fedtune::model::internal
