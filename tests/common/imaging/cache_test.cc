#include "common/imaging/cache.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <cmath>
#include <fstream>
#include <memory>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/logging.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::imaging {
namespace {

// A 16-bit PNG with a black border and a pattern that depends on `variant`.
std::string WriteSource(const testing::TempDir& dir, const std::string& name, int variant, int w = 48, int h = 40,
                        bool uncompressed_tiff = false) {
  cv::Mat m(h, w, CV_16UC1, cv::Scalar(0));
  for (int y = 3; y < h - 2; ++y)
    for (int x = 4; x < w - 1; ++x)
      m.at<uint16_t>(y, x) = static_cast<uint16_t>(8000 + ((x * 131 + y * 71 + variant * 997) % 50000));
  const std::string path = dir.Join(name);
  std::vector<int> params;
  if (uncompressed_tiff) params = {cv::IMWRITE_TIFF_COMPRESSION, 1};
  CHECK(cv::imwrite(path, m, params));
  return path;
}

PreprocessOptions Small() {
  PreprocessOptions o;
  o.size = 16;
  return o;
}

// Cached pixels are the reference pixels quantized to 1/65535.
void ExpectMatchesReference(const PreprocessedImage& got, const std::string& path, const PreprocessOptions& options) {
  absl::StatusOr<PreprocessedImage> want = LoadAndPreprocess(path, options);
  ASSERT_TRUE(want.ok()) << want.status();
  ASSERT_EQ(got.size, want->size);
  ASSERT_EQ(got.pixels.size(), want->pixels.size());
  for (size_t i = 0; i < got.pixels.size(); ++i) ASSERT_NEAR(got.pixels[i], want->pixels[i], 0.51 / 65535) << i;
  EXPECT_EQ(got.crop.x, want->crop.x);
  EXPECT_EQ(got.crop.width, want->crop.width);
  EXPECT_EQ(got.source_width, want->source_width);
}

void SetMtime(const std::string& path, const struct timespec& mtime) {
  struct timespec times[2] = {mtime, mtime};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
}

struct timespec Mtime(const std::string& path) {
  struct stat st;
  CHECK_EQ(::stat(path.c_str(), &st), 0);
  return st.st_mtim;
}

TEST(ImageCacheTest, MissThenHitWithIdenticalPixels) {
  testing::TempDir dir;
  const std::string src = WriteSource(dir, "a.png", 1);
  absl::StatusOr<std::unique_ptr<ImageCache>> cache = ImageCache::Open(dir.Join("cache"), Small());
  ASSERT_TRUE(cache.ok()) << cache.status();
  absl::StatusOr<PreprocessedImage> first = (*cache)->Get(src);
  ASSERT_TRUE(first.ok()) << first.status();
  ExpectMatchesReference(*first, src, Small());
  absl::StatusOr<PreprocessedImage> second = (*cache)->Get(src);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(first->pixels,
            second->pixels);  // Exactly: both are the quantized values.
  EXPECT_EQ((*cache)->stats().misses, 1);
  EXPECT_EQ((*cache)->stats().hits, 1);
  struct stat st;
  EXPECT_EQ(::stat((*cache)->EntryPath(src).c_str(), &st), 0);

  // A second cache object over the same directory (a later run) hits too.
  absl::StatusOr<std::unique_ptr<ImageCache>> later = ImageCache::Open(dir.Join("cache"), Small());
  ASSERT_TRUE(later.ok());
  ASSERT_TRUE((*later)->Get(src).ok());
  EXPECT_EQ((*later)->stats().hits, 1);
  EXPECT_EQ((*later)->stats().misses, 0);
}

TEST(ImageCacheTest, ChangedFileIsRebuilt) {
  testing::TempDir dir;
  const std::string src = WriteSource(dir, "a.png", 1);
  auto cache = *ImageCache::Open(dir.Join("cache"), Small());
  ASSERT_TRUE(cache->Get(src).ok());

  // New content of another size.
  WriteSource(dir, "a.png", 2, 52, 44);
  absl::StatusOr<PreprocessedImage> v2 = cache->Get(src);
  ASSERT_TRUE(v2.ok());
  EXPECT_EQ(cache->stats().stale, 1);
  EXPECT_EQ(v2->source_width, 52);
  ExpectMatchesReference(*v2, src, Small());

  // Same size, same mtime, same inode: only the bytes differ (the content
  // fingerprint catches it). Uncompressed TIFFs of one shape have one size.
  const std::string tif = WriteSource(dir, "c.tif", 2, 52, 44, /*uncompressed_tiff=*/true);
  absl::StatusOr<PreprocessedImage> t2 = cache->Get(tif);
  ASSERT_TRUE(t2.ok()) << t2.status();
  const struct timespec mtime = Mtime(tif);
  const std::string other = WriteSource(dir, "d.tif", 3, 52, 44, true);
  absl::StatusOr<std::string> t3_bytes = io::ReadFile(other);
  ASSERT_TRUE(t3_bytes.ok());
  ASSERT_EQ(t3_bytes->size(), io::ReadFile(tif)->size());
  {
    std::ofstream out(tif,
                      std::ios::binary | std::ios::in);  // Overwrite in place: same inode.
    out.write(t3_bytes->data(), static_cast<std::streamsize>(t3_bytes->size()));
  }
  SetMtime(tif, mtime);
  absl::StatusOr<PreprocessedImage> t3 = cache->Get(tif);
  ASSERT_TRUE(t3.ok());
  EXPECT_EQ(cache->stats().stale, 2);
  EXPECT_NE(t3->pixels, t2->pixels);
  ExpectMatchesReference(*t3, tif, Small());
}

TEST(ImageCacheTest, TouchedFileIsRebuilt) {
  testing::TempDir dir;
  const std::string src = WriteSource(dir, "a.png", 1);
  auto cache = *ImageCache::Open(dir.Join("cache"), Small());
  ASSERT_TRUE(cache->Get(src).ok());
  struct timespec mtime = Mtime(src);
  mtime.tv_sec -= 100;
  SetMtime(src, mtime);
  ASSERT_TRUE(cache->Get(src).ok());
  EXPECT_EQ(cache->stats().stale, 1);
  ASSERT_TRUE(cache->Get(src).ok());
  EXPECT_EQ(cache->stats().hits, 1);
}

TEST(ImageCacheTest, ChangedSettingsAreNeverServedStale) {
  testing::TempDir dir;
  const std::string src = WriteSource(dir, "a.png", 1);
  const std::string cache_dir = dir.Join("cache");
  auto small = *ImageCache::Open(cache_dir, Small());
  ASSERT_TRUE(small->Get(src).ok());

  PreprocessOptions bigger = Small();
  bigger.size = 24;
  auto big = *ImageCache::Open(cache_dir, bigger);
  absl::StatusOr<PreprocessedImage> b = big->Get(src);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->size, 24);
  EXPECT_EQ(big->stats().misses, 1);
  ExpectMatchesReference(*b, src, bigger);

  PreprocessOptions no_crop = Small();
  no_crop.crop_borders = false;
  auto nc = *ImageCache::Open(cache_dir, no_crop);
  absl::StatusOr<PreprocessedImage> c = nc->Get(src);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(nc->stats().misses, 1);
  EXPECT_EQ(c->crop.x, 0);
  ExpectMatchesReference(*c, src, no_crop);

  // Normalization settings do not change the cached pixels: they share entries.
  PreprocessOptions other_norm = Small();
  other_norm.mean = 0.5f;
  auto on = *ImageCache::Open(cache_dir, other_norm);
  ASSERT_TRUE(on->Get(src).ok());
  EXPECT_EQ(on->stats().hits, 1);
}

TEST(ImageCacheTest, CorruptEntriesAreRebuiltNotServed) {
  testing::TempDir dir;
  const std::string src = WriteSource(dir, "a.png", 1);
  auto cache = *ImageCache::Open(dir.Join("cache"), Small());
  absl::StatusOr<PreprocessedImage> good = cache->Get(src);
  ASSERT_TRUE(good.ok());
  const std::string entry = cache->EntryPath(src);
  absl::StatusOr<std::string> bytes = io::ReadFile(entry);
  ASSERT_TRUE(bytes.ok());

  std::vector<std::string> damaged;
  std::string flipped = *bytes;
  flipped[flipped.size() - 100] ^= 0x01;  // One bit in the pixels.
  damaged.push_back(flipped);
  damaged.push_back(bytes->substr(0, bytes->size() / 2));  // Truncated.
  damaged.push_back("");                                   // Empty.
  damaged.push_back(std::string(bytes->size(), 'x'));      // Garbage of the right length.
  int64_t expected_corrupt = 0;
  for (const std::string& d : damaged) {
    ASSERT_TRUE(io::WriteFileAtomically(entry, d).ok());
    absl::StatusOr<PreprocessedImage> got = cache->Get(src);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->pixels, good->pixels);
    EXPECT_EQ(cache->stats().corrupt, ++expected_corrupt);
    EXPECT_EQ(*io::ReadFile(entry), *bytes);  // Rewritten as before.
  }
  EXPECT_EQ(cache->stats().hits, 0);
}

TEST(ImageCacheTest, ErrorsComeFromTheSourceAndNothingIsStored) {
  testing::TempDir dir;
  auto cache = *ImageCache::Open(dir.Join("cache"), Small());
  EXPECT_EQ(cache->Get(dir.Join("missing.png")).status().code(), absl::StatusCode::kNotFound);
  const std::string bad = dir.WriteFile("bad.png", "not a png");
  absl::StatusOr<PreprocessedImage> got = cache->Get(bad);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(got.status().message(), ::testing::HasSubstr("bad.png"));
  struct stat st;
  EXPECT_NE(::stat(cache->EntryPath(bad).c_str(), &st), 0);
  EXPECT_EQ(ImageCache::Open(dir.Join("c2"), PreprocessOptions{4}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ImageCacheTest, ConcurrentReadersAndWriters) {
  testing::TempDir dir;
  const int kImages = 8, kThreads = 4, kRounds = 2;
  std::vector<std::string> sources;
  for (int i = 0; i < kImages; ++i) sources.push_back(WriteSource(dir, absl::StrCat("s", i, ".png"), i));
  auto cache = *ImageCache::Open(dir.Join("cache"), Small());
  std::vector<std::vector<PreprocessedImage>> results(kThreads, std::vector<PreprocessedImage>(kImages));
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int r = 0; r < kRounds; ++r) {
        for (int k = 0; k < kImages; ++k) {
          // Each thread its own order (forwards or backwards from its own
          // start); all threads start on misses.
          const int i = t % 2 == 0 ? (k + 3 * t) % kImages : (kImages - 1 - k + 3 * t) % kImages;
          absl::StatusOr<PreprocessedImage> got = cache->Get(sources[i]);
          ASSERT_TRUE(got.ok()) << got.status();
          if (r == 0) {
            results[t][i] = *got;
          } else {
            ASSERT_EQ(results[t][i].pixels, got->pixels);
          }
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kImages; ++i) {
    for (int t = 1; t < kThreads; ++t) ASSERT_EQ(results[t][i].pixels, results[0][i].pixels);
    ExpectMatchesReference(results[0][i], sources[i], Small());
  }
  const ImageCache::Stats stats = cache->stats();
  EXPECT_EQ(stats.misses, kImages);  // Each source decoded exactly once.
  EXPECT_EQ(stats.hits, kThreads * kRounds * kImages - kImages);
  EXPECT_EQ(stats.corrupt + stats.stale + stats.write_failures, 0);
}

TEST(ImageCacheTest, LimitAppliesToCachedEntriesToo) {
  // The limit is not part of an entry's key (it changes which files are
  // refused, not the pixels of the others), so a hit must check it as well.
  testing::TempDir dir;
  const std::string src = WriteSource(dir, "a.png", 1);  // 48 x 40 = 1920 pixels.
  PreprocessOptions options = Small();
  absl::StatusOr<std::unique_ptr<ImageCache>> cache = ImageCache::Open(dir.Join("cache"), options);
  ASSERT_TRUE(cache.ok());
  ASSERT_TRUE((*cache)->Get(src).ok());
  options.decode.max_pixels = 1919;
  absl::StatusOr<std::unique_ptr<ImageCache>> strict = ImageCache::Open(dir.Join("cache"), options);
  ASSERT_TRUE(strict.ok());
  EXPECT_EQ((*strict)->EntryPath(src), (*cache)->EntryPath(src));
  absl::StatusOr<PreprocessedImage> refused = (*strict)->Get(src);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(refused.status().message()), ::testing::HasSubstr("48 x 40 = 1920 pixels"));
  EXPECT_THAT(std::string(refused.status().message()), ::testing::HasSubstr("limit of 1919"));
  EXPECT_EQ((*strict)->stats().hits, 1);
  options.decode.max_pixels = 0;
  EXPECT_EQ(ImageCache::Open(dir.Join("cache"), options).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtune::imaging
