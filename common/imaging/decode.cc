#include "common/imaging/decode.h"

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <mutex>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/io/file_util.h"
#include "common/status_macros.h"
#include "dcmtk/config/osconfig.h"  // Must come first among DCMTK headers.
#include "dcmtk/dcmdata/dcdeftag.h"
#include "dcmtk/dcmdata/dcfilefo.h"
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

bool HasDcmExtension(const std::string& path) {
  return path.size() >= 4 && absl::AsciiStrToLower(path.substr(path.size() - 4)) == ".dcm";
}

std::string RasterFormat(const std::string& bytes) {
  auto starts = [&](absl::string_view magic) { return absl::string_view(bytes).substr(0, magic.size()) == magic; };
  if (starts("\x89PNG\r\n\x1a\n")) return "png";
  if (starts("\xFF\xD8\xFF")) return "jpeg";
  if (starts(absl::string_view("II*\0", 4)) || starts(absl::string_view("MM\0*", 4))) return "tiff";
  if (starts("BM")) return "bmp";
  return "unknown";
}

absl::StatusOr<Image> DecodeRaster(const std::string& path) {
  ASSIGN_OR_RETURN(std::string bytes, io::ReadFile(path));
  Image image;
  image.path = path;
  image.format = RasterFormat(bytes);
  cv::Mat mat;
  try {
    const cv::Mat raw(1, static_cast<int>(bytes.size()), CV_8UC1, bytes.data());
    // ANYCOLOR keeps gray files single-channel and drops alpha; ANYDEPTH keeps
    // 16-bit samples.
    mat = cv::imdecode(raw, cv::IMREAD_ANYDEPTH | cv::IMREAD_ANYCOLOR);
  } catch (const cv::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot decode image: ", e.what()));
  }
  if (mat.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a decodable image (format by content: ", image.format,
                     "; expected PNG, JPEG, TIFF, BMP, or DICOM with 'DICM' at offset 128 "
                     "or a .dcm name)"));
  }
  double scale;
  switch (mat.depth()) {
    case CV_8U:
      scale = 1.0 / 255.0;
      image.bits = 8;
      break;
    case CV_16U:
      scale = 1.0 / 65535.0;
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
  } catch (const cv::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot convert image: ", e.what()));
  }
  image.description =
      absl::StrCat(image.format, " ", image.bits, "-bit", image.converted_from_color ? ", converted from colour" : "");
  return image;
}

absl::StatusOr<Image> DecodeDicom(const std::string& path) {
  RegisterDicomCodecsOnce();
  auto bad = [&](absl::string_view why) { return absl::InvalidArgumentError(absl::StrCat(path, ": DICOM: ", why)); };

  DcmFileFormat file;
  OFCondition cond = file.loadFile(OFFilename(path.c_str()));
  if (cond.bad()) return bad(absl::StrCat("cannot read the file (truncated or corrupt?): ", cond.text()));
  DcmDataset* ds = file.getDataset();
  if (ds == nullptr || !ds->tagExists(DCM_PixelData)) return bad("no Pixel Data element: not an image");

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
  Uint16 bits_stored = 0;
  ds->findAndGetUint16(DCM_BitsStored, bits_stored);

  DcmXfer original(ds->getOriginalXfer());
  if (original.isEncapsulated()) {
    cond = ds->chooseRepresentation(EXS_LittleEndianExplicit, nullptr);
    if (cond.bad() || !ds->canWriteXfer(EXS_LittleEndianExplicit)) {
      return bad(absl::StrCat("compressed transfer syntax '", original.getXferName(), "' (", original.getXferID(),
                              ") cannot be decoded here", cond.bad() ? absl::StrCat(": ", cond.text()) : "",
                              "; supported: uncompressed, RLE, JPEG, JPEG-LS"));
    }
  }

  DicomImage dimage(ds, ds->getCurrentXfer(), CIF_MayDetachPixelData);
  if (dimage.getStatus() != EIS_Normal) {
    return bad(absl::StrCat("cannot render the pixel data: ", DicomImage::getString(dimage.getStatus())));
  }
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
  image.description = absl::StrCat("DICOM ", pi, ", ", bits_stored, " bits stored, ", original.getXferName(), ", ", voi,
                                   pi == "MONOCHROME1" ? ", inverted" : "");
  return image;
}

}  // namespace

absl::StatusOr<bool> IsDicomFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string prefix, ReadPrefix(path, kDicomMagicOffset + 4));
  if (prefix.size() >= kDicomMagicOffset + 4 && prefix.compare(kDicomMagicOffset, 4, "DICM") == 0) return true;
  return HasDcmExtension(path);
}

absl::StatusOr<Image> DecodeImage(const std::string& path) {
  ASSIGN_OR_RETURN(bool dicom, IsDicomFile(path));
  return dicom ? DecodeDicom(path) : DecodeRaster(path);
}

}  // namespace fedtune::imaging
