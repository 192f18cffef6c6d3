// `fedtune synth`'s engine: plans a synthetic multi-site dataset (patients, studies, views, true and reported
// labels) from a site profile and a seed, renders every image, and writes the CheXpert-style dataset.
//
// Output layout (DIR = SynthOptions::out_dir):
//   DIR/patientNNNNN/studyN/viewN_frontal.png  (or viewN_lateral.png; .dcm for the images chosen as DICOM)
//   DIR/manifest.csv  CheXpert format: Path (relative to DIR), Sex (Male/Female), Age (years), Frontal/Lateral,
//                     AP/PA (blank for lateral views), then the 14 labels in CheXpert order with 1.0 / 0.0 / -1.0 /
//                     blank AS THE SITE REPORTED THEM (reporting noise included; see labels.h). One row per image;
//                     all images of a study carry the study's labels.
//   DIR/truth.csv     The same columns with the TRUE findings (1.0 or 0.0, never blank or -1.0): the ground truth
//                     for measuring what reporting noise costs.
//   DIR/profile.textproto  The profile used, for provenance.
// Patient numbers start at 1 and have at least five digits; study and view numbers start at 1. Every study has a
// frontal view (view1); some also a lateral (view2). Existing files of the same names are replaced.
//
// With SynthOptions::pacs_export (`fedtune synth --dicom`), the same plan is written instead as a synthetic PACS
// export, the input of `fedtune-site data index` (common/data/dicom_index.h):
//   DIR/dicom/STnnnnnn/SEnnnnnn/IMnnnnnn.dcm  every image as DICOM (study number, series = view number, instance 1)
//                     with PatientID MRNnnnnnnn, AccessionNumber ACCnnnnnnn, Study/Series/SOP Instance UIDs,
//                     ViewPosition PA/AP/LL, PatientSex, PatientAge, SeriesNumber, InstanceNumber;
//   DIR/labels.csv    one row per study: AccessionNumber, StudyInstanceUID, the 14 reported labels, Reader;
//   DIR/profile.textproto
// plus, so that every case of data index's report shows: a Basic Text SR and a Grayscale Softcopy Presentation
// State in study 1 (series 900 and 901), a second copy of the first image (ST000001/SE000001/IM000002.dcm, the same
// SOP Instance UID), the frontal image of the first two-view study after study 1 written with a blank ViewPosition
// (so that study has no known frontal view), no labels row for the last study (when there are at least 3 studies
// and it is not that one), and a labels row for an accession number that is not in the export (ACC9999999). No
// manifest.csv or truth.csv is written: data index makes the manifest.
//
// Determinism: the plan depends only on (profile, count, seed); each image only on (profile, size, seed, image
// index): files are byte-identical across runs and thread counts, and a larger count extends a smaller one (the
// first images are the same, except that the last study of the smaller set may lack its lateral view). The profile's
// name is mixed into the seed, so two profiles generated with the same seed do not share patients' random draws.
#ifndef FEDTUNE_COMMON_SYNTH_GENERATOR_H_
#define FEDTUNE_COMMON_SYNTH_GENERATOR_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/data/chexpert_labels.h"
#include "common/synth/labels.h"
#include "common/synth/phantom.h"
#include "fedtune/v1/synth_profile.pb.h"
#include "opencv2/core.hpp"

namespace fedtune::synth {

struct SynthOptions {
  fedtune::v1::SynthProfile profile;  // Must be valid (ValidateProfile).
  int64_t count = 1000;  // Number of IMAGES (studies are added until this many images exist), 1..10,000,000.
  int size = 64;         // Square images of size x size pixels, 16..4096.
  uint64_t seed = 1;
  std::string out_dir;        // Created if missing.
  double dicom_fraction = 0;  // Probability that an image is written as DICOM instead of PNG, in [0, 1].
  int png_bit_depth = 8;      // 8 or 16.
  int threads = 1;            // Rendering threads, >= 1; the output does not depend on it.
  bool pacs_export = false;   // Write a PACS export (see above) instead; dicom_fraction must then be 0.
};

// One image of the plan.
struct PlannedImage {
  int64_t index = 0;
  std::string path;  // Relative to the output folder.
  int patient = 0, study = 0, view_number = 0;
  View view = View::kFrontalPA;
  bool male = true;
  int age = 0;
  TrueFindings truth;       // Of the study.
  ReportVector reported{};  // Of the study.
  bool dicom = false;
  uint64_t seed = 0;  // The image's own stream.
};

// Plans `count` images. Labels and reports are drawn per study; demographics per patient.
std::vector<PlannedImage> PlanDataset(const fedtune::v1::SynthProfile& profile, int64_t count, uint64_t seed,
                                      double dicom_fraction);

// Renders one planned image (CV_32F, size x size, [0, 1]) with the profile's appearance.
cv::Mat RenderPlannedImage(const fedtune::v1::SynthProfile& profile, const PlannedImage& image, int size);

// The manifest (reported labels) and truth CSV texts for a plan.
std::string ManifestCsv(const std::vector<PlannedImage>& plan);
std::string TruthCsv(const std::vector<PlannedImage>& plan);

// Where each planned image goes in a PACS export, and its special cases (see the file comment).
struct PacsExportPlan {
  std::vector<std::string> paths;      // Per image, relative to the output folder.
  std::vector<std::string> accession;  // Per image (its study's).
  std::vector<int> study_number;       // Per image, 1-based, in plan order.
  int studies = 0;
  int64_t blank_view_image = -1;  // The image written with a blank ViewPosition, or -1.
  int unlabelled_study = 0;       // The study without a labels row, or 0.
};
PacsExportPlan PlanPacsExport(const std::vector<PlannedImage>& plan);

// The DICOM StudyInstanceUID of a planned image's study (the same for both export kinds).
std::string PlannedStudyUid(uint64_t seed, const PlannedImage& image);

// labels.csv of a PACS export.
std::string PacsLabelsCsv(const std::vector<PlannedImage>& plan, const PacsExportPlan& pacs, uint64_t seed);

struct SynthSummary {
  int64_t images = 0, studies = 0, patients = 0, dicom_images = 0, lateral_images = 0;
  int64_t extra_dicom_files = 0;  // PACS export: the non-image objects and the duplicate.
  std::array<int64_t, data::kNumChexpertLabels> true_positive_studies{};  // Studies with the finding present.
  double seconds = 0;
};

// Plans, renders and writes the dataset. InvalidArgument for bad options (naming the option); Internal for I/O
// errors, naming the file. Each image is written under a temporary name and renamed into place (never torn); the
// folder's file system is then flushed once (syncfs), and only then are truth.csv and manifest.csv written with
// io::WriteFileAtomically, so a manifest on disk always describes complete, durable images. On error, files written
// so far remain.
absl::StatusOr<SynthSummary> GenerateDataset(const SynthOptions& options);

}  // namespace fedtune::synth

#endif  // FEDTUNE_COMMON_SYNTH_GENERATOR_H_
