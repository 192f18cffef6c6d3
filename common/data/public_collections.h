// CheXpert-format manifests from public chest-radiograph collections' own tables, for `fedtune-site data index
// --format mimic-cxr|nih-cxr14` (common/data/index_command.h). The output rows go to manifest_writer.h, so that
// everything downstream reads them as any manifest.
//
// MIMIC-CXR (DICOM) and MIMIC-CXR-JPG (PhysioNet, version 2.0.0), from the tables as distributed (gunzipped):
//   - labels:   mimic-cxr-2.0.0-chexpert.csv or -negbio.csv: subject_id, study_id and the 14 CheXpert labels by
//               name (1.0 / 0.0 / -1.0 / blank), one row per study;
//   - metadata: mimic-cxr-2.0.0-metadata.csv: dicom_id, subject_id, study_id, ViewPosition (other columns ignored),
//               one row per image;
//   - split:    mimic-cxr-2.0.0-split.csv (optional): dicom_id, study_id, subject_id, split (train/validate/test).
// One manifest row per metadata row, in the metadata's order: path
// `files/p<first 2 digits of subject_id>/p<subject_id>/s<study_id>/<dicom_id>.dcm` (or `.jpg`), Patient =
// subject_id, Study = study_id, labels from the study's label row. ViewPosition PA and AP are frontal (AP/PA cell
// "PA"/"AP"), LATERAL and LL lateral (AP/PA cell "" and "LL"); other positions (blank, LAO, RAO, SWIMMERS, XTABLE
// LATERAL, ...) are skipped and counted in the notes. Sex and age are not in these tables: left blank. Images of a
// study without a label row are skipped and counted. The join is on study_id, which MIMIC-CXR keeps unique over the
// whole collection: a study_id on two label rows, a dicom_id on two metadata or split rows, or tables that disagree
// on a study's subject_id are InvalidArgument naming both places.
//
// NIH ChestX-ray14: Data_Entry_2017.csv (Image Index, Finding Labels, Follow-up #, Patient ID, Patient Age, Patient
// Gender, View Position, ...; a trailing empty column, as in some copies, is accepted). One row per image, in the
// table's order: path = path_prefix + Image Index, Patient = Patient ID, Study = Follow-up #, sex M/F, age in years
// ("58", or "058Y" / "011M" / "020W" / "005D" as in the first release; above 130 years, as on a few rows of the
// real table, left blank and counted). Only PA and AP views exist; anything else is skipped and counted. The
// pipe-separated Finding Labels map to CheXpert's labels (kNihToChexpert below, documented in
// docs/researcher-guide.md): a mapped label is 1.0 when one of its NIH findings is listed and 0.0 otherwise (Pleural
// Other: blank otherwise); the CheXpert labels with no NIH counterpart (Enlarged Cardiomediastinum, Lung Opacity,
// Fracture, Support Devices) are blank; NIH findings with no CheXpert counterpart (Infiltration, Emphysema, Fibrosis,
// Hernia) are dropped and counted. An unknown finding, "No Finding" together with a finding, or a duplicate Image Index
// is InvalidArgument.
//
// Bounds: each CSV table at most 256 MiB and io::CsvParseOptions' default limits (4,000,000 records; MIMIC-CXR's
// metadata has 377,110 rows); an NIH image list at most 64 MiB and 4,000,000 lines; ids at most 64 bytes (numeric
// ids: digits only, at most 18), image names at most 255 bytes. Every table is read whole into memory: measured on
// synthetic tables of MIMIC-CXR's shape with 455k images and 227k studies (split filter on), 3 s and a peak of
// 670 MB. Thread-safe (no shared state).
#ifndef FEDTUNE_COMMON_DATA_PUBLIC_COLLECTIONS_H_
#define FEDTUNE_COMMON_DATA_PUBLIC_COLLECTIONS_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/data/chexpert_labels.h"
#include "common/data/manifest_writer.h"

namespace fedtune::data {

enum class PublicCollection {
  kMimicCxr,  // MIMIC-CXR (DICOM) or MIMIC-CXR-JPG: labels from the CheXpert (or NegBio) labeller.
  kNihCxr14,  // NIH ChestX-ray14: Data_Entry_2017.csv.
};

struct PublicCollectionOptions {
  PublicCollection collection = PublicCollection::kMimicCxr;
  // The labels table: mimic-cxr-2.0.0-chexpert.csv or -negbio.csv (MIMIC-CXR); Data_Entry_2017.csv (NIH). Required.
  std::string labels_csv;
  // MIMIC-CXR only (required there, must be empty for NIH): mimic-cxr-2.0.0-metadata.csv (view position per image).
  std::string metadata_csv;
  // MIMIC-CXR: mimic-cxr-2.0.0-split.csv; NIH: a list of image names, one per line (train_val_list.txt or
  // test_list.txt): only the listed images are kept. Empty (default): no split filter.
  std::string split_file;
  // MIMIC-CXR: which split of split_file to keep ("train", "validate", "test"); needs split_file. Empty (default):
  // all rows (a split file given without a split is then not read; a note says so). Must be empty for NIH (its
  // split is the image list itself).
  std::string split;
  // MIMIC-CXR: the image files' kind, "dicom" (files/pNN/pSUBJECT/sSTUDY/DICOM_ID.dcm, MIMIC-CXR) or "jpg" (.jpg,
  // MIMIC-CXR-JPG). Default "dicom". Ignored for NIH.
  std::string image_kind = "dicom";
  // Prepended to every image path (relative, '/'-separated), e.g. "images/" for NIH; a '/' is added when missing.
  // Default empty. Must itself be a valid relative manifest path (ValidateManifestPath).
  std::string path_prefix;
};

// What the conversion found, for the command to print.
struct PublicCollectionIndex {
  std::vector<ManifestRow> rows;
  // Counts and problems worth a line each (rows skipped and why, labels not in the collection), in a fixed order.
  std::vector<std::string> notes;
};

// How one NIH ChestX-ray14 finding maps to the CheXpert labels: `chexpert` is an index into kChexpertLabels, or -1
// for a finding with no CheXpert counterpart (dropped).
struct NihFindingMapping {
  const char* nih;
  int chexpert;
  // True when the CheXpert label is broader than the finding, so that an image without the finding is not negative
  // for the label: the label is 1.0 with the finding and blank without it.
  bool positive_only = false;
};
// The 14 NIH findings and "No Finding". Exact counterparts: Atelectasis, Cardiomegaly, Consolidation, Edema,
// Effusion -> Pleural Effusion, Pneumonia, Pneumothorax, No Finding. Near counterparts, by the CheXpert labeller's
// own phrase lists: Mass and Nodule -> Lung Lesion (its phrases are mass, nodule, lesion, tumour, ...), and
// Pleural_Thickening -> Pleural Other (pleural thickening, plaque, scarring; positive only: Pleural Other is broader,
// so an image without Pleural_Thickening is not negative for it, and the label stays blank). No counterpart:
// Infiltration (CheXpert's Lung Opacity is broader, so an image without Infiltration is not negative for it),
// Emphysema, Fibrosis, Hernia.
inline constexpr std::array<NihFindingMapping, 15> kNihToChexpert = {{
    {"Atelectasis", kAtelectasis},
    {"Cardiomegaly", kCardiomegaly},
    {"Consolidation", kConsolidation},
    {"Edema", kEdema},
    {"Effusion", kPleuralEffusion},
    {"Pneumonia", kPneumonia},
    {"Pneumothorax", kPneumothorax},
    {"Mass", kLungLesion},
    {"Nodule", kLungLesion},
    {"Pleural_Thickening", kPleuralOther, /*positive_only=*/true},
    {"Infiltration", -1},
    {"Emphysema", -1},
    {"Fibrosis", -1},
    {"Hernia", -1},
    {"No Finding", kNoFinding},
}};

// Reads the collection's tables and builds the manifest rows. InvalidArgument naming the file, line and column for
// a malformed table (a required column missing, a malformed id, label, age or finding, a duplicate key, tables that
// disagree) or for bad options (naming the option); NotFound for a missing file (naming it). Never returns rows that
// ParseManifest would reject.
absl::StatusOr<PublicCollectionIndex> IndexPublicCollection(const PublicCollectionOptions& options);

}  // namespace fedtune::data

#endif  // FEDTUNE_COMMON_DATA_PUBLIC_COLLECTIONS_H_
