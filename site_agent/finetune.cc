#include "site_agent/finetune.h"

#include <google/protobuf/text_format.h>
#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/data/class_weights.h"
#include "common/data/label_policy.h"
#include "common/data/manifest.h"
#include "common/data/stratified_split.h"
#include "common/imaging/cache.h"
#include "common/io/csv.h"
#include "common/io/file_util.h"
#include "common/loader/batch_loader.h"
#include "common/logging.h"
#include "common/model/checkpoint.h"
#include "common/model/ensemble.h"
#include "common/status_macros.h"
#include "site_agent/finetune_config.h"
#include "site_agent/predict.h"
#include "site_agent/site_database.h"

namespace fedtune::agent {
namespace {

// Writes the rows of `table` whose line is in `lines`, with its header, as a CSV (atomically).
absl::Status WriteSubset(const io::CsvTable& table, const std::set<int64_t>& lines, const std::string& path) {
  std::string out;
  for (size_t i = 0; i < table.header.size(); ++i) absl::StrAppend(&out, i ? "," : "", io::CsvEscape(table.header[i]));
  out += "\n";
  for (const io::CsvRecord& row : table.rows) {
    if (!lines.count(row.line)) continue;
    for (size_t i = 0; i < row.fields.size(); ++i) absl::StrAppend(&out, i ? "," : "", io::CsvEscape(row.fields[i]));
    out += "\n";
  }
  return io::WriteFileAtomically(path, out);
}

absl::StatusOr<data::LabelPolicy> PolicyFrom(const v1::LabelPolicyConfig& c) {
  data::LabelPolicy p;
  ASSIGN_OR_RETURN(p.uncertain, data::ParseUncertainPolicy(c.uncertain()));
  ASSIGN_OR_RETURN(p.blank, data::ParseBlankPolicy(c.blank()));
  p.soft_low = c.soft_low();
  p.soft_high = c.soft_high();
  p.seed = c.seed();
  p.hierarchy_correction = c.hierarchy();
  RETURN_IF_ERROR(data::ValidateLabelPolicy(p));
  return p;
}

std::string MemberName(const model::MemberWeights& m, size_t index) {
  return absl::StrCat("member", index, "-", model::ArchitectureName(m.config.arch));
}

}  // namespace

absl::StatusOr<FinetuneResult> RunFinetune(const v1::FinetuneConfig& config) {
  RETURN_IF_ERROR(ValidateFinetuneConfig(config));
  const int threads = config.threads() > 0 ? config.threads() : static_cast<int>(std::thread::hardware_concurrency());
  torch::set_num_threads(std::max(1, threads));
  const std::filesystem::path out_dir(config.out_dir());
  RETURN_IF_ERROR(io::MakeDirectories((out_dir / "splits").string()));
  RETURN_IF_ERROR(io::MakeDirectories((out_dir / "state").string()));

  ASSIGN_OR_RETURN(model::Checkpoint base, model::LoadCheckpoint(config.base_model()));
  if (config.has_dropout()) {
    for (model::MemberWeights& m : base.members) m.config.head_dropout = config.dropout();
  }
  ASSIGN_OR_RETURN(model::Ensemble ensemble, model::EnsembleFromCheckpoint(base));

  ASSIGN_OR_RETURN(io::CsvTable table, io::ReadCsvFile(config.manifest()));
  ASSIGN_OR_RETURN(data::Manifest manifest, data::Manifest::FromTable(table));
  data::SplitOptions split_options;
  split_options.train = config.split().train();
  split_options.validation = config.split().validation();
  split_options.test = config.split().test();
  split_options.seed = config.split().seed();
  split_options.method =
      config.split().method() == "random" ? data::SplitMethod::kRandom : data::SplitMethod::kIterative;
  ASSIGN_OR_RETURN(data::DatasetSplit split, data::SplitByPatient(manifest, split_options));
  LOG(INFO) << "split of " << config.manifest() << ":\n"
            << data::FormatSplitReport(data::SummarizeSplit(manifest, split));

  FinetuneResult result;
  const std::vector<size_t> train_entries = split.EntriesIn(data::Split::kTrain);
  const std::vector<size_t> validation_entries = split.EntriesIn(data::Split::kValidation);
  const std::vector<size_t> test_entries = split.EntriesIn(data::Split::kTest);
  result.train_images = static_cast<int64_t>(train_entries.size());
  result.validation_images = static_cast<int64_t>(validation_entries.size());
  result.test_images = static_cast<int64_t>(test_entries.size());
  const char* split_names[3] = {"train", "validation", "test"};
  const std::vector<size_t>* split_entries[3] = {&train_entries, &validation_entries, &test_entries};
  for (int s = 0; s < 3; ++s) {
    std::set<int64_t> lines;
    for (size_t e : *split_entries[s]) lines.insert(manifest.entries()[e].line);
    RETURN_IF_ERROR(WriteSubset(table, lines, (out_dir / "splits" / absl::StrCat(split_names[s], ".csv")).string()));
  }
  result.test_manifest = (out_dir / "splits" / "test.csv").string();
  if (train_entries.empty() || validation_entries.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("the split of ", config.manifest(), " left ",
                                                      train_entries.size(), " training and ", validation_entries.size(),
                                                      " validation images: too few patients for these ratios"));
  }

  ASSIGN_OR_RETURN(data::LabelPolicy policy, PolicyFrom(config.labels()));
  const data::PositiveWeights weights =
      data::ComputePositiveWeights(data::TargetsForEntries(manifest, train_entries, policy));
  LOG(INFO) << "positive weights (training split):\n" << data::FormatPositiveWeights(weights);
  torch::Tensor pos_weight = torch::empty({data::kNumChexpertLabels}, torch::kFloat32);
  for (int l = 0; l < data::kNumChexpertLabels; ++l) pos_weight[l] = static_cast<float>(weights.weight[l]);

  PredictOptions predict_options;
  predict_options.image_size = config.image_size();
  predict_options.crop_borders = config.crop_borders();
  predict_options.max_image_pixels = config.max_image_pixels();
  loader::LoaderOptions lo;
  lo.batch_size = config.batch_size();
  lo.num_threads = config.loader_threads();
  lo.seed = config.seed();
  lo.on_error = config.on_image_error() == "skip" ? loader::ErrorPolicy::kSkip : loader::ErrorPolicy::kFail;
  lo.preprocess = PreprocessFor(base.metadata, predict_options);
  ASSIGN_OR_RETURN(std::unique_ptr<imaging::ImageCache> cache,
                   imaging::ImageCache::Open(config.cache_dir(), lo.preprocess));
  lo.cache = cache.get();
  lo.shuffle = true;
  lo.augment = config.augment();
  ASSIGN_OR_RETURN(std::unique_ptr<loader::BatchLoader> train_loader,
                   loader::BatchLoader::Create(
                       loader::SamplesFromManifest(manifest, config.data_root(), train_entries, policy), lo));
  lo.shuffle = false;
  lo.augment = false;
  ASSIGN_OR_RETURN(std::unique_ptr<loader::BatchLoader> validation_loader,
                   loader::BatchLoader::Create(
                       loader::SamplesFromManifest(manifest, config.data_root(), validation_entries, policy), lo));

  std::string config_text;
  google::protobuf::TextFormat::PrintToString(config, &config_text);
  ASSIGN_OR_RETURN(std::unique_ptr<store::Database> db, OpenSiteDatabase((out_dir / "site.db").string()));
  ASSIGN_OR_RETURN(int64_t run_id, BeginFinetuneRun(*db, absl::StrCat(base.weights_sha256, "|", config_text),
                                                    base.weights_sha256, config_text));

  auto trainer_options = [&](const std::string& name, const std::string& state_file, uint64_t seed_offset) {
    train::TrainerOptions options;
    options.learning_rate = config.learning_rate();
    options.momentum = config.momentum();
    options.weight_decay = config.weight_decay();
    options.proximal_mu = config.proximal_mu();
    options.max_epochs = config.max_epochs();
    options.patience = config.patience();
    options.device = config.device();
    options.mixed_precision = config.mixed_precision();
    options.seed = config.seed() + seed_offset;
    options.name = name;
    options.state_path = (out_dir / "state" / state_file).string();
    if (!config.resume()) std::filesystem::remove(options.state_path);
    return options;
  };
  auto log_result = [](const train::TrainerOptions& options, const train::TrainResult& r) {
    LOG(INFO) << options.name << ": best validation BCE " << r.best_validation_loss << " at epoch " << r.best_epoch + 1
              << " of " << r.history.size() << (r.stopped_early ? " (stopped early)" : "");
  };
  int total_epochs = 0;
  for (size_t i = 0; i < ensemble.solo->members().size(); ++i) {
    const train::TrainerOptions options =
        trainer_options(MemberName(base.members[i], i), absl::StrCat("member", i, ".pt"), i);
    EpochRecorder recorder(db.get(), run_id, options.name);
    ASSIGN_OR_RETURN(train::TrainResult member_result, train::Fit(ensemble.solo->members()[i], *train_loader,
                                                                  *validation_loader, pos_weight, options, &recorder));
    ensemble.solo->members()[i]->to(torch::kCPU);
    log_result(options, member_result);
    total_epochs += static_cast<int>(member_result.history.size());
    result.members.push_back(std::move(member_result));
  }

  // The DuoNet learns from the studies that have both views.
  if (ensemble.duo) {
    std::vector<loader::LoaderSample> train_pairs =
        loader::PairedSamplesFromManifest(manifest, config.data_root(), train_entries, policy);
    std::vector<loader::LoaderSample> validation_pairs =
        loader::PairedSamplesFromManifest(manifest, config.data_root(), validation_entries, policy);
    if (train_pairs.empty() || validation_pairs.empty()) {
      LOG(WARNING) << "DuoNet not fine-tuned: " << train_pairs.size() << " training and " << validation_pairs.size()
                   << " validation studies have both a frontal and a lateral image; it is carried over unchanged";
    } else {
      lo.shuffle = true;
      lo.augment = config.augment();
      ASSIGN_OR_RETURN(std::unique_ptr<loader::BatchLoader> duo_train,
                       loader::BatchLoader::Create(std::move(train_pairs), lo));
      lo.shuffle = false;
      lo.augment = false;
      ASSIGN_OR_RETURN(std::unique_ptr<loader::BatchLoader> duo_validation,
                       loader::BatchLoader::Create(std::move(validation_pairs), lo));
      const train::TrainerOptions options = trainer_options("duonet", "duo.pt", ensemble.solo->members().size());
      EpochRecorder recorder(db.get(), run_id, options.name);
      ASSIGN_OR_RETURN(train::TrainResult duo_result,
                       train::FitDuo(ensemble.duo, *duo_train, *duo_validation, pos_weight, options, &recorder));
      ensemble.duo->to(torch::kCPU);
      log_result(options, duo_result);
      result.duo = std::move(duo_result);
    }
  }

  model::CheckpointMetadata metadata = base.metadata;
  metadata.image_size = lo.preprocess.size;
  metadata.provenance.parent_digest = base.weights_sha256;
  metadata.provenance.source = absl::StrCat("fedtune-site finetune ", config.manifest());
  nlohmann::json summary = {{"manifest", config.manifest()},
                            {"train_images", result.train_images},
                            {"validation_images", result.validation_images},
                            {"test_images", result.test_images},
                            {"split_seed", config.split().seed()},
                            {"label_policy", data::DescribeLabelPolicy(policy)}};
  metadata.provenance.data_summary = summary.dump();
  metadata.provenance.epochs = base.metadata.provenance.epochs + total_epochs;
  metadata.provenance.created_at = absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone());
  model::Checkpoint tuned = model::CheckpointFromEnsemble(ensemble, metadata);
  result.checkpoint_path = (out_dir / "model.ckpt").string();
  ASSIGN_OR_RETURN(result.weights_sha256, model::SaveCheckpoint(&tuned, result.checkpoint_path));
  result.parent_sha256 = base.weights_sha256;
  RETURN_IF_ERROR(FinishFinetuneRun(*db, run_id, result.weights_sha256));
  return result;
}

namespace {

absl::Status RunFinetuneCommand(const cli::ParsedFlags& flags) {
  ASSIGN_OR_RETURN(v1::FinetuneConfig config, LoadFinetuneConfig(flags.GetOrDie("config")));
  if (std::optional<std::string> device = flags.Get("device")) config.set_device(*device);
  ASSIGN_OR_RETURN(int64_t max_epochs, flags.GetInt("max-epochs", config.max_epochs()));
  config.set_max_epochs(static_cast<int>(max_epochs));
  ASSIGN_OR_RETURN(FinetuneResult result, RunFinetune(config));
  std::printf("fine-tuned model: %s (sha256 %s, parent %s)\ntest split for evaluation: %s\n",
              result.checkpoint_path.c_str(), result.weights_sha256.c_str(), result.parent_sha256.c_str(),
              result.test_manifest.c_str());
  return absl::OkStatus();
}

}  // namespace

cli::Command MakeFinetuneCommand() {
  cli::Command c;
  c.path = {"finetune"};
  c.summary = "fine-tune a checkpoint on this site's data (study recipe; resumable) and write the adapted model";
  c.flags = {
      {"config", "text-format fedtune.v1.FinetuneConfig (see docs/config-reference.md)", false, true, std::nullopt,
       "F.textproto"},
      {"device", "override the config's device: auto, cpu, cuda, cuda:N", false, false, std::nullopt, "D"},
      {"max-epochs", "override the config's max_epochs", false, false, std::nullopt, "N"},
  };
  c.run = RunFinetuneCommand;
  return c;
}

}  // namespace fedtune::agent
