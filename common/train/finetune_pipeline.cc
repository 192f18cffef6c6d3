#include "common/train/finetune_pipeline.h"

#include <torch/torch.h>

#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/data/class_weights.h"
#include "common/data/label_policy.h"
#include "common/imaging/cache.h"
#include "common/io/file_util.h"
#include "common/loader/batch_loader.h"
#include "common/logging.h"
#include "common/model/checkpoint.h"
#include "common/model/ensemble.h"
#include "common/model/model_input.h"
#include "common/status_macros.h"
#include "common/train/finetune_config.h"
#include "common/train/site_data.h"

namespace fedtune::train {
namespace {

namespace fs = std::filesystem;

// Forwards one network's trainer events to the pipeline's observers, with the network's name.
class NetworkObserver : public EpochObserver {
 public:
  NetworkObserver(std::string network, absl::Span<FinetuneObserver* const> observers)
      : network_(std::move(network)), observers_(observers) {}
  absl::Status OnResume(const std::vector<EpochRecord>& history) override {
    for (FinetuneObserver* o : observers_) RETURN_IF_ERROR(o->OnResume(network_, history));
    return absl::OkStatus();
  }
  absl::Status OnEpoch(const EpochRecord& record) override {
    for (FinetuneObserver* o : observers_) RETURN_IF_ERROR(o->OnEpoch(network_, record));
    return absl::OkStatus();
  }

 private:
  const std::string network_;
  const absl::Span<FinetuneObserver* const> observers_;
};

// The base checkpoint and its ensemble, with the config's head dropout; the proximal term's anchor when one is
// given.
struct BaseModel {
  model::Checkpoint checkpoint;
  model::Ensemble ensemble;
  std::optional<model::Checkpoint> anchor;
};

absl::StatusOr<BaseModel> LoadBase(const v1::FinetuneConfig& config, const std::string& proximal_anchor) {
  BaseModel base;
  ASSIGN_OR_RETURN(base.checkpoint, model::LoadCheckpoint(config.base_model()));
  if (config.has_dropout()) {
    for (model::MemberWeights& m : base.checkpoint.members) m.config.head_dropout = config.dropout();
  }
  ASSIGN_OR_RETURN(base.ensemble, model::EnsembleFromCheckpoint(base.checkpoint));
  if (!proximal_anchor.empty() && config.proximal_mu() > 0) {
    ASSIGN_OR_RETURN(base.anchor, model::LoadCheckpoint(proximal_anchor));
    if (base.anchor->members.size() != base.checkpoint.members.size() ||
        base.anchor->duo.has_value() != base.checkpoint.duo.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("proximal anchor ", proximal_anchor, " has ", base.anchor->members.size(), " member(s)",
                       base.anchor->duo ? " and a DuoNet" : "", "; base_model ", config.base_model(), " has ",
                       base.checkpoint.members.size(), base.checkpoint.duo ? " and a DuoNet" : ""));
    }
    LOG(INFO) << "proximal term (mu " << config.proximal_mu() << ") toward " << proximal_anchor;
  }
  return base;
}

// The manifest entries of the training and validation splits.
struct SplitEntries {
  std::vector<size_t> train;
  std::vector<size_t> validation;
};

// Writes the three split manifests, counts them into `result`, and returns the training and validation entries.
// FailedPrecondition when either is empty.
absl::StatusOr<SplitEntries> WriteSplits(const v1::FinetuneConfig& config, const SiteData& site,
                                         FinetuneResult* result) {
  const fs::path splits = fs::path(config.out_dir()) / "splits";
  for (data::Split split : {data::Split::kTrain, data::Split::kValidation, data::Split::kTest}) {
    const char* name = split == data::Split::kTrain        ? "train"
                       : split == data::Split::kValidation ? "validation"
                                                           : "test";
    RETURN_IF_ERROR(WriteSplitManifest(site, split, (splits / absl::StrCat(name, ".csv")).string()));
  }
  SplitEntries entries{site.split.EntriesIn(data::Split::kTrain), site.split.EntriesIn(data::Split::kValidation)};
  result->train_images = static_cast<int64_t>(entries.train.size());
  result->validation_images = static_cast<int64_t>(entries.validation.size());
  result->test_images = static_cast<int64_t>(site.split.EntriesIn(data::Split::kTest).size());
  result->test_manifest = (splits / "test.csv").string();
  if (entries.train.empty() || entries.validation.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("the split of ", config.manifest(), " left ",
                                                      entries.train.size(), " training and ", entries.validation.size(),
                                                      " validation images: too few patients for these ratios"));
  }
  return entries;
}

// What the networks train on: the label policy, the positive weights of the training split, the loader options
// (preprocessing of the base checkpoint, shared image cache) and the single-image loaders.
struct TrainingData {
  data::LabelPolicy policy;
  torch::Tensor pos_weight;
  std::unique_ptr<imaging::ImageCache> cache;  // Before the loaders, which use it: destroyed after them.
  loader::LoaderOptions loader;
  std::unique_ptr<loader::BatchLoader> train;
  std::unique_ptr<loader::BatchLoader> validation;
};

// Creates a training loader (shuffled, augmented as configured) or a validation loader (neither).
absl::StatusOr<std::unique_ptr<loader::BatchLoader>> MakeLoader(const v1::FinetuneConfig& config,
                                                                loader::LoaderOptions options,
                                                                std::vector<loader::LoaderSample> samples,
                                                                bool training) {
  options.shuffle = training;
  options.augment = training && config.augment();
  return loader::BatchLoader::Create(std::move(samples), options);
}

absl::StatusOr<TrainingData> MakeTrainingData(const v1::FinetuneConfig& config, const SiteData& site,
                                              const SplitEntries& entries, const model::CheckpointMetadata& metadata,
                                              int raster_bits_stored) {
  TrainingData d;
  ASSIGN_OR_RETURN(d.policy, LabelPolicyFrom(config.labels()));
  const data::PositiveWeights weights =
      data::ComputePositiveWeights(data::TargetsForEntries(site.manifest, entries.train, d.policy));
  LOG(INFO) << "positive weights (training split):\n" << data::FormatPositiveWeights(weights);
  d.pos_weight = torch::empty({data::kNumChexpertLabels}, torch::kFloat32);
  for (int l = 0; l < data::kNumChexpertLabels; ++l) d.pos_weight[l] = static_cast<float>(weights.weight[l]);
  if (config.dp_noise_multiplier() > 0) {
    // The weights are counts of the training labels: under DP-SGD they would reach the model without noise.
    LOG(INFO) << "DP-SGD: positive weights of 1 (the training split's label counts are private)";
    d.pos_weight = torch::Tensor();
  }

  model::InputOptions input;
  input.image_size = config.image_size();
  input.crop_borders = config.crop_borders();
  input.max_image_pixels = config.max_image_pixels();
  input.raster_bits_stored = raster_bits_stored;
  d.loader.batch_size = config.batch_size();
  d.loader.num_threads = config.loader_threads();
  d.loader.seed = config.seed();
  d.loader.on_error = config.on_image_error() == "skip" ? loader::ErrorPolicy::kSkip : loader::ErrorPolicy::kFail;
  d.loader.preprocess = model::PreprocessFor(metadata, input);
  ASSIGN_OR_RETURN(d.cache, imaging::ImageCache::Open(config.cache_dir(), d.loader.preprocess));
  d.loader.cache = d.cache.get();
  ASSIGN_OR_RETURN(d.train,
                   MakeLoader(config, d.loader,
                              loader::SamplesFromManifest(site.manifest, config.data_root(), entries.train, d.policy),
                              /*training=*/true));
  ASSIGN_OR_RETURN(d.validation, MakeLoader(config, d.loader,
                                            loader::SamplesFromManifest(site.manifest, config.data_root(),
                                                                        entries.validation, d.policy),
                                            /*training=*/false));
  return d;
}

// The trainer's options for one network; without config.resume its earlier state file is removed.
TrainerOptions TrainerOptionsFor(const v1::FinetuneConfig& config, const std::string& name,
                                 const std::string& state_file, uint64_t seed_offset) {
  TrainerOptions options;
  options.learning_rate = config.learning_rate();
  options.momentum = config.momentum();
  options.weight_decay = config.weight_decay();
  options.proximal_mu = config.proximal_mu();
  options.max_epochs = config.max_epochs();
  options.patience = config.patience();
  options.device = config.device();
  options.mixed_precision = config.mixed_precision();
  options.seed = config.seed() + seed_offset;
  options.dp_noise_multiplier = config.dp_noise_multiplier();
  options.dp_clip_norm = config.dp_clip_norm();
  options.name = name;
  options.state_path = (fs::path(config.out_dir()) / "state" / state_file).string();
  if (!config.resume()) fs::remove(options.state_path);
  return options;
}

void LogResult(const TrainerOptions& options, const TrainResult& r) {
  LOG(INFO) << options.name << ": best validation BCE " << r.best_validation_loss << " at epoch " << r.best_epoch + 1
            << " of " << r.history.size() << (r.stopped_early ? " (stopped early)" : "");
  if (r.dp.enabled) {
    LOG(INFO) << options.name << ": " << r.dp.steps << " DP-SGD steps at sample rate " << r.dp.sample_rate
              << ", noise multiplier " << r.dp.noise_multiplier;
  }
}

// Fine-tunes every SoloNet member in turn (each left on the CPU) into result->members.
absl::Status TrainMembers(const v1::FinetuneConfig& config, BaseModel& base, TrainingData& data,
                          absl::Span<FinetuneObserver* const> observers, FinetuneResult* result) {
  const std::vector<model::Classifier>& members = base.ensemble.solo->members();
  for (size_t i = 0; i < members.size(); ++i) {
    const std::string name =
        absl::StrCat("member", i, "-", model::ArchitectureName(base.checkpoint.members[i].config.arch));
    TrainerOptions options = TrainerOptionsFor(config, name, absl::StrCat("member", i, ".pt"), i);
    if (base.anchor) options.proximal_anchor = base.anchor->members[i].weights;
    NetworkObserver observer(options.name, observers);
    ASSIGN_OR_RETURN(TrainResult member,
                     Fit(members[i], *data.train, *data.validation, data.pos_weight, options, &observer));
    members[i]->to(torch::kCPU);
    LogResult(options, member);
    result->dp_member_steps += member.dp.steps;
    result->members.push_back(std::move(member));
  }
  return absl::OkStatus();
}

// Fine-tunes the DuoNet on the studies with both views into result->duo, or leaves it unchanged (logged) when a
// split has none.
absl::Status TrainDuo(const v1::FinetuneConfig& config, const SiteData& site, const SplitEntries& entries,
                      BaseModel& base, const TrainingData& data, absl::Span<FinetuneObserver* const> observers,
                      FinetuneResult* result) {
  std::vector<loader::LoaderSample> train_pairs =
      loader::PairedSamplesFromManifest(site.manifest, config.data_root(), entries.train, data.policy);
  std::vector<loader::LoaderSample> validation_pairs =
      loader::PairedSamplesFromManifest(site.manifest, config.data_root(), entries.validation, data.policy);
  if (train_pairs.empty() || validation_pairs.empty()) {
    LOG(WARNING) << "DuoNet not fine-tuned: " << train_pairs.size() << " training and " << validation_pairs.size()
                 << " validation studies have both a frontal and a lateral image; it is carried over unchanged";
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(std::unique_ptr<loader::BatchLoader> duo_train,
                   MakeLoader(config, data.loader, std::move(train_pairs), /*training=*/true));
  ASSIGN_OR_RETURN(std::unique_ptr<loader::BatchLoader> duo_validation,
                   MakeLoader(config, data.loader, std::move(validation_pairs), /*training=*/false));
  TrainerOptions options = TrainerOptionsFor(config, "duonet", "duo.pt", base.ensemble.solo->members().size());
  if (base.anchor) options.proximal_anchor = base.anchor->duo->weights;
  NetworkObserver observer(options.name, observers);
  ASSIGN_OR_RETURN(TrainResult duo,
                   FitDuo(base.ensemble.duo, *duo_train, *duo_validation, data.pos_weight, options, &observer));
  base.ensemble.duo->to(torch::kCPU);
  LogResult(options, duo);
  result->duo = std::move(duo);
  return absl::OkStatus();
}

// Writes <out_dir>/model.ckpt with the base's metadata, the training's image size and the provenance of this
// fine-tuning; fills result's checkpoint path and digests.
absl::Status WriteTuned(const v1::FinetuneConfig& config, const BaseModel& base, const TrainingData& data,
                        FinetuneResult* result) {
  int total_epochs = 0;
  for (const TrainResult& member : result->members) total_epochs += static_cast<int>(member.history.size());
  model::CheckpointMetadata metadata = base.checkpoint.metadata;
  metadata.image_size = data.loader.preprocess.size;
  metadata.provenance.parent_digest = base.checkpoint.weights_sha256;
  metadata.provenance.source = absl::StrCat("fedtune-site finetune ", config.manifest());
  nlohmann::json summary = {{"manifest", config.manifest()},
                            {"train_images", result->train_images},
                            {"validation_images", result->validation_images},
                            {"test_images", result->test_images},
                            {"split_seed", config.split().seed()},
                            {"label_policy", data::DescribeLabelPolicy(data.policy)}};
  metadata.provenance.data_summary = summary.dump();
  metadata.provenance.epochs = base.checkpoint.metadata.provenance.epochs + total_epochs;
  metadata.provenance.created_at = absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone());
  model::Checkpoint tuned = model::CheckpointFromEnsemble(base.ensemble, metadata);
  result->checkpoint_path = (fs::path(config.out_dir()) / "model.ckpt").string();
  ASSIGN_OR_RETURN(result->weights_sha256, model::SaveCheckpoint(&tuned, result->checkpoint_path));
  result->parent_sha256 = base.checkpoint.weights_sha256;
  return absl::OkStatus();
}

}  // namespace

std::vector<DpSgdPhase> DpSgdPhases(const FinetuneResult& result) {
  std::vector<DpSgdPhase> out;
  auto add = [&out](const std::string& network, const TrainResult& r) {
    if (!r.dp.enabled || r.dp.steps == 0) return;
    out.push_back(DpSgdPhase{network, r.dp.sample_rate, r.dp.noise_multiplier, r.dp.steps});
  };
  for (size_t i = 0; i < result.members.size(); ++i) add(absl::StrCat("member", i), result.members[i]);
  if (result.duo) add("duonet", *result.duo);
  return out;
}

absl::StatusOr<FinetuneResult> RunFinetune(const v1::FinetuneConfig& config,
                                           absl::Span<FinetuneObserver* const> observers,
                                           const std::string& proximal_anchor) {
  RETURN_IF_ERROR(ValidateFinetuneConfig(config));
  const fs::path out_dir(config.out_dir());
  RETURN_IF_ERROR(io::MakeDirectories((out_dir / "splits").string()));
  RETURN_IF_ERROR(io::MakeDirectories((out_dir / "state").string()));
  ASSIGN_OR_RETURN(BaseModel base, LoadBase(config, proximal_anchor));
  ASSIGN_OR_RETURN(SiteData site, LoadSiteData(config));
  LOG(INFO) << "split of " << config.manifest() << ":\n"
            << data::FormatSplitReport(data::SummarizeSplit(site.manifest, site.split));

  FinetuneResult result;
  ASSIGN_OR_RETURN(SplitEntries entries, WriteSplits(config, site, &result));
  // Once, over the whole manifest (not a split), so that evaluating the same site's images resolves the same value.
  ASSIGN_OR_RETURN(result.raster_bits_stored, RasterBitsStoredFor(config, site.manifest));
  if (result.raster_bits_stored != 0) {
    LOG(INFO) << "16-bit PNG/TIFF samples decoded as " << result.raster_bits_stored << " bits stored (scale 1/"
              << (1 << result.raster_bits_stored) - 1 << ")";
  }
  ASSIGN_OR_RETURN(TrainingData data,
                   MakeTrainingData(config, site, entries, base.checkpoint.metadata, result.raster_bits_stored));
  for (FinetuneObserver* o : observers) RETURN_IF_ERROR(o->OnStart(base.checkpoint.weights_sha256));
  RETURN_IF_ERROR(TrainMembers(config, base, data, observers, &result));
  if (base.ensemble.duo) RETURN_IF_ERROR(TrainDuo(config, site, entries, base, data, observers, &result));
  RETURN_IF_ERROR(WriteTuned(config, base, data, &result));
  for (FinetuneObserver* o : observers) RETURN_IF_ERROR(o->OnFinish(result));
  return result;
}

}  // namespace fedtune::train
