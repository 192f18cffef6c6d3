#include "common/model/model_input.h"

#include <gtest/gtest.h>

namespace fedtune::model {
namespace {

TEST(PreprocessForTest, TakesTheCheckpointsSizeAndNormalization) {
  CheckpointMetadata metadata;
  metadata.image_size = 96;
  metadata.mean = {0.5, 0.1, 0.1};
  metadata.std = {0.25, 0.9, 0.9};
  const imaging::PreprocessOptions p = PreprocessFor(metadata, InputOptions());
  EXPECT_EQ(p.size, 96);
  EXPECT_FLOAT_EQ(p.mean, 0.5f);
  EXPECT_FLOAT_EQ(p.std, 0.25f);
  EXPECT_TRUE(p.crop_borders);
  EXPECT_EQ(p.decode.max_pixels, imaging::kDefaultMaxImagePixels);
  EXPECT_EQ(p.decode.raster_bits_stored, 0);
}

TEST(PreprocessForTest, AppliesTheSitesChoices) {
  CheckpointMetadata metadata;
  metadata.image_size = 96;
  InputOptions options;
  options.image_size = 32;
  options.crop_borders = false;
  options.max_image_pixels = 1000;
  options.raster_bits_stored = 12;
  const imaging::PreprocessOptions p = PreprocessFor(metadata, options);
  EXPECT_EQ(p.size, 32);
  EXPECT_FALSE(p.crop_borders);
  EXPECT_EQ(p.decode.max_pixels, 1000);
  EXPECT_EQ(p.decode.raster_bits_stored, 12);
}

TEST(PreprocessForTest, KeepsTheDefaultNormalizationWhenTheMetadataHasNone) {
  CheckpointMetadata metadata;
  metadata.mean.clear();
  metadata.std.clear();
  const imaging::PreprocessOptions p = PreprocessFor(metadata, InputOptions());
  EXPECT_FLOAT_EQ(p.mean, imaging::PreprocessOptions().mean);
  EXPECT_FLOAT_EQ(p.std, imaging::PreprocessOptions().std);
}

}  // namespace
}  // namespace fedtune::model
