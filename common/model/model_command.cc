#include "common/model/model_command.h"

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/model/checkpoint.h"
#include "common/model/ensemble.h"
#include "common/model/model_factory.h"
#include "common/model/state_dict.h"
#include "common/status_macros.h"

namespace fedtune::model {
namespace {

absl::Status RunImport(const cli::ParsedFlags& flags, std::ostream& out) {
  const std::string source_path = flags.GetOrDie("state-dict");
  ASSIGN_OR_RETURN(ModelConfig config, ModelConfigForName(flags.GetOrDie("arch")));
  ASSIGN_OR_RETURN(config.head_dropout, flags.GetDouble("head-dropout", 0.8));
  ASSIGN_OR_RETURN(int64_t image_size, flags.GetInt("image-size", 224));
  ASSIGN_OR_RETURN(int64_t seed, flags.GetInt("seed", 0));
  if (image_size < 8 || image_size > 4096) {
    return absl::InvalidArgumentError(absl::StrCat("--image-size must be in [8, 4096], got ", image_size));
  }
  ASSIGN_OR_RETURN(StateDict source, ReadStateDictFile(source_path));
  torch::manual_seed(static_cast<uint64_t>(seed));
  ASSIGN_OR_RETURN(Classifier model, CreateModel(config));
  ImportOptions options;
  options.allow_missing = flags.GetBool("allow-missing");
  auto report = LoadStateDictIntoModel(source, *model, options);
  if (!report.ok()) {
    return absl::Status(report.status().code(), absl::StrCat(source_path, ": ", report.status().message()));
  }
  CheckpointMetadata metadata;
  metadata.image_size = static_cast<int>(image_size);
  metadata.provenance.source = absl::StrCat("import ", source_path, " as ", flags.GetOrDie("arch"));
  metadata.provenance.created_at = absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone());
  Ensemble ensemble;
  ensemble.solo = SoloNet(std::vector<Classifier>{model});
  Checkpoint checkpoint = CheckpointFromEnsemble(ensemble, std::move(metadata));
  ASSIGN_OR_RETURN(std::string digest, SaveCheckpoint(&checkpoint, flags.GetOrDie("out")));
  out << "imported " << source_path << ": " << report->Summary() << "\n"
      << "wrote " << flags.GetOrDie("out") << " (weights sha256 " << digest << ")\n";
  return absl::OkStatus();
}

absl::Status RunInfo(const cli::ParsedFlags& flags, std::ostream& out) {
  if (flags.positional().size() != 1) return absl::InvalidArgumentError("model info takes one checkpoint path");
  ASSIGN_OR_RETURN(Checkpoint checkpoint, LoadCheckpoint(flags.positional()[0]));
  out << flags.positional()[0] << "\n" << CheckpointSummary(checkpoint);
  return absl::OkStatus();
}

}  // namespace

cli::Command MakeModelImportCommand(std::ostream& out) {
  cli::Command c;
  c.path = {"model", "import"};
  c.summary = "import a PyTorch state dict (.pt from torch.save, or .safetensors) as a fedtune checkpoint";
  c.flags = {
      {"state-dict", "torch.save(model.state_dict()) file or .safetensors file", false, true, std::nullopt, "F.pt"},
      {"arch", "densenet121, resnext50_32x4d, mobilenet_v2 (or densenet_tiny, resnext_tiny, mobilenet_v2_tiny)", false,
       true, std::nullopt, "NAME"},
      {"out", "checkpoint to write", false, true, std::nullopt, "M.ckpt"},
      {"head-dropout", "dropout before the final layer", false, false, "0.8", "P"},
      {"image-size", "input size recorded in the checkpoint", false, false, "224", "N"},
      {"seed", "seed for a replaced head's initialization", false, false, "0", "N"},
      {"allow-missing", "accept state dicts lacking some of the model's keys", true},
  };
  c.run = [&out](const cli::ParsedFlags& flags) { return RunImport(flags, out); };
  return c;
}

cli::Command MakeModelInfoCommand(std::ostream& out) {
  cli::Command c;
  c.path = {"model", "info"};
  c.summary = "verify a checkpoint and print its architecture, labels, provenance and digest";
  c.usage_tail = "M.ckpt";
  c.max_positional = 1;
  c.run = [&out](const cli::ParsedFlags& flags) { return RunInfo(flags, out); };
  return c;
}

}  // namespace fedtune::model
