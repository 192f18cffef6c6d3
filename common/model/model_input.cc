#include "common/model/model_input.h"

namespace fedtune::model {

imaging::PreprocessOptions PreprocessFor(const CheckpointMetadata& metadata, const InputOptions& options) {
  imaging::PreprocessOptions p;
  p.size = options.image_size > 0 ? options.image_size : metadata.image_size;
  p.crop_borders = options.crop_borders;
  p.decode.max_pixels = options.max_image_pixels;
  p.decode.raster_bits_stored = options.raster_bits_stored;
  if (!metadata.mean.empty()) p.mean = static_cast<float>(metadata.mean[0]);
  if (!metadata.std.empty()) p.std = static_cast<float>(metadata.std[0]);
  return p;
}

}  // namespace fedtune::model
