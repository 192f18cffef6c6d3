#include "common/data/data_check_command.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "common/data/manifest.h"
#include "common/imaging/raster_bits.h"
#include "common/io/csv.h"
#include "common/status_macros.h"

namespace fedtune::data {

absl::Status ProbeImageFile(const std::string& file, const imaging::DecodeOptions& options) {
  RETURN_IF_ERROR(CheckImageFileExists(file));
  return imaging::DecodeImage(file, options).status();
}

absl::Status ProbeImageFile(const std::string& file) { return ProbeImageFile(file, imaging::DecodeOptions()); }

namespace {

// The estimate of the bits stored in the manifest's 16-bit PNG/TIFF images (what raster_bits_stored: -1 would use,
// over the same sample), and whether `configured` fits it.
std::string RasterBitsLine(const DataCheckOptions& options, const imaging::DecodeOptions& decode, int configured) {
  absl::StatusOr<io::CsvTable> table = io::ReadCsvFile(options.manifest_path);
  if (!table.ok()) return absl::StrCat("16-bit PNG/TIFF images: not estimated (", table.status().message(), ")");
  const ManifestParse parse = ParseManifest(*table);
  std::vector<std::string> paths;
  for (const ManifestEntry& entry : parse.manifest.entries()) {
    paths.push_back(ResolveImagePath(options.root, entry.path));
  }
  absl::StatusOr<imaging::RasterBitsEstimate> estimate = imaging::EstimateRasterBitsStored(paths, decode);
  if (!estimate.ok()) return absl::StrCat("16-bit PNG/TIFF images: not estimated (", estimate.status().message(), ")");
  std::string line = imaging::FormatRasterBitsEstimate(*estimate);
  if (configured > 0 && estimate->max_sample > (1 << configured) - 1) {
    absl::StrAppend(&line, "; --raster-bits-stored ", configured, " is too few: samples above ", (1 << configured) - 1,
                    " would be clamped");
  }
  return line;
}

}  // namespace

cli::Command MakeDataCheckCommand(std::ostream& out, ImageProbe probe) {
  cli::Command command;
  command.path = {"data", "check"};
  command.summary =
      "Check a CheXpert-format manifest and its images: columns, values, ids, "
      "duplicates, studies without a frontal "
      "view, missing or unreadable images; print every problem with its line "
      "and per-label counts. Exit code 2 when "
      "anything is wrong.";
  command.flags = {
      {"manifest", "CheXpert-format CSV to check", false, true, std::nullopt, "M.csv"},
      {"root", "data root that the manifest's paths are relative to", false, true, std::nullopt, "DIR"},
      {"no-decode", "only check that images exist; do not decode them", true, false, std::nullopt, "VALUE"},
      {"threads", "images decoded in parallel", false, false, "1", "N"},
      {"max-image-pixels",
       "refuse images whose header declares more pixels than N (width x height; DICOM: x frames x samples)", false,
       false, absl::StrCat(imaging::kDefaultMaxImagePixels), "N"},
      {"raster-bits-stored",
       "bits stored in 16-bit PNG/TIFF samples, as raster_bits_stored in the fine-tune config: 0 = all 16, 8 to 16, "
       "or auto; the estimate from the data is printed whatever the value",
       false, false, "0", "N|auto"},
  };
  command.run = [&out, probe](const cli::ParsedFlags& flags) -> absl::Status {
    DataCheckOptions options;
    options.manifest_path = flags.GetOrDie("manifest");
    options.root = flags.GetOrDie("root");
    options.decode_images = !flags.GetBool("no-decode");
    ASSIGN_OR_RETURN(int64_t threads, flags.GetInt("threads", 1));
    if (threads < 1 || threads > 256) {
      return absl::InvalidArgumentError(absl::StrCat("--threads: expected 1 to 256, got ", threads));
    }
    options.threads = static_cast<int>(threads);
    imaging::DecodeOptions decode;
    ASSIGN_OR_RETURN(decode.max_pixels, flags.GetInt("max-image-pixels", imaging::kDefaultMaxImagePixels));
    if (decode.max_pixels < 1 || decode.max_pixels > imaging::kMaxImagePixelsLimit) {
      return absl::InvalidArgumentError(absl::StrCat("--max-image-pixels: expected 1 to ",
                                                     imaging::kMaxImagePixelsLimit, ", got ", decode.max_pixels));
    }
    ASSIGN_OR_RETURN(const int raster_bits, imaging::ParseRasterBitsStoredFlag(flags.GetOrDie("raster-bits-stored")));
    // Images are probed with the configured bits when given (auto: as the container, which decodes the same files).
    decode.raster_bits_stored = raster_bits == imaging::kRasterBitsStoredAuto ? 0 : raster_bits;
    RETURN_IF_ERROR(imaging::ValidateDecodeOptions(decode));
    options.probe = probe ? probe : [decode](const std::string& file) { return ProbeImageFile(file, decode); };
    ASSIGN_OR_RETURN(DataCheckReport report, CheckDataset(options));
    out << FormatDataCheckReport(report);
    if (options.decode_images && !probe) out << RasterBitsLine(options, decode, raster_bits) << "\n";
    out << std::flush;
    if (!report.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(report.problem_count(), " problem(s) in ", options.manifest_path, " (listed above)"));
    }
    return absl::OkStatus();
  };
  return command;
}

}  // namespace fedtune::data
