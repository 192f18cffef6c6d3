#include "common/synth/appearance.h"

#include <cmath>
#include <map>
#include <string>

#include "common/synth/profile.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "opencv2/imgproc.hpp"

namespace fedtune::synth {
namespace {

using ::testing::HasSubstr;

// A horizontal gradient from 0.1 to 0.9 (mean 0.5), n x n.
cv::Mat Gradient(int n) {
  cv::Mat img(n, n, CV_32F);
  for (int y = 0; y < n; ++y) {
    for (int x = 0; x < n; ++x) img.at<float>(y, x) = static_cast<float>(0.1 + 0.8 * x / (n - 1));
  }
  return img;
}

double Mean(const cv::Mat& img) { return cv::mean(img)[0]; }

double StdDev(const cv::Mat& img) {
  cv::Scalar mean, stddev;
  cv::meanStdDev(img, mean, stddev);
  return stddev[0];
}

TEST(ScannerTest, AProfileWithoutAScannerDrawsWhatItDrewBefore) {
  absl::StatusOr<v1::SynthProfile> profile = LoadProfile("public");
  ASSERT_TRUE(profile.ok());
  ASSERT_FALSE(profile->has_scanner());
  v1::SynthProfile with = *profile;
  with.mutable_scanner()->set_gamma(1.3);
  with.mutable_scanner()->set_texture_sigma(0.02);
  for (uint64_t seed : {1, 2, 3}) {
    Rng plain_rng(seed), scanner_rng(seed);
    const AppearanceParams plain = DrawAppearance(*profile, plain_rng);
    const AppearanceParams scanned = DrawAppearance(with, scanner_rng);
    EXPECT_EQ(plain.noise_seed, scanned.noise_seed);
    EXPECT_EQ(plain.contrast, scanned.contrast);
    EXPECT_EQ(plain.sign_strength, scanned.sign_strength);
    EXPECT_EQ(plain.scanner_gamma, 1);
    EXPECT_EQ(plain.texture_sigma, 0);
    EXPECT_EQ(scanned.scanner_gamma, 1.3);
    EXPECT_EQ(scanned.scanner_gain, 1);  // Unset: neutral.
    EXPECT_EQ(scanned.texture_scale, 0.02);
    EXPECT_NE(scanned.texture_seed, 0u);
  }
}

TEST(ScannerTest, NeutralScannerChangesNothing) {
  const cv::Mat img = Gradient(48);
  const cv::Mat out = ApplyAppearance(img, AppearanceParams{});
  EXPECT_EQ(cv::norm(out, img, cv::NORM_INF), 0);
}

TEST(ScannerTest, CurveMovesIntensityStatisticsAsIntended) {
  const cv::Mat img = Gradient(64);
  AppearanceParams dark;
  dark.scanner_gamma = 1.5;
  AppearanceParams bright;
  bright.scanner_gamma = 0.7;
  AppearanceParams lifted;
  lifted.scanner_gain = 0.8;
  lifted.scanner_offset = 0.12;
  EXPECT_LT(Mean(ApplyAppearance(img, dark)), Mean(img) - 0.05);
  EXPECT_GT(Mean(ApplyAppearance(img, bright)), Mean(img) + 0.05);
  const cv::Mat washed = ApplyAppearance(img, lifted);
  EXPECT_GT(Mean(washed), Mean(img) + 0.01);             // 0.12 + 0.8 * 0.5 = 0.52.
  EXPECT_NEAR(StdDev(washed), 0.8 * StdDev(img), 1e-3);  // Contrast compressed by the gain.
  double lowest = 0;
  cv::minMaxLoc(washed, &lowest);
  EXPECT_NEAR(lowest, 0.12 + 0.8 * 0.1, 1e-5);  // Lifted blacks.
}

TEST(ScannerTest, TextureHasItsSigmaAndScaleAndIsDeterministicPerSeed) {
  const int n = 96;
  const cv::Mat flat(n, n, CV_32F, cv::Scalar(0.5));
  AppearanceParams fine;
  fine.texture_sigma = 0.03;
  fine.texture_scale = 0.01;
  fine.texture_seed = 77;
  AppearanceParams coarse = fine;
  coarse.texture_scale = 0.05;
  const cv::Mat a = ApplyAppearance(flat, fine);
  EXPECT_NEAR(StdDev(a), 0.03, 0.003);
  EXPECT_NEAR(Mean(a), 0.5, 0.002);                                      // A texture, not a shift.
  EXPECT_EQ(cv::norm(a, ApplyAppearance(flat, fine), cv::NORM_INF), 0);  // Same seed: same image.
  AppearanceParams reseeded = fine;
  reseeded.texture_seed = 78;
  EXPECT_GT(cv::norm(a, ApplyAppearance(flat, reseeded), cv::NORM_INF), 0.01);
  // The scale: neighbouring pixels of the coarse texture are far more alike than those of the fine one.
  auto neighbour_difference = [](const cv::Mat& img) {
    return StdDev(img.colRange(1, img.cols) - img.colRange(0, img.cols - 1));
  };
  const cv::Mat b = ApplyAppearance(flat, coarse);
  EXPECT_NEAR(StdDev(b), 0.03, 0.006);
  EXPECT_LT(neighbour_difference(b), 0.5 * neighbour_difference(a));
}

TEST(ScannerTest, StripesAlongX) {
  const int n = 64;
  const cv::Mat flat(n, n, CV_32F, cv::Scalar(0.5));
  AppearanceParams p;
  p.stripe_amplitude = 0.04;
  p.stripe_period = 0.125;  // 8 px.
  const cv::Mat out = ApplyAppearance(flat, p);
  EXPECT_NEAR(out.at<float>(10, 0), 0.54, 1e-5);
  EXPECT_NEAR(out.at<float>(10, 4), 0.46, 1e-5);
  EXPECT_NEAR(out.at<float>(50, 8), 0.54, 1e-5);  // Every row alike.
  p.stripe_period = 0.001;                        // Below 2 px: 2 px, alternating columns.
  const cv::Mat fine = ApplyAppearance(flat, p);
  EXPECT_NEAR(fine.at<float>(3, 0) - fine.at<float>(3, 1), 0.08, 1e-5);
}

TEST(ScannerTest, BuiltinSitesHaveClearlyDifferentScanners) {
  const cv::Mat img = Gradient(64);
  std::map<std::string, AppearanceParams> params;
  for (const char* name : {"site-a", "site-b", "site-c"}) {
    absl::StatusOr<v1::SynthProfile> p = LoadProfile(name);
    ASSERT_TRUE(p.ok()) << p.status();
    ASSERT_TRUE(p->has_scanner()) << name;
    Rng rng(5);
    AppearanceParams a = DrawAppearance(*p, rng);
    // The scanner alone (every other effect neutral).
    AppearanceParams scanner;
    scanner.scanner_gamma = a.scanner_gamma;
    scanner.scanner_gain = a.scanner_gain;
    scanner.scanner_offset = a.scanner_offset;
    scanner.texture_sigma = a.texture_sigma;
    scanner.texture_scale = a.texture_scale;
    scanner.texture_seed = a.texture_seed;
    scanner.stripe_amplitude = a.stripe_amplitude;
    scanner.stripe_period = a.stripe_period;
    params[name] = scanner;
  }
  const double mean_a = Mean(ApplyAppearance(img, params["site-a"]));
  const double mean_b = Mean(ApplyAppearance(img, params["site-b"]));
  const double std_c = StdDev(ApplyAppearance(img, params["site-c"]));
  EXPECT_LT(mean_a, Mean(img) - 0.03);                                            // site-a darkens,
  EXPECT_GT(mean_b, Mean(img) + 0.03);                                            // site-b brightens,
  EXPECT_LT(std_c, 0.9 * StdDev(img));                                            // site-c compresses the range.
  EXPECT_GT(params["site-a"].texture_scale, 2 * params["site-c"].texture_scale);  // Coarse mottle vs grain.
  EXPECT_GT(params["site-c"].texture_scale, params["site-b"].texture_scale);
  EXPECT_GT(params["site-b"].stripe_amplitude, 0);
}

TEST(ScannerTest, ValidationNamesTheField) {
  absl::StatusOr<v1::SynthProfile> bad = ParseProfile("name: \"x\" scanner { gamma: -1 }", "x.textproto");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("scanner.gamma"));
  bad = ParseProfile("name: \"x\" scanner { texture_sigma: 0.9 }", "x.textproto");
  EXPECT_THAT(bad.status().message(), HasSubstr("scanner.texture_sigma"));
  EXPECT_TRUE(ParseProfile("name: \"x\" scanner { offset: -0.1 texture_sigma: 0.02 }", "x.textproto").ok());
}

}  // namespace
}  // namespace fedtune::synth
