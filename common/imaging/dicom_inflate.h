// Bounded inflation of Deflated Explicit VR Little Endian DICOM files (transfer syntax 1.2.840.10008.1.2.1.99).
//
// In that transfer syntax the Part 10 meta header is plain and the dataset after it is one raw deflate stream
// (RFC 1951). DCMTK inflates such a dataset while reading it and loads every element in full, so nothing bounds
// what a small file inflates to. InflateDeflatedDicom instead inflates the dataset itself, streaming, under a
// hard limit on the output, and writes the equivalent Explicit VR Little Endian file: DCMTK then reads that as it
// reads any uncompressed file (large values stay in the file until used), and every check made on uncompressed
// files applies to it unchanged. decode.h uses it.
#ifndef FEDTUNE_COMMON_IMAGING_DICOM_INFLATE_H_
#define FEDTUNE_COMMON_IMAGING_DICOM_INFLATE_H_

#include <cstdint>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace fedtune::imaging {

// The Transfer Syntax UIDs involved.
inline constexpr char kDeflatedExplicitLittleEndianUid[] = "1.2.840.10008.1.2.1.99";
inline constexpr char kExplicitLittleEndianUid[] = "1.2.840.10008.1.2.1";

// The largest meta header (group 0002, after the preamble and "DICM") accepted in a deflated file. Real ones are a
// few hundred bytes.
inline constexpr int64_t kMaxDeflatedMetaHeaderBytes = 64 * 1024;
// Bytes after the end of the deflate stream that are ignored: a pad byte to even length, or an 8-byte trailer
// (CRC-32 and size, as in pydicom's test file image_dfl.dcm). More is refused as trailing garbage.
inline constexpr int64_t kMaxDeflatedTrailingBytes = 8;

struct DicomInflateOptions {
  // The largest file written to the sink, in bytes (preamble, meta header and inflated dataset together), and the
  // most bytes read from the input file. No default: must be set (a value <= 0 refuses every file).
  int64_t max_bytes = 0;
  // Where max_bytes comes from, for the refusal message (e.g. "for an image of at most 65536 pixels,
  // max_image_pixels"). Default: empty.
  std::string limit_source;
};

// Receives successive pieces of the rewritten file; a non-OK status stops the rewrite and is returned by
// InflateDeflatedDicom as it is.
using DicomByteSink = absl::FunctionRef<absl::Status(absl::string_view bytes)>;

// Reads the DICOM file `path` (a Part 10 file: 128-byte preamble and "DICM", or the meta header at offset 0),
// whose meta header must name Deflated Explicit VR Little Endian, and writes to `sink` the equivalent Explicit VR
// Little Endian file: a zero preamble, "DICM", the meta header's elements in their order with the Transfer Syntax
// UID replaced and the group length recomputed, then the inflated dataset.
//
// Stops, and refuses, as soon as the output would exceed options.max_bytes: at most max_bytes bytes reach the sink
// and at most 64 KiB more are held in memory, whatever the input. `name` stands for the file in messages.
// Errors (messages name the file, and the limit when it is the reason):
//   - NotFound, PermissionDenied, Internal: the file cannot be opened or read (io::ErrnoToStatus);
//   - InvalidArgument: no meta header, a meta header that cannot be parsed (unknown VR, undefined length, truncated,
//     longer than kMaxDeflatedMetaHeaderBytes) or that names another transfer syntax; a corrupt deflate stream; a
//     stream that ends before its final block (truncated file); more than kMaxDeflatedTrailingBytes after its end;
//     an output, or an input, larger than options.max_bytes;
//   - whatever `sink` returns.
// Thread-safe (no shared state).
absl::Status InflateDeflatedDicom(const std::string& path, const std::string& name, const DicomInflateOptions& options,
                                  DicomByteSink sink);

}  // namespace fedtune::imaging

#endif  // FEDTUNE_COMMON_IMAGING_DICOM_INFLATE_H_
