#include "site_agent/commands/predict.h"

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/data/manifest.h"
#include "common/imaging/preprocess.h"
#include "common/imaging/raster_bits.h"
#include "common/io/csv.h"
#include "common/io/file_util.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/train/site_data.h"
#include "common/train/trainer.h"

namespace fedtune::agent {

absl::StatusOr<ImagePredictions> PredictImages(model::Ensemble& ensemble, const model::CheckpointMetadata& metadata,
                                               const std::vector<loader::LoaderSample>& samples,
                                               const PredictOptions& options) {
  ASSIGN_OR_RETURN(c10::Device device, train::ResolveDevice(options.device));
  loader::LoaderOptions lo;
  lo.batch_size = options.batch_size;
  lo.num_threads = options.loader_threads;
  lo.shuffle = false;
  lo.augment = false;
  lo.on_error = options.on_error;
  lo.preprocess = model::PreprocessFor(metadata, options.input);
  ASSIGN_OR_RETURN(std::unique_ptr<loader::BatchLoader> data, loader::BatchLoader::Create(samples, lo));
  ImagePredictions out;
  out.labels = metadata.labels;
  try {
    torch::NoGradGuard no_grad;
    ensemble.solo->to(device);
    ensemble.solo->eval();
    data->StartEpoch(0);
    while (true) {
      ASSIGN_OR_RETURN(std::optional<loader::Batch> batch, data->Next());
      if (!batch) break;
      torch::Tensor probs = ensemble.solo->forward(batch->images.to(device)).to(torch::kCPU, torch::kFloat64);
      if (probs.size(1) != static_cast<int64_t>(out.labels.size())) {
        return absl::InvalidArgumentError(absl::StrCat(
            "the model has ", probs.size(1), " outputs but its metadata names ", out.labels.size(), " labels"));
      }
      auto acc = probs.accessor<double, 2>();
      for (int64_t i = 0; i < probs.size(0); ++i) {
        out.ids.push_back(batch->ids[i]);
        std::vector<double> row(probs.size(1));
        for (int64_t l = 0; l < probs.size(1); ++l) row[l] = acc[i][l];
        out.probabilities.push_back(std::move(row));
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("prediction failed: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {  // oneDNN and other backends throw their own types.
    return absl::InternalError(absl::StrCat("prediction failed: ", e.what()));
  }
  out.skipped = data->stats().skipped;
  return out;
}

absl::StatusOr<ImagePredictions> PredictStudies(model::Ensemble& ensemble, const model::CheckpointMetadata& metadata,
                                                const data::Manifest& manifest, const std::string& data_root,
                                                const PredictOptions& options, std::vector<size_t>* representative) {
  ASSIGN_OR_RETURN(c10::Device device, train::ResolveDevice(options.device));
  const imaging::PreprocessOptions preprocess = model::PreprocessFor(metadata, options.input);
  ImagePredictions out;
  out.labels = metadata.labels;
  representative->clear();
  // Loads a view's images as one [K, 1, N, N] tensor (K = 0 leaves it undefined).
  auto load = [&](const std::vector<size_t>& entries) -> absl::StatusOr<torch::Tensor> {
    std::vector<torch::Tensor> images;
    for (size_t e : entries) {
      const std::string& path = manifest.entries()[e].path;
      const std::string file = data::ResolveImagePath(data_root, path);
      absl::StatusOr<imaging::PreprocessedImage> image = imaging::LoadAndPreprocess(file, preprocess);
      if (!image.ok()) {
        absl::Status named(image.status().code(), absl::StrCat("image '", path, "': ", image.status().message()));
        if (options.on_error == loader::ErrorPolicy::kFail) return named;
        LOG(WARNING) << "skipping " << named;
        ++out.skipped;
        continue;
      }
      imaging::Normalize(preprocess, &image->pixels);
      images.push_back(
          torch::from_blob(image->pixels.data(), {1, 1, preprocess.size, preprocess.size}, torch::kFloat32).clone());
    }
    return images.empty() ? torch::Tensor() : torch::cat(images, 0);
  };
  try {
    ensemble.solo->to(device);
    if (ensemble.duo) ensemble.duo->to(device);
    for (const data::Study& study : manifest.studies()) {
      model::StudyImages views;
      ASSIGN_OR_RETURN(views.frontal, load(study.frontal));
      ASSIGN_OR_RETURN(views.lateral, load(study.lateral));
      if (!views.frontal.defined() && !views.lateral.defined()) continue;  // Every image skipped.
      ASSIGN_OR_RETURN(torch::Tensor probs, model::PredictStudy(ensemble, views));
      probs = probs.to(torch::kCPU, torch::kFloat64);
      std::vector<double> row(probs.size(0));
      for (int64_t l = 0; l < probs.size(0); ++l) row[l] = probs[l].item<double>();
      out.ids.push_back(study.study_id);
      out.probabilities.push_back(std::move(row));
      representative->push_back(study.frontal.empty() ? study.lateral.front() : study.frontal.front());
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("study prediction failed: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("study prediction failed: ", e.what()));
  }
  return out;
}

absl::Status WritePredictionsCsv(const std::string& path, const ImagePredictions& p) {
  std::string text = "Path";
  for (const std::string& label : p.labels) absl::StrAppend(&text, ",", io::CsvEscape(label));
  text += "\n";
  for (size_t i = 0; i < p.ids.size(); ++i) {
    absl::StrAppend(&text, io::CsvEscape(p.ids[i]));
    for (double v : p.probabilities[i]) absl::StrAppendFormat(&text, ",%.9g", v);
    text += "\n";
  }
  return io::WriteFileAtomically(path, text);
}

namespace {

absl::Status RunPredict(const cli::ParsedFlags& flags) {
  ASSIGN_OR_RETURN(model::Checkpoint checkpoint, model::LoadCheckpoint(flags.GetOrDie("model")));
  ASSIGN_OR_RETURN(model::Ensemble ensemble, model::EnsembleFromCheckpoint(checkpoint));
  ASSIGN_OR_RETURN(data::Manifest manifest, data::Manifest::ReadCsv(flags.GetOrDie("manifest")));
  PredictOptions options;
  ASSIGN_OR_RETURN(int64_t size, flags.GetInt("image-size", 0));
  ASSIGN_OR_RETURN(int64_t batch, flags.GetInt("batch-size", 32));
  ASSIGN_OR_RETURN(int64_t threads, flags.GetInt("threads", 0));
  options.input.image_size = static_cast<int>(size);
  ASSIGN_OR_RETURN(const int raster_bits, imaging::ParseRasterBitsStoredFlag(flags.GetOrDie("raster-bits-stored")));
  ASSIGN_OR_RETURN(options.input.raster_bits_stored,
                   train::ResolveRasterBitsStoredOver(raster_bits, manifest, flags.GetOrDie("root"),
                                                      options.input.max_image_pixels));
  options.batch_size = static_cast<int>(batch);
  options.device = flags.GetOrDie("device");
  options.on_error = flags.GetBool("skip-unreadable") ? loader::ErrorPolicy::kSkip : loader::ErrorPolicy::kFail;
  if (threads > 0) torch::set_num_threads(static_cast<int>(threads));
  const std::string level = flags.GetOrDie("level");
  ImagePredictions predictions;
  if (level == "study") {
    std::vector<size_t> representative;
    ASSIGN_OR_RETURN(predictions, PredictStudies(ensemble, checkpoint.metadata, manifest, flags.GetOrDie("root"),
                                                 options, &representative));
  } else if (level == "image") {
    std::vector<size_t> all(manifest.entries().size());
    for (size_t i = 0; i < all.size(); ++i) all[i] = i;
    std::vector<loader::LoaderSample> samples =
        loader::SamplesFromManifest(manifest, flags.GetOrDie("root"), all, data::LabelPolicy{});
    ASSIGN_OR_RETURN(predictions, PredictImages(ensemble, checkpoint.metadata, samples, options));
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--level must be image or study, got '", level, "'"));
  }
  RETURN_IF_ERROR(WritePredictionsCsv(flags.GetOrDie("out"), predictions));
  LOG(INFO) << "wrote " << predictions.ids.size() << " predictions to " << flags.GetOrDie("out")
            << (predictions.skipped > 0 ? absl::StrCat(" (", predictions.skipped, " unreadable images skipped)") : "");
  return absl::OkStatus();
}

}  // namespace

cli::Command MakePredictCommand() {
  cli::Command c;
  c.path = {"predict"};
  c.summary =
      "per-image probabilities of a model on a manifest, as a CheXpert-shaped CSV (a stats compare scores file)";
  c.flags = {
      {"model", "checkpoint (.ckpt)", false, true, std::nullopt, "M.ckpt"},
      {"manifest", "CheXpert-format CSV of the images", false, true, std::nullopt, "M.csv"},
      {"root", "directory the manifest's paths are relative to", false, true, std::nullopt, "DIR"},
      {"out", "where to write the predictions CSV", false, true, std::nullopt, "preds.csv"},
      {"image-size", "input side in pixels (default: the checkpoint's)", false, false, std::nullopt, "N"},
      {"batch-size", "images per forward pass", false, false, std::string("32"), "B"},
      {"device", "auto, cpu, cuda or cuda:N", false, false, std::string("auto"), "D"},
      {"threads", "LibTorch intra-op threads (default: LibTorch's)", false, false, std::nullopt, "T"},
      {"skip-unreadable", "skip unreadable images (counted) instead of failing", true},
      {"level", "image: one row per image (Path); study: one row per study (its id; DuoNet on two-view studies)", false,
       false, std::string("image"), "L"},
      {"raster-bits-stored",
       "bits stored in 16-bit PNG/TIFF samples: 0 (the container's 16), 8 to 16, or auto (estimated from the "
       "manifest's "
       "images); use what the model was trained with (FinetuneConfig.raster_bits_stored)",
       false, false, std::string("0"), "N|auto"},
  };
  c.run = RunPredict;
  return c;
}

}  // namespace fedtune::agent
