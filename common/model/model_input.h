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
  // Bits stored in 16-bit PNG/TIFF samples (imaging::DecodeOptions::raster_bits_stored): 0 (default) = the
  // container's 16 bits, or 8 to 16. Already resolved: "auto" (imaging::kRasterBitsStoredAuto) is the caller's to
  // turn into a value (imaging::ResolveRasterBitsStored); left at -1 it fails validation in the loaders.
  int raster_bits_stored = 0;
};

// The preprocessing for `metadata`'s model: size (options.image_size when > 0, else metadata.image_size), the
// metadata's mean and std (first channel; the defaults when empty), options' border cropping and decoding options.
// Not validated here: imaging::ValidatePreprocessOptions (called by the loaders) names a bad field.
imaging::PreprocessOptions PreprocessFor(const CheckpointMetadata& metadata, const InputOptions& options);

}  // namespace fedtune::model

#endif  // FEDTUNE_COMMON_MODEL_MODEL_INPUT_H_
