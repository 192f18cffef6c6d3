#include "common/loader/batch_loader.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/seed.h"
#include "common/status_macros.h"

namespace fedtune::loader {
namespace {

absl::Status ValidateOptions(const LoaderOptions& o) {
  if (o.batch_size < 1) return absl::InvalidArgumentError(absl::StrCat("batch_size must be >= 1, got ", o.batch_size));
  if (o.num_threads < 1) {
    return absl::InvalidArgumentError(absl::StrCat("num_threads must be >= 1, got ", o.num_threads));
  }
  if (o.prefetch_batches < 1) {
    return absl::InvalidArgumentError(absl::StrCat("prefetch_batches must be >= 1, got ", o.prefetch_batches));
  }
  RETURN_IF_ERROR(imaging::ValidatePreprocessOptions(o.preprocess));
  if (o.cache != nullptr && imaging::CropAndResizeKey(o.cache->options()) != imaging::CropAndResizeKey(o.preprocess)) {
    return absl::InvalidArgumentError("the image cache was opened with other preprocessing settings than the loader's");
  }
  if (o.cache != nullptr && o.cache->options().decode.max_pixels != o.preprocess.decode.max_pixels) {
    return absl::InvalidArgumentError(absl::StrCat("the image cache was opened with max_image_pixels ",
                                                   o.cache->options().decode.max_pixels, ", the loader's is ",
                                                   o.preprocess.decode.max_pixels));
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<LoaderSample> SamplesFromManifest(const data::Manifest& manifest, const std::string& data_root,
                                              const std::vector<size_t>& entries, const data::LabelPolicy& policy) {
  std::vector<data::LabelTargets> targets = data::TargetsForEntries(manifest, entries, policy);
  std::vector<LoaderSample> out;
  out.reserve(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    const data::ManifestEntry& e = manifest.entries()[entries[i]];
    LoaderSample s;
    s.id = e.path;
    s.file = data::ResolveImagePath(data_root, e.path);
    s.target = targets[i].target;
    s.mask = targets[i].mask;
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<LoaderSample> PairedSamplesFromManifest(const data::Manifest& manifest, const std::string& data_root,
                                                    const std::vector<size_t>& frontal_entries,
                                                    const data::LabelPolicy& policy) {
  // Keep the studies whose first frontal image is among `frontal_entries` and that have a lateral image.
  std::vector<size_t> wanted(frontal_entries.begin(), frontal_entries.end());
  std::sort(wanted.begin(), wanted.end());
  std::vector<size_t> frontal;
  std::vector<size_t> lateral;
  for (const data::Study& study : manifest.studies()) {
    if (study.frontal.empty() || study.lateral.empty()) continue;
    if (!std::binary_search(wanted.begin(), wanted.end(), study.frontal.front())) continue;
    frontal.push_back(study.frontal.front());
    lateral.push_back(study.lateral.front());
  }
  std::vector<LoaderSample> out = SamplesFromManifest(manifest, data_root, frontal, policy);
  for (size_t i = 0; i < out.size(); ++i) {
    out[i].lateral_file = data::ResolveImagePath(data_root, manifest.entries()[lateral[i]].path);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<BatchLoader>> BatchLoader::Create(std::vector<LoaderSample> samples,
                                                                 const LoaderOptions& options) {
  RETURN_IF_ERROR(ValidateOptions(options));
  if (samples.empty()) return absl::InvalidArgumentError("the loader was given no images");
  const bool paired = !samples.front().lateral_file.empty();
  for (const LoaderSample& s : samples) {
    if (s.lateral_file.empty() == paired) {
      return absl::InvalidArgumentError(
          absl::StrCat("sample '", s.id, "': two-view and single-view samples cannot share a loader"));
    }
  }
  return std::unique_ptr<BatchLoader>(new BatchLoader(std::move(samples), options));
}

BatchLoader::BatchLoader(std::vector<LoaderSample> samples, const LoaderOptions& options)
    : samples_(std::move(samples)), options_(options) {}

BatchLoader::~BatchLoader() { StopWorkers(); }

int64_t BatchLoader::NumBatches() const {
  const int64_t n = static_cast<int64_t>(samples_.size());
  return options_.drop_last ? n / options_.batch_size : (n + options_.batch_size - 1) / options_.batch_size;
}

LoaderStats BatchLoader::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

void BatchLoader::StopWorkers() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  for (std::thread& t : workers_) t.join();
  workers_.clear();
}

void BatchLoader::StartEpoch(int64_t epoch) {
  std::vector<size_t> order(samples_.size());
  std::iota(order.begin(), order.end(), 0);
  if (options_.shuffle) {
    std::mt19937_64 rng(MixSeed(options_.seed ^ MixSeed(static_cast<uint64_t>(epoch))));
    std::shuffle(order.begin(), order.end(), rng);
  }
  std::vector<std::vector<size_t>> batches;
  const int64_t count = NumBatches();
  for (int64_t b = 0; b < count; ++b) {
    const size_t begin = static_cast<size_t>(b) * options_.batch_size;
    const size_t end = std::min(order.size(), begin + options_.batch_size);
    batches.emplace_back(order.begin() + begin, order.begin() + end);
  }
  StartWorkers(epoch, std::move(batches));
}

absl::Status BatchLoader::StartEpochWithBatches(int64_t epoch, std::vector<std::vector<size_t>> batches) {
  for (size_t b = 0; b < batches.size(); ++b) {
    for (size_t s : batches[b]) {
      if (s >= samples_.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("batch ", b, " of epoch ", epoch, " names sample ", s, "; the loader has ", samples_.size()));
      }
    }
  }
  StartWorkers(epoch, std::move(batches));
  return absl::OkStatus();
}

void BatchLoader::StartWorkers(int64_t epoch, std::vector<std::vector<size_t>> batches) {
  StopWorkers();
  epoch_ = epoch;
  batches_ = std::move(batches);
  {
    absl::MutexLock lock(&mu_);
    stop_ = false;
    next_to_claim_ = 0;
    next_to_consume_ = 0;
    ready_.clear();
  }
  for (int t = 0; t < options_.num_threads; ++t) workers_.emplace_back([this] { WorkerLoop(); });
}

void BatchLoader::WorkerLoop() {
  const int64_t count = static_cast<int64_t>(batches_.size());
  while (true) {
    int64_t index;
    {
      absl::MutexLock lock(&mu_);
      // Wait for room in the prefetch window (or the end).
      auto can_claim = [this, count]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_ || next_to_claim_ >= count || next_to_claim_ < next_to_consume_ + options_.prefetch_batches;
      };
      mu_.Await(absl::Condition(&can_claim));
      if (stop_ || next_to_claim_ >= count) return;
      index = next_to_claim_++;
    }
    absl::StatusOr<Batch> batch = BuildBatch(index);
    absl::MutexLock lock(&mu_);
    ready_.emplace(index, std::move(batch));
  }
}

absl::StatusOr<std::vector<float>> BatchLoader::LoadImage(const std::string& file, const std::string& augment_key) {
  const int n = options_.preprocess.size;
  absl::StatusOr<imaging::PreprocessedImage> image =
      options_.cache != nullptr ? options_.cache->Get(file) : imaging::LoadAndPreprocess(file, options_.preprocess);
  if (!image.ok()) return image.status();
  if (options_.augment) {
    RETURN_IF_ERROR(
        imaging::Augment(options_.seed, epoch_, augment_key, options_.augment_options, n, n, &image->pixels));
  }
  imaging::Normalize(options_.preprocess, &image->pixels);
  return std::move(image->pixels);
}

absl::StatusOr<Batch> BatchLoader::BuildBatch(int64_t index) {
  const std::vector<size_t>& members = batches_[index];
  const int n = options_.preprocess.size;
  const bool paired = !samples_.front().lateral_file.empty();
  std::vector<std::vector<float>> pixels;
  std::vector<std::vector<float>> lateral_pixels;
  std::vector<size_t> kept;
  int64_t skipped = 0;
  for (size_t s : members) {
    const LoaderSample& sample = samples_[s];
    absl::StatusOr<std::vector<float>> image = LoadImage(sample.file, sample.id);
    absl::StatusOr<std::vector<float>> lateral = std::vector<float>();
    if (image.ok() && paired) lateral = LoadImage(sample.lateral_file, absl::StrCat(sample.id, "#lateral"));
    absl::Status status = image.ok() ? lateral.status() : image.status();
    if (!status.ok()) {
      absl::Status named(status.code(), absl::StrCat("image '", sample.id, "': ", status.message()));
      if (options_.on_error == ErrorPolicy::kFail) return named;
      LOG(WARNING) << "skipping " << named;
      ++skipped;
      continue;
    }
    pixels.push_back(*std::move(image));
    if (paired) lateral_pixels.push_back(*std::move(lateral));
    kept.push_back(s);
  }
  Batch batch;
  batch.index = index;
  const int64_t b = static_cast<int64_t>(kept.size());
  batch.images = torch::empty({b, 1, n, n}, torch::kFloat32);
  if (paired) batch.lateral = torch::empty({b, 1, n, n}, torch::kFloat32);
  batch.targets = torch::empty({b, data::kNumChexpertLabels}, torch::kFloat32);
  batch.mask = torch::empty({b, data::kNumChexpertLabels}, torch::kFloat32);
  float* tgt = batch.targets.data_ptr<float>();
  float* msk = batch.mask.data_ptr<float>();
  for (int64_t i = 0; i < b; ++i) {
    const LoaderSample& sample = samples_[kept[i]];
    std::memcpy(batch.images.data_ptr<float>() + i * n * n, pixels[i].data(), sizeof(float) * n * n);
    if (paired)
      std::memcpy(batch.lateral.data_ptr<float>() + i * n * n, lateral_pixels[i].data(), sizeof(float) * n * n);
    std::memcpy(tgt + i * data::kNumChexpertLabels, sample.target.data(), sizeof(float) * data::kNumChexpertLabels);
    std::memcpy(msk + i * data::kNumChexpertLabels, sample.mask.data(), sizeof(float) * data::kNumChexpertLabels);
    batch.ids.push_back(sample.id);
  }
  absl::MutexLock lock(&mu_);
  stats_.images_loaded += b * (paired ? 2 : 1);
  stats_.skipped += skipped;
  return batch;
}

absl::StatusOr<std::optional<Batch>> BatchLoader::Next() {
  const int64_t count = static_cast<int64_t>(batches_.size());
  while (true) {
    absl::StatusOr<Batch> result = absl::InternalError("unset");
    {
      absl::MutexLock lock(&mu_);
      if (next_to_consume_ >= count) return std::optional<Batch>();
      const int64_t want = next_to_consume_;
      auto ready = [this, want]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return ready_.count(want) > 0; };
      if (workers_.empty()) return absl::FailedPreconditionError("BatchLoader::Next called before StartEpoch");
      mu_.Await(absl::Condition(&ready));
      auto it = ready_.find(want);
      result = std::move(it->second);
      ready_.erase(it);
      ++next_to_consume_;
      if (!result.ok()) next_to_consume_ = count;  // The epoch ends at the first failure.
    }
    if (!result.ok()) {
      StopWorkers();
      return result.status();
    }
    if (result->ids.empty()) continue;  // Every image of this batch was skipped.
    return std::optional<Batch>(*std::move(result));
  }
}

}  // namespace fedtune::loader
