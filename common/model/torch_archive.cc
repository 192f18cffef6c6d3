#include "common/model/torch_archive.h"

#include <c10/core/ScalarType.h>
#include <caffe2/serialize/in_memory_adapter.h>
#include <caffe2/serialize/inline_container.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <new>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/model/pickle_graph.h"
#include "common/model/pickle_reader.h"
#include "common/model/zip_directory.h"
#include "common/status_macros.h"

// The reader: ZipDirectory::Check (zip_directory.h), then LibTorch's zip reader, then the restricted unpickler
// (pickle_reader.h). PickleValue's own members are in pickle_graph.cc.

namespace fedtune::model {
namespace {

using internal::ZipDirectory;

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
  return internal::Unpickle(pickle, name, internal::RecordSource{&directory, &reader}, static_cast<int64_t>(limit),
                            archive_size);
}

// ---------------------------------------------------------------------------------------------------------------
// The pickler (protocol 2, as torch.save writes).

class Pickler {
 public:
  // `depth`: containers enclosing `v`. The writer refuses what the reader would (and so never recurses deeply).
  absl::Status Write(const PickleValue& v, int depth = 0) {
    if (internal::IsPickleContainer(v) && depth >= kMaxPickleDepth) {
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

absl::Status WriteTorchArchive(const PickleValue& root, const std::function<absl::Status(absl::string_view)>& sink) {
  Pickler pickler;
  pickler.bytes() += "\x80\x02";
  RETURN_IF_ERROR(pickler.Write(root));
  pickler.bytes() += '.';
  absl::Status sink_status;
  try {
    caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t n) -> size_t {
      if (!sink_status.ok()) return 0;
      sink_status = sink(absl::string_view(static_cast<const char*>(data), n));
      return sink_status.ok() ? n : 0;  // Short: the writer gives up.
    });
    writer.writeRecord("data.pkl", pickler.bytes().data(), pickler.bytes().size());
    writer.writeRecord("byteorder", "little", 6);
    for (size_t k = 0; k < pickler.storages().size(); ++k) {
      const at::Tensor& t = pickler.storages()[k];
      writer.writeRecord("data/" + std::to_string(k), t.data_ptr(), t.nbytes());
    }
    writer.writeEndOfFile();
  } catch (const c10::Error& e) {
    if (!sink_status.ok()) return sink_status;
    return absl::InternalError(absl::StrCat("writing torch archive: ", e.what_without_backtrace()));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("writing torch archive: out of memory");
  }
  return sink_status;
}

absl::StatusOr<std::string> WriteTorchArchive(const PickleValue& root) {
  std::string out;
  RETURN_IF_ERROR(WriteTorchArchive(root, [&out](absl::string_view piece) {
    out.append(piece.data(), piece.size());
    return absl::OkStatus();
  }));
  return out;
}

}  // namespace fedtune::model
