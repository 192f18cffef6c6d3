// Decoding radiographs from files into fedtune's grayscale Image (image.h).
//
// The decoder is chosen by content: a DICOM file is recognised by "DICM" at
// byte offset 128 or, for files without the Part 10 preamble, by the extension
// ".dcm" (case-insensitive); anything else goes to OpenCV, which reads PNG,
// JPEG, TIFF, BMP and the other formats it was built with.
//
// Raster files (OpenCV):
//   - 8-bit samples are scaled by 1/255, 16-bit samples by 1/65535: by the
//     type's range, not the image's own range, so that a brightness means the
//     same thing in every file. (A 12-bit image stored in a 16-bit PNG thus
//     decodes dark: export such data stretched, or as DICOM.) Other sample
//     types (float TIFF, ...) are rejected.
//   - Colour files are converted to luminance (ITU-R BT.601 weights, OpenCV's
//     BGR2GRAY) and flagged with Image::converted_from_color: viewers often
//     save grayscale radiographs as RGB JPEG/PNG. Alpha is ignored; EXIF
//     orientation is applied.
//
// DICOM files (DCMTK):
//   - Single-frame MONOCHROME1/MONOCHROME2 only. Multi-frame and colour (RGB,
//     YBR_*, PALETTE COLOR, ...) images are rejected with InvalidArgument
//     naming the file and the reason.
//   - Uncompressed, RLE, JPEG (baseline, extended, lossless) and JPEG-LS
//     transfer syntaxes are decoded; others (JPEG 2000, ...) are rejected with
//     InvalidArgument naming the transfer syntax.
//   - The Modality LUT (Rescale Slope/Intercept or Modality LUT Sequence) is
//     applied; then the first VOI LUT of the VOI LUT Sequence if present, else
//     the first window (Window Center/Width; VOI LUT Function LINEAR,
//     LINEAR_EXACT or SIGMOID), else a min-max window over the modality
//     values. The VOI output range maps to [0, 1].
//   - MONOCHROME1 is inverted so that, as for MONOCHROME2, brighter means more
//     attenuating.
//   - Values are rendered through 16 bits (quantum 1/65535).
#ifndef FEDTUNE_COMMON_IMAGING_DECODE_H_
#define FEDTUNE_COMMON_IMAGING_DECODE_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/imaging/image.h"

namespace fedtune::imaging {

// Decodes the image in `path`. Errors (messages name the file):
//   - NotFound, PermissionDenied: the file is missing or unreadable;
//   - InvalidArgument: not an image, truncated or corrupt data, or an
//     unsupported kind of image (colour or multi-frame DICOM, unsupported
//     transfer syntax or sample type).
// Thread-safe: may be called from any number of threads at once. Side effect of
// the first DICOM decode: DCMTK's decoders (RLE, JPEG, JPEG-LS) are registered
// process-wide and DCMTK's own logging is limited to fatal messages (every
// problem is reported through the returned Status instead).
absl::StatusOr<Image> DecodeImage(const std::string& path);

// True when the file's content (or, lacking the preamble, its name) says DICOM.
// NotFound/PermissionDenied when the file cannot be read.
absl::StatusOr<bool> IsDicomFile(const std::string& path);

}  // namespace fedtune::imaging

#endif  // FEDTUNE_COMMON_IMAGING_DECODE_H_
