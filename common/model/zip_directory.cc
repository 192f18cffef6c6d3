#include "common/model/zip_directory.h"

#include <caffe2/serialize/versions.h>

#include <algorithm>
#include <array>
#include <initializer_list>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace fedtune::model::internal {
namespace {

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

// Where the central directory lies.
struct CentralDirectory {
  uint64_t entries, size, offset;
};

// Finds the end record and, through it, the central directory.
absl::StatusOr<CentralDirectory> FindCentralDirectory(absl::string_view zip, const std::string& name) {
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
  return CentralDirectory{entries, cd_size, cd_offset};
}

// Reads the zip64 extended-information field among the `left` bytes of extra fields at byte `q` of `zip`. It holds
// the 64-bit values of the fields that are 0xFFFFFFFF, in this order; miniz reads the first such field only.
// Returns what is wrong with the extra fields ("has a ..."), or nullptr.
const char* ReadZip64Fields(absl::string_view zip, uint64_t q, uint64_t left, std::initializer_list<uint64_t*> fields) {
  auto u16 = [&zip](uint64_t at) { return ReadLittleEndian(zip, at, 2); };
  auto u64 = [&zip](uint64_t at) { return ReadLittleEndian(zip, at, 8); };
  while (left > 0) {
    if (left < 4 || u16(q + 2) + 4 > left) return "has a malformed extra field";
    const uint64_t id = u16(q), field_size = u16(q + 2);
    if (id == 1) {
      uint64_t f = q + 4, field_left = field_size;
      for (uint64_t* v : fields) {
        if (*v != kMax32) continue;
        if (field_left < 8) return "has a truncated zip64 field";
        *v = u64(f);
        f += 8;
        field_left -= 8;
      }
      break;
    }
    q += 4 + field_size;
    left -= 4 + field_size;
  }
  return nullptr;
}

}  // namespace

uint64_t ReadLittleEndian(absl::string_view bytes, size_t at, int n) {
  uint64_t v = 0;
  for (int k = 0; k < n; ++k) v |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[at + k])) << (8 * k);
  return v;
}

std::optional<uint64_t> ZipDirectory::RecordSize(const std::string& record) const {
  auto it = records_.find(absl::AsciiStrToLower(absl::StrCat(folder_, "/", record)));
  if (it == records_.end()) return std::nullopt;
  return it->second.size;
}

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
  ASSIGN_OR_RETURN(const CentralDirectory cd, FindCentralDirectory(zip, name));
  std::vector<Span> spans;
  ZipDirectory directory;
  uint64_t p = cd.offset;
  const uint64_t cd_end = cd.offset + cd.size;
  for (uint64_t e = 0; e < cd.entries; ++e) {
    ASSIGN_OR_RETURN(p, directory.AddEntry(zip, name, e, p, cd_end, spans));
  }
  RETURN_IF_ERROR(CheckNoOverlap(std::move(spans), name));
  RETURN_IF_ERROR(directory.CheckWhatTheReaderChecks(zip, name));
  return directory;
}

absl::StatusOr<uint64_t> ZipDirectory::AddEntry(absl::string_view zip, const std::string& name, uint64_t e, uint64_t p,
                                                uint64_t cd_end, std::vector<Span>& spans) {
  const uint64_t size = zip.size();
  auto u16 = [&zip](uint64_t at) { return ReadLittleEndian(zip, at, 2); };
  auto u32 = [&zip](uint64_t at) { return ReadLittleEndian(zip, at, 4); };
  auto bad = [&name](const auto&... args) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": malformed torch.save archive: ", args...));
  };
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
    const char* problem =
        ReadZip64Fields(zip, p + kCentralHeaderSize + name_len, extra_len, {&uncompressed, &compressed, &local});
    if (problem != nullptr) return refuse(problem);
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
    if (slash != std::string::npos) folder_ = record.substr(0, slash);
  }
  if (!records_.emplace(absl::AsciiStrToLower(record), Record{data, uncompressed, crc}).second) {
    return refuse("occurs twice");
  }
  return p + kCentralHeaderSize + name_len + extra_len + comment_len;
}

absl::Status ZipDirectory::CheckNoOverlap(std::vector<Span> spans, const std::string& name) {
  // Records that share bytes would let a small file be read as many large records.
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  for (size_t k = 1; k < spans.size(); ++k) {
    if (spans[k].begin < spans[k - 1].end) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": zip records '", spans[k - 1].record, "' and '", spans[k].record, "' overlap"));
    }
  }
  return absl::OkStatus();
}

}  // namespace fedtune::model::internal
