#include "common/imaging/jpeg2000.h"

#include <openjpeg.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"

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

  header.components = static_cast<int>(image->numcomps);
  if (image->numcomps < 1 || image->comps == nullptr) return fail("no image component");
  const opj_image_comp_t& comp = image->comps[0];
  header.width = static_cast<int64_t>(image->x1) - image->x0;
  header.height = static_cast<int64_t>(image->y1) - image->y0;
  header.precision = static_cast<int>(comp.prec);
  header.is_signed = comp.sgnd != 0;
  if (header.components != 1) {
    return fail(absl::StrCat(header.components, " components; only grayscale (1 component) is supported"));
  }
  if (comp.dx != 1 || comp.dy != 1) {
    return fail(absl::StrCat("component sub-sampled ", comp.dx, " x ", comp.dy, "; only 1 x 1 is supported"));
  }
  if (header.precision < 1 || header.precision > 16) {
    return fail(absl::StrCat(header.precision, "-bit samples; only 1 to 16 bits are supported"));
  }
  if (header.width <= 0 || header.height <= 0) return fail("empty image area");
  if (absl::Status s = check_header(header); !s.ok()) return s;

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
