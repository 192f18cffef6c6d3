#include "common/data/data_check_command.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace fedtune::data {

absl::Status ProbeImageFile(const std::string& file, const imaging::DecodeOptions& options) {
  RETURN_IF_ERROR(CheckImageFileExists(file));
  return imaging::DecodeImage(file, options).status();
}

absl::Status ProbeImageFile(const std::string& file) { return ProbeImageFile(file, imaging::DecodeOptions()); }

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
    RETURN_IF_ERROR(imaging::ValidateDecodeOptions(decode));
    options.probe = probe ? probe : [decode](const std::string& file) { return ProbeImageFile(file, decode); };
    ASSIGN_OR_RETURN(DataCheckReport report, CheckDataset(options));
    out << FormatDataCheckReport(report) << std::flush;
    if (!report.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(report.problem_count(), " problem(s) in ", options.manifest_path, " (listed above)"));
    }
    return absl::OkStatus();
  };
  return command;
}

}  // namespace fedtune::data
