// The training/evaluation data loader: turns a list of labelled images into LibTorch batches (images B x 1 x N x N,
// normalized; soft targets B x 14; loss masks B x 14; ids), decoding and preprocessing on worker threads with a bounded
// prefetch queue. The order of images and every augmentation are functions of (seed, epoch) only, so a run is
// reproducible whatever the thread count and timing.
#ifndef FEDTUNE_COMMON_LOADER_BATCH_LOADER_H_
#define FEDTUNE_COMMON_LOADER_BATCH_LOADER_H_

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/data/chexpert_labels.h"
#include "common/data/label_policy.h"
#include "common/data/manifest.h"
#include "common/imaging/augment.h"
#include "common/imaging/cache.h"
#include "common/imaging/preprocess.h"

namespace fedtune::loader {

// One image to load, with its training targets.
struct LoaderSample {
  std::string id;    // Stable identifier (the manifest path): batch ids, augmentation seeds, error messages.
  std::string file;  // Where to read it (data root + manifest path).
  // Two-view samples (DuoNet training): the lateral image of the same study. Either every sample of a loader has one
  // or none has. Empty: single view.
  std::string lateral_file;
  std::array<float, data::kNumChexpertLabels> target{};
  std::array<float, data::kNumChexpertLabels> mask{};
};

// Two-view samples: one per study of `manifest` that has a frontal and a lateral image and whose first frontal image
// is among `frontal_entries` (indices into manifest.entries(), e.g. one split's), pairing that frontal image with the
// study's first lateral image; targets from the frontal image's labels (CheXpert labels are per study). Study order.
std::vector<LoaderSample> PairedSamplesFromManifest(const data::Manifest& manifest, const std::string& data_root,
                                                    const std::vector<size_t>& frontal_entries,
                                                    const data::LabelPolicy& policy);

// Samples for the given manifest entries (indices into manifest.entries(), in that order) with targets from `policy`.
// Files are data::ResolveImagePath(data_root, entry path), as in every other reader of a manifest.
std::vector<LoaderSample> SamplesFromManifest(const data::Manifest& manifest, const std::string& data_root,
                                              const std::vector<size_t>& entries, const data::LabelPolicy& policy);

enum class ErrorPolicy {
  kFail,  // The first unreadable image fails the run (Next() returns its error, naming the file).
  kSkip,  // Unreadable images are logged, counted (stats().skipped) and left out of their batch.
};

struct LoaderOptions {
  int batch_size = 88;       // The study's batch size. Must be >= 1.
  int num_threads = 2;       // Worker threads decoding/preprocessing. Must be >= 1.
  int prefetch_batches = 4;  // Batches prepared ahead of the consumer at most. Must be >= 1.
  bool shuffle = true;       // Permute images each epoch (seeded by seed and epoch). False keeps sample order.
  bool augment = false;      // Training only: flip/rotation per imaging::AugmentOptions.
  bool drop_last = false;    // Drop a final batch smaller than batch_size.
  uint64_t seed = 0;         // Seeds shuffling and augmentation.
  ErrorPolicy on_error = ErrorPolicy::kFail;
  imaging::PreprocessOptions preprocess;  // Size, cropping, normalization, decoding limits (decode.max_pixels).
  imaging::AugmentOptions augment_options;
  // Optional on-disk cache of preprocessed images (not owned; must outlive the loader). nullptr: decode each time.
  imaging::ImageCache* cache = nullptr;
};

struct Batch {
  at::Tensor images;   // float32 [B, 1, N, N], normalized (the frontal view of two-view samples).
  at::Tensor lateral;  // float32 [B, 1, N, N] for two-view samples; undefined otherwise.
  at::Tensor targets;  // float32 [B, 14].
  at::Tensor mask;     // float32 [B, 14]; 1 where the label enters the loss.
  std::vector<std::string> ids;
  int64_t index = 0;  // Position of the batch in its epoch.
};

struct LoaderStats {
  int64_t images_loaded = 0;
  int64_t skipped = 0;  // Unreadable images left out (kSkip).
};

// Not thread-safe for the consumer: one thread calls StartEpoch/Next. Workers are internal.
class BatchLoader {
 public:
  // InvalidArgument for bad options (named), when samples is empty, or when some samples have a lateral_file and
  // others not; the cache's settings must match options.preprocess (InvalidArgument otherwise).
  static absl::StatusOr<std::unique_ptr<BatchLoader>> Create(std::vector<LoaderSample> samples,
                                                             const LoaderOptions& options);
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  // Begins epoch `epoch` (abandoning any unfinished one): its order is a function of (seed, epoch).
  void StartEpoch(int64_t epoch);
  // Begins epoch `epoch` with the given batches instead of the loader's shuffled order and batch size (DP-SGD's
  // Poisson sampling): each a list of sample indices (< NumSamples(), any size, possibly empty), augmentation as in
  // StartEpoch(epoch). Next() returns them in order with Batch::index = the position in `batches`, passing over empty
  // ones as over batches whose images were all skipped. InvalidArgument (no epoch started) for an index out of range.
  absl::Status StartEpochWithBatches(int64_t epoch, std::vector<std::vector<size_t>> batches);
  // The next batch of the current epoch in order, or nullopt at its end. With kFail, an unreadable image's error
  // (NotFound / InvalidArgument naming the file and sample id); the epoch then ends.
  absl::StatusOr<std::optional<Batch>> Next();

  // Batches per epoch (before any images are skipped).
  int64_t NumBatches() const;
  int64_t NumSamples() const { return static_cast<int64_t>(samples_.size()); }
  // options.batch_size: DP-SGD's expected batch size.
  int batch_size() const { return options_.batch_size; }
  // True when the samples are two-view (each has a lateral_file) and batches carry `lateral`.
  bool IsTwoView() const { return !samples_.front().lateral_file.empty(); }
  LoaderStats stats() const;

 private:
  BatchLoader(std::vector<LoaderSample> samples, const LoaderOptions& options);
  void StopWorkers();
  // Starts the workers on `batches` for `epoch`.
  void StartWorkers(int64_t epoch, std::vector<std::vector<size_t>> batches);
  void WorkerLoop();
  absl::StatusOr<Batch> BuildBatch(int64_t index);
  // Decodes (or reads from the cache), augments when training and normalizes one image.
  absl::StatusOr<std::vector<float>> LoadImage(const std::string& file, const std::string& augment_key);

  const std::vector<LoaderSample> samples_;
  const LoaderOptions options_;
  std::vector<std::thread> workers_;

  // Set by StartEpoch before workers start; read-only while they run.
  int64_t epoch_ = 0;
  std::vector<std::vector<size_t>> batches_;

  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  int64_t next_to_claim_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t next_to_consume_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<int64_t, absl::StatusOr<Batch>> ready_ ABSL_GUARDED_BY(mu_);
  LoaderStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fedtune::loader

#endif  // FEDTUNE_COMMON_LOADER_BATCH_LOADER_H_
