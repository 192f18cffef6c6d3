#include "common/imaging/dicom_inflate.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/io/file_util.h"
#include "common/status_macros.h"

namespace fedtune::imaging {
namespace {

constexpr size_t kPreambleBytes = 128;
constexpr size_t kChunkBytes = 64 * 1024;

absl::Status Invalid(absl::string_view name, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(name, ": DICOM: ", why));
}

uint32_t Le16(absl::string_view s, size_t at) {
  return static_cast<uint8_t>(s[at]) | static_cast<uint32_t>(static_cast<uint8_t>(s[at + 1])) << 8;
}
uint32_t Le32(absl::string_view s, size_t at) { return Le16(s, at) | Le16(s, at + 2) << 16; }
void PutLe(std::string* s, uint32_t v, int n) {
  for (int i = 0; i < n; ++i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

// How an Explicit VR element with this VR stores its length (PS3.5 7.1.2): in 2 bytes, or in 4 after 2 reserved
// bytes. Unknown VRs are refused rather than guessed: the rewritten meta header must read back as it was parsed.
enum class VrLength { kShort, kLong, kUnknown };
VrLength LengthOf(absl::string_view vr) {
  static constexpr const char* kShort[] = {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO",
                                           "LT", "PN", "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US"};
  static constexpr const char* kLong[] = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"};
  for (const char* v : kShort) {
    if (vr == v) return VrLength::kShort;
  }
  for (const char* v : kLong) {
    if (vr == v) return VrLength::kLong;
  }
  return VrLength::kUnknown;
}

std::string Printable(absl::string_view bytes) {
  std::string out;
  for (char c : bytes) {
    if (c >= 0x20 && c < 0x7F) {
      out.push_back(c);
    } else {
      absl::StrAppendFormat(&out, "\\x%02X", static_cast<uint8_t>(c));
    }
  }
  return out;
}

// Reads a regular file in pieces, never more than `max_bytes` in all.
class BoundedReader {
 public:
  BoundedReader(std::string name, int64_t max_bytes) : name_(std::move(name)), max_bytes_(max_bytes) {}
  BoundedReader(const BoundedReader&) = delete;
  BoundedReader& operator=(const BoundedReader&) = delete;
  ~BoundedReader() {
    if (fd_ >= 0) ::close(fd_);
  }

  absl::Status Open(const std::string& path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) return io::ErrnoToStatus(errno, "cannot open", name_);
    struct stat st;
    if (::fstat(fd_, &st) != 0) return io::ErrnoToStatus(errno, "cannot stat", name_);
    if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat(name_, ": not a regular file"));
    return absl::OkStatus();
  }

  // Fills `buf` with up to `n` bytes; 0 at the end of the file.
  absl::StatusOr<size_t> Read(char* buf, size_t n) {
    size_t got = 0;
    while (got < n) {
      const ssize_t r = ::read(fd_, buf + got, n - got);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return io::ErrnoToStatus(errno, "cannot read", name_);
      if (r == 0) break;
      got += static_cast<size_t>(r);
    }
    total_ += static_cast<int64_t>(got);
    if (total_ > max_bytes_) {
      return absl::InvalidArgumentError(
          absl::StrCat(name_, ": file larger than the limit of ", max_bytes_, " bytes (it grew while being read?)"));
    }
    return got;
  }

  int64_t total() const { return total_; }

 private:
  const std::string name_;
  const int64_t max_bytes_;
  int fd_ = -1;
  int64_t total_ = 0;
};

// Where one meta header element lies in the bytes read.
struct MetaElement {
  uint32_t element = 0;
  size_t begin = 0;  // Offset of its tag.
  size_t end = 0;    // One past its value.
  size_t value = 0;  // Offset of its value.
};

struct MetaHeader {
  std::vector<MetaElement> elements;
  size_t end = 0;  // Where the deflated dataset starts.
};

// Parses the meta header (Explicit VR Little Endian, PS3.10 7.1) at the start of `head`, the first bytes of the
// file (`at_eof`: all of it), finding its end as DCMTK does: by the File Meta Information Group Length (0002,0000)
// when that is the first element, else at the first tag outside group 0002.
absl::StatusOr<MetaHeader> ParseMetaHeader(absl::string_view head, bool at_eof, absl::string_view name) {
  const size_t start =
      head.size() >= kPreambleBytes + 4 && head.substr(kPreambleBytes, 4) == "DICM" ? kPreambleBytes + 4 : 0;
  const auto too_long_or_truncated = [&](size_t pos) {
    return at_eof ? Invalid(name, absl::StrCat("truncated meta header (the element at offset ", pos,
                                               " runs past the end of the file, ", head.size(), " bytes)"))
                  : Invalid(name, absl::StrCat("meta header longer than ", kMaxDeflatedMetaHeaderBytes,
                                               " bytes (or an element length in it is wrong)"));
  };
  // The element at `pos`, whose first 2 bytes are known to be there.
  const auto parse_element = [&](size_t pos) -> absl::StatusOr<MetaElement> {
    if (pos + 8 > head.size()) return too_long_or_truncated(pos);
    MetaElement e;
    e.element = Le16(head, pos + 2);
    e.begin = pos;
    if (Le16(head, pos) != 0x0002) {
      return Invalid(
          name, absl::StrFormat("element (%04X,%04X) inside the meta header (group 0002)", Le16(head, pos), e.element));
    }
    const absl::string_view vr = head.substr(pos + 4, 2);
    uint32_t length = 0;
    switch (LengthOf(vr)) {
      case VrLength::kShort:
        length = Le16(head, pos + 6);
        e.value = pos + 8;
        break;
      case VrLength::kLong:
        if (pos + 12 > head.size()) return too_long_or_truncated(pos);
        length = Le32(head, pos + 8);
        e.value = pos + 12;
        if (length == 0xFFFFFFFF) {
          return Invalid(name, absl::StrFormat("meta header element (0002,%04X) has an undefined length", e.element));
        }
        break;
      case VrLength::kUnknown:
        return Invalid(name, absl::StrFormat("meta header element (0002,%04X) has an unknown VR '%s' (not Explicit VR "
                                             "Little Endian?)",
                                             e.element, Printable(vr)));
    }
    if (length > head.size() - e.value) return too_long_or_truncated(pos);
    e.end = e.value + length;
    return e;
  };

  if (head.size() < start + 2 || Le16(head, start) != 0x0002) {
    return Invalid(name, absl::StrCat("no meta header (group 0002) at offset ", start,
                                      ": a deflated dataset needs one to say so"));
  }
  MetaHeader meta;
  ASSIGN_OR_RETURN(const MetaElement first, parse_element(start));
  meta.elements.push_back(first);
  size_t end_by_group_length = 0;  // 0: no group length.
  if (first.element == 0x0000 && head.substr(first.begin + 4, 2) == "UL" && first.end - first.value == 4) {
    const uint32_t group_length = Le32(head, first.value);
    if (group_length > kMaxDeflatedMetaHeaderBytes) {
      return Invalid(name, absl::StrCat("meta header group length ", group_length, " above the limit of ",
                                        kMaxDeflatedMetaHeaderBytes, " bytes"));
    }
    end_by_group_length = first.end + group_length;
  }
  size_t pos = first.end;
  while (true) {
    if (end_by_group_length > 0) {
      if (pos >= end_by_group_length) break;
    } else {
      if (pos + 2 > head.size()) {
        if (!at_eof) return too_long_or_truncated(pos);
        break;
      }
      if (Le16(head, pos) != 0x0002) break;
    }
    ASSIGN_OR_RETURN(const MetaElement e, parse_element(pos));
    meta.elements.push_back(e);
    pos = e.end;
  }
  if (pos - start > static_cast<size_t>(kMaxDeflatedMetaHeaderBytes)) return too_long_or_truncated(pos);
  meta.end = pos;
  return meta;
}

// The rewritten preamble and meta header: Transfer Syntax UID Explicit VR Little Endian, group length recomputed.
absl::StatusOr<std::string> RewriteMetaHeader(absl::string_view head, const MetaHeader& meta, absl::string_view name) {
  std::string body;
  int transfer_syntaxes = 0;
  for (const MetaElement& e : meta.elements) {
    if (e.element == 0x0000) continue;  // The group length, recomputed below.
    if (e.element != 0x0010) {
      body.append(head.data() + e.begin, e.end - e.begin);
      continue;
    }
    ++transfer_syntaxes;
    std::string uid(head.substr(e.value, e.end - e.value));
    while (!uid.empty() && (uid.back() == '\0' || uid.back() == ' ')) uid.pop_back();
    if (uid != kDeflatedExplicitLittleEndianUid) {
      return Invalid(name, absl::StrCat("the meta header names transfer syntax '", Printable(uid), "', not ",
                                        kDeflatedExplicitLittleEndianUid, " (Deflated Explicit VR Little Endian)"));
    }
    std::string value(kExplicitLittleEndianUid);
    if (value.size() % 2 != 0) value.push_back('\0');  // UI values are padded to even length with NUL.
    body.append("\x02\x00\x10\x00UI", 6);
    PutLe(&body, static_cast<uint32_t>(value.size()), 2);
    body += value;
  }
  if (transfer_syntaxes != 1) {
    return Invalid(name, absl::StrCat("the meta header holds ", transfer_syntaxes,
                                      " Transfer Syntax UID elements (0002,0010); expected one"));
  }
  std::string out(kPreambleBytes, '\0');
  out += "DICM";
  out.append("\x02\x00\x00\x00UL\x04\x00", 8);
  PutLe(&out, static_cast<uint32_t>(body.size()), 4);  // At most 64 KiB + 14: fits.
  out += body;
  return out;
}

// inflateEnd on every path.
class Inflater {
 public:
  Inflater() = default;
  Inflater(const Inflater&) = delete;
  Inflater& operator=(const Inflater&) = delete;
  ~Inflater() {
    if (initialized_) inflateEnd(&z_);
  }
  absl::Status Init(absl::string_view name) {
    // Negative window bits: a raw deflate stream, no zlib header (PS3.5 A.5).
    const int rc = inflateInit2(&z_, -MAX_WBITS);
    if (rc == Z_MEM_ERROR) return absl::ResourceExhaustedError(absl::StrCat(name, ": out of memory for zlib"));
    if (rc != Z_OK) return absl::InternalError(absl::StrCat(name, ": inflateInit2 failed (", rc, ")"));
    initialized_ = true;
    return absl::OkStatus();
  }
  z_stream* z() { return &z_; }

 private:
  z_stream z_{};
  bool initialized_ = false;
};

}  // namespace

absl::Status InflateDeflatedDicom(const std::string& path, const std::string& name, const DicomInflateOptions& options,
                                  DicomByteSink sink) {
  const int64_t max_bytes = options.max_bytes;
  const std::string limit_source = options.limit_source.empty() ? "" : absl::StrCat(" ", options.limit_source);
  BoundedReader reader(name, std::max<int64_t>(max_bytes, 0));
  RETURN_IF_ERROR(reader.Open(path));

  // The preamble, the meta header and the start of the deflate stream.
  std::string head(kPreambleBytes + 4 + kMaxDeflatedMetaHeaderBytes + 12, '\0');
  ASSIGN_OR_RETURN(const size_t head_bytes, reader.Read(head.data(), head.size()));
  bool eof = head_bytes < head.size();
  head.resize(head_bytes);
  ASSIGN_OR_RETURN(const MetaHeader meta, ParseMetaHeader(head, eof, name));
  ASSIGN_OR_RETURN(const std::string header, RewriteMetaHeader(head, meta, name));

  int64_t written = 0;
  const auto refuse_size = [&]() {
    return Invalid(name, absl::StrCat("the deflated dataset inflates to more than ",
                                      max_bytes - static_cast<int64_t>(header.size()),
                                      " bytes: uncompressed, the file would be above the limit of ", max_bytes,
                                      " bytes", limit_source, "; refused before inflating further"));
  };
  if (static_cast<int64_t>(header.size()) > max_bytes) return refuse_size();
  RETURN_IF_ERROR(sink(header));
  written = static_cast<int64_t>(header.size());

  Inflater inflater;
  RETURN_IF_ERROR(inflater.Init(name));
  z_stream* z = inflater.z();
  std::vector<char> in(std::max(kChunkBytes, head.size() - meta.end));
  std::copy(head.begin() + static_cast<std::ptrdiff_t>(meta.end), head.end(), in.begin());
  z->next_in = reinterpret_cast<Bytef*>(in.data());
  z->avail_in = static_cast<uInt>(head.size() - meta.end);
  std::vector<char> out(kChunkBytes);
  Bytef zero = 0;
  bool padded = false;
  const auto dataset_bytes = [&] { return written - static_cast<int64_t>(header.size()); };
  while (true) {
    if (z->avail_in == 0 && !eof) {
      ASSIGN_OR_RETURN(const size_t n, reader.Read(in.data(), in.size()));
      eof = n == 0;
      z->next_in = reinterpret_cast<Bytef*>(in.data());
      z->avail_in = static_cast<uInt>(n);
    }
    if (z->avail_in == 0 && eof) {
      if (padded) {
        return Invalid(name, absl::StrCat("the deflated dataset is truncated: the file ends before the end of its "
                                          "deflate stream, after ",
                                          dataset_bytes(), " bytes inflated (a file cut short?)"));
      }
      // As DCMTK does: one zero byte after the input, which completes the streams of writers that drop a last
      // byte holding only the end-of-block code's zero bits.
      z->next_in = &zero;
      z->avail_in = 1;
      padded = true;
    }
    // Room for one byte more than the limit allows: producing it is the refusal.
    const int64_t room = max_bytes - written;
    const uInt out_size = static_cast<uInt>(std::min<int64_t>(static_cast<int64_t>(out.size()), room + 1));
    z->next_out = reinterpret_cast<Bytef*>(out.data());
    z->avail_out = out_size;
    const int rc = inflate(z, Z_NO_FLUSH);
    if (rc == Z_DATA_ERROR || rc == Z_NEED_DICT) {
      return Invalid(
          name, absl::StrCat("corrupt deflate stream in the dataset (zlib: ", z->msg != nullptr ? z->msg : "data error",
                             ") after ", dataset_bytes(), " bytes inflated"));
    }
    if (rc == Z_MEM_ERROR) return absl::ResourceExhaustedError(absl::StrCat(name, ": out of memory in zlib"));
    if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) {
      return absl::InternalError(absl::StrCat(name, ": inflate failed (", rc, ")"));
    }
    const int64_t produced = static_cast<int64_t>(out_size - z->avail_out);
    if (produced > room) return refuse_size();
    if (produced > 0) RETURN_IF_ERROR(sink(absl::string_view(out.data(), static_cast<size_t>(produced))));
    written += produced;
    if (rc == Z_STREAM_END) break;
  }

  // What follows the stream: the zero byte added above is not the file's.
  int64_t trailing = padded ? 0 : z->avail_in;
  while (!eof && trailing <= kMaxDeflatedTrailingBytes) {
    ASSIGN_OR_RETURN(const size_t n, reader.Read(in.data(), in.size()));
    eof = n == 0;
    trailing += static_cast<int64_t>(n);
  }
  if (trailing > kMaxDeflatedTrailingBytes) {
    return Invalid(
        name, absl::StrCat(eof ? "" : "at least ", trailing, " bytes after the end of the deflate stream (at most ",
                           kMaxDeflatedTrailingBytes, " may follow it): trailing garbage, or files joined together?"));
  }
  return absl::OkStatus();
}

}  // namespace fedtune::imaging
