#include "common/imaging/jpeg2000.h"

#include <openjpeg.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace fedtune::imaging {
namespace {

constexpr unsigned char kCodestreamMagic[] = {0xFF, 0x4F, 0xFF, 0x51};
// The JP2 signature box: length 12, type "jP  ", content 0D 0A 87 0A.
constexpr unsigned char kJp2Magic[] = {0x00, 0x00, 0x00, 0x0C, 0x6A, 0x50, 0x20, 0x20, 0x0D, 0x0A, 0x87, 0x0A};

bool StartsWith(absl::string_view bytes, const unsigned char* magic, size_t n) {
  return bytes.size() >= n && std::memcmp(bytes.data(), magic, n) == 0;
}

// The bytes being decoded, read by OpenJPEG through the callbacks below.
struct MemoryStream {
  const unsigned char* data;
  size_t size;
  size_t pos;
};

OPJ_SIZE_T ReadFn(void* buffer, OPJ_SIZE_T n, void* user) {
  auto* s = static_cast<MemoryStream*>(user);
  if (s->pos >= s->size) return static_cast<OPJ_SIZE_T>(-1);  // OpenJPEG's end-of-stream.
  const size_t k = std::min<size_t>(n, s->size - s->pos);
  std::memcpy(buffer, s->data + s->pos, k);
  s->pos += k;
  return k;
}

OPJ_OFF_T SkipFn(OPJ_OFF_T n, void* user) {
  auto* s = static_cast<MemoryStream*>(user);
  if (n < 0) {
    const size_t back = std::min<size_t>(static_cast<size_t>(-n), s->pos);
    s->pos -= back;
    return -static_cast<OPJ_OFF_T>(back);
  }
  // At the end, -1 (OpenJPEG's "cannot skip"): its skip loop would spin on a 0.
  if (n > 0 && s->pos >= s->size) return -1;
  const size_t k = std::min<size_t>(static_cast<size_t>(n), s->size - std::min(s->pos, s->size));
  s->pos += k;
  return static_cast<OPJ_OFF_T>(k);
}

OPJ_BOOL SeekFn(OPJ_OFF_T to, void* user) {
  auto* s = static_cast<MemoryStream*>(user);
  if (to < 0 || static_cast<uint64_t>(to) > s->size) return OPJ_FALSE;
  s->pos = static_cast<size_t>(to);
  return OPJ_TRUE;
}

// OpenJPEG's messages, kept for the Status instead of going to stderr.
struct Messages {
  std::string errors;
  std::string warnings;
};

void Append(std::string* to, const char* msg) {
  if (msg == nullptr || to->size() > 2000) return;  // A corrupt stream can repeat a message per code-block.
  std::string m(msg);
  while (!m.empty() && (m.back() == '\n' || m.back() == '\r')) m.pop_back();
  if (!to->empty()) to->append("; ");
  to->append(m);
}
void ErrorFn(const char* msg, void* user) { Append(&static_cast<Messages*>(user)->errors, msg); }
void WarningFn(const char* msg, void* user) { Append(&static_cast<Messages*>(user)->warnings, msg); }
void InfoFn(const char*, void*) {}

uint32_t Be16(const unsigned char* p) { return (uint32_t{p[0]} << 8) | p[1]; }
uint32_t Be32(const unsigned char* p) { return (Be16(p) << 16) | Be16(p + 2); }
uint64_t Be64(const unsigned char* p) { return (uint64_t{Be32(p)} << 32) | Be32(p + 4); }

// The codestream inside a JP2 file: the content of its first Contiguous Codestream box ("jp2c"), every box's length
// checked against the bytes there are.
absl::StatusOr<absl::string_view> FindJp2Codestream(absl::string_view bytes, absl::string_view name) {
  const auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t pos = 0;
  while (pos < bytes.size()) {
    const size_t left = bytes.size() - pos;
    if (left < 8) break;
    uint64_t length = Be32(data + pos);
    size_t header = 8;
    if (length == 1) {  // The length follows the type, in 64 bits.
      if (left < 16) break;
      length = Be64(data + pos + 8);
      header = 16;
    } else if (length == 0) {  // The box runs to the end of the file.
      length = left;
    }
    if (length < header || length > left) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": JPEG 2000: JP2 box at byte ", pos, " declares ", length,
                                                     " bytes, but ", left, " are left (truncated or corrupt file)"));
    }
    if (std::memcmp(data + pos + 4, "jp2c", 4) == 0) return bytes.substr(pos + header, length - header);
    pos += length;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(name, ": JPEG 2000: the JP2 file holds no codestream box (jp2c) (truncated or corrupt file)"));
}

// The main header's SIZ marker segment (ISO 15444-1 A.5.1), which must follow SOC: read here, before OpenJPEG, which
// allocates coding parameters for every tile and component as it reads the main header (a 49 KB codestream declaring
// 16,384 components in 100 tiles took 1.9 GB). Fills `header` and `tiles`.
absl::Status ParseSiz(absl::string_view codestream, absl::string_view name, Jpeg2000Header* header) {
  auto refuse = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": JPEG 2000: ", why));
  };
  const auto* p = reinterpret_cast<const unsigned char*>(codestream.data());
  constexpr size_t kCsizEnd = 42;  // SOC (2), SIZ marker (2), Lsiz .. Csiz (38).
  if (!StartsWith(codestream, kCodestreamMagic, sizeof(kCodestreamMagic))) {
    return refuse("the codestream does not start with SOC and SIZ (FF 4F FF 51)");
  }
  if (codestream.size() < kCsizEnd) return refuse("the main header is truncated (within SIZ)");
  const uint32_t lsiz = Be16(p + 4);
  const uint32_t x = Be32(p + 8), y = Be32(p + 12), x0 = Be32(p + 16), y0 = Be32(p + 20);
  const uint32_t tx = Be32(p + 24), ty = Be32(p + 28), tx0 = Be32(p + 32), ty0 = Be32(p + 36);
  const uint32_t csiz = Be16(p + 40);
  header->components = static_cast<int>(csiz);
  if (csiz != 1) return refuse(absl::StrCat(csiz, " components; only grayscale (1 component) is supported"));
  if (lsiz != 41) return refuse(absl::StrCat("SIZ marker length ", lsiz, "; one component needs 41"));
  if (codestream.size() < kCsizEnd + 3) return refuse("the main header is truncated (within SIZ)");
  const uint32_t ssiz = p[42], xrsiz = p[43], yrsiz = p[44];
  if (xrsiz != 1 || yrsiz != 1) {
    return refuse(absl::StrCat("component sub-sampled ", xrsiz, " x ", yrsiz, "; only 1 x 1 is supported"));
  }
  header->precision = static_cast<int>(ssiz & 0x7F) + 1;
  header->is_signed = (ssiz & 0x80) != 0;
  if (header->precision > 16) {
    return refuse(absl::StrCat(header->precision, "-bit samples; only 1 to 16 bits are supported"));
  }
  if (x <= x0 || y <= y0) return refuse("empty image area");
  header->width = int64_t{x} - x0;
  header->height = int64_t{y} - y0;
  // A.5.1: the first tile must hold the image's first sample.
  if (tx == 0 || ty == 0 || tx0 > x0 || ty0 > y0 || uint64_t{tx0} + tx <= x0 || uint64_t{ty0} + ty <= y0) {
    return refuse(absl::StrCat("invalid tiling (tile size ", tx, " x ", ty, ", tile origin ", tx0, ", ", ty0,
                               ", image origin ", x0, ", ", y0, ")"));
  }
  const uint64_t across = (uint64_t{x} - tx0 + tx - 1) / tx, down = (uint64_t{y} - ty0 + ty - 1) / ty;
  header->tiles = static_cast<int64_t>(across * down);  // Each factor < 2^32: no overflow.
  if (header->tiles > kMaxJpeg2000Tiles) {
    return refuse(absl::StrCat(across, " x ", down, " = ", header->tiles, " tiles (tile size ", tx, " x ", ty,
                               "), more than the ", kMaxJpeg2000Tiles, " tiles accepted"));
  }
  return absl::OkStatus();
}

// OpenJPEG decodes a tile that the codestream lacks as zeros and reports success (a tiled codestream cut after a
// tile, with EOC appended, decoded "OK" and mostly black; its codestream index cannot tell: it is not made at all
// then). So the tile-parts are walked here (A.4.2): the main header's marker segments by their lengths up to the
// first SOT, then each tile-part by its length Psot; every tile of the `tiles` must have at least one.
absl::Status CheckEveryTileIsPresent(absl::string_view codestream, absl::string_view name, int64_t tiles) {
  auto refuse = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": JPEG 2000: ", why));
  };
  const auto* p = reinterpret_cast<const unsigned char*>(codestream.data());
  const size_t size = codestream.size();
  size_t pos = 2;  // After SOC.
  while (true) {
    if (pos + 4 > size) return refuse("the main header is truncated (no tile-part)");
    const uint32_t marker = Be16(p + pos);
    if (marker == 0xFF90) break;  // SOT: the first tile-part.
    if ((marker >> 8) != 0xFF || Be16(p + pos + 2) < 2) {
      return refuse(absl::StrCat("corrupt main header at byte ", pos, " (marker ", absl::Hex(marker), ")"));
    }
    pos += 2 + Be16(p + pos + 2);
  }
  std::vector<bool> present(static_cast<size_t>(tiles), false);
  bool to_eoc = false;
  while (pos + 12 <= size && Be16(p + pos) == 0xFF90) {
    const uint32_t isot = Be16(p + pos + 4), psot = Be32(p + pos + 6);
    if (isot >= tiles) return refuse(absl::StrCat("tile-part of tile ", isot, ", but there are ", tiles, " tiles"));
    present[isot] = true;
    if (psot == 0) {  // The last tile-part, up to EOC.
      to_eoc = true;
      break;
    }
    if (psot < 14 || psot > size - pos) {
      return refuse(absl::StrCat("tile-part at byte ", pos, " declares ", psot, " bytes, but ", size - pos,
                                 " are left (truncated codestream)"));
    }
    pos += psot;
  }
  // After EOC, only padding (zero bytes; DICOM pads an odd-length codestream with one): anything else is most likely
  // a further frame's codestream in a multi-frame file that lacks Number of Frames.
  if (!to_eoc && pos + 2 <= size && Be16(p + pos) == 0xFFD9) {
    const absl::string_view after = codestream.substr(pos + 2);
    if (after.find_first_not_of('\0') != absl::string_view::npos) {
      return refuse(absl::StrCat(after.size(),
                                 " bytes after the end of the codestream (EOC), not padding (a further "
                                 "frame? multi-frame images are not supported)"));
    }
  }
  const auto first = std::find(present.begin(), present.end(), false);
  if (first == present.end()) return absl::OkStatus();
  return refuse(absl::StrCat(std::count(present.begin(), present.end(), false), " of ", tiles,
                             " tiles missing (the first: tile ", first - present.begin(), "): truncated codestream"));
}

struct CodecDeleter {
  void operator()(opj_codec_t* c) const { opj_destroy_codec(c); }
};
struct StreamDeleter {
  void operator()(opj_stream_t* s) const { opj_stream_destroy(s); }
};
struct ImageDeleter {
  void operator()(opj_image_t* i) const { opj_image_destroy(i); }
};

}  // namespace

bool LooksLikeJpeg2000(absl::string_view bytes) {
  return StartsWith(bytes, kCodestreamMagic, sizeof(kCodestreamMagic)) ||
         StartsWith(bytes, kJp2Magic, sizeof(kJp2Magic));
}

absl::StatusOr<Jpeg2000Image> DecodeJpeg2000(absl::string_view bytes, absl::string_view name,
                                             absl::FunctionRef<absl::Status(const Jpeg2000Header&)> check_header) {
  Jpeg2000Header header;
  if (StartsWith(bytes, kCodestreamMagic, sizeof(kCodestreamMagic))) {
    header.jp2 = false;
  } else if (StartsWith(bytes, kJp2Magic, sizeof(kJp2Magic))) {
    header.jp2 = true;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": JPEG 2000: neither a codestream (FF 4F FF 51) nor a JP2 file"));
  }
  absl::string_view codestream = bytes;
  if (header.jp2) {
    ASSIGN_OR_RETURN(codestream, FindJp2Codestream(bytes, name));
  }
  RETURN_IF_ERROR(ParseSiz(codestream, name, &header));
  if (absl::Status s = check_header(header); !s.ok()) return s;
  RETURN_IF_ERROR(CheckEveryTileIsPresent(codestream, name, header.tiles));
  Messages messages;
  auto fail = [&](absl::string_view what) {
    std::string msg = absl::StrCat(name, ": JPEG 2000: ", what);
    if (!messages.errors.empty()) absl::StrAppend(&msg, " (OpenJPEG: ", messages.errors, ")");
    if (!messages.warnings.empty()) absl::StrAppend(&msg, " (OpenJPEG warnings: ", messages.warnings, ")");
    return absl::InvalidArgumentError(msg);
  };

  std::unique_ptr<opj_codec_t, CodecDeleter> codec(opj_create_decompress(header.jp2 ? OPJ_CODEC_JP2 : OPJ_CODEC_J2K));
  if (codec == nullptr) return absl::ResourceExhaustedError(absl::StrCat(name, ": cannot create an OpenJPEG decoder"));
  opj_set_error_handler(codec.get(), ErrorFn, &messages);
  opj_set_warning_handler(codec.get(), WarningFn, &messages);
  opj_set_info_handler(codec.get(), InfoFn, nullptr);
  opj_dparameters_t params;
  opj_set_default_decoder_parameters(&params);
  if (!opj_setup_decoder(codec.get(), &params)) return fail("cannot set up the decoder");
  // Without this, OPJ_NUM_THREADS in the environment makes OpenJPEG start worker threads (the loader already decodes
  // files in parallel, one per thread).
  if (!opj_codec_set_threads(codec.get(), 0)) return fail("cannot set the decoder to the calling thread");

  MemoryStream source{reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), 0};
  std::unique_ptr<opj_stream_t, StreamDeleter> stream(opj_stream_create(OPJ_J2K_STREAM_CHUNK_SIZE, OPJ_TRUE));
  if (stream == nullptr) return absl::ResourceExhaustedError(absl::StrCat(name, ": cannot create an OpenJPEG stream"));
  opj_stream_set_user_data(stream.get(), &source, nullptr);
  opj_stream_set_user_data_length(stream.get(), bytes.size());
  opj_stream_set_read_function(stream.get(), ReadFn);
  opj_stream_set_skip_function(stream.get(), SkipFn);
  opj_stream_set_seek_function(stream.get(), SeekFn);

  opj_image_t* raw_image = nullptr;
  const bool header_ok = opj_read_header(stream.get(), codec.get(), &raw_image);
  std::unique_ptr<opj_image_t, ImageDeleter> image(raw_image);
  if (!header_ok || image == nullptr) return fail("cannot read the main header (truncated or corrupt?)");

  // What OpenJPEG read must be what SIZ says (for JP2, its header boxes could differ).
  if (image->numcomps != 1 || image->comps == nullptr || image->comps[0].dx != 1 || image->comps[0].dy != 1 ||
      static_cast<int64_t>(image->x1) - image->x0 != header.width ||
      static_cast<int64_t>(image->y1) - image->y0 != header.height ||
      image->comps[0].prec != static_cast<OPJ_UINT32>(header.precision) ||
      (image->comps[0].sgnd != 0) != header.is_signed) {
    return fail("the header OpenJPEG read differs from the codestream's SIZ marker");
  }

  // Decoding allocates the image's buffers (bounded by check_header) and per-tile work buffers; OpenJPEG reports a
  // failed allocation as an error like any other.
  if (!opj_decode(codec.get(), stream.get(), image.get())) return fail("cannot decode (truncated or corrupt data?)");
  if (!opj_end_decompress(codec.get(), stream.get())) return fail("cannot finish decoding (truncated data?)");
  // A JP2 file may carry a palette or channel definitions that change the components while decoding.
  if (image->numcomps != 1 || image->comps[0].data == nullptr || image->comps[0].w != header.width ||
      image->comps[0].h != header.height || image->comps[0].prec != static_cast<OPJ_UINT32>(header.precision)) {
    return fail("the decoded image does not match its header");
  }
  Jpeg2000Image out;
  out.header = header;
  const size_t n = static_cast<size_t>(header.width) * static_cast<size_t>(header.height);
  out.samples.assign(image->comps[0].data, image->comps[0].data + n);
  return out;
}

}  // namespace fedtune::imaging
