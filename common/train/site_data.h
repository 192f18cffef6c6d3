// A site's manifest and its patient-level split, computed from a FinetuneConfig (its manifest and SplitConfig). The
// fine-tuning pipeline, the agent's dataset summary and its final evaluation all take the split from here, so that
// they agree on which images are the test split.
//
// Thread safety: reentrant.
#ifndef FEDTUNE_COMMON_TRAIN_SITE_DATA_H_
#define FEDTUNE_COMMON_TRAIN_SITE_DATA_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/data/manifest.h"
#include "common/data/stratified_split.h"
#include "common/io/csv.h"
#include "fedtune/v1/finetune.pb.h"

namespace fedtune::train {

// A site's manifest (as read: the table, for writing subsets with the original cells) and its split.
struct SiteData {
  io::CsvTable table;
  data::Manifest manifest;
  data::DatasetSplit split;
};

// Reads config.manifest and splits it by patient with config.split (SplitOptionsFrom). Errors: those of the CSV
// reader and manifest parser (naming the file and line) and of the split.
absl::StatusOr<SiteData> LoadSiteData(const v1::FinetuneConfig& config);

// The effective imaging::DecodeOptions::raster_bits_stored of config.raster_bits_stored: the value itself, or for -1
// (auto) the estimate over the images of `manifest` (paths resolved against config.data_root; raster_bits.h: the
// same manifest and files give the same value), logged. InvalidArgument for a value out of range.
absl::StatusOr<int> RasterBitsStoredFor(const v1::FinetuneConfig& config, const data::Manifest& manifest);

// The same for any configured value and images: `configured` itself when 0 or in [8, 16]; for -1 (auto) the
// estimate over `manifest`'s images resolved against `data_root`, decoded under `max_image_pixels`, logged. (Also
// used by evaluation, so that it resolves what training resolved for the same manifest.)
absl::StatusOr<int> ResolveRasterBitsStoredOver(int configured, const data::Manifest& manifest,
                                                const std::string& data_root, int64_t max_image_pixels);

// Writes the manifest rows of `split` (with the header, cells as in the file) to `path`, atomically: the
// <out_dir>/splits/<split>.csv files of the fine-tuning. Errors of io::WriteFileAtomically.
absl::Status WriteSplitManifest(const SiteData& site, data::Split split, const std::string& path);

}  // namespace fedtune::train

#endif  // FEDTUNE_COMMON_TRAIN_SITE_DATA_H_
