#include "site_agent/agent/personalization.h"

#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/federation/states.h"
#include "common/fl/bundle_file.h"
#include "common/fl/model_tensors.h"
#include "common/fl/personalization.h"
#include "common/io/file_util.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace fedtune::agent {
namespace {

namespace fs = std::filesystem;

constexpr char kBefore[] = "local_bn.before.bin";
constexpr char kStart[] = "start.ckpt";
constexpr char kPersonalStart[] = "personal.start.ckpt";

// The kept tensors in `path`, decoded against the global model's namesakes. A file that does not fit is DataLoss:
// it is the site's own state, not peer input.
absl::StatusOr<fl::TensorMap> ReadKept(const std::string& path, const fl::TensorMap& expected) {
  absl::StatusOr<fl::TensorMap> kept = fl::DecodeTensorBundleFile(path, &expected);
  if (kept.ok() || kept.status().code() != absl::StatusCode::kInvalidArgument) return kept;
  return absl::DataLossError(absl::StrCat("the site's kept tensors do not fit the run's model (",
                                          kept.status().message(), "); remove ", path,
                                          " to start again from the global model's own"));
}

int64_t CountValues(const fl::TensorMap& tensors) {
  int64_t n = 0;
  for (const auto& [name, tensor] : tensors) n += tensor.numel();
  return n;
}

}  // namespace

PersonalFiles PersonalFilesOf(const std::string& run_dir) {
  return PersonalFiles{(fs::path(run_dir) / "local_bn.bin").string(), (fs::path(run_dir) / "personal.ckpt").string()};
}

absl::StatusOr<RoundStart> PrepareRoundStart(v1::Personalization personalization, const model::Checkpoint& global,
                                             const std::string& global_path, const RoundDirs& dirs) {
  RoundStart start;
  start.personalization = personalization;
  ASSIGN_OR_RETURN(start.local, fl::LocalTensorNames(global, personalization));
  const fl::TensorMap all = fl::CheckpointTensors(global);
  start.shared_tensors = static_cast<int64_t>(all.size() - start.local.size());
  if (!fl::KeepsTensorsLocal(personalization)) {
    start.path = global_path;
    start.checkpoint = global;
    return start;
  }
  const fl::TensorMap expected = fl::SelectTensors(all, start.local);
  start.local_values = CountValues(expected);
  // Where this round's kept tensors come from: a start recorded before (this attempt, then earlier ones), else the
  // site's state, else the global's own.
  const std::string before = (fs::path(dirs.round_dir) / kBefore).string();
  std::vector<std::string> candidates{before};
  for (const std::string& d : dirs.earlier_attempts) candidates.push_back((fs::path(d) / kBefore).string());
  candidates.push_back(PersonalFilesOf(dirs.run_dir).local_tensors);
  std::string source;
  for (const std::string& candidate : candidates) {
    if (fs::exists(candidate)) {
      source = candidate;
      break;
    }
  }
  fl::TensorMap kept;
  if (source.empty()) {
    kept = expected;
    LOG(INFO) << "personalization " << federation::Text(personalization) << ": no kept tensors yet (first round of "
              << "the run at this site): starting from the global model's own";
  } else {
    ASSIGN_OR_RETURN(kept, ReadKept(source, expected));
    LOG(INFO) << "personalization " << federation::Text(personalization) << ": round starts from the global model "
              << "with this site's " << kept.size() << " kept tensors from " << source;
  }
  if (source != before) RETURN_IF_ERROR(fl::WriteTensorBundleFile(before, kept));
  ASSIGN_OR_RETURN(start.checkpoint, fl::ReplaceTensors(global, kept, before));
  start.checkpoint.metadata.provenance.parent_digest = global.weights_sha256;
  start.path = (fs::path(dirs.round_dir) / kStart).string();
  // Deterministic bytes from (global, kept): written again after a restart, it is the same model.
  RETURN_IF_ERROR(model::SaveCheckpoint(&start.checkpoint, start.path).status());
  return start;
}

absl::Status KeepLocalTensors(const RoundStart& start, const model::Checkpoint& tuned, const std::string& run_dir) {
  if (!fl::KeepsTensorsLocal(start.personalization)) return absl::OkStatus();
  const fl::TensorMap kept = fl::SelectTensors(fl::CheckpointTensors(tuned), start.local);
  if (kept.size() != start.local.size()) {
    return absl::InvalidArgumentError(absl::StrCat("the fine-tuned model has ", kept.size(), " of the ",
                                                   start.local.size(), " tensors this site keeps"));
  }
  const std::string path = PersonalFilesOf(run_dir).local_tensors;
  RETURN_IF_ERROR(fl::WriteTensorBundleFile(path, kept));
  LOG(INFO) << "personalization " << federation::Text(start.personalization) << ": kept this site's " << kept.size()
            << " tensors (" << start.local_values << " values) in " << path << "; they are not uploaded";
  return absl::OkStatus();
}

absl::StatusOr<fl::TensorMap> SharedDelta(const RoundStart& start, const model::Checkpoint& tuned) {
  const fl::TensorMap local = fl::DropTensors(fl::CheckpointTensors(tuned), start.local);
  const fl::TensorMap base = fl::DropTensors(fl::CheckpointTensors(start.checkpoint), start.local);
  return fl::ComputeDelta(local, base);
}

absl::StatusOr<std::optional<std::string>> WriteFinalAdapted(v1::Personalization personalization,
                                                             const std::string& global_path, const std::string& run_dir,
                                                             const std::string& adapted_path) {
  if (!fl::KeepsTensorsLocal(personalization)) return std::optional<std::string>();
  const std::string kept_path = PersonalFilesOf(run_dir).local_tensors;
  if (!fs::exists(kept_path)) {
    LOG(WARNING) << "personalization " << federation::Text(personalization) << ": no kept tensors (" << kept_path
                 << "): this site never trained in the run, so it has no adapted model";
    return std::optional<std::string>();
  }
  ASSIGN_OR_RETURN(model::Checkpoint global, model::LoadCheckpoint(global_path));
  ASSIGN_OR_RETURN(std::set<std::string> local, fl::LocalTensorNames(global, personalization));
  ASSIGN_OR_RETURN(fl::TensorMap kept, ReadKept(kept_path, fl::SelectTensors(fl::CheckpointTensors(global), local)));
  ASSIGN_OR_RETURN(model::Checkpoint adapted, fl::ReplaceTensors(global, kept, kept_path));
  adapted.metadata.provenance.parent_digest = global.weights_sha256;
  adapted.metadata.provenance.source =
      absl::StrCat("final global model with this site's own ", federation::Text(personalization), " tensors");
  RETURN_IF_ERROR(io::MakeDirectories(fs::path(adapted_path).parent_path().string()));
  ASSIGN_OR_RETURN(std::string digest, model::SaveCheckpoint(&adapted, adapted_path));
  LOG(INFO) << "adapted model (" << federation::Text(personalization) << "): the final global model "
            << global.weights_sha256 << " with this site's " << kept.size() << " kept tensors: " << adapted_path;
  return std::optional<std::string>(digest);
}

absl::StatusOr<std::string> PersonalStart(const RoundDirs& dirs, const std::string& global_path) {
  const std::string own = (fs::path(dirs.round_dir) / kPersonalStart).string();
  if (fs::exists(own)) return own;
  for (const std::string& d : dirs.earlier_attempts) {
    const std::string earlier = (fs::path(d) / kPersonalStart).string();
    if (fs::exists(earlier)) return earlier;
  }
  const std::string personal = PersonalFilesOf(dirs.run_dir).personal_model;
  const bool first = !fs::exists(personal);
  RETURN_IF_ERROR(io::CopyFileAtomically(first ? global_path : personal, own));
  LOG(INFO) << "personalization ditto: the personal model starts from "
            << (first ? "the global model (first round of the run at this site)" : personal);
  return own;
}

}  // namespace fedtune::agent
