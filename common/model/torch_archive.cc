#include "common/model/torch_archive.h"

#include <ATen/Functions.h>
#include <c10/core/ScalarType.h>
#include <caffe2/serialize/in_memory_adapter.h>
#include <caffe2/serialize/inline_container.h>
#include <caffe2/serialize/versions.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <limits>
#include <map>
#include <new>
#include <optional>
#include <unordered_map>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
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

bool IsContainer(const Value& v) {
  return v.kind == Value::Kind::kTuple || v.kind == Value::Kind::kList || v.kind == Value::Kind::kDict;
}

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
// The zip directory, checked before LibTorch's reader (miniz) reads any record: PyTorchStreamReader::getRecord
// allocates whatever uncompressed size the directory claims, and miniz itself checks that size against the file
// only for stored records without zip64 fields. The rules follow miniz's own reading (the same end record, the same
// zip64 fields) and are stricter wherever the two could differ, so that what is checked here is what miniz reads.

constexpr uint32_t kLocalHeaderSig = 0x04034b50;
constexpr uint32_t kCentralHeaderSig = 0x02014b50;
constexpr uint32_t kEndSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr size_t kLocalHeaderSize = 30;
constexpr size_t kCentralHeaderSize = 46;
constexpr size_t kEndSize = 22;
constexpr size_t kZip64EndSize = 56;
constexpr size_t kZip64LocatorSize = 20;
constexpr uint64_t kMax32 = 0xffffffffu;

uint64_t ReadLittleEndian(absl::string_view bytes, size_t at, int n) {
  uint64_t v = 0;
  for (int k = 0; k < n; ++k) v |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[at + k])) << (8 * k);
  return v;
}

uint32_t Crc32(absl::string_view bytes) {
  static const auto* table = [] {
    auto* t = new std::array<uint32_t, 256>;
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
      (*t)[n] = c;
    }
    return t;
  }();
  uint32_t crc = 0xffffffffu;
  for (char ch : bytes) crc = (*table)[(crc ^ static_cast<uint8_t>(ch)) & 0xff] ^ (crc >> 8);
  return ~crc;
}

// The records of an archive, by lower-cased full name ("archive/data/0"; miniz looks names up ignoring case).
class ZipDirectory {
 public:
  static absl::StatusOr<ZipDirectory> Check(absl::string_view zip, const std::string& name);

  // The size of record `record` ("data/0") under the archive's folder; nullopt when absent.
  std::optional<uint64_t> RecordSize(const std::string& record) const {
    auto it = records_.find(absl::AsciiStrToLower(absl::StrCat(folder_, "/", record)));
    if (it == records_.end()) return std::nullopt;
    return it->second.size;
  }

 private:
  struct Record {
    uint64_t data;  // Offset of the bytes in the archive.
    uint64_t size;
    uint32_t crc;
  };
  // LibTorch 1.13's PyTorchStreamReader leaks miniz's state when its constructor throws after opening the zip (a
  // missing, damaged or unsupported version record, a first record outside a folder): what it checks there is
  // checked here first, so that it never throws.
  absl::Status CheckWhatTheReaderChecks(absl::string_view zip, const std::string& name) const;

  std::string folder_;  // The first entry's folder, as PyTorchStreamReader takes it.
  std::map<std::string, Record> records_;
};

absl::Status ZipDirectory::CheckWhatTheReaderChecks(absl::string_view zip, const std::string& name) const {
  auto bad = [&name](const auto&... args) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": malformed torch.save archive: ", args...));
  };
  if (folder_.empty()) return bad("the first record is not in a folder");
  auto it = records_.find(absl::AsciiStrToLower(folder_ + "/version"));
  if (it == records_.end()) return bad("no version record");
  const absl::string_view text = zip.substr(it->second.data, it->second.size);
  if (Crc32(text) != it->second.crc) return bad("the version record fails its CRC check");
  // What std::stoull reads (stricter, and without its exceptions), then the versions this LibTorch reads.
  size_t k = 0;
  while (k < text.size() && absl::ascii_isspace(static_cast<unsigned char>(text[k]))) ++k;
  uint64_t version = 0;
  size_t digits = 0;
  for (; k < text.size() && absl::ascii_isdigit(static_cast<unsigned char>(text[k])) && digits < 19; ++k, ++digits) {
    version = version * 10 + static_cast<uint64_t>(text[k] - '0');
  }
  while (k < text.size() && absl::ascii_isspace(static_cast<unsigned char>(text[k]))) ++k;
  if (digits == 0 || k != text.size() || version < caffe2::serialize::kMinSupportedFileFormatVersion ||
      version > caffe2::serialize::kMaxSupportedFileFormatVersion) {
    return bad("version record '", absl::CHexEscape(text.substr(0, 32)), "' is not a format version from ",
               caffe2::serialize::kMinSupportedFileFormatVersion, " to ",
               caffe2::serialize::kMaxSupportedFileFormatVersion);
  }
  return absl::OkStatus();
}

absl::StatusOr<ZipDirectory> ZipDirectory::Check(absl::string_view zip, const std::string& name) {
  auto bad = [&name](const auto&... args) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": malformed torch.save archive: ", args...));
  };
  const uint64_t size = zip.size();
  auto u16 = [&zip](uint64_t at) { return ReadLittleEndian(zip, at, 2); };
  auto u32 = [&zip](uint64_t at) { return ReadLittleEndian(zip, at, 4); };
  auto u64 = [&zip](uint64_t at) { return ReadLittleEndian(zip, at, 8); };

  // The end record: the last signature with a whole record after it, within a comment's reach of the end (as miniz
  // searches); its comment must end the file exactly.
  if (size < kEndSize) return bad("no end-of-central-directory record");
  std::optional<uint64_t> end;
  const uint64_t lowest = size > kEndSize + 0xffff ? size - kEndSize - 0xffff : 0;
  for (uint64_t at = size - kEndSize + 1; at-- > lowest;) {
    if (u32(at) == kEndSig) {
      end = at;
      break;
    }
  }
  if (!end) return bad("no end-of-central-directory record");
  if (*end + kEndSize + u16(*end + 20) != size) return bad("data after the end-of-central-directory record");

  uint64_t entries, cd_size, cd_offset;
  if (*end >= kZip64LocatorSize && u32(*end - kZip64LocatorSize) == kZip64LocatorSig) {
    const uint64_t locator = *end - kZip64LocatorSize;
    const uint64_t record = u64(locator + 8);
    if (locator < kZip64EndSize || record > locator - kZip64EndSize || u32(record) != kZip64EndSig) {
      return bad("the zip64 end-of-central-directory locator points to no zip64 record");
    }
    if (u32(locator + 16) != 1 || u64(record + 4) < kZip64EndSize - 12 || u32(record + 16) != 0 ||
        u32(record + 20) != 0 || u64(record + 24) != u64(record + 32)) {
      return bad("multi-disk or malformed zip64 end-of-central-directory record");
    }
    entries = u64(record + 32);
    cd_size = u64(record + 40);
    cd_offset = u64(record + 48);
  } else {
    if (u16(*end + 4) != 0 || u16(*end + 6) != 0 || u16(*end + 8) != u16(*end + 10)) {
      return bad("multi-disk or malformed end-of-central-directory record");
    }
    entries = u16(*end + 10);
    cd_size = u32(*end + 12);
    cd_offset = u32(*end + 16);
  }
  if (cd_offset > size || cd_size > size - cd_offset) return bad("the central directory lies outside the file");
  if (entries == 0) return bad("the archive holds no records");
  if (entries > cd_size / kCentralHeaderSize)
    return bad("the central directory is too small for ", entries, " entries");

  struct Span {
    uint64_t begin, end;
    std::string record;
  };
  std::vector<Span> spans;
  ZipDirectory directory;
  uint64_t p = cd_offset;
  const uint64_t cd_end = cd_offset + cd_size;
  for (uint64_t e = 0; e < entries; ++e) {
    if (cd_end - p < kCentralHeaderSize || u32(p) != kCentralHeaderSig) {
      return bad("central directory entry ", e, " is malformed");
    }
    const uint64_t name_len = u16(p + 28), extra_len = u16(p + 30), comment_len = u16(p + 32);
    if (name_len + extra_len + comment_len > cd_end - p - kCentralHeaderSize) {
      return bad("central directory entry ", e, " runs past the directory");
    }
    const std::string record(zip.substr(p + kCentralHeaderSize, name_len));
    auto refuse = [&](const auto&... args) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": zip record '", record, "' ", args...));
    };
    const uint64_t flags = u16(p + 8), method = u16(p + 10);
    const uint32_t crc = static_cast<uint32_t>(u32(p + 16));
    uint64_t compressed = u32(p + 20), uncompressed = u32(p + 24), local = u32(p + 42);
    if (compressed == kMax32 || uncompressed == kMax32 || local == kMax32) {
      // The zip64 extended-information field holds the 64-bit values of the fields that are 0xFFFFFFFF, in this
      // order; miniz reads the first such field only.
      uint64_t q = p + kCentralHeaderSize + name_len, left = extra_len;
      while (left > 0) {
        if (left < 4 || u16(q + 2) + 4 > left) return refuse("has a malformed extra field");
        const uint64_t id = u16(q), field_size = u16(q + 2);
        if (id == 1) {
          uint64_t f = q + 4, field_left = field_size;
          for (uint64_t* v : {&uncompressed, &compressed, &local}) {
            if (*v != kMax32) continue;
            if (field_left < 8) return refuse("has a truncated zip64 field");
            *v = u64(f);
            f += 8;
            field_left -= 8;
          }
          break;
        }
        q += 4 + field_size;
        left -= 4 + field_size;
      }
    }
    if (flags & 0x2061) return refuse("is encrypted or a patch");
    // miniz "extracts" a directory by writing nothing: LibTorch would hand out its uninitialized buffer as the
    // record's bytes. torch.save writes no directories.
    if (record.empty() || record.back() == '/' || (u32(p + 38) & 0x10) != 0) {
      return refuse("is a directory or has no name (torch.save writes neither)");
    }
    if (method != 0) {
      return refuse("is compressed (method ", method,
                    "); torch.save writes stored records only, and a compressed size says nothing of the memory "
                    "it expands to");
    }
    if (uncompressed > size) {
      return refuse("claims ", uncompressed, " bytes, more than the whole archive (", size, " bytes)");
    }
    if (compressed != uncompressed) {
      return refuse("is stored but its sizes differ (", compressed, " and ", uncompressed, " bytes)");
    }
    if (u16(p + 34) != 0) return refuse("is on another disk");
    if (local > size || size - local < kLocalHeaderSize || u32(local) != kLocalHeaderSig) {
      return refuse("has no local header at byte ", local);
    }
    const uint64_t data = local + kLocalHeaderSize + u16(local + 26) + u16(local + 28);
    if (data > size || compressed > size - data) {
      return refuse("(", compressed, " bytes at byte ", data, ") lies outside the archive (", size, " bytes)");
    }
    spans.push_back({local, data + compressed, record});
    if (e == 0) {
      const size_t slash = record.find('/');
      if (slash != std::string::npos) directory.folder_ = record.substr(0, slash);
    }
    if (!directory.records_.emplace(absl::AsciiStrToLower(record), Record{data, uncompressed, crc}).second) {
      return refuse("occurs twice");
    }
    p += kCentralHeaderSize + name_len + extra_len + comment_len;
  }
  // Records that share bytes would let a small file be read as many large records.
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  for (size_t k = 1; k < spans.size(); ++k) {
    if (spans[k].begin < spans[k - 1].end) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": zip records '", spans[k - 1].record, "' and '", spans[k].record, "' overlap"));
    }
  }
  RETURN_IF_ERROR(directory.CheckWhatTheReaderChecks(zip, name));
  return directory;
}

// ---------------------------------------------------------------------------------------------------------------
// The unpickler.

// Where storages come from: record sizes (checked above) and the reader.
struct RecordSource {
  const ZipDirectory* directory;
  caffe2::serialize::PyTorchStreamReader* reader;
};

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
    ValuePtr v = Make(kind);
    if (IsContainer(*v)) containers_.push_back(v);
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
    enum Color : uint8_t { kWhite, kGrey, kBlack };
    struct Info {
      Color color = kWhite;
      int32_t height = 0;    // Containers on the longest path down from here.
      int64_t expanded = 0;  // Values in the tree expansion, saturated at kMaxPickleExpandedValues + 1.
    };
    std::unordered_map<const Value*, Info> info;
    info.reserve(containers_.size());
    for (const ValuePtr& c : containers_) info.emplace(c.get(), Info{});
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
    for (const ValuePtr& start : containers_) {
      Info& start_info = info[start.get()];
      if (start_info.color != kWhite) continue;
      start_info.color = kGrey;
      path.push_back({start.get(), &start_info});
      while (!path.empty()) {
        Frame& top = path.back();
        if (top.next < num_children(*top.value)) {
          const Value* c = child(*top.value, top.next++);
          if (!IsContainer(*c)) continue;
          Info& ci = info.at(c);
          if (ci.color == kGrey) {
            return Error("a ", KindName(c->kind),
                         " contains itself (a reference cycle, which torch.save never writes)");
          }
          if (ci.color == kWhite) {
            // Every frame on the path holds the next one: the path is a chain of nested containers.
            if (path.size() >= static_cast<size_t>(kMaxPickleDepth)) {
              return Error("values nested more than ", kMaxPickleDepth, " levels deep (kMaxPickleDepth)");
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
          const Info* ci = IsContainer(*c) ? &info.at(c) : nullptr;
          height = std::max(height, ci ? ci->height : 0);
          expanded = std::min(expanded + (ci ? ci->expanded : 1), kMaxPickleExpandedValues + 1);
        }
        done.height = height + 1;
        done.expanded = expanded;
        done.color = kBlack;
        if (done.height > kMaxPickleDepth) {
          return Error("values nested more than ", kMaxPickleDepth, " levels deep (kMaxPickleDepth)");
        }
        if (done.expanded > kMaxPickleExpandedValues) {
          return Error("a ", KindName(top.value->kind), " expands to more than ", kMaxPickleExpandedValues,
                       " values through shared sub-objects (kMaxPickleExpandedValues)");
        }
        path.pop_back();
      }
    }
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
  std::vector<ValuePtr> containers_;  // Every tuple, list and dict made, in order.
};

bool IsZip(absl::string_view bytes) {
  return bytes.size() >= 4 && bytes.substr(0, 4) == absl::string_view("PK\3\4", 4);
}

absl::StatusOr<PickleValuePtr> ParseArchive(caffe2::serialize::PyTorchStreamReader& reader,
                                            const ZipDirectory& directory, const std::string& name,
                                            uint64_t archive_size) {
  if (!reader.hasRecord("data.pkl") || !directory.RecordSize("data.pkl")) {
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
  const uint64_t limit = std::min<uint64_t>(
      static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
      archive_size * static_cast<uint64_t>(kMaterializedBytesPerArchiveByte) + kMaterializedBytesAllowance);
  Unpickler unpickler(pickle, name, RecordSource{&directory, &reader}, static_cast<int64_t>(limit), archive_size);
  return unpickler.Run();
}

// ---------------------------------------------------------------------------------------------------------------
// The pickler (protocol 2, as torch.save writes).

class Pickler {
 public:
  // `depth`: containers enclosing `v`. The writer refuses what the reader would (and so never recurses deeply).
  absl::Status Write(const PickleValue& v, int depth = 0) {
    if (IsContainer(v) && depth >= kMaxPickleDepth) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot pickle values nested more than ", kMaxPickleDepth, " levels deep (kMaxPickleDepth)"));
    }
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
        for (const auto& item : v.items) RETURN_IF_ERROR(Write(*item, depth + 1));
        out_ += 't';
        return absl::OkStatus();
      case PickleValue::Kind::kList:
        out_ += ']';
        if (!v.items.empty()) {
          out_ += '(';
          for (const auto& item : v.items) RETURN_IF_ERROR(Write(*item, depth + 1));
          out_ += 'e';
        }
        return absl::OkStatus();
      case PickleValue::Kind::kDict:
        out_ += '}';
        if (!v.entries.empty()) {
          out_ += '(';
          for (const auto& [key, value] : v.entries) {
            RETURN_IF_ERROR(Write(*key, depth + 1));
            RETURN_IF_ERROR(Write(*value, depth + 1));
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
  // The directory first: after it, no record can make LibTorch's reader allocate more than the archive's size.
  ASSIGN_OR_RETURN(ZipDirectory directory, ZipDirectory::Check(archive, file));
  try {
    caffe2::serialize::PyTorchStreamReader reader(
        std::make_shared<caffe2::serialize::MemoryReadAdapter>(archive.data(), archive.size()));
    return ParseArchive(reader, directory, file, archive.size());
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": malformed torch.save archive: ", e.what_without_backtrace()));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(file, ": out of memory reading the torch.save archive"));
  } catch (const std::exception& e) {
    // E.g. std::invalid_argument from LibTorch parsing a version record that is not a number.
    return absl::InvalidArgumentError(absl::StrCat(file, ": malformed torch.save archive: ", e.what()));
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
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("writing torch archive: out of memory");
  }
  return out;
}

}  // namespace fedtune::model
