#include "common/model/model_config.h"

#include <limits>
#include <nlohmann/json.hpp>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/io/json_number.h"
#include "common/status_macros.h"

namespace fedtune::model {
namespace {

using nlohmann::json;

absl::Status Positive(const char* field, double value) {
  if (value > 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("model config: ", field, " must be positive, got ", value));
}

// Reads json[key] into *out when present, with a type check that names the field.
template <typename T>
absl::Status ReadField(const json& object, const char* section, const char* key, T* out) {
  auto it = object.find(key);
  if (it == object.end()) return absl::OkStatus();
  try {
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
      // get<int>() of a float that does not fit is undefined behaviour: integers only, within T's range.
      absl::StatusOr<int64_t> v = io::JsonInteger(*it, absl::StrCat("model config: field ", section, key),
                                                  std::numeric_limits<T>::min(), std::numeric_limits<T>::max());
      if (!v.ok()) return v.status();
      *out = static_cast<T>(*v);
    } else {
      *out = it->get<T>();
    }
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: field ", section, key, " has the wrong type: ", e.what()));
  }
  return absl::OkStatus();
}

}  // namespace

const char* ArchitectureName(Architecture arch) {
  switch (arch) {
    case Architecture::kDenseNet:
      return "densenet";
    case Architecture::kResNeXt:
      return "resnext";
    case Architecture::kMobileNetV2:
      return "mobilenet_v2";
  }
  return "unknown";
}

absl::StatusOr<Architecture> ParseArchitecture(absl::string_view name) {
  for (Architecture a : {Architecture::kDenseNet, Architecture::kResNeXt, Architecture::kMobileNetV2}) {
    if (name == ArchitectureName(a)) return a;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown architecture '", name, "' (expected densenet, resnext or mobilenet_v2)"));
}

absl::StatusOr<ModelConfig> ModelConfigForName(absl::string_view name) {
  ModelConfig c;
  if (name == "densenet121") {
    c.arch = Architecture::kDenseNet;
  } else if (name == "resnext50_32x4d") {
    c.arch = Architecture::kResNeXt;
  } else if (name == "mobilenet_v2") {
    c.arch = Architecture::kMobileNetV2;
  } else if (name == "densenet_tiny") {
    c.arch = Architecture::kDenseNet;
    c.densenet.growth_rate = 8;
    c.densenet.block_config = {2, 2, 2, 2};
    c.densenet.num_init_features = 16;
    c.densenet.bn_size = 2;
  } else if (name == "resnext_tiny") {
    c.arch = Architecture::kResNeXt;
    c.resnext.layers = {1, 1, 1, 1};
    c.resnext.groups = 4;
    c.resnext.width_per_group = 4;
    c.resnext.base_planes = 16;
  } else if (name == "mobilenet_v2_tiny") {
    c.arch = Architecture::kMobileNetV2;
    c.mobilenet.width_mult = 0.25;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown model '", name,
        "' (expected densenet121, resnext50_32x4d, mobilenet_v2, densenet_tiny, resnext_tiny, mobilenet_v2_tiny)"));
  }
  return c;
}

absl::Status ValidateModelConfig(const ModelConfig& c) {
  RETURN_IF_ERROR(Positive("in_channels", c.in_channels));
  RETURN_IF_ERROR(Positive("num_outputs", c.num_outputs));
  if (!(c.head_dropout >= 0.0 && c.head_dropout < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: head_dropout must be in [0, 1), got ", c.head_dropout));
  }
  switch (c.arch) {
    case Architecture::kDenseNet: {
      const DenseNetOptions& o = c.densenet;
      RETURN_IF_ERROR(Positive("densenet.growth_rate", o.growth_rate));
      RETURN_IF_ERROR(Positive("densenet.num_init_features", o.num_init_features));
      RETURN_IF_ERROR(Positive("densenet.bn_size", o.bn_size));
      if (o.block_config.empty()) {
        return absl::InvalidArgumentError("model config: densenet.block_config must not be empty");
      }
      for (int n : o.block_config) RETURN_IF_ERROR(Positive("densenet.block_config[i]", n));
      if (!(o.drop_rate >= 0.0 && o.drop_rate < 1.0)) {
        return absl::InvalidArgumentError(
            absl::StrCat("model config: densenet.drop_rate must be in [0, 1), got ", o.drop_rate));
      }
      break;
    }
    case Architecture::kResNeXt: {
      const ResNeXtOptions& o = c.resnext;
      if (o.layers.size() != 4) {
        return absl::InvalidArgumentError(
            absl::StrCat("model config: resnext.layers must have 4 entries, got ", o.layers.size()));
      }
      for (int n : o.layers) RETURN_IF_ERROR(Positive("resnext.layers[i]", n));
      RETURN_IF_ERROR(Positive("resnext.groups", o.groups));
      RETURN_IF_ERROR(Positive("resnext.width_per_group", o.width_per_group));
      RETURN_IF_ERROR(Positive("resnext.base_planes", o.base_planes));
      const int width = static_cast<int>(o.base_planes * (o.width_per_group / 64.0)) * o.groups;
      if (width <= 0) {
        return absl::InvalidArgumentError(
            "model config: resnext.base_planes * width_per_group / 64 rounds to zero channels");
      }
      break;
    }
    case Architecture::kMobileNetV2:
      RETURN_IF_ERROR(Positive("mobilenet.width_mult", c.mobilenet.width_mult));
      RETURN_IF_ERROR(Positive("mobilenet.round_nearest", c.mobilenet.round_nearest));
      break;
  }
  return absl::OkStatus();
}

std::string ModelConfigToJson(const ModelConfig& c) {
  json j;
  j["arch"] = ArchitectureName(c.arch);
  j["in_channels"] = c.in_channels;
  j["num_outputs"] = c.num_outputs;
  j["head_dropout"] = c.head_dropout;
  switch (c.arch) {
    case Architecture::kDenseNet:
      j["densenet"] = {{"growth_rate", c.densenet.growth_rate},
                       {"block_config", c.densenet.block_config},
                       {"num_init_features", c.densenet.num_init_features},
                       {"bn_size", c.densenet.bn_size},
                       {"drop_rate", c.densenet.drop_rate}};
      break;
    case Architecture::kResNeXt:
      j["resnext"] = {{"layers", c.resnext.layers},
                      {"groups", c.resnext.groups},
                      {"width_per_group", c.resnext.width_per_group},
                      {"base_planes", c.resnext.base_planes}};
      break;
    case Architecture::kMobileNetV2:
      j["mobilenet"] = {{"width_mult", c.mobilenet.width_mult}, {"round_nearest", c.mobilenet.round_nearest}};
      break;
  }
  return j.dump();
}

absl::StatusOr<ModelConfig> ModelConfigFromJson(absl::string_view text) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("model config: not a JSON object");
  }
  ModelConfig c;
  std::string arch;
  RETURN_IF_ERROR(ReadField(j, "", "arch", &arch));
  if (arch.empty()) return absl::InvalidArgumentError("model config: missing field arch");
  ASSIGN_OR_RETURN(c.arch, ParseArchitecture(arch));
  RETURN_IF_ERROR(ReadField(j, "", "in_channels", &c.in_channels));
  RETURN_IF_ERROR(ReadField(j, "", "num_outputs", &c.num_outputs));
  RETURN_IF_ERROR(ReadField(j, "", "head_dropout", &c.head_dropout));
  static const json kEmpty = json::object();
  auto section = [&](const char* name) -> const json& {
    auto it = j.find(name);
    return it != j.end() && it->is_object() ? *it : kEmpty;
  };
  const json& d = section("densenet");
  RETURN_IF_ERROR(ReadField(d, "densenet.", "growth_rate", &c.densenet.growth_rate));
  RETURN_IF_ERROR(ReadField(d, "densenet.", "block_config", &c.densenet.block_config));
  RETURN_IF_ERROR(ReadField(d, "densenet.", "num_init_features", &c.densenet.num_init_features));
  RETURN_IF_ERROR(ReadField(d, "densenet.", "bn_size", &c.densenet.bn_size));
  RETURN_IF_ERROR(ReadField(d, "densenet.", "drop_rate", &c.densenet.drop_rate));
  const json& r = section("resnext");
  RETURN_IF_ERROR(ReadField(r, "resnext.", "layers", &c.resnext.layers));
  RETURN_IF_ERROR(ReadField(r, "resnext.", "groups", &c.resnext.groups));
  RETURN_IF_ERROR(ReadField(r, "resnext.", "width_per_group", &c.resnext.width_per_group));
  RETURN_IF_ERROR(ReadField(r, "resnext.", "base_planes", &c.resnext.base_planes));
  const json& m = section("mobilenet");
  RETURN_IF_ERROR(ReadField(m, "mobilenet.", "width_mult", &c.mobilenet.width_mult));
  RETURN_IF_ERROR(ReadField(m, "mobilenet.", "round_nearest", &c.mobilenet.round_nearest));
  RETURN_IF_ERROR(ValidateModelConfig(c));
  return c;
}

}  // namespace fedtune::model
