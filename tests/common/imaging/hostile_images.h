// Test support for the image size limits (decode.h): files whose headers declare huge images over a few bytes of
// data, and a way to run a decode in a child process under an address-space limit, so that a decoder that would
// allocate for the declared size fails (or dies) instead of taking the machine's memory.
#ifndef FEDTUNE_TESTS_COMMON_IMAGING_HOSTILE_IMAGES_H_
#define FEDTUNE_TESTS_COMMON_IMAGING_HOSTILE_IMAGES_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"

namespace fedtune::imaging::hostile {

// A small valid PNG (made by OpenCV: `channels` 1 or 3, `depth` 8 or 16 bits) whose IHDR is rewritten to declare
// width x height, with a valid CRC.
std::string PngDeclaring(uint32_t width, uint32_t height, int depth = 16, int channels = 3);

// A small valid baseline JPEG (`channels` 1 or 3) whose SOF0 is rewritten to declare width x height.
std::string JpegDeclaring(uint16_t width, uint16_t height, int channels = 3);

// A small valid 16-bit grayscale TIFF whose ImageWidth and ImageLength are rewritten to width x height.
std::string TiffDeclaring(uint16_t width, uint16_t height);

// A small valid 24-bit BMP whose info header is rewritten to declare width x height (negative: top-down).
std::string BmpDeclaring(int32_t width, int32_t height);

// Writes with DCMTK an uncompressed (explicit VR little endian) MONOCHROME2 DICOM file whose header declares
// rows x columns at 16 bits allocated and whose Pixel Data holds `pixel_values` 16-bit values.
void WriteDicomDeclaring(const std::string& path, uint16_t rows, uint16_t columns, size_t pixel_values);

// Copies the DICOM file `from` to `to` with Rows and Columns replaced, keeping its transfer syntax (and so its
// compressed pixel data as it is).
void WriteDicomWithSize(const std::string& from, const std::string& to, uint16_t rows, uint16_t columns);

// Writes a Deflated Explicit VR Little Endian DICOM (a 4 x 4 image) followed by a private OB element of
// `inflated_bytes` zeros: a file of about inflated_bytes / 1000 bytes that inflates to more than inflated_bytes.
void WriteDeflateBomb(const std::string& path, uint32_t inflated_bytes);

// How a call made in a child process ended.
struct ChildOutcome {
  bool returned = false;  // False: the child died (signal, abort on std::bad_alloc, ...); see `how`.
  std::string how;        // "returned" or what killed it.
  absl::StatusCode code = absl::StatusCode::kUnknown;
  std::string message;
  double seconds = 0;         // Wall time of the call.
  int64_t rss_growth_kb = 0;  // The child's peak resident size minus its size before the call.
};

// Runs `call` in a forked child whose address space may grow by at most `headroom_bytes` (no limit in sanitizer
// builds, whose shadow memory needs huge mappings) and reports how it ended. When `max_file_bytes` > 0, the child
// may not write past that offset of any file (RLIMIT_FSIZE; anonymous in-memory files included): a write beyond it
// kills the child with SIGXFSZ. Use from a single-threaded test.
ChildOutcome RunInChildWithMemoryLimit(const std::function<absl::Status()>& call, int64_t headroom_bytes = 1LL << 30,
                                       int64_t max_file_bytes = 0);

}  // namespace fedtune::imaging::hostile

#endif  // FEDTUNE_TESTS_COMMON_IMAGING_HOSTILE_IMAGES_H_
