// The anatomical phantom: a noise-free chest radiograph (frontal AP/PA or lateral) with a visual sign for each
// present CheXpert finding, before any site-specific detector, positioning or annotation effects (appearance.h).
//
// Geometry is defined in coordinates normalized to the image side, so every sign keeps its relative size at any
// output size; signs are sized to stay visible after a resize to 32 px. Intensities are in [0, 1], brighter = more
// attenuating (air ~0.03, lung ~0.16, soft tissue ~0.45, mediastinum/heart ~0.6, bone +0.1, devices ~0.95).
//
// Frontal layout (u across, v down, both in [0, 1]; the patient's right lung is on the image's left):
//   lungs: u in ~[0.12, 0.445] and [0.555, 0.88], v from ~0.16 (apex) to ~0.75 (costophrenic angles);
//   mediastinum u ~[0.44, 0.56]; heart an ellipse centred ~(0.53, 0.60).
// Lateral layout (patient facing left: anterior at small u): one lung field u ~[0.19, 0.78], v ~[0.13, 0.8]
//   (posterior costophrenic sulcus at the bottom right), spine at u ~[0.8, 0.88], heart anterior-inferior.
//
// Signs (frontal; the lateral view shows the same sign at the plausible place):
//   Enlarged Cardiomediastinum: upper mediastinum widened to ~0.24 of the width (v ~0.2-0.47).
//   Cardiomegaly: heart ellipse ~0.43 wide (cardiothoracic ratio > 0.5) instead of ~0.29.
//   Lung Opacity (own): a large ill-defined hazy opacity in one lung.
//   Lung Lesion: a sharp round nodule (radius 0.045-0.07) in a lung.
//   Edema: bilateral perihilar ("bat-wing") haze over both lungs.
//   Consolidation: a dense lobar patch in the upper or lower zone of one lung.
//   Pneumonia: a cluster of patchy blobs in one lung.
//   Atelectasis: a horizontal band-like (plate) opacity in a lower lung zone.
//   Pneumothorax: a lucent rim at the apex and lateral wall of one lung, without lung markings, with a pleural line.
//   Pleural Effusion: fluid with a meniscus filling the costophrenic angle (one side or both).
//   Pleural Other: pleural thickening (a band along the lateral chest wall) with calcified plaques.
//   Fracture: a displaced lateral rib with a bright callus (~0.09 x 0.06).
//   Support Devices: endotracheal/nasogastric tubes, a central line, ECG leads, a pacemaker (at least one).
#ifndef FEDTUNE_COMMON_SYNTH_PHANTOM_H_
#define FEDTUNE_COMMON_SYNTH_PHANTOM_H_

#include <cstdint>

#include "common/synth/labels.h"
#include "opencv2/core.hpp"

namespace fedtune::synth {

enum class View { kFrontalAP, kFrontalPA, kLateral };

inline bool IsFrontal(View view) { return view != View::kLateral; }

struct PhantomSpec {
  View view = View::kFrontalPA;
  // The true findings; a sign is drawn for each present finding other than No Finding. For a hierarchy parent
  // (Lung Opacity, Consolidation, Enlarged Cardiomediastinum) its own sign is drawn only when `own_sign` is set for
  // it (a parent made present only by a child shows through the child's sign).
  LabelVector findings{};
  LabelVector own_sign{};
  bool male = true;
  // Multiplies every sign's contrast (1 = nominal).
  double sign_strength = 1.0;
  // Seeds the anatomy (sizes, rib spacing, markings) and, separately per finding, the sign's placement: turning
  // one finding on or off leaves the anatomy and the other signs unchanged.
  uint64_t seed = 0;
};

// Renders the phantom as a size x size CV_32F image with values in [0, 1]. Drawn at max(size, 128) px and
// area-resampled, so thin structures stay faintly visible at 32 px. size must be >= 8 (CHECKed).
// Deterministic for a given spec and size. Thread-safe.
cv::Mat RenderPhantom(const PhantomSpec& spec, int size);

}  // namespace fedtune::synth

#endif  // FEDTUNE_COMMON_SYNTH_PHANTOM_H_
