#include "site_agent/commands/model_init.h"

#include <torch/torch.h>

#include <cstdio>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/model/ensemble.h"
#include "common/model/model_factory.h"
#include "common/status_macros.h"

namespace fedtune::agent {

namespace {

absl::StatusOr<model::Classifier> Build(const std::string& name, double head_dropout, uint64_t seed) {
  absl::StatusOr<model::ModelConfig> config = model::ModelConfigForName(name);
  if (!config.ok()) return absl::InvalidArgumentError(absl::StrCat("--arch/--duo: ", config.status().message()));
  config->head_dropout = head_dropout;
  torch::manual_seed(seed);
  return model::CreateModel(*config);
}

std::vector<std::string> SplitList(const std::string& list) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(list, ',')) {
    absl::string_view name = absl::StripAsciiWhitespace(part);
    if (!name.empty()) out.emplace_back(name);
  }
  return out;
}

}  // namespace

absl::StatusOr<model::Checkpoint> InitCheckpoint(const std::vector<std::string>& architectures, int image_size,
                                                 double head_dropout, uint64_t seed,
                                                 const std::vector<std::string>& duo) {
  std::vector<std::string> names;
  for (const std::string& a : architectures) {
    if (a == "solonet") {
      names.insert(names.end(), {"densenet121", "resnext50_32x4d", "mobilenet_v2"});
    } else if (a == "solonet_tiny") {
      names.insert(names.end(), {"densenet_tiny", "resnext_tiny", "mobilenet_v2_tiny"});
    } else {
      names.push_back(a);
    }
  }
  if (names.empty()) return absl::InvalidArgumentError("--arch: no architecture given");
  if (image_size < 8 || image_size > 8192) {
    return absl::InvalidArgumentError(absl::StrCat("--image-size must be in [8, 8192], got ", image_size));
  }
  if (!(head_dropout >= 0 && head_dropout < 1)) {
    return absl::InvalidArgumentError(absl::StrCat("--dropout must be in [0, 1), got ", head_dropout));
  }
  if (duo.size() > 2) return absl::InvalidArgumentError("--duo: at most two presets (frontal,lateral)");
  std::vector<model::Classifier> members;
  for (size_t i = 0; i < names.size(); ++i) {
    ASSIGN_OR_RETURN(model::Classifier member, Build(names[i], head_dropout, seed + i));
    members.push_back(member);
  }
  model::Ensemble ensemble;
  ensemble.solo = model::SoloNet(members);
  if (!duo.empty()) {
    ASSIGN_OR_RETURN(model::Classifier frontal, Build(duo.front(), head_dropout, seed + names.size()));
    ASSIGN_OR_RETURN(model::Classifier lateral, Build(duo.back(), head_dropout, seed + names.size() + 1));
    torch::manual_seed(seed + names.size() + 2);
    ensemble.duo = model::DuoNet(frontal, lateral, frontal->config().num_outputs, head_dropout);
  }
  model::CheckpointMetadata metadata;
  metadata.image_size = image_size;
  metadata.provenance.source = absl::StrCat("model init ", absl::StrJoin(names, ","), " seed ", seed);
  metadata.provenance.created_at = absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone());
  return model::CheckpointFromEnsemble(ensemble, metadata);
}

namespace {

absl::Status RunInit(const cli::ParsedFlags& flags) {
  const std::vector<std::string> archs = SplitList(flags.GetOrDie("arch"));
  const std::vector<std::string> duo = SplitList(flags.Get("duo").value_or(""));
  ASSIGN_OR_RETURN(int64_t size, flags.GetInt("image-size", 224));
  ASSIGN_OR_RETURN(double dropout, flags.GetDouble("dropout", 0.8));
  ASSIGN_OR_RETURN(int64_t seed, flags.GetInt("seed", 0));
  ASSIGN_OR_RETURN(model::Checkpoint checkpoint,
                   InitCheckpoint(archs, static_cast<int>(size), dropout, static_cast<uint64_t>(seed), duo));
  ASSIGN_OR_RETURN(std::string digest, model::SaveCheckpoint(&checkpoint, flags.GetOrDie("out")));
  std::printf("wrote %s: %zu members%s, sha256 %s\n", flags.GetOrDie("out").c_str(), checkpoint.members.size(),
              checkpoint.duo ? " and a DuoNet" : "", digest.c_str());
  return absl::OkStatus();
}

}  // namespace

cli::Command MakeModelInitCommand() {
  cli::Command c;
  c.path = {"model", "init"};
  c.summary = "a freshly initialized SoloNet checkpoint (presets: solonet, solonet_tiny, densenet121, *_tiny, ...)";
  c.flags = {
      {"arch", "comma-separated presets, e.g. solonet or densenet_tiny,mobilenet_v2_tiny", false, true, std::nullopt,
       "A[,B]"},
      {"out", "where to write the checkpoint", false, true, std::nullopt, "M.ckpt"},
      {"duo", "also a DuoNet: one preset for both views or frontal,lateral", false, false, std::nullopt, "F[,L]"},
      {"image-size", "input side in pixels recorded in the checkpoint", false, false, std::string("224"), "N"},
      {"dropout", "head dropout (the study: 0.8)", false, false, std::string("0.8"), "P"},
      {"seed", "initialization seed (member i uses seed + i)", false, false, std::string("0"), "S"},
  };
  c.run = RunInit;
  return c;
}

}  // namespace fedtune::agent
