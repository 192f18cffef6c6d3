// The images a checkpoint expects: the preprocessing (input size, normalization, decoding limits) derived from its
// metadata, with the few settings a site may choose. Shared by training (common/train), prediction and evaluation,
// so that a model sees its inputs prepared the same way in each.
#ifndef FEDTUNE_COMMON_MODEL_MODEL_INPUT_H_
#define FEDTUNE_COMMON_MODEL_MODEL_INPUT_H_

#include <cstdint>

#include "common/imaging/decode.h"
#include "common/imaging/preprocess.h"
#include "common/model/checkpoint.h"

namespace fedtune::model {

// The site's choices on top of the checkpoint's metadata.
struct InputOptions {
  int image_size = 0;        // Input side in pixels; 0 (default): the checkpoint's image_size.
  bool crop_borders = true;  // Remove black borders before resizing (default true, as in the study).
  // Largest image decoded, in pixels, checked from the file's header (imaging::DecodeOptions::max_pixels). Default
  // imaging::kDefaultMaxImagePixels.
  int64_t max_image_pixels = imaging::kDefaultMaxImagePixels;
};

// The preprocessing for `metadata`'s model: size (options.image_size when > 0, else metadata.image_size), the
// metadata's mean and std (first channel; the defaults when empty), options' border cropping and decoding limit.
// Not validated here: imaging::ValidatePreprocessOptions (called by the loaders) names a bad field.
imaging::PreprocessOptions PreprocessFor(const CheckpointMetadata& metadata, const InputOptions& options);

}  // namespace fedtune::model

#endif  // FEDTUNE_COMMON_MODEL_MODEL_INPUT_H_
