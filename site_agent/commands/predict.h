// Running a checkpoint's ensemble over images: per-image probabilities (sigmoid, mean over the SoloNet's members),
// preprocessed exactly as for training. Used by `fedtune-site predict` and `fedtune-site evaluate`.
#ifndef FEDTUNE_SITE_AGENT_COMMANDS_PREDICT_H_
#define FEDTUNE_SITE_AGENT_COMMANDS_PREDICT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/cli/command.h"
#include "common/data/manifest.h"
#include "common/loader/batch_loader.h"
#include "common/model/checkpoint.h"
#include "common/model/ensemble.h"
#include "common/model/model_input.h"

namespace fedtune::agent {

struct PredictOptions {
  model::InputOptions input;  // Image size, border cropping and decoding limit, as in training.
  int batch_size = 32;
  int loader_threads = 2;
  std::string device = "auto";  // See train::ResolveDevice.
  loader::ErrorPolicy on_error = loader::ErrorPolicy::kFail;
};

struct ImagePredictions {
  std::vector<std::string> labels;                 // Output names (the checkpoint's).
  std::vector<std::string> ids;                    // Sample ids in input order (skipped images left out).
  std::vector<std::vector<double>> probabilities;  // [ids.size()][labels.size()].
  int64_t skipped = 0;
};

// Predicts every sample (eval mode, no gradients). Errors: the loader's (unreadable image under kFail), device
// errors (train::ResolveDevice), Internal for LibTorch failures.
absl::StatusOr<ImagePredictions> PredictImages(model::Ensemble& ensemble, const model::CheckpointMetadata& metadata,
                                               const std::vector<loader::LoaderSample>& samples,
                                               const PredictOptions& options);

// Study-level probabilities, as the study predicted: the DuoNet on every (frontal, lateral) pair when the checkpoint
// has one and the study has both views, the SoloNet averaged over the study's images otherwise (model::PredictStudy).
// ids are study ids ("<patient>/<study>"), in manifest order; `representative` receives, per id, the index of the
// study's first frontal image (or first image) in manifest.entries(). An unreadable image fails the call or, with
// ErrorPolicy::kSkip, leaves it out of its study (a study left without images is skipped and counted).
absl::StatusOr<ImagePredictions> PredictStudies(model::Ensemble& ensemble, const model::CheckpointMetadata& metadata,
                                                const data::Manifest& manifest, const std::string& data_root,
                                                const PredictOptions& options, std::vector<size_t>* representative);

// Writes `Path,<label>,...` rows (CheXpert-shaped, usable as a scores file of `fedtune stats compare`), atomically.
absl::Status WritePredictionsCsv(const std::string& path, const ImagePredictions& predictions);

// fedtune-site predict --model M.ckpt --manifest M.csv --root DIR --out preds.csv [--image-size N] [--device D]
//   [--batch-size B] [--threads T] [--skip-unreadable] [--level image|study]
cli::Command MakePredictCommand();

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_COMMANDS_PREDICT_H_
