#include "tests/common/imaging/dicom_fixtures.h"

#include <openjpeg.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>

#include "common/logging.h"
#include "dcmtk/dcmdata/dcdeftag.h"
#include "dcmtk/dcmdata/dcfilefo.h"
#include "dcmtk/dcmdata/dcpixel.h"
#include "dcmtk/dcmdata/dcpixseq.h"
#include "dcmtk/dcmdata/dcpxitem.h"
#include "dcmtk/dcmdata/dcrleerg.h"
#include "dcmtk/dcmdata/dcuid.h"
#include "dcmtk/dcmjpeg/djencode.h"
#include "dcmtk/dcmjpeg/djrplol.h"
#include "dcmtk/dcmjpeg/djrploss.h"
#include "dcmtk/dcmjpls/djencode.h"
#include "dcmtk/dcmjpls/djrparam.h"

namespace fedtune::imaging::fixtures {
namespace {

void RegisterEncodersOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    DcmRLEEncoderRegistration::registerCodecs();
    DJEncoderRegistration::registerCodecs();
    DJLSEncoderRegistration::registerCodecs();
  });
}

int32_t MinValue(const Samples& s) {
  return s.is_signed ? static_cast<int32_t>(-(int64_t{1} << (s.bits_stored - 1))) : 0;
}
int32_t MaxValue(const Samples& s) {
  return static_cast<int32_t>(s.is_signed ? (int64_t{1} << (s.bits_stored - 1)) - 1
                                          : (int64_t{1} << s.bits_stored) - 1);
}

// The dataset of a MONOCHROME2 image without Pixel Data.
void PutImageAttributes(DcmDataset* ds, const Samples& s) {
  OFCondition c = ds->putAndInsertString(DCM_SOPClassUID, UID_SecondaryCaptureImageStorage);
  if (c.good()) c = ds->putAndInsertString(DCM_SOPInstanceUID, "2.25.4242");
  if (c.good()) c = ds->putAndInsertString(DCM_Modality, "OT");
  if (c.good()) c = ds->putAndInsertUint16(DCM_SamplesPerPixel, 1);
  if (c.good()) c = ds->putAndInsertString(DCM_PhotometricInterpretation, "MONOCHROME2");
  if (c.good()) c = ds->putAndInsertUint16(DCM_Rows, static_cast<Uint16>(s.height));
  if (c.good()) c = ds->putAndInsertUint16(DCM_Columns, static_cast<Uint16>(s.width));
  if (c.good()) c = ds->putAndInsertUint16(DCM_BitsAllocated, static_cast<Uint16>(s.bits_allocated));
  if (c.good()) c = ds->putAndInsertUint16(DCM_BitsStored, static_cast<Uint16>(s.bits_stored));
  if (c.good()) c = ds->putAndInsertUint16(DCM_HighBit, static_cast<Uint16>(s.bits_stored - 1));
  if (c.good()) c = ds->putAndInsertUint16(DCM_PixelRepresentation, s.is_signed ? 1 : 0);
  if (c.good() && s.full_range_window) {
    // Stored values = modality values (no rescale): the window spans the type's range.
    const double lo = MinValue(s), hi = MaxValue(s);
    c = ds->putAndInsertString(DCM_WindowCenter, std::to_string((lo + hi + 1) / 2).c_str());
    if (c.good()) c = ds->putAndInsertString(DCM_WindowWidth, std::to_string(hi - lo + 1).c_str());
  }
  CHECK(c.good()) << c.text();
}

// Native pixel data: each value's low bits_stored bits (two's complement when signed). `big_endian`: the file will be
// written in Explicit VR Big Endian (which DCMTK writes by swapping each 16-bit word of OW data).
void PutNativePixels(DcmDataset* ds, const Samples& s, bool big_endian) {
  const uint32_t mask = static_cast<uint32_t>((int64_t{1} << s.bits_stored) - 1);
  OFCondition c;
  if (s.bits_allocated == 32) {
    // Two words a sample; DCMTK swaps the bytes of each word for big-endian, so the words go high word first there.
    std::vector<Uint16> px(2 * s.values.size());
    for (size_t i = 0; i < s.values.size(); ++i) {
      const uint32_t v = static_cast<uint32_t>(s.values[i]) & mask;
      px[2 * i + (big_endian ? 1 : 0)] = static_cast<Uint16>(v & 0xFFFF);
      px[2 * i + (big_endian ? 0 : 1)] = static_cast<Uint16>(v >> 16);
    }
    c = ds->putAndInsertUint16Array(DCM_PixelData, px.data(), static_cast<unsigned long>(px.size()));
  } else if (s.bits_allocated == 8 && s.eight_bit_ow) {
    std::vector<Uint16> px((s.values.size() + 1) / 2);
    for (size_t i = 0; i < s.values.size(); ++i) {
      px[i / 2] |= static_cast<Uint16>((static_cast<uint32_t>(s.values[i]) & mask) << (i % 2 == 0 ? 0 : 8));
    }
    c = ds->putAndInsertUint16Array(DCM_PixelData, px.data(), static_cast<unsigned long>(px.size()));
  } else if (s.bits_allocated == 8) {
    std::vector<Uint8> px(s.values.size());
    for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<Uint8>(static_cast<uint32_t>(s.values[i]) & mask);
    c = ds->putAndInsertUint8Array(DCM_PixelData, px.data(), static_cast<unsigned long>(px.size()));
  } else {
    std::vector<Uint16> px(s.values.size());
    for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<Uint16>(static_cast<uint32_t>(s.values[i]) & mask);
    c = ds->putAndInsertUint16Array(DCM_PixelData, px.data(), static_cast<unsigned long>(px.size()));
  }
  CHECK(c.good()) << c.text();
}

// OpenJPEG's output stream: a growing string.
struct Sink {
  std::string bytes;
  size_t pos = 0;
};
OPJ_SIZE_T WriteFn(void* buffer, OPJ_SIZE_T n, void* user) {
  auto* s = static_cast<Sink*>(user);
  if (s->bytes.size() < s->pos + n) s->bytes.resize(s->pos + n);
  std::memcpy(s->bytes.data() + s->pos, buffer, n);
  s->pos += n;
  return n;
}
OPJ_OFF_T SkipFn(OPJ_OFF_T n, void* user) {
  auto* s = static_cast<Sink*>(user);
  s->pos += n;
  if (s->bytes.size() < s->pos) s->bytes.resize(s->pos);
  return n;
}
OPJ_BOOL SeekFn(OPJ_OFF_T to, void* user) {
  auto* s = static_cast<Sink*>(user);
  s->pos = static_cast<size_t>(to);
  if (s->bytes.size() < s->pos) s->bytes.resize(s->pos);
  return OPJ_TRUE;
}
void OpjError(const char* msg, void*) { LOG(ERROR) << "OpenJPEG encoder: " << msg; }
void OpjQuiet(const char*, void*) {}

}  // namespace

Samples SyntheticImage(int width, int height, int bits_stored, int bits_allocated, bool is_signed) {
  Samples s;
  s.width = width;
  s.height = height;
  s.bits_stored = bits_stored;
  s.bits_allocated = bits_allocated;
  s.is_signed = is_signed;
  const double lo = MinValue(s), hi = MaxValue(s), span = hi - lo;  // bits_stored <= 31: no overflow.
  s.values.resize(static_cast<size_t>(width) * height);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      double v = 0.1 + 0.6 * (x + y) / static_cast<double>(width + height);  // Gradient.
      const double dx = x - 0.65 * width, dy = y - 0.4 * height;
      if (dx * dx + dy * dy < 0.04 * width * height) v += 0.25;                               // Bright disc.
      if (x > width / 8 && x < width / 3 && y > height / 2 && y < height * 7 / 8) v -= 0.08;  // Dark rectangle.
      if (y < height / 6) v += 0.03 * ((x / 2) % 2);                                          // Fine stripes.
      v = std::clamp(v, 0.0, 1.0);
      s.values[static_cast<size_t>(y) * width + x] = static_cast<int32_t>(std::lround(lo + v * span));
    }
  }
  s.values[0] = MinValue(s);
  s.values[s.values.size() - 1] = MaxValue(s);
  return s;
}

Samples RadiographLikeImage(int width, int height) {
  Samples s;
  s.width = width;
  s.height = height;
  s.bits_stored = 12;
  s.bits_allocated = 16;
  s.values.assign(static_cast<size_t>(width) * height, 0);
  uint32_t rng = 12345;  // A fixed linear congruential texture: deterministic, not white noise.
  for (int y = 60; y < height - 80; ++y) {
    for (int x = 40; x < width - 50; ++x) {
      const double dx = (x - width / 2.0) / (width / 2.0), dy = (y - height / 2.0) / (height / 2.0);
      const double body = 2000 * std::exp(-(dx * dx * 1.5 + dy * dy));
      const double ribs = 300 * (0.5 + 0.5 * std::sin(y / 37.0 + 3 * dx * dx));
      rng = rng * 1664525u + 1013904223u;
      const double texture = static_cast<double>((rng >> 24) % 32) - 16;  // +-16 of 4096.
      s.values[static_cast<size_t>(y) * width + x] =
          static_cast<int32_t>(std::clamp(body + ribs + 900 + texture, 0.0, 4095.0));
    }
  }
  return s;
}

void WriteDicom(const std::string& path, const Samples& samples, E_TransferSyntax xfer) {
  RegisterEncodersOnce();
  DcmFileFormat file;
  DcmDataset* ds = file.getDataset();
  PutImageAttributes(ds, samples);
  PutNativePixels(ds, samples, xfer == EXS_BigEndianExplicit);
  const DcmXfer x(xfer);
  if (x.isEncapsulated()) {
    std::unique_ptr<DcmRepresentationParameter> param;
    switch (xfer) {
      case EXS_JPEGProcess1:
      case EXS_JPEGProcess2_4:
        param = std::make_unique<DJ_RPLossy>(90);
        break;
      case EXS_JPEGProcess14SV1:
        param = std::make_unique<DJ_RPLossless>(1, 0);
        break;
      case EXS_JPEGLSLossless:
        param = std::make_unique<DJLSRepresentationParameter>(0, OFTrue);
        break;
      case EXS_JPEGLSLossy:
        param = std::make_unique<DJLSRepresentationParameter>(2, OFFalse);
        break;
      default:
        break;  // RLE has no parameters.
    }
    const OFCondition c = ds->chooseRepresentation(xfer, param.get());
    CHECK(c.good() && ds->canWriteXfer(xfer)) << path << ": cannot encode as " << x.getXferName() << ": " << c.text();
  }
  const OFCondition c = file.saveFile(path.c_str(), xfer);
  CHECK(c.good()) << path << ": " << c.text();
}

std::string EncodeJpeg2000(const Samples& samples, bool lossless, double ratio, int tile_size) {
  opj_image_cmptparm_t cp;
  std::memset(&cp, 0, sizeof(cp));
  cp.dx = cp.dy = 1;
  cp.w = static_cast<OPJ_UINT32>(samples.width);
  cp.h = static_cast<OPJ_UINT32>(samples.height);
  cp.prec = static_cast<OPJ_UINT32>(samples.bits_stored);
  cp.sgnd = samples.is_signed ? 1 : 0;
  std::unique_ptr<opj_image_t, void (*)(opj_image_t*)> image(opj_image_create(1, &cp, OPJ_CLRSPC_GRAY),
                                                             opj_image_destroy);
  CHECK(image != nullptr);
  image->x0 = image->y0 = 0;
  image->x1 = cp.w;
  image->y1 = cp.h;
  std::copy(samples.values.begin(), samples.values.end(), image->comps[0].data);

  opj_cparameters_t params;
  opj_set_default_encoder_parameters(&params);
  params.tcp_numlayers = 1;
  params.cp_disto_alloc = 1;
  params.tcp_rates[0] = lossless ? 0.0f : static_cast<float>(ratio);
  params.irreversible = lossless ? 0 : 1;
  // Resolution levels: as many as the smaller side allows (OpenJPEG's default 6 needs 32 pixels).
  int levels = 1;
  const int side =
      tile_size > 0 ? std::min({tile_size, samples.width, samples.height}) : std::min(samples.width, samples.height);
  while (levels < 6 && (side >> levels) >= 1) ++levels;
  if (tile_size > 0) {
    params.tile_size_on = OPJ_TRUE;
    params.cp_tdx = params.cp_tdy = tile_size;
  }
  params.numresolution = levels;
  std::unique_ptr<opj_codec_t, void (*)(opj_codec_t*)> codec(opj_create_compress(OPJ_CODEC_J2K), opj_destroy_codec);
  opj_set_error_handler(codec.get(), OpjError, nullptr);
  opj_set_warning_handler(codec.get(), OpjQuiet, nullptr);
  opj_set_info_handler(codec.get(), OpjQuiet, nullptr);
  CHECK(opj_setup_encoder(codec.get(), &params, image.get()));
  Sink sink;
  std::unique_ptr<opj_stream_t, void (*)(opj_stream_t*)> stream(opj_stream_create(OPJ_J2K_STREAM_CHUNK_SIZE, OPJ_FALSE),
                                                                opj_stream_destroy);
  opj_stream_set_user_data(stream.get(), &sink, nullptr);
  opj_stream_set_write_function(stream.get(), WriteFn);
  opj_stream_set_skip_function(stream.get(), SkipFn);
  opj_stream_set_seek_function(stream.get(), SeekFn);
  CHECK(opj_start_compress(codec.get(), image.get(), stream.get()));
  CHECK(opj_encode(codec.get(), stream.get()));
  CHECK(opj_end_compress(codec.get(), stream.get()));
  return sink.bytes;
}

void WriteJpeg2000Dicom(const std::string& path, const Samples& samples, bool lossless, int fragments, double ratio,
                        const std::string& codestream, const std::vector<uint32_t>& offset_table) {
  std::string bytes = codestream.empty() ? EncodeJpeg2000(samples, lossless, ratio) : codestream;
  if (bytes.size() % 2 != 0) bytes.push_back('\0');  // Items have even lengths: pad after EOC.
  const E_TransferSyntax xfer = lossless ? EXS_JPEG2000LosslessOnly : EXS_JPEG2000;
  DcmFileFormat file;
  DcmDataset* ds = file.getDataset();
  PutImageAttributes(ds, samples);
  auto* sequence = new DcmPixelSequence(DCM_PixelSequenceTag);
  auto* table = new DcmPixelItem(DCM_PixelItemTag);  // The basic offset table: little-endian 32-bit offsets.
  std::vector<Uint8> entries;
  for (uint32_t v : offset_table) {
    for (int k = 0; k < 4; ++k) entries.push_back(static_cast<Uint8>(v >> (8 * k)));
  }
  if (!entries.empty()) CHECK(table->putUint8Array(entries.data(), static_cast<Uint32>(entries.size())).good());
  sequence->insert(table);
  // Fragments of even length; the last takes the rest.
  const size_t per = std::max<size_t>(2, (bytes.size() / fragments) & ~size_t{1});
  size_t at = 0;
  for (int f = 0; f < fragments && at < bytes.size(); ++f) {
    const size_t n = f == fragments - 1 ? bytes.size() - at : std::min(per, bytes.size() - at);
    auto* item = new DcmPixelItem(DCM_PixelItemTag);
    CHECK(item->putUint8Array(reinterpret_cast<const Uint8*>(bytes.data() + at), static_cast<Uint32>(n)).good());
    sequence->insert(item);
    at += n;
  }
  auto* pixel_data = new DcmPixelData(DCM_PixelData);
  pixel_data->putOriginalRepresentation(xfer, nullptr, sequence);
  CHECK(ds->insert(pixel_data, true).good());
  if (!lossless) CHECK(ds->putAndInsertString(DCM_LossyImageCompression, "01").good());
  const OFCondition c = file.saveFile(path.c_str(), xfer);
  CHECK(c.good()) << path << ": " << c.text();
}

}  // namespace fedtune::imaging::fixtures
