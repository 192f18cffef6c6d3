// Writes a synthetic radiograph as a DICOM Part-10 file (Computed Radiography Image Storage, explicit VR little
// endian, uncompressed 16-bit allocated pixels) with a Modality LUT (rescale slope/intercept) and a linear VOI
// window chosen so that decoding as DICOM prescribes reproduces the image: stored value -> rescale -> window
// (PS3.3 C.11.2.1.2, LINEAR) -> inversion for MONOCHROME1 gives back the input intensity, brighter = more
// attenuating, up to quantization.
#ifndef FEDTUNE_COMMON_SYNTH_DICOM_WRITER_H_
#define FEDTUNE_COMMON_SYNTH_DICOM_WRITER_H_

#include <string>

#include "absl/status/status.h"
#include "common/synth/rng.h"
#include "opencv2/core.hpp"

namespace fedtune::synth {

// How pixels are encoded.
struct DicomEncoding {
  bool monochrome1 = false;  // Stored values decrease with attenuation.
  int bits_stored = 12;      // 12 or 16; BitsAllocated is always 16, unsigned.
  double rescale_slope = 1;
  double rescale_intercept = 0;
  double window_center = 2048;
  double window_width = 4096;
};

// Draws a varied, valid encoding: MONOCHROME1 with probability monochrome1_probability, 12 or 16 stored bits,
// slope 0.5/1/2, intercept 0 or -1024, and a window that fits the representable modality range.
DicomEncoding DrawDicomEncoding(Rng& rng, double monochrome1_probability = 0.5);

// Identifying attributes. UIDs must be valid DICOM UIDs (digits and dots, <= 64 characters).
struct DicomAttributes {
  std::string patient_id;
  std::string patient_sex;    // "M" or "F".
  int patient_age = 0;        // Years.
  std::string view_position;  // "AP", "PA" or "LL".
  std::string study_uid;
  std::string series_uid;
  std::string sop_instance_uid;
  // Written only when set (files written before these existed stay byte-identical).
  std::string accession_number;  // AccessionNumber.
  int series_number = 0;         // SeriesNumber, when > 0.
  int instance_number = 0;       // InstanceNumber, when > 0.
};

// A deterministic UID under the 2.25 root (UUID-derived OIDs) from two 64-bit values.
std::string MakeUid(uint64_t a, uint64_t b);

// The stored pixel value for display intensity v in [0, 1] under `encoding` (rounded, clamped to the stored range).
uint16_t EncodeDicomValue(double v, const DicomEncoding& encoding);

// Writes `image` (CV_32F, values in [0, 1]) to `path` atomically (a temporary file in the same folder renamed over
// `path`). InvalidArgument for a bad image or encoding; Internal (naming the path) when DCMTK fails to write.
// Thread-safe for distinct paths.
absl::Status WriteDicom(const std::string& path, const cv::Mat& image, const DicomEncoding& encoding,
                        const DicomAttributes& attributes);

// Writes a DICOM object without pixels (for a synthetic PACS export's non-image objects): SOP class `sop_class_uid`
// (e.g. UID_BasicTextSRStorage, UID_GrayscaleSoftcopyPresentationStateStorage), modality `modality` ("SR", "PR"),
// the identifying attributes of `attributes` (view, sex and age are left out), explicit VR little endian. Atomic as
// WriteDicom; Internal naming the path on failure. Thread-safe for distinct paths.
absl::Status WriteDicomNonImage(const std::string& path, const std::string& sop_class_uid, const std::string& modality,
                                const DicomAttributes& attributes);

}  // namespace fedtune::synth

#endif  // FEDTUNE_COMMON_SYNTH_DICOM_WRITER_H_
