// Decoding radiographs from files into fedtune's grayscale Image (image.h).
//
// The decoder is chosen by content: a DICOM file is recognised by "DICM" at
// byte offset 128 or, for files without the Part 10 preamble, by the extension
// ".dcm" or ".dicom" (case-insensitive); anything else must be a PNG, JPEG,
// TIFF or BMP file (by its first bytes) and goes to OpenCV. Other formats that
// OpenCV could read (WebP, JPEG 2000, OpenEXR, PNM, ...) are refused: their
// headers are not checked against the size limit below, and radiographs are
// not exported in them.
//
// Size limit (DecodeOptions::max_pixels). Every file is refused, with
// InvalidArgument naming the file, the declared size and the limit, when its
// header declares more pixels than the limit: read from the header before any
// pixel buffer is allocated (raster_header.h for raster files; Rows, Columns,
// Number of Frames and Samples per Pixel for DICOM). Files larger than
// kMaxFileBytesPerPixel bytes per allowed pixel are refused unread. For
// uncompressed DICOM the Pixel Data element must also hold at least the bytes
// that the header's size and Bits Allocated require (a file that claims a large
// image and holds a few bytes is refused, not padded).
//
// Raster files (OpenCV):
//   - 8-bit samples are scaled by 1/255, 16-bit samples by 1/65535: by the
//     type's range, not the image's own range, so that a brightness means the
//     same thing in every file. A 12-bit image stored in a 16-bit PNG/TIFF
//     would thus decode dark: DecodeOptions::raster_bits_stored = 12 scales
//     16-bit samples by 1/4095 instead (values above 4095 become 1).
//     Other sample types (float TIFF, ...) are rejected.
//   - Colour files are converted to luminance (ITU-R BT.601 weights, OpenCV's
//     BGR2GRAY) and flagged with Image::converted_from_color: viewers often
//     save grayscale radiographs as RGB JPEG/PNG. Alpha is ignored; EXIF
//     orientation is applied.
//
// DICOM files (DCMTK):
//   - Single-frame MONOCHROME1/MONOCHROME2 only. Multi-frame and colour (RGB,
//     YBR_*, PALETTE COLOR, ...) images are rejected with InvalidArgument
//     naming the file and the reason.
//   - Transfer syntaxes decoded: Implicit and Explicit VR Little Endian,
//     Explicit VR Big Endian, Deflated Explicit VR Little Endian, RLE, JPEG
//     (baseline, extended, lossless), JPEG-LS (lossless, near-lossless) and
//     JPEG 2000 (lossless .90 and lossy .91). Others (JPEG 2000 Part 2
//     multi-component, JPIP, MPEG, ...) and every transfer syntax UID DCMTK
//     3.6.7 does not know, vendor-private ones included (High-Throughput
//     JPEG 2000 .201-.203 among them; DCMTK would guess an uncompressed syntax
//     and misread their pixel data) are rejected with InvalidArgument naming
//     the transfer syntax (its UID, for an unknown one). (OpenJPEG 2.5 could decode HTJ2K, but
//     DCMTK 3.6.7 cannot parse such files, and no HTJ2K encoder is at hand
//     to test it.)
//   - Explicit VR Big Endian: DCMTK byte-swaps OW values as 16-bit words (OB:
//     not at all) whatever Bits Allocated says, so each 32-bit OW sample
//     would come out with its two halves exchanged, each 16-bit OB sample
//     with its bytes exchanged; the decoder puts them back before rendering.
//     A big-endian file thus decodes as its little-endian twin (as pydicom
//     reads it) for 16 and 32 bits allocated in OW and 8 and 16 bits in OB.
//     8 bits allocated in OW are read as 16-bit words,
//     as PS3.5 serialises OW: the two samples of each word are swapped in the
//     file (byte 1 is the first sample) and DCMTK's swap puts them back in
//     order. pydicom 2.3 disagrees here: it writes and reads 8-bit OW
//     big-endian bytes in sample order, so a file it wrote decodes with the
//     samples of each pair swapped. 32 bits in OB are refused (DCMTK cannot
//     render them).
//   - JPEG 2000 (DCMTK 3.6.7 has no JPEG 2000 codec): OpenJPEG, the reference
//     implementation that GDCM and Pillow use too, already a dependency of
//     OpenCV, with a stable C API that decodes from memory. The single frame's
//     fragments (after the offset table; a frame may span several) are
//     concatenated; a raw codestream (FF 4F FF 51) or a JP2 file is accepted.
//     A file without Number of Frames (or with 1) that holds more frames is
//     refused: a Basic Offset Table of more than one entry, or bytes other
//     than padding (zeros) after the codestream's end (EOC).
//     Its main header is read first and the file refused (InvalidArgument
//     naming it) when the codestream's size differs from Rows x Columns, has
//     more than one component, a precision outside 1..16 or above Bits
//     Allocated (8 or 16), more pixels than the limit, more than
//     kMaxJpeg2000Tiles tiles or a missing tile (jpeg2000.h): all before
//     decoding. The samples then replace the encapsulated data as native
//     little-endian pixel data (Bits Allocated as the header says, Bits Stored
//     and High Bit set to the codestream's precision), so that the Modality
//     LUT, VOI and MONOCHROME1 rules below apply exactly as for other
//     syntaxes. Sign rule: PS3.5 8.2.4 wants the codestream's sign (Ssiz) to
//     agree with Pixel Representation; where they agree, each sample's low
//     `precision` bits are kept as stored. Where they do not, as pydicom 2.3
//     (with APPLY_J2K_CORRECTIONS, its default, and Pillow) decodes them:
//     a codestream marked unsigned in a file with Pixel Representation 1 is
//     taken to hold two's-complement values written by an encoder that ignored
//     the sign (pydicom's J2K_pixelrep_mismatch.dcm): its low bits are read as
//     signed; a signed codestream in a file with Pixel Representation 0 is
//     shifted to offset binary, v + 2^(precision-1) (the most negative value
//     becomes 0, zero becomes mid-range), and read as unsigned.
//     OpenJPEG's messages go into the Status, never to stderr.
//   - A deflated dataset is inflated by the decoder, not by DCMTK (which
//     would load every element in full, however large: a file of a few MB
//     could allocate GBs). Inflation streams into an anonymous in-memory file
//     and stops, with InvalidArgument naming the file and the limit, as soon
//     as the file would exceed the size an uncompressed file may have
//     (MaxImageFileBytes: the equivalent Explicit VR Little Endian file, meta
//     header included); DCMTK then reads that file as any uncompressed one,
//     with the same checks. So a deflated file decodes exactly when its
//     uncompressed twin does, and may hold up to MaxImageFileBytes of memory
//     while it is decoded. A truncated or corrupt deflate stream, more than 8
//     bytes after its end, or a meta header that cannot be parsed (see
//     dicom_inflate.h) is refused with InvalidArgument.
//   - Overlay planes are not burnt into the pixels (they are annotations).
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

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/imaging/image.h"

namespace fedtune::imaging {

// The default limit on the pixels of one image: 64 Mi = 67,108,864 (8192 x
// 8192). Chest radiographs are at most about 4,300 x 3,500 (15 MP) and
// full-field mammograms about 4,100 x 5,600 (23 MP), so real images pass with
// room to spare, while decoding an image at the limit needs about 1 GiB
// (DCMTK's intermediate buffers, OpenCV's Mat and the float Image).
inline constexpr int64_t kDefaultMaxImagePixels = int64_t{1} << 26;
// The largest limit that may be configured: 2^30 pixels (OpenCV's own limit).
inline constexpr int64_t kMaxImagePixelsLimit = int64_t{1} << 30;
// A file larger than this many bytes per allowed pixel is refused unread (1 GiB
// at the default limit; never more than 2 GiB - 1): no accepted image needs as
// much (16-bit RGBA uncompressed is 8 bytes per pixel). A deflated DICOM file
// is held to the same limit once inflated.
inline constexpr int64_t kMaxFileBytesPerPixel = 16;

struct DecodeOptions {
  // Largest number of pixels (width x height; for DICOM Rows x Columns x
  // Number of Frames x Samples per Pixel) an image may declare. Default
  // kDefaultMaxImagePixels; must be in [1, kMaxImagePixelsLimit]. Configured
  // by FinetuneConfig.max_image_pixels and `data check`/`data convert`
  // --max-image-pixels.
  int64_t max_pixels = kDefaultMaxImagePixels;
  // Bits stored in the samples of 16-bit raster files (PNG, TIFF): 0 (default)
  // = the container's 16 bits, scale 1/65535; 8 to 16: scale 1/(2^bits - 1),
  // and samples above 2^bits - 1 are clamped to 1 (they cannot occur in data
  // of that depth; clamping keeps the [0, 1] contract). 8-bit files and DICOM
  // (which states its own Bits Stored and VOI) are not affected. Configured by
  // FinetuneConfig.raster_bits_stored and `data check`/`data convert`
  // --raster-bits-stored; raster_bits.h estimates it from the data.
  int raster_bits_stored = 0;
};

// InvalidArgument naming max_pixels or raster_bits_stored when out of range.
absl::Status ValidateDecodeOptions(const DecodeOptions& options);

// The largest file (in bytes) that DecodeImage reads under `options`.
int64_t MaxImageFileBytes(const DecodeOptions& options);

// Decodes the image in `path`. Errors (messages name the file):
//   - NotFound, PermissionDenied: the file is missing or unreadable;
//   - InvalidArgument: not an image (or not a regular file), truncated or
//     corrupt data, an unsupported kind of image (colour or multi-frame DICOM,
//     unsupported transfer syntax, format or sample type), bad options, or an
//     image or file above the size limits (the message gives the declared size
//     and the limit);
//   - ResourceExhausted, Internal: out of memory, or the in-memory file that a
//     deflated DICOM file is inflated into cannot be made or written.
// Thread-safe: may be called from any number of threads at once (JPEG 2000 is
// decoded on the calling thread). Side effect of
// the first DICOM decode: DCMTK's decoders (RLE, JPEG, JPEG-LS) are registered
// process-wide and DCMTK's own logging is limited to fatal messages (every
// problem is reported through the returned Status instead).
absl::StatusOr<Image> DecodeImage(const std::string& path, const DecodeOptions& options);
// As above with the default options.
absl::StatusOr<Image> DecodeImage(const std::string& path);

// Decodes an image held in memory, as DecodeImage does a file holding `bytes`
// (DICOM goes through an anonymous in-memory file, memfd, so that DCMTK reads
// it as it reads files); `name` stands for the path in messages and
// Image::path, and its extension counts as a file's does (".dcm": DICOM without
// a preamble). Errors as DecodeImage's, plus Internal/ResourceExhausted when
// the in-memory file cannot be made. Thread-safe.
absl::StatusOr<Image> DecodeImageFromMemory(absl::string_view bytes, const std::string& name,
                                            const DecodeOptions& options);

// True when `prefix` (a file's first bytes) has "DICM" at offset 128 or, lacking it, `name` ends in ".dcm" or
// ".dicom" (case-insensitive): how DecodeImage tells DICOM from raster files.
bool LooksLikeDicom(absl::string_view prefix, absl::string_view name);

// True when the file's content (or, lacking the preamble, its name) says DICOM.
// NotFound/PermissionDenied when the file cannot be read.
absl::StatusOr<bool> IsDicomFile(const std::string& path);

}  // namespace fedtune::imaging

#endif  // FEDTUNE_COMMON_IMAGING_DECODE_H_
