#include "common/imaging/raster_bits.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <fstream>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/imaging/raster_header.h"
#include "common/io/file_util.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace fedtune::imaging {
namespace {

// Enough for a PNG's IHDR and most TIFFs' first IFD; a TIFF whose IFD lies further is decoded to find its depth.
constexpr size_t kHeaderBytes = 4096;

// Up to k indices into [0, n), spread evenly: floor(i * n / k).
std::vector<size_t> Spread(size_t n, size_t k) {
  std::vector<size_t> out;
  if (n <= k) {
    for (size_t i = 0; i < n; ++i) out.push_back(i);
    return out;
  }
  for (size_t i = 0; i < k; ++i) out.push_back(static_cast<size_t>((static_cast<unsigned __int128>(i) * n) / k));
  return out;
}

enum class Probe { kUnreadable, kOther, kCandidate };

// Whether the file may be a 16-bit PNG/TIFF, from its first bytes (as DecodeImage tells DICOM from raster files). A
// TIFF whose first IFD lies beyond them is read whole (at most MaxImageFileBytes) to find its depth. Anything but a
// regular file (a FIFO would block the open) is unreadable.
Probe ProbeHeader(const std::string& path, const DecodeOptions& decode) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return Probe::kUnreadable;
  std::ifstream in(path, std::ios::binary);
  if (!in) return Probe::kUnreadable;
  std::string bytes(kHeaderBytes, '\0');
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  bytes.resize(static_cast<size_t>(in.gcount()));
  if (LooksLikeDicom(bytes, path)) return Probe::kOther;
  const std::string format = RasterFormat(bytes);
  if (format != "png" && format != "tiff") return Probe::kOther;
  absl::StatusOr<RasterHeader> header = ReadRasterHeader(bytes);
  if (!header.ok() && format == "tiff" && static_cast<int64_t>(st.st_size) > static_cast<int64_t>(bytes.size())) {
    if (static_cast<int64_t>(st.st_size) > MaxImageFileBytes(decode)) return Probe::kUnreadable;
    absl::StatusOr<std::string> whole = io::ReadFile(path);
    if (!whole.ok()) return Probe::kUnreadable;
    header = ReadRasterHeader(*whole);
  }
  if (!header.ok()) return Probe::kUnreadable;
  return header->bits_per_sample == 16 ? Probe::kCandidate : Probe::kOther;
}

}  // namespace

absl::StatusOr<RasterBitsEstimate> EstimateRasterBitsStored(const std::vector<std::string>& paths,
                                                            const DecodeOptions& decode, int max_images) {
  if (max_images < 1) return absl::InvalidArgumentError(absl::StrCat("max_images must be >= 1, got ", max_images));
  DecodeOptions container = decode;
  container.raster_bits_stored = 0;
  RETURN_IF_ERROR(ValidateDecodeOptions(container));
  RasterBitsEstimate estimate;
  std::vector<size_t> candidates;
  for (size_t i : Spread(paths.size(), kRasterBitsHeaderProbes)) {
    ++estimate.headers_read;
    switch (ProbeHeader(paths[i], container)) {
      case Probe::kUnreadable:
        ++estimate.unreadable;
        break;
      case Probe::kOther:
        break;
      case Probe::kCandidate:
        candidates.push_back(i);
        break;
    }
  }
  estimate.candidates = static_cast<int64_t>(candidates.size());
  for (size_t c : Spread(candidates.size(), static_cast<size_t>(max_images))) {
    absl::StatusOr<Image> image = DecodeImage(paths[candidates[c]], container);
    if (!image.ok()) {
      ++estimate.unreadable;
      continue;
    }
    if (image->bits != 16 || (image->format != "png" && image->format != "tiff")) continue;
    ++estimate.images_sampled;
    float max = 0.0f;
    for (float v : image->pixels) max = std::max(max, v);
    estimate.max_sample = std::max(estimate.max_sample, static_cast<int>(std::lround(max * 65535.0)));
  }
  if (estimate.images_sampled > 0) {
    int bits = 8;
    while (bits < 16 && (1 << bits) - 1 < estimate.max_sample) ++bits;
    estimate.bits_stored = bits;
  }
  return estimate;
}

std::string FormatRasterBitsEstimate(const RasterBitsEstimate& e) {
  if (e.images_sampled == 0) {
    return absl::StrCat("16-bit PNG/TIFF images: none among ", e.headers_read,
                        " files looked at -> raster bits stored: the container's",
                        e.unreadable > 0 ? absl::StrCat(" (", e.unreadable, " unreadable)") : std::string());
  }
  return absl::StrCat("16-bit PNG/TIFF images: maximum sample ", e.max_sample, " over ", e.images_sampled,
                      " images -> ", e.bits_stored, " bits stored",
                      e.bits_stored < 16 ? absl::StrCat(" (scaled by 1/", (1 << e.bits_stored) - 1,
                                                        " with raster_bits_stored: ", e.bits_stored, " or -1 (auto))")
                                         : std::string(" (the full 16 bits: the default scaling is right)"),
                      e.unreadable > 0 ? absl::StrCat("; ", e.unreadable, " files unreadable") : std::string());
}

absl::StatusOr<int> ResolveRasterBitsStored(int configured, const std::vector<std::string>& paths,
                                            const DecodeOptions& decode) {
  if (configured == kRasterBitsStoredAuto) {
    ASSIGN_OR_RETURN(RasterBitsEstimate estimate, EstimateRasterBitsStored(paths, decode));
    if (estimate.candidates > 0 && estimate.images_sampled == 0) {
      // 16-bit files are there but none decoded (a data root not mounted, say): 0 would silently mean 1/65535.
      return absl::FailedPreconditionError(absl::StrCat(
          "raster_bits_stored auto: ", estimate.candidates, " 16-bit PNG/TIFF files found but none of the ",
          estimate.unreadable, " tried could be decoded; fix the images (fedtune-site data check) or set the value"));
    }
    LOG(INFO) << "raster_bits_stored auto: " << FormatRasterBitsEstimate(estimate);
    return estimate.bits_stored;
  }
  DecodeOptions check = decode;
  check.raster_bits_stored = configured;
  RETURN_IF_ERROR(ValidateDecodeOptions(check));
  return configured;
}

absl::StatusOr<int> ParseRasterBitsStoredFlag(absl::string_view value) {
  int bits = 0;
  if (value == "auto") return kRasterBitsStoredAuto;
  if (absl::SimpleAtoi(value, &bits) && (bits == kRasterBitsStoredAuto || bits == 0 || (bits >= 8 && bits <= 16))) {
    return bits;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--raster-bits-stored: expected auto, 0 (the container's 16 bits) or 8 to 16, got '",
                   absl::CHexEscape(value.substr(0, 32)), "'"));
}

}  // namespace fedtune::imaging
