#include "common/train/finetune_config.h"

#include <cmath>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/data/label_policy.h"
#include "common/imaging/decode.h"
#include "common/imaging/raster_bits.h"
#include "common/io/file_util.h"
#include "common/io/text_proto.h"
#include "common/status_macros.h"
#include "common/train/dp_sgd.h"

namespace fedtune::train {
namespace {

absl::Status Field(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat("config field '", field, "': ", problem));
}

}  // namespace

absl::Status ValidateFinetuneConfig(const v1::FinetuneConfig& c) {
  if (c.base_model().empty()) return Field("base_model", "required (the checkpoint to fine-tune)");
  if (c.manifest().empty()) return Field("manifest", "required (the site's CheXpert-format CSV)");
  if (c.out_dir().empty()) return Field("out_dir", "required (where the fine-tuned model and state go)");
  if (c.image_size() != 0 && (c.image_size() < 8 || c.image_size() > 8192)) {
    return Field("image_size", "must be 0 (the checkpoint's) or in [8, 8192]");
  }
  if (c.batch_size() < 1) return Field("batch_size", "must be >= 1");
  if (!(c.learning_rate() > 0)) return Field("learning_rate", "must be > 0");
  if (!(c.momentum() >= 0 && c.momentum() < 1)) return Field("momentum", "must be in [0, 1)");
  if (!(c.weight_decay() >= 0)) return Field("weight_decay", "must be >= 0");
  if (!(c.proximal_mu() >= 0) || !std::isfinite(c.proximal_mu()))
    return Field("proximal_mu", "must be finite and >= 0");
  if (c.max_epochs() < 1) return Field("max_epochs", "must be >= 1");
  if (!std::isfinite(c.dp_noise_multiplier()) ||
      (c.dp_noise_multiplier() != 0 &&
       !(c.dp_noise_multiplier() >= kMinDpNoiseMultiplier && c.dp_noise_multiplier() <= kMaxDpNoiseMultiplier))) {
    return Field("dp_noise_multiplier", absl::StrCat("must be 0 (no DP-SGD) or in [", kMinDpNoiseMultiplier, ", ",
                                                     kMaxDpNoiseMultiplier, "], got ", c.dp_noise_multiplier()));
  }
  if (!std::isfinite(c.dp_clip_norm()) || !(c.dp_clip_norm() > 0 && c.dp_clip_norm() <= kMaxDpClipNorm)) {
    return Field("dp_clip_norm", absl::StrCat("must be in (0, ", kMaxDpClipNorm, "], got ", c.dp_clip_norm()));
  }
  if (c.dp_noise_multiplier() > 0 && c.mixed_precision()) {
    return Field("mixed_precision", "cannot be combined with DP-SGD (dp_noise_multiplier > 0)");
  }
  if (c.dp_noise_multiplier() > 0 && c.max_epochs() > 100000) {
    return Field("max_epochs", "must be <= 100000 with DP-SGD (privacy::PlanDpSgd)");
  }
  if (c.patience() < 1) return Field("patience", "must be >= 1");
  if (c.has_dropout() && !(c.dropout() >= 0 && c.dropout() < 1)) return Field("dropout", "must be in [0, 1)");
  if (c.threads() < 0) return Field("threads", "must be >= 0 (0 = all cores)");
  if (c.loader_threads() < 1) return Field("loader_threads", "must be >= 1");
  if (c.max_image_pixels() < 1 || c.max_image_pixels() > imaging::kMaxImagePixelsLimit) {
    return Field("max_image_pixels",
                 absl::StrCat("must be in [1, ", imaging::kMaxImagePixelsLimit, "], got ", c.max_image_pixels()));
  }
  if (c.raster_bits_stored() != 0 && c.raster_bits_stored() != imaging::kRasterBitsStoredAuto &&
      (c.raster_bits_stored() < 8 || c.raster_bits_stored() > 16)) {
    return Field("raster_bits_stored", absl::StrCat("must be 0 (the container's 16 bits), 8 to 16, or -1 (auto), got ",
                                                    c.raster_bits_stored()));
  }
  if (c.on_image_error() != "fail" && c.on_image_error() != "skip") {
    return Field("on_image_error", absl::StrCat("must be \"fail\" or \"skip\", got \"", c.on_image_error(), "\""));
  }
  const v1::SplitConfig& s = c.split();
  if (s.train() <= 0 || s.validation() <= 0 || s.test() < 0) {
    return Field("split", "train and validation must be > 0 and test >= 0");
  }
  if (s.method() != "iterative" && s.method() != "random") {
    return Field("split.method", absl::StrCat("must be \"iterative\" or \"random\", got \"", s.method(), "\""));
  }
  const v1::LabelPolicyConfig& l = c.labels();
  if (!data::ParseUncertainPolicy(l.uncertain()).ok()) {
    return Field("labels.uncertain",
                 absl::StrCat("must be u-soft, u-ones, u-zeros or u-ignore, got \"", l.uncertain(), "\""));
  }
  if (!data::ParseBlankPolicy(l.blank()).ok()) {
    return Field("labels.blank", absl::StrCat("must be zero or ignore, got \"", l.blank(), "\""));
  }
  if (!(l.soft_low() >= 0 && l.soft_low() <= l.soft_high() && l.soft_high() <= 1)) {
    return Field("labels.soft_low/soft_high", "need 0 <= soft_low <= soft_high <= 1");
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::FinetuneConfig> ParseFinetuneConfig(absl::string_view text, absl::string_view source,
                                                       const std::string& base_dir) {
  v1::FinetuneConfig config;
  RETURN_IF_ERROR(io::ParseTextProto(text, source, &config));
  config.set_base_model(io::ResolveConfigPath(base_dir, config.base_model()));
  config.set_manifest(io::ResolveConfigPath(base_dir, config.manifest()));
  config.set_out_dir(io::ResolveConfigPath(base_dir, config.out_dir()));
  if (config.has_data_root()) {
    config.set_data_root(io::ResolveConfigPath(base_dir, config.data_root()));
  } else if (!config.manifest().empty()) {
    config.set_data_root(std::filesystem::path(config.manifest()).parent_path().string());
  }
  if (config.has_cache_dir()) {
    config.set_cache_dir(io::ResolveConfigPath(base_dir, config.cache_dir()));
  } else if (!config.out_dir().empty()) {
    config.set_cache_dir((std::filesystem::path(config.out_dir()) / "cache").string());
  }
  absl::Status valid = ValidateFinetuneConfig(config);
  if (!valid.ok()) return absl::InvalidArgumentError(absl::StrCat(source, ": ", valid.message()));
  return config;
}

data::SplitOptions SplitOptionsFrom(const v1::SplitConfig& split) {
  data::SplitOptions options;
  options.train = split.train();
  options.validation = split.validation();
  options.test = split.test();
  options.seed = split.seed();
  options.method = split.method() == "random" ? data::SplitMethod::kRandom : data::SplitMethod::kIterative;
  return options;
}

absl::StatusOr<data::LabelPolicy> LabelPolicyFrom(const v1::LabelPolicyConfig& labels) {
  data::LabelPolicy p;
  ASSIGN_OR_RETURN(p.uncertain, data::ParseUncertainPolicy(labels.uncertain()));
  ASSIGN_OR_RETURN(p.blank, data::ParseBlankPolicy(labels.blank()));
  p.soft_low = labels.soft_low();
  p.soft_high = labels.soft_high();
  p.seed = labels.seed();
  p.hierarchy_correction = labels.hierarchy();
  RETURN_IF_ERROR(data::ValidateLabelPolicy(p));
  return p;
}

absl::StatusOr<v1::FinetuneConfig> LoadFinetuneConfig(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, io::ReadTextProtoFile(path));
  return ParseFinetuneConfig(text, path, std::filesystem::path(path).parent_path().string());
}

}  // namespace fedtune::train
