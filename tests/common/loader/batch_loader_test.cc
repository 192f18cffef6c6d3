#include "common/loader/batch_loader.h"

#include <torch/torch.h>

#include <opencv2/imgcodecs.hpp>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/imaging/hostile_images.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::loader {
namespace {

using ::testing::HasSubstr;

class BatchLoaderTest : public ::testing::Test {
 protected:
  // Writes `count` 8-bit PNGs whose brightness encodes their index, and samples whose target[0] is the index too.
  std::vector<LoaderSample> MakeSamples(int count) {
    std::vector<LoaderSample> samples;
    for (int i = 0; i < count; ++i) {
      cv::Mat img(40, 48, CV_8UC1, cv::Scalar(60 + 4 * i));
      const std::string name = "img" + std::to_string(i) + ".png";
      cv::imwrite(dir_.Join(name), img);
      LoaderSample s;
      s.id = name;
      s.file = dir_.Join(name);
      s.target[0] = static_cast<float>(i);
      s.mask[0] = 1.0f;
      s.mask[3] = 0.5f;
      samples.push_back(s);
    }
    return samples;
  }
  LoaderOptions Options() {
    LoaderOptions o;
    o.batch_size = 4;
    o.num_threads = 2;
    o.prefetch_batches = 2;
    o.seed = 7;
    o.preprocess.size = 16;
    o.preprocess.crop_borders = false;
    return o;
  }
  std::vector<Batch> Drain(BatchLoader& loader, int64_t epoch) {
    loader.StartEpoch(epoch);
    std::vector<Batch> out;
    while (true) {
      auto next = loader.Next();
      EXPECT_TRUE(next.ok()) << next.status();
      if (!next.ok() || !next->has_value()) break;
      out.push_back(**next);
    }
    return out;
  }
  testing::TempDir dir_;
};

TEST_F(BatchLoaderTest, ShapesTargetsAndNormalization) {
  auto loader = BatchLoader::Create(MakeSamples(10), Options());
  ASSERT_TRUE(loader.ok()) << loader.status();
  EXPECT_EQ((*loader)->NumBatches(), 3);
  std::vector<Batch> batches = Drain(**loader, 0);
  ASSERT_EQ(batches.size(), 3u);
  EXPECT_EQ(batches[0].images.sizes(), (std::vector<int64_t>{4, 1, 16, 16}));
  EXPECT_EQ(batches[2].images.size(0), 2);
  EXPECT_EQ(batches[0].targets.sizes(), (std::vector<int64_t>{4, 14}));
  for (const Batch& b : batches) {
    for (int64_t i = 0; i < b.images.size(0); ++i) {
      const int index = std::stoi(b.ids[i].substr(3));
      EXPECT_EQ(b.targets[i][0].item<float>(), static_cast<float>(index));
      EXPECT_EQ(b.mask[i][3].item<float>(), 0.5f);
      // A flat 8-bit image of value v normalizes to (v/255 - 0.449) / 0.226 everywhere.
      const float expected = ((60 + 4 * index) / 255.0f - 0.449f) / 0.226f;
      EXPECT_NEAR(b.images[i].mean().item<float>(), expected, 1e-3);
    }
  }
  EXPECT_EQ((*loader)->stats().images_loaded, 10);
}

TEST_F(BatchLoaderTest, OrderIsAFunctionOfSeedAndEpochOnly) {
  std::vector<LoaderSample> samples = MakeSamples(13);
  LoaderOptions one = Options();
  one.num_threads = 1;
  one.augment = true;
  LoaderOptions three = Options();
  three.num_threads = 3;
  three.prefetch_batches = 1;
  three.augment = true;
  auto a = BatchLoader::Create(samples, one);
  auto b = BatchLoader::Create(samples, three);
  ASSERT_TRUE(a.ok() && b.ok());
  std::vector<Batch> ea = Drain(**a, 3);
  std::vector<Batch> eb = Drain(**b, 3);
  ASSERT_EQ(ea.size(), eb.size());
  for (size_t k = 0; k < ea.size(); ++k) {
    EXPECT_EQ(ea[k].ids, eb[k].ids);
    EXPECT_TRUE(torch::equal(ea[k].images, eb[k].images)) << "batch " << k;
  }
  std::vector<Batch> next_epoch = Drain(**a, 4);
  std::vector<std::string> ids3, ids4;
  for (const Batch& x : ea) ids3.insert(ids3.end(), x.ids.begin(), x.ids.end());
  for (const Batch& x : next_epoch) ids4.insert(ids4.end(), x.ids.begin(), x.ids.end());
  EXPECT_NE(ids3, ids4);
  std::sort(ids3.begin(), ids3.end());
  std::sort(ids4.begin(), ids4.end());
  EXPECT_EQ(ids3, ids4);  // Same images, another order.
  std::vector<Batch> again = Drain(**a, 3);
  EXPECT_EQ(again[0].ids, ea[0].ids);
}

TEST_F(BatchLoaderTest, GivenBatchesComeInOrderWithTheirIndexAndEmptyOnesArePassedOver) {
  std::vector<LoaderSample> samples = MakeSamples(6);
  LoaderOptions o = Options();
  o.augment = true;
  auto loader = BatchLoader::Create(samples, o);
  ASSERT_TRUE(loader.ok());
  EXPECT_EQ((*loader)->batch_size(), 4);
  ASSERT_TRUE((*loader)->StartEpochWithBatches(2, {{5, 0}, {}, {3}, {1, 2, 3, 4, 5, 0}, {}}).ok());
  std::vector<Batch> got;
  while (true) {
    auto next = (*loader)->Next();
    ASSERT_TRUE(next.ok()) << next.status();
    if (!next->has_value()) break;
    got.push_back(**next);
  }
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].index, 0);
  EXPECT_EQ(got[0].ids, (std::vector<std::string>{"img5.png", "img0.png"}));
  EXPECT_FLOAT_EQ(got[0].targets[0][0].item<float>(), 5.0f);
  EXPECT_EQ(got[1].index, 2);
  EXPECT_EQ(got[1].ids, (std::vector<std::string>{"img3.png"}));
  EXPECT_EQ(got[2].index, 3);
  EXPECT_EQ(got[2].images.size(0), 6);
  // Augmentation is that of the epoch, whatever the batch: image 3 in batch 2 equals image 3 in batch 3.
  EXPECT_TRUE(torch::equal(got[1].images[0], got[2].images[2]));
  // No batch at all: the epoch is empty.
  ASSERT_TRUE((*loader)->StartEpochWithBatches(3, {}).ok());
  auto none = (*loader)->Next();
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  absl::Status bad = (*loader)->StartEpochWithBatches(4, {{1}, {6}});
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.message()), HasSubstr("batch 1 of epoch 4 names sample 6"));
}

TEST_F(BatchLoaderTest, UnreadableImageFailsOrIsSkipped) {
  std::vector<LoaderSample> samples = MakeSamples(6);
  samples[2].file = dir_.Join("missing.png");
  dir_.WriteFile("garbage.png", "not a png");
  samples[4].file = dir_.Join("garbage.png");
  LoaderOptions options = Options();
  options.shuffle = false;
  auto fail = BatchLoader::Create(samples, options);
  ASSERT_TRUE(fail.ok());
  (*fail)->StartEpoch(0);
  auto first = (*fail)->Next();
  ASSERT_FALSE(first.ok());
  EXPECT_THAT(std::string(first.status().message()), HasSubstr("img2.png"));
  auto after = (*fail)->Next();
  ASSERT_TRUE(after.ok());
  EXPECT_FALSE(after->has_value());

  options.on_error = ErrorPolicy::kSkip;
  auto skip = BatchLoader::Create(samples, options);
  ASSERT_TRUE(skip.ok());
  std::vector<Batch> batches = Drain(**skip, 0);
  int64_t seen = 0;
  for (const Batch& b : batches) {
    seen += b.images.size(0);
    for (const std::string& id : b.ids) {
      EXPECT_NE(id, "img2.png");
      EXPECT_NE(id, "img4.png");
    }
  }
  EXPECT_EQ(seen, 4);
  EXPECT_EQ((*skip)->stats().skipped, 2);
}

TEST_F(BatchLoaderTest, TwoViewSamplesGiveLateralBatches) {
  std::vector<LoaderSample> samples = MakeSamples(6);
  for (size_t i = 0; i < samples.size(); ++i) samples[i].lateral_file = samples[(i + 1) % samples.size()].file;
  auto loader = BatchLoader::Create(samples, Options());
  ASSERT_TRUE(loader.ok()) << loader.status();
  EXPECT_TRUE((*loader)->IsTwoView());
  std::vector<Batch> batches = Drain(**loader, 0);
  ASSERT_FALSE(batches.empty());
  for (const Batch& b : batches) {
    ASSERT_TRUE(b.lateral.defined());
    EXPECT_EQ(b.lateral.sizes(), b.images.sizes());
    for (int64_t i = 0; i < b.images.size(0); ++i) {
      const int index = std::stoi(b.ids[i].substr(3));
      const float expected = ((60 + 4 * ((index + 1) % 6)) / 255.0f - 0.449f) / 0.226f;
      EXPECT_NEAR(b.lateral[i].mean().item<float>(), expected, 1e-3);
    }
  }
  samples[2].lateral_file.clear();
  EXPECT_EQ(BatchLoader::Create(samples, Options()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(BatchLoaderTest, RejectsBadOptions) {
  LoaderOptions o = Options();
  o.batch_size = 0;
  EXPECT_EQ(BatchLoader::Create(MakeSamples(1), o).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BatchLoader::Create({}, Options()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(BatchLoaderTest, ImagesAboveThePixelLimitFailOrAreSkipped) {
  // A PNG declaring 65535 x 65535 over a few bytes, and a genuine image above a
  // lowered limit: refused by the decoder, then handled by the error policy.
  std::vector<LoaderSample> samples = MakeSamples(6);
  samples[1].file = dir_.WriteFile("huge.png", imaging::hostile::PngDeclaring(65535, 65535));
  LoaderOptions options = Options();
  options.shuffle = false;
  auto fail = BatchLoader::Create(samples, options);
  ASSERT_TRUE(fail.ok());
  (*fail)->StartEpoch(0);
  auto first = (*fail)->Next();
  ASSERT_FALSE(first.ok());
  EXPECT_EQ(first.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(first.status().message()), HasSubstr("image 'img1.png'"));
  EXPECT_THAT(std::string(first.status().message()), HasSubstr("huge.png: PNG header declares 65535 x 65535"));

  options.on_error = ErrorPolicy::kSkip;
  auto skip = BatchLoader::Create(samples, options);
  ASSERT_TRUE(skip.ok());
  EXPECT_EQ(Drain(**skip, 0).size(), 2u);
  EXPECT_EQ((*skip)->stats().skipped, 1);

  options.preprocess.decode.max_pixels = 48 * 40 - 1;  // Every image is 48 x 40.
  auto strict = BatchLoader::Create(samples, options);
  ASSERT_TRUE(strict.ok());
  int64_t seen = 0;
  for (const Batch& b : Drain(**strict, 0)) seen += b.images.size(0);
  EXPECT_EQ(seen, 0);
  EXPECT_EQ((*strict)->stats().skipped, 6);
}

TEST_F(BatchLoaderTest, CacheMustShareTheLoadersPixelLimit) {
  LoaderOptions options = Options();
  imaging::PreprocessOptions cache_options = options.preprocess;
  cache_options.decode.max_pixels = 1000;
  auto cache = imaging::ImageCache::Open(dir_.Join("cache"), cache_options);
  ASSERT_TRUE(cache.ok());
  options.cache = cache->get();
  absl::StatusOr<std::unique_ptr<BatchLoader>> loader = BatchLoader::Create(MakeSamples(2), options);
  EXPECT_EQ(loader.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(loader.status().message()), HasSubstr("max_image_pixels"));
}

}  // namespace
}  // namespace fedtune::loader
