// Test support for the DICOM transfer-syntax tests and the JPEG 2000 benchmark: a structured synthetic grayscale
// image, and DICOM files holding it in any transfer syntax, written by DCMTK's writer and encoders (RLE, JPEG,
// JPEG-LS) or, for JPEG 2000 (which DCMTK 3.6.7 cannot encode), by OpenJPEG's encoder and our own encapsulation.
// Nothing is downloaded. Failures CHECK-fail: these are fixtures, not code under test.
#ifndef FEDTUNE_TESTS_COMMON_IMAGING_DICOM_FIXTURES_H_
#define FEDTUNE_TESTS_COMMON_IMAGING_DICOM_FIXTURES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "dcmtk/config/osconfig.h"  // Must come first among DCMTK headers.
#include "dcmtk/dcmdata/dcxfer.h"

namespace fedtune::imaging::fixtures {

// Stored samples of a grayscale image and how they are stored.
struct Samples {
  int width = 0;
  int height = 0;
  int bits_stored = 16;     // 1..16; up to 31 for 32 bits allocated.
  int bits_allocated = 16;  // 8 or 16; 32 for uncompressed syntaxes only.
  // 8 bits allocated: Pixel Data written as OW (16-bit words, two samples each, the first in the low byte) rather
  // than OB. In Explicit VR Big Endian each word is then written high byte first: the samples of a pair swapped.
  bool eight_bit_ow = false;
  bool is_signed = false;       // Pixel Representation 1.
  std::vector<int32_t> values;  // width x height, row-major, within the range bits_stored and is_signed allow.
  // Written with a window (Window Center/Width) spanning the type's range: the decode then does not depend on the
  // image's own minimum and maximum (which lossy coding moves). Without it, decoders use a min-max window.
  bool full_range_window = false;
};

// A structured image (not noise, not constant): a diagonal gradient, a bright disc, a dark rectangle, fine stripes
// and a few extreme pixels (the type's minimum and maximum), spanning the range of `bits_stored` bits.
Samples SyntheticImage(int width, int height, int bits_stored, int bits_allocated, bool is_signed);

// A radiograph-like image (black collimation borders, a smooth body, rib-like stripes, mild deterministic texture),
// 12 bits stored in 16 allocated, unsigned: the benchmark's subject.
Samples RadiographLikeImage(int width, int height);

// Writes `samples` as a MONOCHROME2 DICOM file (a window only as Samples::full_range_window says) in the uncompressed
// or deflated transfer syntax `xfer`, or encodes it with DCMTK's registered encoders for RLE, JPEG and JPEG-LS
// (`jpeg_quality` for lossy JPEG, `near_lossless` deviation for JPEG-LS near-lossless). 32-bit samples are written
// as OW in the byte order of the transfer syntax (in Explicit VR Big Endian, most significant byte first, as PS3.5
// wants; DCMTK alone would swap each 16-bit half).
void WriteDicom(const std::string& path, const Samples& samples, E_TransferSyntax xfer);

// A JPEG 2000 codestream (J2K, not JP2) of `samples` by OpenJPEG: reversible 5/3 wavelet when `lossless`, else the
// irreversible 9/7 wavelet at compression ratio `ratio`. `tile_size` > 0 cuts the image into tiles of that many
// samples square (one tile-part each, in raster order); 0: a single tile.
std::string EncodeJpeg2000(const Samples& samples, bool lossless, double ratio = 10.0, int tile_size = 0);

// Writes `samples` as JPEG 2000 DICOM (1.2.840.10008.1.2.4.90 when lossless, .91 otherwise) with the codestream split
// into `fragments` items after the offset table (`offset_table`'s entries; empty by default). `codestream` overrides
// the encoded one when not empty (for corrupt-data tests).
void WriteJpeg2000Dicom(const std::string& path, const Samples& samples, bool lossless, int fragments = 1,
                        double ratio = 10.0, const std::string& codestream = "",
                        const std::vector<uint32_t>& offset_table = {});

}  // namespace fedtune::imaging::fixtures

#endif  // FEDTUNE_TESTS_COMMON_IMAGING_DICOM_FIXTURES_H_
