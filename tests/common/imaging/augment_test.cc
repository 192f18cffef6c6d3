#include "common/imaging/augment.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace fedtune::imaging {
namespace {

std::vector<float> Pattern(int w, int h) {
  std::vector<float> p(static_cast<size_t>(w) * h);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) p[y * w + x] = static_cast<float>((x * 7 + y * 13) % 31) / 30.0f;
  return p;
}

TEST(AugmentTest, SameTripleSameResultDifferentTripleDifferentDraws) {
  const AugmentParams a = DrawAugmentParams(42, 3, "patient1/study1/view1_frontal.jpg");
  const AugmentParams b = DrawAugmentParams(42, 3, "patient1/study1/view1_frontal.jpg");
  EXPECT_EQ(a.flip, b.flip);
  EXPECT_EQ(a.rotate, b.rotate);
  EXPECT_EQ(a.rotation_degrees, b.rotation_degrees);
  // Over many ids, changing the seed or the epoch changes the draws for most
  // images.
  int epoch_differs = 0, seed_differs = 0;
  for (int i = 0; i < 200; ++i) {
    const std::string id = absl::StrCat("img", i);
    const AugmentParams base = DrawAugmentParams(42, 3, id);
    const AugmentParams other_epoch = DrawAugmentParams(42, 4, id);
    const AugmentParams other_seed = DrawAugmentParams(43, 3, id);
    epoch_differs += base.rotation_degrees != other_epoch.rotation_degrees || base.flip != other_epoch.flip;
    seed_differs += base.rotation_degrees != other_seed.rotation_degrees || base.flip != other_seed.flip;
  }
  EXPECT_GT(epoch_differs, 130);  // Same draws by chance: P = 1/4 per image.
  EXPECT_GT(seed_differs, 130);
}

TEST(AugmentTest, DistributionMatchesTheStudy) {
  int flips = 0, rotations = 0;
  double min_angle = 0, max_angle = 0, sum_angle = 0;
  const int n = 4000;
  for (int i = 0; i < n; ++i) {
    const AugmentParams p = DrawAugmentParams(7, i % 5, absl::StrCat("id", i));
    flips += p.flip;
    if (p.rotate) {
      ++rotations;
      min_angle = std::min(min_angle, p.rotation_degrees);
      max_angle = std::max(max_angle, p.rotation_degrees);
      sum_angle += p.rotation_degrees;
      ASSERT_GE(p.rotation_degrees, -10.0);
      ASSERT_LE(p.rotation_degrees, 10.0);
    } else {
      ASSERT_EQ(p.rotation_degrees, 0.0);
    }
  }
  // Binomial(4000, 0.5): sd 32; 4.7 sd bounds.
  EXPECT_NEAR(flips, n / 2, 150);
  EXPECT_NEAR(rotations, n / 2, 150);
  EXPECT_LT(min_angle, -9.8);
  EXPECT_GT(max_angle, 9.8);
  EXPECT_NEAR(sum_angle / rotations, 0.0,
              0.6);  // sd of the mean: 5.8 / sqrt(2000) = 0.13.
  AugmentOptions off;
  off.flip_probability = 0;
  off.rotate_probability = 0;
  const AugmentParams none = DrawAugmentParams(7, 0, "x", off);
  EXPECT_FALSE(none.flip);
  EXPECT_FALSE(none.rotate);
}

TEST(AugmentTest, FlipMirrorsRows) {
  const int w = 9, h = 5;
  const std::vector<float> src = Pattern(w, h);
  std::vector<float> dst = src;
  AugmentParams p;
  p.flip = true;
  ASSERT_TRUE(ApplyAugmentation(p, w, h, &dst).ok());
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) ASSERT_EQ(dst[y * w + x], src[y * w + (w - 1 - x)]);
}

TEST(AugmentTest, RotationIsCounterClockwiseAboutTheCentre) {
  const int n = 11;
  const std::vector<float> src = Pattern(n, n);
  std::vector<float> dst = src;
  AugmentParams p;
  p.rotate = true;
  p.rotation_degrees = 90.0;
  ASSERT_TRUE(ApplyAugmentation(p, n, n, &dst).ok());
  // Counter-clockwise by 90 degrees: the top edge becomes the left edge.
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < n; ++x) ASSERT_NEAR(dst[y * n + x], src[x * n + (n - 1 - y)], 1e-5) << x << "," << y;
}

TEST(AugmentTest, SmallRotationFillsCornersWithBlack) {
  const int n = 64;
  std::vector<float> img(n * n, 1.0f);
  AugmentParams p;
  p.rotate = true;
  p.rotation_degrees = 10.0;
  ASSERT_TRUE(ApplyAugmentation(p, n, n, &img).ok());
  EXPECT_EQ(img[0], 0.0f);
  EXPECT_EQ(img[n * n - 1], 0.0f);
  EXPECT_NEAR(img[(n / 2) * n + n / 2], 1.0f, 1e-6);
}

TEST(AugmentTest, ResultDoesNotDependOnThreadOrOrder) {
  const int n = 32, images = 48;
  auto run = [&](int id, std::vector<float>* out) {
    *out = Pattern(n, n);
    ASSERT_TRUE(Augment(5, 2, absl::StrCat("image-", id), AugmentOptions(), n, n, out).ok());
  };
  std::vector<std::vector<float>> serial(images), parallel(images);
  for (int i = 0; i < images; ++i) run(i, &serial[i]);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = images - 1 - t; i >= 0; i -= 4) run(i, &parallel[i]);  // Reverse order, interleaved.
    });
  }
  for (std::thread& t : threads) t.join();
  int changed = 0;
  for (int i = 0; i < images; ++i) {
    ASSERT_EQ(serial[i], parallel[i]) << "image " << i;
    changed += serial[i] != Pattern(n, n);
  }
  EXPECT_GT(changed, images / 2);  // P(no flip, no rotation) = 1/4.
}

TEST(AugmentTest, RejectsInconsistentBuffers) {
  std::vector<float> v(10);
  EXPECT_EQ(ApplyAugmentation(AugmentParams(), 4, 4, &v).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtune::imaging
