#include "common/train/site_data.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "common/imaging/raster_bits.h"
#include "common/io/file_util.h"
#include "common/status_macros.h"
#include "common/train/finetune_config.h"

namespace fedtune::train {

absl::StatusOr<SiteData> LoadSiteData(const v1::FinetuneConfig& config) {
  SiteData site;
  ASSIGN_OR_RETURN(site.table, io::ReadCsvFile(config.manifest()));
  ASSIGN_OR_RETURN(site.manifest, data::Manifest::FromTable(site.table));
  ASSIGN_OR_RETURN(site.split, data::SplitByPatient(site.manifest, SplitOptionsFrom(config.split())));
  return site;
}

absl::StatusOr<int> ResolveRasterBitsStoredOver(int configured, const data::Manifest& manifest,
                                                const std::string& data_root, int64_t max_image_pixels) {
  std::vector<std::string> paths;
  if (configured == imaging::kRasterBitsStoredAuto) {
    paths.reserve(manifest.entries().size());
    for (const data::ManifestEntry& entry : manifest.entries()) {
      paths.push_back(data::ResolveImagePath(data_root, entry.path));
    }
  }
  imaging::DecodeOptions decode;
  decode.max_pixels = max_image_pixels;
  return imaging::ResolveRasterBitsStored(configured, paths, decode);
}

absl::StatusOr<int> RasterBitsStoredFor(const v1::FinetuneConfig& config, const data::Manifest& manifest) {
  return ResolveRasterBitsStoredOver(config.raster_bits_stored(), manifest, config.data_root(),
                                     config.max_image_pixels());
}

absl::Status WriteSplitManifest(const SiteData& site, data::Split split, const std::string& path) {
  std::set<int64_t> lines;
  for (size_t e : site.split.EntriesIn(split)) lines.insert(site.manifest.entries()[e].line);
  std::string out;
  for (size_t i = 0; i < site.table.header.size(); ++i) {
    absl::StrAppend(&out, i ? "," : "", io::CsvEscape(site.table.header[i]));
  }
  out += "\n";
  for (const io::CsvRecord& row : site.table.rows) {
    if (!lines.count(row.line)) continue;
    for (size_t i = 0; i < row.fields.size(); ++i) absl::StrAppend(&out, i ? "," : "", io::CsvEscape(row.fields[i]));
    out += "\n";
  }
  return io::WriteFileAtomically(path, out);
}

}  // namespace fedtune::train
