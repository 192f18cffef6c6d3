// The 14 CheXpert observations in CheXpert's column order, and the label hierarchy used for correction.
// Header-only constants, shared by the data pipeline, the synthetic generator, models and reports.
#ifndef FEDTUNE_COMMON_DATA_CHEXPERT_LABELS_H_
#define FEDTUNE_COMMON_DATA_CHEXPERT_LABELS_H_

#include <array>
#include <utility>

namespace fedtune::data {

inline constexpr int kNumChexpertLabels = 14;

// Column names exactly as in CheXpert's train.csv / valid.csv.
inline constexpr std::array<const char*, kNumChexpertLabels> kChexpertLabels = {
    "No Finding",       "Enlarged Cardiomediastinum",
    "Cardiomegaly",     "Lung Opacity",
    "Lung Lesion",      "Edema",
    "Consolidation",    "Pneumonia",
    "Atelectasis",      "Pneumothorax",
    "Pleural Effusion", "Pleural Other",
    "Fracture",         "Support Devices"};

// Indices into kChexpertLabels.
enum ChexpertLabel : int {
  kNoFinding = 0,
  kEnlargedCardiomediastinum = 1,
  kCardiomegaly = 2,
  kLungOpacity = 3,
  kLungLesion = 4,
  kEdema = 5,
  kConsolidation = 6,
  kPneumonia = 7,
  kAtelectasis = 8,
  kPneumothorax = 9,
  kPleuralEffusion = 10,
  kPleuralOther = 11,
  kFracture = 12,
  kSupportDevices = 13,
};

// (child, parent) pairs of CheXpert's hierarchy: a positive child makes its parent positive. Listed so that one pass
// in this order propagates transitively (Pneumonia -> Consolidation comes before Consolidation -> Lung Opacity).
inline constexpr std::array<std::pair<int, int>, 7> kChexpertHierarchy = {{
    {kPneumonia, kConsolidation},
    {kEdema, kLungOpacity},
    {kConsolidation, kLungOpacity},
    {kPneumonia, kLungOpacity},
    {kLungLesion, kLungOpacity},
    {kAtelectasis, kLungOpacity},
    {kCardiomegaly, kEnlargedCardiomediastinum},
}};

// The non-label columns of a CheXpert CSV (plus fedtune's optional explicit ids).
inline constexpr std::array<const char*, 7> kChexpertMetadataColumns = {"Path",  "Sex",     "Age",  "Frontal/Lateral",
                                                                        "AP/PA", "Patient", "Study"};

}  // namespace fedtune::data

#endif  // FEDTUNE_COMMON_DATA_CHEXPERT_LABELS_H_
