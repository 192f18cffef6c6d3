#include "common/model/pickle_graph.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"

namespace fedtune::model {
namespace internal {
namespace {

using Value = PickleValue;
using ValuePtr = PickleValuePtr;

const char* KindName(Value::Kind k) { return PickleKindName(k); }

template <typename... Args>
absl::Status GraphError(const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(args...));
}

}  // namespace

ValuePtr MakePickleValue(Value::Kind kind) {
  auto v = std::make_shared<Value>();
  v->kind = kind;
  return v;
}

bool IsPickleContainer(const Value& v) {
  return v.kind == Value::Kind::kTuple || v.kind == Value::Kind::kList || v.kind == Value::Kind::kDict;
}

absl::Status CheckPickleGraph(const std::vector<PickleValuePtr>& containers) {
  enum Color : uint8_t { kWhite, kGrey, kBlack };
  struct Info {
    Color color = kWhite;
    int32_t height = 0;    // Containers on the longest path down from here.
    int64_t expanded = 0;  // Values in the tree expansion, saturated at kMaxPickleExpandedValues + 1.
  };
  std::unordered_map<const Value*, Info> info;
  info.reserve(containers.size());
  for (const ValuePtr& c : containers) info.emplace(c.get(), Info{});
  auto child = [](const Value& v, size_t k) -> const Value* {
    if (v.kind != Value::Kind::kDict) return v.items[k].get();
    return k % 2 == 0 ? v.entries[k / 2].first.get() : v.entries[k / 2].second.get();
  };
  auto num_children = [](const Value& v) {
    return v.kind == Value::Kind::kDict ? 2 * v.entries.size() : v.items.size();
  };
  struct Frame {
    const Value* value;
    Info* info;
    size_t next = 0;
  };
  std::vector<Frame> path;
  for (const ValuePtr& start : containers) {
    Info& start_info = info[start.get()];
    if (start_info.color != kWhite) continue;
    start_info.color = kGrey;
    path.push_back({start.get(), &start_info});
    while (!path.empty()) {
      Frame& top = path.back();
      if (top.next < num_children(*top.value)) {
        const Value* c = child(*top.value, top.next++);
        if (!IsPickleContainer(*c)) continue;
        Info& ci = info.at(c);
        if (ci.color == kGrey) {
          return GraphError("a ", KindName(c->kind),
                            " contains itself (a reference cycle, which torch.save never writes)");
        }
        if (ci.color == kWhite) {
          // Every frame on the path holds the next one: the path is a chain of nested containers.
          if (path.size() >= static_cast<size_t>(kMaxPickleDepth)) {
            return GraphError("values nested more than ", kMaxPickleDepth, " levels deep (kMaxPickleDepth)");
          }
          ci.color = kGrey;
          path.push_back({c, &ci});
        }
        continue;
      }
      // All children are done: fold them in.
      Info& done = *top.info;
      int32_t height = 0;
      int64_t expanded = 1;
      for (size_t k = 0; k < num_children(*top.value); ++k) {
        const Value* c = child(*top.value, k);
        const Info* ci = IsPickleContainer(*c) ? &info.at(c) : nullptr;
        height = std::max(height, ci ? ci->height : 0);
        expanded = std::min(expanded + (ci ? ci->expanded : 1), kMaxPickleExpandedValues + 1);
      }
      done.height = height + 1;
      done.expanded = expanded;
      done.color = kBlack;
      if (done.height > kMaxPickleDepth) {
        return GraphError("values nested more than ", kMaxPickleDepth, " levels deep (kMaxPickleDepth)");
      }
      if (done.expanded > kMaxPickleExpandedValues) {
        return GraphError("a ", KindName(top.value->kind), " expands to more than ", kMaxPickleExpandedValues,
                          " values through shared sub-objects (kMaxPickleExpandedValues)");
      }
      path.pop_back();
    }
  }
  return absl::OkStatus();
}

}  // namespace internal

namespace {
std::atomic<int64_t> live_values{0};
}  // namespace

PickleValue::PickleValue() { live_values.fetch_add(1, std::memory_order_relaxed); }
PickleValue::PickleValue(const PickleValue& other)
    : kind(other.kind),
      b(other.b),
      i(other.i),
      d(other.d),
      s(other.s),
      items(other.items),
      entries(other.entries),
      tensor(other.tensor),
      global_id(other.global_id),
      storage_dtype(other.storage_dtype) {
  live_values.fetch_add(1, std::memory_order_relaxed);
}
PickleValue::PickleValue(PickleValue&& other) noexcept
    : kind(other.kind),
      b(other.b),
      i(other.i),
      d(other.d),
      s(std::move(other.s)),
      items(std::move(other.items)),
      entries(std::move(other.entries)),
      tensor(std::move(other.tensor)),
      global_id(other.global_id),
      storage_dtype(other.storage_dtype) {
  live_values.fetch_add(1, std::memory_order_relaxed);
}
// Without recursion: children move to a worklist, and a child that nobody else holds hands its own children to the
// worklist before it goes, so every destructor call below this one finds no children. (A cycle is never freed by
// reference counting; the reader refuses them and frees what it made with Unpickler::Dismantle.)
PickleValue::~PickleValue() {
  live_values.fetch_sub(1, std::memory_order_relaxed);
  if (items.empty() && entries.empty()) return;
  std::vector<PickleValuePtr> pending;
  auto take_children = [&pending](PickleValue& v) {
    for (PickleValuePtr& item : v.items) pending.push_back(std::move(item));
    v.items.clear();
    for (auto& [key, value] : v.entries) {
      pending.push_back(std::move(key));
      pending.push_back(std::move(value));
    }
    v.entries.clear();
  };
  take_children(*this);
  while (!pending.empty()) {
    PickleValuePtr v = std::move(pending.back());
    pending.pop_back();
    if (v != nullptr && v.use_count() == 1) take_children(*v);
  }
}

int64_t PickleValueLiveCount() { return live_values.load(std::memory_order_relaxed); }

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
  auto v = internal::MakePickleValue(Kind::kString);
  v->s = std::move(s);
  return v;
}
PickleValuePtr PickleValue::Int(int64_t i) {
  auto v = internal::MakePickleValue(Kind::kInt);
  v->i = i;
  return v;
}
PickleValuePtr PickleValue::Tensor(at::Tensor t) {
  auto v = internal::MakePickleValue(Kind::kTensor);
  v->tensor = std::move(t);
  return v;
}
PickleValuePtr PickleValue::List(std::vector<PickleValuePtr> items) {
  auto v = internal::MakePickleValue(Kind::kList);
  v->items = std::move(items);
  return v;
}
PickleValuePtr PickleValue::Dict() { return internal::MakePickleValue(Kind::kDict); }
void PickleValue::AddEntry(const std::string& key, PickleValuePtr value) {
  entries.emplace_back(String(key), std::move(value));
}
const PickleValue* PickleValue::Find(absl::string_view key) const {
  for (const auto& [k, v] : entries) {
    if (k->kind == Kind::kString && k->s == key) return v.get();
  }
  return nullptr;
}

}  // namespace fedtune::model
