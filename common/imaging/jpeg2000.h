// Decoding one grayscale JPEG 2000 image held in memory (OpenJPEG), for the
// JPEG 2000 transfer syntaxes of DICOM (decode.h puts the samples back into the
// dataset as native pixel data).
//
// Both a raw codestream (ISO 15444-1 Annex A, starting FF 4F FF 51: what DICOM
// requires) and the JP2 file format (a box structure, seen from some writers)
// are accepted; the format is chosen by the first bytes. The main header is
// read first and handed to the caller's check before any sample buffer is
// allocated, so that a codestream declaring a huge image is refused unread.
// OpenJPEG's error and warning messages go into the returned Status, never to
// stderr.
#ifndef FEDTUNE_COMMON_IMAGING_JPEG2000_H_
#define FEDTUNE_COMMON_IMAGING_JPEG2000_H_

#include <cstdint>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fedtune::imaging {

// What the main header of a JPEG 2000 codestream declares.
struct Jpeg2000Header {
  int64_t width = 0;   // Image area (Xsiz - XOsiz), in samples.
  int64_t height = 0;  // Image area (Ysiz - YOsiz).
  int components = 0;
  int precision = 0;       // Bits per sample of component 0 (Ssiz & 0x7F) + 1.
  bool is_signed = false;  // Ssiz & 0x80 of component 0.
  bool jp2 = false;        // JP2 box format rather than a raw codestream.
  int64_t tiles = 0;       // Tiles the image area is cut into (1..kMaxJpeg2000Tiles).
};

// The most tiles a codestream may declare. OpenJPEG allocates a few KB of coding parameters per tile while it reads
// the main header (about 12 KB per tile: 60,000 tiles in an 82-byte codestream took 750 MB), so the count is checked
// first. Radiographs are coded in one tile, or in a few hundred at most (1024 x 1024 tiles of a 43 x 43 cm
// detector's 4,300 x 4,300 samples: 25).
inline constexpr int64_t kMaxJpeg2000Tiles = 4096;

// One decoded component.
struct Jpeg2000Image {
  Jpeg2000Header header;
  // width x height samples, row-major; values in [0, 2^precision) when
  // unsigned, [-2^(precision-1), 2^(precision-1)) when signed.
  std::vector<int32_t> samples;
};

// True when `bytes` starts like a codestream (FF 4F FF 51) or a JP2 file.
bool LooksLikeJpeg2000(absl::string_view bytes);

// Decodes `bytes` (a codestream or JP2 file). `name` names the image in
// messages. The SIZ marker segment of the main header is read here first (in a
// JP2 file, from its first codestream box, found with every box length checked
// against the bytes) and must describe one grayscale component: Csiz 1 (Lsiz
// 41), sub-sampling 1 x 1, precision 1..16, a non-empty image area, a valid
// tiling of at most kMaxJpeg2000Tiles tiles (InvalidArgument otherwise). Then
// `check_header` is called with it; its error is returned as is. Only then does
// OpenJPEG read anything, so that a tiny codestream declaring thousands of
// components or tiles allocates nothing. Every tile must be present in the
// codestream (at least one tile-part each): OpenJPEG itself decodes a missing
// tile as zeros. After the codestream's end (EOC) only zero bytes (padding)
// may follow.
// Errors: InvalidArgument (not JPEG 2000, header refused, truncated or corrupt
// data, or OpenJPEG out of memory, which it does not tell apart; the message
// includes OpenJPEG's own), ResourceExhausted (no codec or stream could be
// made). Thread-safe (every call has its own codec); decodes on the calling
// thread only, whatever OPJ_NUM_THREADS in the environment says (with it,
// OpenJPEG starts a worker pool when the codec is made, which is stopped
// again before anything is read).
absl::StatusOr<Jpeg2000Image> DecodeJpeg2000(absl::string_view bytes, absl::string_view name,
                                             absl::FunctionRef<absl::Status(const Jpeg2000Header&)> check_header);

}  // namespace fedtune::imaging

#endif  // FEDTUNE_COMMON_IMAGING_JPEG2000_H_
