// Training-time augmentation, as in the study: a horizontal flip and a rotation
// drawn uniformly from [-10, 10] degrees, each applied with probability 0.5.
// The draws are a pure function of (seed, epoch, image id): the same triple
// always gives the same augmentation, whichever thread or process computes it
// and in whatever order. Augmentation works on the [0, 1] image from
// CropAndResize (preprocess.h), before Normalize; rotation fills the uncovered
// corners with 0 (black), like a black border.
#ifndef FEDTUNE_COMMON_IMAGING_AUGMENT_H_
#define FEDTUNE_COMMON_IMAGING_AUGMENT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace fedtune::imaging {

struct AugmentOptions {
  // Probability of a horizontal flip. Default 0.5. In [0, 1].
  double flip_probability = 0.5;
  // Probability of a rotation. Default 0.5. In [0, 1].
  double rotate_probability = 0.5;
  // A rotation's angle is uniform in [-max, max] degrees. Default 10.
  double max_rotation_degrees = 10.0;
};

// The augmentation chosen for one image in one epoch.
struct AugmentParams {
  bool flip = false;  // Mirror left-right.
  bool rotate = false;
  // Counter-clockwise, about the image centre; 0 unless rotate.
  double rotation_degrees = 0.0;
};

// Draws the augmentation for (seed, epoch, image_id) (image_id: any stable
// identifier, e.g. the manifest path). Deterministic and thread-safe.
AugmentParams DrawAugmentParams(uint64_t seed, int64_t epoch, const std::string& image_id,
                                const AugmentOptions& options = {});

// Applies `params` in place to a row-major width x height image: flip first,
// then rotation with bilinear interpolation and a constant 0 border.
// InvalidArgument when pixels->size() != width * height or a size is <= 0.
// Thread-safe for distinct buffers.
absl::Status ApplyAugmentation(const AugmentParams& params, int width, int height, std::vector<float>* pixels);

// DrawAugmentParams then ApplyAugmentation; returns the params it applied
// through *applied when non-null.
absl::Status Augment(uint64_t seed, int64_t epoch, const std::string& image_id, const AugmentOptions& options,
                     int width, int height, std::vector<float>* pixels, AugmentParams* applied = nullptr);

}  // namespace fedtune::imaging

#endif  // FEDTUNE_COMMON_IMAGING_AUGMENT_H_
