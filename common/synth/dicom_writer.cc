#include "common/synth/dicom_writer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "dcmtk/dcmdata/dcdeftag.h"
#include "dcmtk/dcmdata/dcfilefo.h"
#include "dcmtk/dcmdata/dcuid.h"

namespace fedtune::synth {
namespace {

// Enough significant digits that the decoder's window equals ours; DS values are at most 16 characters.
std::string Ds(double v) { return absl::StrFormat("%.6g", v); }

// Saves `file` to `path` through a temporary file renamed into place.
absl::Status SaveAtomically(DcmFileFormat& file, const std::string& path) {
  const std::string tmp = absl::StrCat(path, ".tmp");
  OFCondition c = file.saveFile(tmp.c_str(), EXS_LittleEndianExplicit);
  if (c.bad()) {
    std::remove(tmp.c_str());
    return absl::InternalError(absl::StrCat("WriteDicom ", path, ": cannot write: ", c.text()));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return absl::InternalError(absl::StrCat("WriteDicom ", path, ": cannot rename the temporary file into place"));
  }
  return absl::OkStatus();
}

// The PACS attributes that older files do not have, each only when set.
OFCondition PutPacsAttributes(DcmDataset* ds, const DicomAttributes& attr) {
  OFCondition c = EC_Normal;
  if (!attr.accession_number.empty()) c = ds->putAndInsertString(DCM_AccessionNumber, attr.accession_number.c_str());
  if (c.good() && attr.series_number > 0) {
    c = ds->putAndInsertString(DCM_SeriesNumber, absl::StrCat(attr.series_number).c_str());
  }
  if (c.good() && attr.instance_number > 0) {
    c = ds->putAndInsertString(DCM_InstanceNumber, absl::StrCat(attr.instance_number).c_str());
  }
  return c;
}

}  // namespace

DicomEncoding DrawDicomEncoding(Rng& rng, double monochrome1_probability) {
  DicomEncoding e;
  e.monochrome1 = rng.Bernoulli(monochrome1_probability);
  e.bits_stored = rng.Bernoulli(0.5) ? 12 : 16;
  static constexpr double kSlopes[] = {0.5, 1.0, 2.0};
  e.rescale_slope = kSlopes[rng.UniformInt(3)];
  e.rescale_intercept = rng.Bernoulli(0.5) ? 0.0 : -1024.0;
  const double lo = e.rescale_intercept;
  const double hi = e.rescale_intercept + e.rescale_slope * ((1 << e.bits_stored) - 1);
  const double span = hi - lo;
  e.window_width = std::round(std::min(rng.Uniform(1500, 3500), 0.9 * span));
  const double c_lo = lo + 0.5 * e.window_width + 1, c_hi = hi - 0.5 * e.window_width - 1;
  e.window_center = std::round(rng.Uniform(c_lo, std::max(c_lo, c_hi)));
  return e;
}

std::string MakeUid(uint64_t a, uint64_t b) {
  // 2.25.<decimal>: two 64-bit numbers printed as one decimal string without leading zeros (at most 2.25. + 40).
  return absl::StrCat("2.25.", a % 9000000000000000000ULL + 1000000000000000000ULL, b % 10000000000000000000ULL);
}

uint16_t EncodeDicomValue(double v, const DicomEncoding& e) {
  v = std::clamp(v, 0.0, 1.0);
  const double y = e.monochrome1 ? 1.0 - v : v;
  // Inverse of the LINEAR window: y = ((x - (c - 0.5)) / (w - 1) + 0.5), y in [0, 1].
  const double x = (y - 0.5) * (e.window_width - 1) + e.window_center - 0.5;
  const double stored = (x - e.rescale_intercept) / e.rescale_slope;
  const double max_stored = (1 << e.bits_stored) - 1;
  return static_cast<uint16_t>(std::clamp(std::round(stored), 0.0, max_stored));
}

absl::Status WriteDicom(const std::string& path, const cv::Mat& image, const DicomEncoding& e,
                        const DicomAttributes& attr) {
  if (image.empty() || image.type() != CV_32F) {
    return absl::InvalidArgumentError(absl::StrCat("WriteDicom ", path, ": image must be a non-empty CV_32F matrix"));
  }
  if ((e.bits_stored != 12 && e.bits_stored != 16) || e.rescale_slope <= 0 || e.window_width < 2) {
    return absl::InvalidArgumentError(absl::StrCat("WriteDicom ", path, ": invalid encoding"));
  }
  std::vector<Uint16> pixels(image.total());
  for (int y = 0; y < image.rows; ++y) {
    const float* row = image.ptr<float>(y);
    for (int x = 0; x < image.cols; ++x) pixels[y * image.cols + x] = EncodeDicomValue(row[x], e);
  }
  DcmFileFormat file;
  DcmDataset* ds = file.getDataset();
  OFCondition c = EC_Normal;
  auto put = [&](const DcmTagKey& tag, const std::string& value) {
    if (c.good()) c = ds->putAndInsertString(tag, value.c_str());
  };
  auto put16 = [&](const DcmTagKey& tag, Uint16 value) {
    if (c.good()) c = ds->putAndInsertUint16(tag, value);
  };
  put(DCM_SOPClassUID, UID_ComputedRadiographyImageStorage);
  put(DCM_SOPInstanceUID, attr.sop_instance_uid);
  put(DCM_StudyInstanceUID, attr.study_uid);
  put(DCM_SeriesInstanceUID, attr.series_uid);
  put(DCM_Modality, "CR");
  put(DCM_BodyPartExamined, "CHEST");
  put(DCM_ViewPosition, attr.view_position);
  put(DCM_PatientID, attr.patient_id);
  put(DCM_PatientName, absl::StrCat("SYNTHETIC^", attr.patient_id));
  put(DCM_PatientSex, attr.patient_sex);
  put(DCM_PatientAge, absl::StrFormat("%03dY", std::clamp(attr.patient_age, 0, 999)));
  put(DCM_Manufacturer, "fedtune synth");
  put(DCM_ImageType, "DERIVED\\SECONDARY");
  put16(DCM_SamplesPerPixel, 1);
  put(DCM_PhotometricInterpretation, e.monochrome1 ? "MONOCHROME1" : "MONOCHROME2");
  put16(DCM_Rows, static_cast<Uint16>(image.rows));
  put16(DCM_Columns, static_cast<Uint16>(image.cols));
  put16(DCM_BitsAllocated, 16);
  put16(DCM_BitsStored, static_cast<Uint16>(e.bits_stored));
  put16(DCM_HighBit, static_cast<Uint16>(e.bits_stored - 1));
  put16(DCM_PixelRepresentation, 0);
  put(DCM_RescaleIntercept, Ds(e.rescale_intercept));
  put(DCM_RescaleSlope, Ds(e.rescale_slope));
  put(DCM_RescaleType, "US");
  put(DCM_WindowCenter, Ds(e.window_center));
  put(DCM_WindowWidth, Ds(e.window_width));
  put(DCM_VOILUTFunction, "LINEAR");
  if (c.good()) c = PutPacsAttributes(ds, attr);
  if (c.good())
    c = ds->putAndInsertUint16Array(DCM_PixelData, pixels.data(), static_cast<unsigned long>(pixels.size()));
  if (c.bad()) return absl::InternalError(absl::StrCat("WriteDicom ", path, ": ", c.text()));
  return SaveAtomically(file, path);
}

absl::Status WriteDicomNonImage(const std::string& path, const std::string& sop_class_uid, const std::string& modality,
                                const DicomAttributes& attr) {
  DcmFileFormat file;
  DcmDataset* ds = file.getDataset();
  OFCondition c = EC_Normal;
  auto put = [&](const DcmTagKey& tag, const std::string& value) {
    if (c.good()) c = ds->putAndInsertString(tag, value.c_str());
  };
  put(DCM_SOPClassUID, sop_class_uid);
  put(DCM_SOPInstanceUID, attr.sop_instance_uid);
  put(DCM_StudyInstanceUID, attr.study_uid);
  put(DCM_SeriesInstanceUID, attr.series_uid);
  put(DCM_Modality, modality);
  put(DCM_PatientID, attr.patient_id);
  put(DCM_PatientName, absl::StrCat("SYNTHETIC^", attr.patient_id));
  put(DCM_Manufacturer, "fedtune synth");
  if (modality == "SR") {
    // The smallest plausible report: an empty, unverified container.
    put(DCM_ValueType, "CONTAINER");
    put(DCM_ContinuityOfContent, "SEPARATE");
    put(DCM_CompletionFlag, "PARTIAL");
    put(DCM_VerificationFlag, "UNVERIFIED");
  } else {
    put(DCM_ContentLabel, "SYNTHETIC");
  }
  if (c.good()) c = PutPacsAttributes(ds, attr);
  if (c.bad()) return absl::InternalError(absl::StrCat("WriteDicom ", path, ": ", c.text()));
  return SaveAtomically(file, path);
}

}  // namespace fedtune::synth
