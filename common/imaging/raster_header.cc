#include "common/imaging/raster_header.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace fedtune::imaging {
namespace {

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

absl::Status Bad(absl::string_view format, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(format, " header: ", why));
}

bool StartsWith(absl::string_view bytes, absl::string_view magic) { return bytes.substr(0, magic.size()) == magic; }

uint8_t Byte(absl::string_view b, size_t at) { return static_cast<uint8_t>(b[at]); }

// Unsigned integer of `n` bytes at `at`; nullopt when it does not fit in `b`.
std::optional<uint64_t> Uint(absl::string_view b, size_t at, int n, bool big_endian) {
  if (at > b.size() || b.size() - at < static_cast<size_t>(n)) return std::nullopt;
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) {
    const uint64_t byte = Byte(b, at + (big_endian ? i : n - 1 - i));
    v = (v << 8) | byte;
  }
  return v;
}

// ---- PNG: the first chunk must be IHDR (PNG spec 5.6; libpng errors otherwise).

absl::StatusOr<RasterHeader> ReadPng(absl::string_view b) {
  // Signature (8), length (4), "IHDR" (4), width (4), height (4), depth (1)...
  if (b.size() < 8 + 8 + 13) return Bad("PNG", "truncated before the end of IHDR");
  if (*Uint(b, 8, 4, true) != 13 || b.substr(12, 4) != "IHDR") return Bad("PNG", "the first chunk is not IHDR");
  RasterHeader h;
  h.format = "png";
  h.width = static_cast<int64_t>(*Uint(b, 16, 4, true));
  h.height = static_cast<int64_t>(*Uint(b, 20, 4, true));
  h.bits_per_sample = Byte(b, 24);
  return h;
}

// ---- JPEG: markers from SOI up to the first SOFn, as libjpeg-turbo's
// read_markers walks them: junk bytes before a marker and 0xFF fill bytes are
// skipped, RSTn and TEM have no length, every other marker has a 16-bit length
// that counts itself.

bool IsSof(uint8_t m) { return m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC; }

absl::StatusOr<RasterHeader> ReadJpeg(absl::string_view b) {
  size_t pos = 2;  // After SOI (FF D8), checked by the caller.
  while (true) {
    // next_marker(): discard bytes up to 0xFF, then fill bytes; FF 00 is not a
    // marker (discarded too).
    uint8_t marker = 0;
    while (marker == 0) {
      while (pos < b.size() && Byte(b, pos) != 0xFF) ++pos;
      while (pos < b.size() && Byte(b, pos) == 0xFF) ++pos;
      if (pos >= b.size()) return Bad("JPEG", "no frame header (SOFn) before the end of the data");
      marker = Byte(b, pos++);
    }
    if (marker == 0xD8) return Bad("JPEG", "a second SOI marker before the frame header");
    if (marker == 0xD9) return Bad("JPEG", "EOI before a frame header (SOFn)");
    if (marker == 0xDA) return Bad("JPEG", "SOS before a frame header (SOFn)");
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) continue;  // TEM, RSTn: no length.
    const std::optional<uint64_t> length = Uint(b, pos, 2, true);
    if (!length) return Bad("JPEG", "truncated marker segment");
    if (*length < 2) return Bad("JPEG", absl::StrCat("marker segment length ", *length, " < 2"));
    if (IsSof(marker)) {
      // Length (2), precision (1), height (2), width (2), components (1).
      if (*length < 8 || b.size() - pos < 8) return Bad("JPEG", "truncated frame header (SOFn)");
      RasterHeader h;
      h.format = "jpeg";
      h.bits_per_sample = Byte(b, pos + 2);
      h.height = static_cast<int64_t>(*Uint(b, pos + 3, 2, true));
      h.width = static_cast<int64_t>(*Uint(b, pos + 5, 2, true));
      return h;
    }
    pos += *length;
  }
}

// ---- TIFF: the first IFD (the page OpenCV decodes), classic or BigTIFF.

class TiffReader {
 public:
  TiffReader(absl::string_view b, bool big_endian, bool bigtiff) : b_(b), be_(big_endian), big_(bigtiff) {}

  std::optional<uint64_t> U(size_t at, int n) const { return Uint(b_, at, n, be_); }
  size_t EntrySize() const { return big_ ? 20 : 12; }
  size_t CountSize() const { return big_ ? 8 : 2; }

  // Value `index` of the directory entry at `entry` as an integer: nullopt when
  // the type is not an integer type or the value lies outside the data;
  // negative values are returned as such.
  std::optional<int64_t> Integer(size_t entry, uint64_t index) const {
    const uint64_t type = *U(entry + 2, 2);
    int size = 0;
    bool is_signed = false;
    switch (type) {
      case 1:  // BYTE
        size = 1;
        break;
      case 6:  // SBYTE
        size = 1;
        is_signed = true;
        break;
      case 3:  // SHORT
        size = 2;
        break;
      case 8:  // SSHORT
        size = 2;
        is_signed = true;
        break;
      case 4:   // LONG
      case 13:  // IFD
        size = 4;
        break;
      case 9:  // SLONG
        size = 4;
        is_signed = true;
        break;
      case 16:  // LONG8
      case 18:  // IFD8
        size = 8;
        break;
      case 17:  // SLONG8
        size = 8;
        is_signed = true;
        break;
      default:
        return std::nullopt;
    }
    const std::optional<uint64_t> count = U(entry + 4, big_ ? 8 : 4);
    if (!count || index >= *count) return std::nullopt;
    const size_t value_field = entry + (big_ ? 12 : 8);
    const size_t inline_bytes = big_ ? 8 : 4;
    size_t at;
    if (*count <= inline_bytes / size) {
      at = value_field;
    } else {
      const std::optional<uint64_t> offset = U(value_field, big_ ? 8 : 4);
      if (!offset || *offset > b_.size()) return std::nullopt;
      at = static_cast<size_t>(*offset);
    }
    if (index > (b_.size() - std::min(at, b_.size())) / size) return std::nullopt;
    const std::optional<uint64_t> raw = U(at + index * size, size);
    if (!raw) return std::nullopt;
    if (is_signed) {
      const int shift = 64 - 8 * size;
      return static_cast<int64_t>(*raw << shift) >> shift;
    }
    return *raw > static_cast<uint64_t>(kInt64Max) ? kInt64Max : static_cast<int64_t>(*raw);
  }

 private:
  absl::string_view b_;
  bool be_;
  bool big_;
};

absl::StatusOr<RasterHeader> ReadTiff(absl::string_view b) {
  const bool be = b[0] == 'M';
  const bool big = *Uint(b, 2, 2, be) == 43;
  TiffReader r(b, be, big);
  std::optional<uint64_t> ifd;
  if (big) {
    if (r.U(4, 2) != std::optional<uint64_t>(8)) return Bad("TIFF", "BigTIFF offset size is not 8");
    ifd = r.U(8, 8);
  } else {
    ifd = r.U(4, 4);
  }
  if (!ifd) return Bad("TIFF", "truncated before the first IFD offset");
  const std::optional<uint64_t> count = r.U(*ifd, static_cast<int>(r.CountSize()));
  if (!count) return Bad("TIFF", absl::StrCat("first IFD offset ", *ifd, " is outside the data"));
  const uint64_t entries_at = *ifd + r.CountSize();
  if (*count == 0 || *count > (b.size() - entries_at) / r.EntrySize()) {
    return Bad("TIFF", absl::StrCat("first IFD at ", *ifd, " declares ", *count, " entries that the data lacks"));
  }
  RasterHeader h;
  h.format = "tiff";
  bool has_width = false, has_height = false;
  for (uint64_t i = 0; i < *count; ++i) {
    const size_t entry = static_cast<size_t>(entries_at + i * r.EntrySize());
    const uint64_t tag = *r.U(entry, 2);
    if (tag != 256 && tag != 257 && tag != 258 && tag != 322 && tag != 323) continue;
    if (tag == 258) {
      // BitsPerSample: one value per sample (libtiff requires them equal).
      for (uint64_t k = 0; k < 16; ++k) {
        const std::optional<int64_t> bits = r.Integer(entry, k);
        if (!bits) break;
        if (*bits > h.bits_per_sample) h.bits_per_sample = static_cast<int>(std::min<int64_t>(*bits, 1 << 16));
      }
      continue;
    }
    const std::optional<int64_t> value = r.Integer(entry, 0);
    if (!value || *value <= 0) {
      return Bad("TIFF", absl::StrCat("tag ", tag, " is not a positive integer"));
    }
    // A tag given twice: keep the larger value, whichever libtiff uses.
    switch (tag) {
      case 256:
        h.width = std::max(h.width, *value);
        has_width = true;
        break;
      case 257:
        h.height = std::max(h.height, *value);
        has_height = true;
        break;
      case 322:
        h.tile_width = std::max(h.tile_width, *value);
        break;
      case 323:
        h.tile_height = std::max(h.tile_height, *value);
        break;
    }
  }
  if (!has_width || !has_height) return Bad("TIFF", "the first IFD lacks ImageWidth or ImageLength");
  return h;
}

// ---- BMP: OpenCV's BmpDecoder::readHeader.

absl::StatusOr<RasterHeader> ReadBmp(absl::string_view b) {
  const std::optional<uint64_t> info_size = Uint(b, 14, 4, false);
  if (!info_size) return Bad("BMP", "truncated before the info header");
  RasterHeader h;
  h.format = "bmp";
  if (*info_size == 12) {
    if (b.size() < 26) return Bad("BMP", "truncated core header");
    h.width = static_cast<int64_t>(*Uint(b, 18, 2, false));
    h.height = static_cast<int64_t>(*Uint(b, 20, 2, false));
    h.bits_per_sample = static_cast<int>(*Uint(b, 24, 2, false));
  } else if (*info_size >= 36) {
    if (b.size() < 30) return Bad("BMP", "truncated info header");
    h.width = static_cast<int32_t>(*Uint(b, 18, 4, false));
    // Negative: a top-down image of |height| rows.
    h.height = std::abs(static_cast<int64_t>(static_cast<int32_t>(*Uint(b, 22, 4, false))));
    h.bits_per_sample = static_cast<int>(*Uint(b, 28, 2, false));
  } else {
    return Bad("BMP", absl::StrCat("unsupported info header size ", *info_size));
  }
  return h;
}

}  // namespace

std::string RasterFormat(absl::string_view bytes) {
  if (StartsWith(bytes, "\x89PNG\r\n\x1a\n")) return "png";
  if (StartsWith(bytes, "\xFF\xD8\xFF")) return "jpeg";
  if (StartsWith(bytes, absl::string_view("II*\0", 4)) || StartsWith(bytes, absl::string_view("MM\0*", 4)) ||
      StartsWith(bytes, absl::string_view("II+\0", 4)) || StartsWith(bytes, absl::string_view("MM\0+", 4))) {
    return "tiff";
  }
  if (StartsWith(bytes, "BM")) return "bmp";
  return "unknown";
}

absl::StatusOr<RasterHeader> ReadRasterHeader(absl::string_view bytes) {
  const std::string format = RasterFormat(bytes);
  absl::StatusOr<RasterHeader> h;
  if (format == "png") {
    h = ReadPng(bytes);
  } else if (format == "jpeg") {
    h = ReadJpeg(bytes);
  } else if (format == "tiff") {
    h = ReadTiff(bytes);
  } else if (format == "bmp") {
    h = ReadBmp(bytes);
  } else {
    return absl::InvalidArgumentError("not a PNG, JPEG, TIFF or BMP file (by its first bytes)");
  }
  if (!h.ok()) return h;
  if (h->width <= 0 || h->height <= 0) {
    return Bad(h->format, absl::StrCat("declares an empty image (", h->width, " x ", h->height, ")"));
  }
  return h;
}

}  // namespace fedtune::imaging
