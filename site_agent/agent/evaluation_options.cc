#include "site_agent/agent/evaluation_options.h"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/status_macros.h"

namespace fedtune::agent {

EvaluateOptions EvaluateOptionsFor(const v1::SiteAgentConfig& config, const std::string& a, const std::string& b,
                                   const std::string& manifest, const std::string& out_dir, std::string title) {
  EvaluateOptions options;
  options.base_model = a;
  options.model = b;
  options.manifest = manifest;
  options.data_root = config.finetune().data_root();
  options.out_dir = out_dir;
  options.predict.device = config.finetune().device();
  options.predict.input.crop_borders = config.finetune().crop_borders();
  options.predict.input.max_image_pixels = config.finetune().max_image_pixels();
  // -1 (auto) is resolved by RunEvaluate over the site's whole manifest, as training resolved it.
  options.predict.input.raster_bits_stored = config.finetune().raster_bits_stored();
  options.raster_bits_manifest = config.finetune().manifest();
  options.predict.loader_threads = config.finetune().loader_threads();
  options.gradcam_per_label = config.gradcam_per_label();
  options.title = std::move(title);
  return options;
}

absl::StatusOr<std::string> EvaluatedDigest(const std::string& report_dir, const char* side) {
  const std::string path = (std::filesystem::path(report_dir) / "report.json").string();
  ASSIGN_OR_RETURN(std::string text, io::ReadFile(path));
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.contains("models") || !json["models"].contains(side)) {
    return absl::DataLossError(absl::StrCat(path, ": no models.", side, ".weights_sha256"));
  }
  return json["models"][side].value("weights_sha256", "");
}

}  // namespace fedtune::agent
