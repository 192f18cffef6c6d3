#include "common/imaging/decode.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/imaging/dicom_inflate.h"
#include "common/imaging/jpeg2000.h"
#include "common/imaging/raster_header.h"
#include "common/io/file_util.h"
#include "common/status_macros.h"
#include "dcmtk/config/osconfig.h"  // Must come first among DCMTK headers.
#include "dcmtk/dcmdata/dcdeftag.h"
#include "dcmtk/dcmdata/dcfilefo.h"
#include "dcmtk/dcmdata/dcmetinf.h"
#include "dcmtk/dcmdata/dcpixel.h"
#include "dcmtk/dcmdata/dcpixseq.h"
#include "dcmtk/dcmdata/dcpxitem.h"
#include "dcmtk/dcmdata/dcrledrg.h"
#include "dcmtk/dcmdata/dcxfer.h"
#include "dcmtk/dcmimgle/dcmimage.h"
#include "dcmtk/dcmjpeg/djdecode.h"
#include "dcmtk/dcmjpls/djdecode.h"
#include "dcmtk/oflog/oflog.h"

namespace fedtune::imaging {
namespace {

constexpr size_t kDicomMagicOffset = 128;

// DCMTK keeps its decoders in a process-wide registry; register ours once.
// DCMTK's own log is turned down to fatal errors: every problem we care about
// comes back as a Status, and a loader decoding 200k files must not flood
// stderr.
void RegisterDicomCodecsOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    OFLog::configure(OFLogger::FATAL_LOG_LEVEL);
    DcmRLEDecoderRegistration::registerCodecs();
    DJDecoderRegistration::registerCodecs();
    DJLSDecoderRegistration::registerCodecs();
  });
}

absl::StatusOr<std::string> ReadPrefix(const std::string& path, size_t n) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    // Let ReadFile produce the precise error (NotFound, PermissionDenied,
    // directory).
    absl::StatusOr<std::string> whole = io::ReadFile(path);
    if (!whole.ok()) return whole.status();
    return whole->substr(0, n);
  }
  std::string buf(n, '\0');
  in.read(buf.data(), static_cast<std::streamsize>(n));
  buf.resize(static_cast<size_t>(in.gcount()));
  return buf;
}

bool HasDicomExtension(absl::string_view path) {
  const std::string lower = absl::AsciiStrToLower(path.substr(path.size() - std::min<size_t>(path.size(), 6)));
  return absl::EndsWith(lower, ".dcm") || absl::EndsWith(lower, ".dicom");
}

// p = a * b * ..., or INT64_MAX when that overflows.
int64_t SaturatingProduct(std::initializer_list<int64_t> factors) {
  int64_t product = 1;
  for (int64_t f : factors) {
    if (__builtin_mul_overflow(product, f, &product)) return std::numeric_limits<int64_t>::max();
  }
  return product;
}

// InvalidArgument when `pixels` (described by `declared`, e.g. "PNG header
// declares 10 x 10") is above the limit.
absl::Status CheckPixelCount(absl::string_view name, absl::string_view declared, int64_t pixels,
                             const DecodeOptions& options) {
  if (pixels <= options.max_pixels) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(name, ": ", declared, " = ", pixels, " pixels, above the limit of ",
                                                 options.max_pixels,
                                                 " pixels per image (max_image_pixels in the fine-tune config, "
                                                 "--max-image-pixels for data check/convert)"));
}

absl::Status CheckFileBytes(absl::string_view name, int64_t bytes, const DecodeOptions& options) {
  if (bytes <= MaxImageFileBytes(options)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(name, ": file of ", bytes, " bytes, above the limit of ",
                                                 MaxImageFileBytes(options), " bytes for an image of at most ",
                                                 options.max_pixels, " pixels (max_image_pixels)"));
}

// The size of the regular file at `path`: io::ReadFile's errors when it cannot
// be opened, InvalidArgument when it is a directory or not a regular file (a
// FIFO or device would never end).
absl::StatusOr<int64_t> RegularFileSize(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return io::ErrnoToStatus(errno, "cannot open", path);
  if (S_ISDIR(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat("'", path, "' is a directory, not a file"));
  if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  return static_cast<int64_t>(st.st_size);
}

absl::StatusOr<Image> DecodeRasterBytes(absl::string_view bytes, const std::string& path,
                                        const DecodeOptions& options) {
  Image image;
  image.path = path;
  image.format = RasterFormat(bytes);
  // The declared size, checked before OpenCV allocates for it.
  absl::StatusOr<RasterHeader> header = ReadRasterHeader(bytes);
  if (!header.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a decodable image (", header.status().message(),
                     "; expected PNG, JPEG, TIFF, BMP, or DICOM with 'DICM' at offset 128 or a .dcm name)"));
  }
  const std::string upper = absl::AsciiStrToUpper(header->format);
  RETURN_IF_ERROR(CheckPixelCount(path, absl::StrCat(upper, " header declares ", header->width, " x ", header->height),
                                  SaturatingProduct({header->width, header->height}), options));
  if (header->tile_width > 0 || header->tile_height > 0) {
    // OpenCV allocates a buffer per tile, whatever the image's size.
    RETURN_IF_ERROR(CheckPixelCount(
        path, absl::StrCat("TIFF tiles of ", header->tile_width, " x ", header->tile_height),
        SaturatingProduct({std::max<int64_t>(header->tile_width, 1), std::max<int64_t>(header->tile_height, 1)}),
        options));
  }
  if (header->format == "tiff" && header->bits_per_sample > 16) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": unsupported sample type (TIFF, ", header->bits_per_sample,
                                                   " bits per sample); only 8- and 16-bit unsigned samples"));
  }
  cv::Mat mat;
  try {
    // imdecode does not write to its input.
    const cv::Mat raw(1, static_cast<int>(bytes.size()), CV_8UC1, const_cast<char*>(bytes.data()));
    // ANYCOLOR keeps gray files single-channel and drops alpha; ANYDEPTH keeps
    // 16-bit samples.
    mat = cv::imdecode(raw, cv::IMREAD_ANYDEPTH | cv::IMREAD_ANYCOLOR);
  } catch (const cv::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot decode image: ", e.what()));
  }
  if (mat.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a decodable image (format by content: ", image.format,
                                                   "; truncated or corrupt data?)"));
  }
  if (static_cast<int64_t>(mat.rows) * mat.cols > options.max_pixels) {
    // The header reader and OpenCV disagree: our bug, caught before the
    // conversions below allocate more.
    return absl::InternalError(absl::StrCat(path, ": decoded ", mat.cols, " x ", mat.rows, " but the header declares ",
                                            header->width, " x ", header->height));
  }
  double scale;
  switch (mat.depth()) {
    case CV_8U:
      scale = 1.0 / 255.0;
      image.bits = 8;
      break;
    case CV_16U:
      scale = 1.0 / (options.raster_bits_stored > 0 ? (1 << options.raster_bits_stored) - 1 : 65535);
      image.bits = 16;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(path, ": unsupported sample type (OpenCV depth ", mat.depth(),
                                                     "); only 8- and 16-bit unsigned samples"));
  }
  try {
    if (mat.channels() != 1) {
      cv::Mat gray;
      cv::cvtColor(mat, gray, mat.channels() == 4 ? cv::COLOR_BGRA2GRAY : cv::COLOR_BGR2GRAY);
      mat = gray;
      image.converted_from_color = true;
    }
    image.width = mat.cols;
    image.height = mat.rows;
    image.pixels.resize(static_cast<size_t>(mat.rows) * mat.cols);
    cv::Mat out(mat.rows, mat.cols, CV_32FC1, image.pixels.data());
    mat.convertTo(out, CV_32F, scale);
    // Samples above the configured bits stored: clamped to the [0, 1] contract.
    if (image.bits == 16 && options.raster_bits_stored > 0) cv::min(out, 1.0, out);
  } catch (const cv::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot convert image: ", e.what()));
  }
  image.description = absl::StrCat(image.format, " ", image.bits, "-bit",
                                   image.bits == 16 && options.raster_bits_stored > 0
                                       ? absl::StrCat(" (", options.raster_bits_stored, " bits stored)")
                                       : std::string(),
                                   image.converted_from_color ? ", converted from colour" : "");
  return image;
}

absl::Status DicomError(absl::string_view path, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": DICOM: ", why));
}

// The size a DICOM header declares, for messages and checks.
struct DicomSize {
  Uint16 rows = 0;
  Uint16 columns = 0;
  Sint32 frames = 1;
  Uint16 samples = 1;
  int64_t pixels = 0;  // columns x rows x frames x samples.
  std::string dims;    // "COLUMNS x ROWS (Columns x Rows)[ x F frame(s) x S sample(s) per pixel]".
};

// Reads the declared size and checks its pixel count against the limit, before
// any pixel buffer exists (DicomImage and the decompressors allocate for the
// declared size).
absl::StatusOr<DicomSize> CheckDicomPixelCount(DcmDataset* ds, absl::string_view path, const DecodeOptions& options) {
  DicomSize size;
  if (ds->findAndGetUint16(DCM_Rows, size.rows).bad() || ds->findAndGetUint16(DCM_Columns, size.columns).bad() ||
      size.rows == 0 || size.columns == 0) {
    return DicomError(path, "Rows or Columns missing or 0: not an image");
  }
  if (ds->findAndGetUint16(DCM_SamplesPerPixel, size.samples).bad() || size.samples == 0) size.samples = 1;
  if (ds->findAndGetSint32(DCM_NumberOfFrames, size.frames).bad() || size.frames < 1) size.frames = 1;
  size.pixels = SaturatingProduct({size.columns, size.rows, size.frames, size.samples});
  size.dims = absl::StrCat(size.columns, " x ", size.rows, " (Columns x Rows)");
  if (size.frames != 1 || size.samples != 1) {
    absl::StrAppend(&size.dims, " x ", size.frames, " frame(s) x ", size.samples, " sample(s) per pixel");
  }
  RETURN_IF_ERROR(CheckPixelCount(path, absl::StrCat("DICOM header declares ", size.dims), size.pixels, options));
  return size;
}

// Uncompressed Pixel Data must hold the bytes its declared size needs: DCMTK
// would pad a short element with zeros and decode garbage.
absl::Status CheckDicomPixelDataLength(DcmDataset* ds, absl::string_view path, const DicomSize& size) {
  if (DcmXfer(ds->getOriginalXfer()).isEncapsulated()) return absl::OkStatus();
  Uint16 bits_allocated = 0;
  DcmElement* pixel_data = nullptr;
  if (ds->findAndGetUint16(DCM_BitsAllocated, bits_allocated).bad() || bits_allocated == 0 ||
      ds->findAndGetElement(DCM_PixelData, pixel_data).bad() || pixel_data == nullptr) {
    return absl::OkStatus();  // DCMTK reports the missing attribute.
  }
  const int64_t have = pixel_data->getLength();
  const int64_t need = (size.pixels * bits_allocated + 7) / 8;  // pixels <= 2^30: no overflow.
  if (have >= need) return absl::OkStatus();
  return DicomError(path,
                    absl::StrCat("Pixel Data holds ", have, " bytes, but ", size.dims, " at ", bits_allocated,
                                 " bits allocated need ", need, " bytes (truncated file or wrong Rows/Columns?)"));
}

bool IsJpeg2000(const DcmXfer& xfer) {
  return xfer.getXfer() == EXS_JPEG2000LosslessOnly || xfer.getXfer() == EXS_JPEG2000;
}

// The single frame's JPEG 2000 codestream: every fragment after the offset table (item 0), concatenated (a frame may
// span several fragments). An offset table of more than one entry is refused (more than one frame); so is anything
// but padding after the codestream's end (DecodeJpeg2000), which a second frame's fragments would be.
absl::StatusOr<std::string> GatherSingleFrame(DcmDataset* ds, const DcmXfer& xfer, absl::string_view path) {
  DcmElement* element = nullptr;
  if (ds->findAndGetElement(DCM_PixelData, element).bad() || element == nullptr) {
    return DicomError(path, "no Pixel Data element: not an image");
  }
  DcmPixelSequence* sequence = nullptr;
  const OFCondition cond =
      static_cast<DcmPixelData*>(element)->getEncapsulatedRepresentation(xfer.getXfer(), nullptr, sequence);
  if (cond.bad() || sequence == nullptr) {
    return DicomError(path, absl::StrCat("'", xfer.getXferName(),
                                         "' names compressed data, but Pixel Data is not encapsulated (a sequence "
                                         "of fragments)",
                                         cond.bad() ? absl::StrCat(": ", cond.text()) : ""));
  }
  // A Basic Offset Table lists one offset per frame: more than one means more frames than Number of Frames says.
  DcmPixelItem* offset_table = nullptr;
  if (sequence->getItem(offset_table, 0).good() && offset_table != nullptr && offset_table->getLength() > 4) {
    return DicomError(path, absl::StrCat("the Basic Offset Table lists ", offset_table->getLength() / 4,
                                         " frames, but Number of Frames is absent or 1 (multi-frame images are not "
                                         "supported)"));
  }
  std::string codestream;
  const unsigned long items = sequence->card();
  for (unsigned long i = 1; i < items; ++i) {
    DcmPixelItem* item = nullptr;
    Uint8* bytes = nullptr;
    if (sequence->getItem(item, i).bad() || item == nullptr) return DicomError(path, "cannot read a fragment");
    const Uint32 length = item->getLength();
    if (length == 0) continue;
    if (item->getUint8Array(bytes).bad() || bytes == nullptr) {
      return DicomError(path, absl::StrCat("cannot read fragment ", i, " of the Pixel Data"));
    }
    codestream.append(reinterpret_cast<const char*>(bytes), length);
  }
  if (codestream.empty()) return DicomError(path, "the encapsulated Pixel Data holds no fragment");
  return codestream;
}

// Decodes the JPEG 2000 frame of `ds` and puts its samples back as native pixel data (see "JPEG 2000" in decode.h),
// so that DicomImage then treats the dataset as any uncompressed one.
absl::Status ReplaceJpeg2000WithNative(DcmDataset* ds, const DcmXfer& xfer, const std::string& path,
                                       const DicomSize& size, const DecodeOptions& options) {
  Uint16 bits_allocated = 0;
  if (ds->findAndGetUint16(DCM_BitsAllocated, bits_allocated).bad() || (bits_allocated != 8 && bits_allocated != 16)) {
    return DicomError(
        path, absl::StrCat("JPEG 2000 with Bits Allocated ", bits_allocated, " is not supported; expected 8 or 16"));
  }
  ASSIGN_OR_RETURN(const std::string codestream, GatherSingleFrame(ds, xfer, path));
  auto check = [&](const Jpeg2000Header& header) -> absl::Status {
    const std::string declared = absl::StrCat("JPEG 2000 codestream declares ", header.width, " x ", header.height);
    RETURN_IF_ERROR(CheckPixelCount(path, declared, SaturatingProduct({header.width, header.height}), options));
    if (header.width != size.columns || header.height != size.rows) {
      return DicomError(path, absl::StrCat(declared, " (width x height), but the header declares ", size.dims));
    }
    if (header.precision > bits_allocated) {
      return DicomError(path, absl::StrCat(declared, " at ", header.precision, " bits per sample, more than Bits ",
                                           "Allocated ", bits_allocated));
    }
    return absl::OkStatus();
  };
  ASSIGN_OR_RETURN(const Jpeg2000Image decoded, DecodeJpeg2000(codestream, path, check));
  // Each sample's low `precision` bits, as stored: Pixel Representation and Bits Stored then say how to read them.
  // A signed codestream in a file with Pixel Representation 0 is shifted to offset binary first (v + 2^(p-1), so
  // that the most negative value becomes 0), as pydicom 2.3 does; masking alone would wrap negatives to the top.
  const int precision = decoded.header.precision;
  const uint32_t mask = (uint32_t{1} << precision) - 1;  // precision is 1..16 (DecodeJpeg2000).
  Uint16 pixel_representation = 0;
  ds->findAndGetUint16(DCM_PixelRepresentation, pixel_representation);
  const int32_t offset = decoded.header.is_signed && pixel_representation == 0 ? int32_t{1} << (precision - 1) : 0;
  const auto stored = [&](int32_t v) { return static_cast<uint32_t>(v + offset) & mask; };
  const size_t n = decoded.samples.size();
  OFCondition cond;
  if (bits_allocated == 16) {
    std::vector<Uint16> native(n);
    for (size_t i = 0; i < n; ++i) native[i] = static_cast<Uint16>(stored(decoded.samples[i]));
    cond = ds->putAndInsertUint16Array(DCM_PixelData, native.data(), static_cast<unsigned long>(n));
  } else {
    std::vector<Uint8> native(n);
    for (size_t i = 0; i < n; ++i) native[i] = static_cast<Uint8>(stored(decoded.samples[i]));
    cond = ds->putAndInsertUint8Array(DCM_PixelData, native.data(), static_cast<unsigned long>(n));
  }
  if (cond.good()) cond = ds->putAndInsertUint16(DCM_BitsStored, static_cast<Uint16>(precision));
  if (cond.good()) cond = ds->putAndInsertUint16(DCM_HighBit, static_cast<Uint16>(precision - 1));
  if (cond.bad()) {
    return absl::InternalError(
        absl::StrCat(path, ": DICOM: cannot store the decoded JPEG 2000 samples: ", cond.text()));
  }
  ds->updateOriginalXfer();
  return absl::OkStatus();
}

// DCMTK swaps OW values of an Explicit VR Big Endian file as 16-bit words, and OB values not at all, whatever Bits
// Allocated says; DicomImage then reads the element as little-endian 16-bit words (OW) or bytes (OB), low part
// first. So a 32-bit OW sample comes out with its two halves exchanged, and a 16-bit OB sample with its two bytes
// exchanged; they are put back here, in memory, before DicomImage reads them. Nothing else needs this: 8-bit samples
// in OW are 16-bit words in the file too (PS3.5 serialises OW by words, the two samples of a word swapped in a
// big-endian file), which DCMTK's swap undoes; 16-bit samples in OW and 8-bit samples in OB DCMTK gets right; and
// DicomImage refuses 32-bit OB pixel data. Assumes a little-endian host, as DicomImage's reading of OW does.
absl::Status FixBigEndianPixelData(DcmDataset* ds, const std::string& path) {
  Uint16 bits_allocated = 0;
  DcmElement* element = nullptr;
  if (ds->findAndGetUint16(DCM_BitsAllocated, bits_allocated).bad() ||
      ds->findAndGetElement(DCM_PixelData, element).bad() || element == nullptr) {
    return absl::OkStatus();  // DicomImage reports what is missing.
  }
  const DcmEVR vr = element->getVR();
  if (bits_allocated == 32 && vr == EVR_OW) {
    Uint16* words = nullptr;  // DCMTK hands OW out as words only; this swaps them into local order.
    if (element->getUint16Array(words).bad() || words == nullptr) {
      return DicomError(path, "cannot read the big-endian Pixel Data");
    }
    const size_t n = element->getLength() / 4;
    for (size_t i = 0; i < n; ++i) std::swap(words[2 * i], words[2 * i + 1]);
  } else if (bits_allocated == 16 && vr == EVR_OB) {
    Uint8* bytes = nullptr;
    if (element->getUint8Array(bytes).bad() || bytes == nullptr) {
      return DicomError(path, "cannot read the big-endian Pixel Data");
    }
    const size_t n = element->getLength() / 2;
    for (size_t i = 0; i < n; ++i) std::swap(bytes[2 * i], bytes[2 * i + 1]);
  }
  return absl::OkStatus();
}

// Decodes a DICOM file read by DCMTK (from a file or from memory). `inflated_from`: the transfer syntax the file
// had before InflateDeflatedDicom rewrote it, or null.
absl::StatusOr<Image> DecodeDicomDataset(DcmFileFormat& file, const std::string& path, const DecodeOptions& options,
                                         const DcmXfer* inflated_from) {
  auto bad = [&](absl::string_view why) { return DicomError(path, why); };
  OFCondition cond;
  DcmDataset* ds = file.getDataset();
  if (ds == nullptr || !ds->tagExists(DCM_PixelData)) return bad("no Pixel Data element: not an image");
  ASSIGN_OR_RETURN(const DicomSize size, CheckDicomPixelCount(ds, path, options));

  Uint16 samples_per_pixel = 1;
  ds->findAndGetUint16(DCM_SamplesPerPixel, samples_per_pixel);
  OFString photometric;
  ds->findAndGetOFString(DCM_PhotometricInterpretation, photometric);
  std::string pi(photometric.c_str());
  absl::StripAsciiWhitespace(&pi);
  if (samples_per_pixel != 1 || (pi != "MONOCHROME1" && pi != "MONOCHROME2")) {
    return bad(absl::StrCat("colour images are not supported (Photometric Interpretation '", pi,
                            "', Samples per Pixel ", samples_per_pixel, "); expected MONOCHROME1 or MONOCHROME2"));
  }
  Sint32 frames = 1;
  if (ds->findAndGetSint32(DCM_NumberOfFrames, frames).good() && frames > 1) {
    return bad(absl::StrCat("multi-frame images are not supported (Number of Frames ", frames, ")"));
  }
  // After the colour and frame checks, which say better what is wrong.
  RETURN_IF_ERROR(CheckDicomPixelDataLength(ds, path, size));
  DcmXfer original(ds->getOriginalXfer());
  E_TransferSyntax render_xfer = ds->getCurrentXfer();
  if (IsJpeg2000(original)) {
    RETURN_IF_ERROR(ReplaceJpeg2000WithNative(ds, original, path, size, options));
    render_xfer = EXS_LittleEndianExplicit;
  } else if (original.isEncapsulated()) {
    cond = ds->chooseRepresentation(EXS_LittleEndianExplicit, nullptr);
    if (cond.bad() || !ds->canWriteXfer(EXS_LittleEndianExplicit)) {
      return bad(absl::StrCat("compressed transfer syntax '", original.getXferName(), "' (", original.getXferID(),
                              ") cannot be decoded here", cond.bad() ? absl::StrCat(": ", cond.text()) : "",
                              "; supported: uncompressed, RLE, JPEG, JPEG-LS, JPEG 2000"));
    }
    render_xfer = ds->getCurrentXfer();
  } else if (original.getXfer() == EXS_BigEndianExplicit) {
    RETURN_IF_ERROR(FixBigEndianPixelData(ds, path));
  }

  // After the JPEG 2000 replacement, which sets Bits Stored to the codestream's precision.
  Uint16 bits_stored = 0;
  ds->findAndGetUint16(DCM_BitsStored, bits_stored);

  // Overlays are annotations, not anatomy: never read embedded ones, never
  // burn any into the pixels.
  DicomImage dimage(ds, render_xfer, CIF_MayDetachPixelData | CIF_NeverAccessEmbeddedOverlays);
  if (dimage.getStatus() != EIS_Normal) {
    return bad(absl::StrCat("cannot render the pixel data: ", DicomImage::getString(dimage.getStatus())));
  }
  dimage.hideAllOverlays();
  if (!dimage.isMonochrome()) return bad("not a monochrome image");
  if (dimage.getFrameCount() != 1) {
    return bad(absl::StrCat("multi-frame images are not supported (", dimage.getFrameCount(), " frames)"));
  }

  std::string voi;
  if (dimage.getVoiLutCount() > 0) {
    if (!dimage.setVoiLut(0)) return bad("cannot apply the first VOI LUT");
    voi = "first VOI LUT";
  } else if (dimage.getWindowCount() > 0) {
    if (!dimage.setWindow(0)) return bad("cannot apply the first window (Window Center/Width)");
    double center = 0, width = 0;
    dimage.getWindow(center, width);
    OFString function;
    ds->findAndGetOFString(DCM_VOILUTFunction, function);
    std::string fn(function.c_str());
    absl::StripAsciiWhitespace(&fn);
    if (fn == "LINEAR_EXACT") {
      // DCMTK knows LINEAR and SIGMOID only. LINEAR maps with (center - 0.5,
      // width - 1) (PS3.3 C.11.2.1.2.1), LINEAR_EXACT with (center, width)
      // exactly: LINEAR with (center + 0.5, width + 1) is LINEAR_EXACT.
      if (!dimage.setVoiLutFunction(EFV_Linear) || !dimage.setWindow(center + 0.5, width + 1.0)) {
        return bad("cannot apply the LINEAR_EXACT window");
      }
    }
    voi = absl::StrFormat("window C=%g W=%g%s", center, width, fn.empty() ? "" : absl::StrCat(" ", fn));
  } else {
    if (!dimage.setMinMaxWindow(0)) return bad("cannot compute a min-max window");
    voi = "min-max window";
  }

  const int width = static_cast<int>(dimage.getWidth());
  const int height = static_cast<int>(dimage.getHeight());
  const size_t n = static_cast<size_t>(width) * height;
  // DicomImage renders "for display": the VOI output mapped to 0..65535 and
  // MONOCHROME1 inverted, so white = high.
  const auto* data = static_cast<const Uint16*>(dimage.getOutputData(16));
  if (data == nullptr || dimage.getOutputDataSize(16) < n * sizeof(Uint16)) {
    return bad("cannot render the pixel data (missing or truncated Pixel Data?)");
  }
  Image image;
  image.path = path;
  image.format = "dicom";
  image.bits = bits_stored;
  image.width = width;
  image.height = height;
  image.pixels.resize(n);
  constexpr float kScale = 1.0f / 65535.0f;
  for (size_t i = 0; i < n; ++i) image.pixels[i] = static_cast<float>(data[i]) * kScale;
  image.description = absl::StrCat("DICOM ", pi, ", ", bits_stored, " bits stored, ",
                                   (inflated_from != nullptr ? *inflated_from : original).getXferName(), ", ", voi,
                                   pi == "MONOCHROME1" ? ", inverted" : "");
  return image;
}

// An anonymous in-memory file (memfd), closed when destroyed, that DCMTK opens by its /proc path.
class MemoryFile {
 public:
  static absl::StatusOr<std::unique_ptr<MemoryFile>> Create(const std::string& name) {
    const int fd = ::memfd_create("fedtune-dicom", MFD_CLOEXEC);
    if (fd < 0) return io::ErrnoToStatus(errno, "cannot create an in-memory file for", name);
    return std::unique_ptr<MemoryFile>(new MemoryFile(fd, name));
  }
  MemoryFile(const MemoryFile&) = delete;
  MemoryFile& operator=(const MemoryFile&) = delete;
  ~MemoryFile() { ::close(fd_); }

  absl::Status Append(absl::string_view bytes) {
    size_t written = 0;
    while (written < bytes.size()) {
      const ssize_t n = ::write(fd_, bytes.data() + written, bytes.size() - written);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const int err = n < 0 ? errno : EIO;
        // Out of memory (or over RLIMIT_FSIZE): the machine's limit, not a bug.
        if (err == ENOMEM || err == EFBIG || err == ENOSPC) {
          return absl::ResourceExhaustedError(
              absl::StrCat(name_, ": cannot write an in-memory file: ", std::strerror(err)));
        }
        return io::ErrnoToStatus(err, "cannot write an in-memory file for", name_);
      }
      written += static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }
  std::string path() const { return absl::StrCat("/proc/self/fd/", fd_); }

 private:
  MemoryFile(int fd, std::string name) : fd_(fd), name_(std::move(name)) {}
  const int fd_;
  const std::string name_;
};

absl::StatusOr<Image> DecodeDicomFile(const std::string& file, const std::string& name, const DecodeOptions& options,
                                      const DcmXfer* inflated_from = nullptr);

// A file whose meta header names a transfer syntax with a deflated dataset: DCMTK would inflate it while reading
// and load every element in full, however large. Inflated here instead, up to the size an uncompressed file may
// have, into an in-memory file that DCMTK reads as any uncompressed one.
absl::StatusOr<Image> DecodeDeflatedDicomFile(const std::string& file, const std::string& name,
                                              const DecodeOptions& options, const DcmXfer& xfer) {
  if (std::string(xfer.getXferID()) != kDeflatedExplicitLittleEndianUid) {
    return DicomError(name, absl::StrCat("transfer syntax '", xfer.getXferName(), "' (", xfer.getXferID(),
                                         ") is not supported; of the transfer syntaxes with a deflated dataset, only "
                                         "Deflated Explicit VR Little Endian is"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<MemoryFile> inflated, MemoryFile::Create(name));
  DicomInflateOptions inflate;
  inflate.max_bytes = MaxImageFileBytes(options);
  inflate.limit_source = absl::StrCat("for an image of at most ", options.max_pixels, " pixels (max_image_pixels)");
  RETURN_IF_ERROR(
      InflateDeflatedDicom(file, name, inflate, [&](absl::string_view bytes) { return inflated->Append(bytes); }));
  return DecodeDicomFile(inflated->path(), name, options, &xfer);
}

// `file` is what DCMTK opens; `name` stands for it in messages and Image::path; `inflated_from` as for
// DecodeDicomDataset.
absl::StatusOr<Image> DecodeDicomFile(const std::string& file, const std::string& name, const DecodeOptions& options,
                                      const DcmXfer* inflated_from) {
  RegisterDicomCodecsOnce();
  {
    // DCMTK's own reading of the meta header says whether DCMTK would inflate the dataset.
    DcmFileFormat meta_only;
    OFString uid;
    // DCMTK reports a transfer syntax it does not know as a missing meta header, having read it all the same.
    const bool meta_ok =
        meta_only.loadFile(OFFilename(file.c_str()), EXS_Unknown, EGL_noChange, DCM_MaxReadLength, ERM_metaOnly).good();
    if (meta_only.getMetaInfo() != nullptr &&
        meta_only.getMetaInfo()->findAndGetOFString(DCM_TransferSyntaxUID, uid).good() && !uid.empty()) {
      const DcmXfer xfer(uid.c_str());
      if (xfer.getXfer() == EXS_Unknown) {
        // DCMTK would guess an uncompressed syntax and misread any compressed pixel data.
        const bool htj2k = absl::StartsWith(uid.c_str(), "1.2.840.10008.1.2.4.20");
        return DicomError(name, absl::StrCat("transfer syntax '", uid.c_str(), "' is not supported",
                                             htj2k ? " (High-Throughput JPEG 2000)" : " (unknown to DCMTK 3.6.7)",
                                             "; supported: uncompressed, deflated, RLE, JPEG, JPEG-LS, JPEG 2000"));
      }
      if (meta_ok && xfer.getStreamCompression() != ESC_none) {
        if (inflated_from != nullptr) {
          return absl::InternalError(absl::StrCat(name, ": DICOM: still '", xfer.getXferName(), "' once inflated"));
        }
        return DecodeDeflatedDicomFile(file, name, options, xfer);
      }
    }
  }
  // Values above DCM_MaxReadLength bytes stay in the file until used.
  DcmFileFormat dicom;
  const OFCondition cond = dicom.loadFile(OFFilename(file.c_str()));
  if (cond.bad()) return DicomError(name, absl::StrCat("cannot read the file (truncated or corrupt?): ", cond.text()));
  return DecodeDicomDataset(dicom, name, options, inflated_from);
}

// DCMTK checks an element's declared length against the bytes left only when
// it reads a file: its buffer stream (DcmInputBufferStream) allocates whatever
// a meta header element declares (2 GB for a 1 KB input, found by fuzzing). So
// bytes in memory are decoded through an anonymous in-memory file, exactly as
// files are.
absl::StatusOr<Image> DecodeDicomBytes(absl::string_view bytes, const std::string& name, const DecodeOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<MemoryFile> file, MemoryFile::Create(name));
  RETURN_IF_ERROR(file->Append(bytes));
  return DecodeDicomFile(file->path(), name, options);
}

// Allocation failures inside DCMTK or OpenCV must not end the program.
template <typename Decode>
absl::StatusOr<Image> CatchingBadAlloc(const std::string& name, Decode decode) {
  try {
    return decode();
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(name, ": out of memory while decoding"));
  }
}

}  // namespace

absl::Status ValidateDecodeOptions(const DecodeOptions& options) {
  if (options.max_pixels < 1 || options.max_pixels > kMaxImagePixelsLimit) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_image_pixels must be in [1, ", kMaxImagePixelsLimit, "], got ", options.max_pixels));
  }
  if (options.raster_bits_stored != 0 && (options.raster_bits_stored < 8 || options.raster_bits_stored > 16)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "raster_bits_stored must be 0 (the container's depth) or in [8, 16], got ", options.raster_bits_stored));
  }
  return absl::OkStatus();
}

int64_t MaxImageFileBytes(const DecodeOptions& options) {
  return std::min<int64_t>(SaturatingProduct({options.max_pixels, kMaxFileBytesPerPixel}),
                           std::numeric_limits<int32_t>::max());
}

bool LooksLikeDicom(absl::string_view prefix, absl::string_view name) {
  if (prefix.size() >= kDicomMagicOffset + 4 && prefix.substr(kDicomMagicOffset, 4) == "DICM") return true;
  return HasDicomExtension(name);
}

absl::StatusOr<bool> IsDicomFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string prefix, ReadPrefix(path, kDicomMagicOffset + 4));
  return LooksLikeDicom(prefix, path);
}

absl::StatusOr<Image> DecodeImage(const std::string& path, const DecodeOptions& options) {
  RETURN_IF_ERROR(ValidateDecodeOptions(options));
  ASSIGN_OR_RETURN(const int64_t size, RegularFileSize(path));
  RETURN_IF_ERROR(CheckFileBytes(path, size, options));
  ASSIGN_OR_RETURN(bool dicom, IsDicomFile(path));
  return CatchingBadAlloc(path, [&]() -> absl::StatusOr<Image> {
    if (dicom) return DecodeDicomFile(path, path, options);
    ASSIGN_OR_RETURN(std::string bytes, io::ReadFile(path));
    // The file may have grown since it was measured.
    RETURN_IF_ERROR(CheckFileBytes(path, static_cast<int64_t>(bytes.size()), options));
    return DecodeRasterBytes(bytes, path, options);
  });
}

absl::StatusOr<Image> DecodeImage(const std::string& path) { return DecodeImage(path, DecodeOptions()); }

absl::StatusOr<Image> DecodeImageFromMemory(absl::string_view bytes, const std::string& name,
                                            const DecodeOptions& options) {
  RETURN_IF_ERROR(ValidateDecodeOptions(options));
  RETURN_IF_ERROR(CheckFileBytes(name, static_cast<int64_t>(bytes.size()), options));
  return CatchingBadAlloc(name, [&]() -> absl::StatusOr<Image> {
    return LooksLikeDicom(bytes.substr(0, kDicomMagicOffset + 4), name) ? DecodeDicomBytes(bytes, name, options)
                                                                        : DecodeRasterBytes(bytes, name, options);
  });
}

}  // namespace fedtune::imaging
