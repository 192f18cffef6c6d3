#include "common/synth/phantom.h"

#include <algorithm>
#include <functional>
#include <string>

#include "common/data/chexpert_labels.h"
#include "gtest/gtest.h"
#include "opencv2/imgproc.hpp"

namespace fedtune::synth {
namespace {

constexpr int kSize = 64;
constexpr int kSeeds = 6;

struct Box {
  double u0, v0, u1, v1;
};
Box Mirror(Box b) { return {1 - b.u1, b.v0, 1 - b.u0, b.v1}; }

double MeanIn(const cv::Mat& m, Box b) {
  const int n = m.rows;
  const cv::Rect r(static_cast<int>(b.u0 * n), static_cast<int>(b.v0 * n),
                   std::max(1, static_cast<int>((b.u1 - b.u0) * n)), std::max(1, static_cast<int>((b.v1 - b.v0) * n)));
  return cv::mean(m(r))[0];
}

cv::Mat Render(View view, uint64_t seed, int label, int size = kSize) {
  PhantomSpec spec;
  spec.view = view;
  spec.seed = seed;
  if (label > 0) {
    spec.findings[label] = true;
    spec.own_sign[label] = true;
  }
  return RenderPhantom(spec, size);
}

// with - without, same anatomy.
cv::Mat SignDiff(int label, uint64_t seed, View view = View::kFrontalPA, int size = kSize) {
  return Render(view, seed, label, size) - Render(view, seed, 0, size);
}

double MaxIn(const cv::Mat& m) {
  double lo, hi;
  cv::minMaxLoc(m, &lo, &hi);
  return hi;
}

// Fraction of the positive change that lies inside box (or its mirror image).
double PositiveMassIn(const cv::Mat& diff, Box b) {
  cv::Mat pos = cv::max(diff, 0.0);
  const double total = cv::sum(pos)[0];
  const int n = diff.rows;
  cv::Mat inside = cv::Mat::zeros(diff.size(), CV_32F);
  for (Box x : {b, Mirror(b)}) {
    inside(cv::Rect(static_cast<int>(x.u0 * n), static_cast<int>(x.v0 * n), static_cast<int>((x.u1 - x.u0) * n),
                    static_cast<int>((x.v1 - x.v0) * n)))
        .setTo(1.0);
  }
  return total > 0 ? cv::sum(pos.mul(inside))[0] / total : 0;
}

TEST(PhantomTest, DeterministicAndInRange) {
  const cv::Mat a = Render(View::kFrontalAP, 5, data::kEdema);
  const cv::Mat b = Render(View::kFrontalAP, 5, data::kEdema);
  ASSERT_EQ(a.type(), CV_32F);
  ASSERT_EQ(a.rows, kSize);
  EXPECT_EQ(cv::norm(a, b, cv::NORM_INF), 0.0);
  EXPECT_GT(cv::norm(a, Render(View::kFrontalAP, 6, data::kEdema), cv::NORM_INF), 0.05);
  double lo, hi;
  cv::minMaxLoc(a, &lo, &hi);
  EXPECT_GE(lo, 0.0);
  EXPECT_LE(hi, 1.0);
  // Lungs are dark, the mediastinum bright.
  EXPECT_LT(MeanIn(a, {0.2, 0.3, 0.3, 0.45}), 0.4);
  EXPECT_GT(MeanIn(a, {0.46, 0.1, 0.54, 0.4}), 0.45);
}

// Each sign, measured where a radiologist would look, on six anatomies.
struct SignCase {
  int label;
  std::function<void(const cv::Mat& diff, const std::string& where)> check;
};

TEST(PhantomTest, EachSignChangesItsRegion) {
  const Box kRightBase{0.12, 0.64, 0.3, 0.76};     // Costophrenic angle (patient's right, image left).
  const Box kRightApex{0.14, 0.2, 0.3, 0.45};      // Apical and lateral upper zone.
  const Box kRightMid{0.2, 0.35, 0.4, 0.6};        // Perihilar zone.
  const Box kRightWall{0.1, 0.25, 0.2, 0.6};       // Lateral chest wall.
  const Box kLungs{0.1, 0.14, 0.45, 0.8};          // One lung field's box.
  const Box kHeartBorder{0.29, 0.55, 0.37, 0.68};  // Right heart border beyond a normal heart.
  const Box kHeartBorderL{0.7, 0.55, 0.78, 0.68};  // Left heart border beyond a normal heart.
  const Box kMediastinumSide{0.37, 0.25, 0.43, 0.4};
  auto either = [](const cv::Mat& d, Box b) { return std::max(MeanIn(d, b), MeanIn(d, Mirror(b))); };
  const std::vector<SignCase> cases = {
      {data::kEnlargedCardiomediastinum,
       [&](const cv::Mat& d, const std::string& w) { EXPECT_GT(MeanIn(d, kMediastinumSide), 0.15) << w; }},
      {data::kCardiomegaly,
       [&](const cv::Mat& d, const std::string& w) {
         EXPECT_GT(MeanIn(d, kHeartBorder) + MeanIn(d, kHeartBorderL), 0.2) << w;
       }},
      {data::kLungOpacity,
       [&](const cv::Mat& d, const std::string& w) {
         EXPECT_GT(either(d, kLungs), 0.01) << w;
         EXPECT_GT(PositiveMassIn(d, kLungs), 0.9) << w;
       }},
      {data::kLungLesion,
       [&](const cv::Mat& d, const std::string& w) {
         EXPECT_GT(MaxIn(d), 0.25) << w;
         EXPECT_GT(PositiveMassIn(d, kLungs), 0.95) << w;
       }},
      {data::kEdema,
       [&](const cv::Mat& d, const std::string& w) {
         EXPECT_GT(MeanIn(d, kRightMid), 0.08) << w;  // Bilateral.
         EXPECT_GT(MeanIn(d, Mirror(kRightMid)), 0.08) << w;
       }},
      {data::kConsolidation,
       [&](const cv::Mat& d, const std::string& w) {
         EXPECT_GT(either(d, kLungs), 0.04) << w;
         EXPECT_GT(PositiveMassIn(d, kLungs), 0.95) << w;
       }},
      {data::kPneumonia,
       [&](const cv::Mat& d, const std::string& w) {
         EXPECT_GT(either(d, kLungs), 0.01) << w;
         EXPECT_GT(MaxIn(d), 0.2) << w;
       }},
      {data::kAtelectasis,
       [&](const cv::Mat& d, const std::string& w) {
         EXPECT_GT(MaxIn(d), 0.2) << w;
         EXPECT_GT(PositiveMassIn(d, {0.1, 0.45, 0.45, 0.8}), 0.95) << w;  // Lower zones.
       }},
      {data::kPneumothorax,
       [&](const cv::Mat& d, const std::string& w) {
         EXPECT_LT(std::min(MeanIn(d, kRightApex), MeanIn(d, Mirror(kRightApex))), -0.03) << w;
       }},
      {data::kPleuralEffusion,
       [&](const cv::Mat& d, const std::string& w) {
         EXPECT_GT(either(d, kRightBase), 0.12) << w;
         EXPECT_NEAR(MeanIn(d, kRightApex), 0.0, 0.01) << w;  // Upper zones untouched.
       }},
      {data::kPleuralOther,
       [&](const cv::Mat& d, const std::string& w) { EXPECT_GT(either(d, kRightWall), 0.04) << w; }},
      {data::kFracture,
       [&](const cv::Mat& d, const std::string& w) {
         EXPECT_GT(MaxIn(d), 0.2) << w;
         EXPECT_GT(PositiveMassIn(d, {0.0, 0.0, 0.35, 1.0}), 0.9) << w;  // At the lateral ribs.
       }},
      {data::kSupportDevices, [&](const cv::Mat& d, const std::string& w) { EXPECT_GT(MaxIn(d), 0.3) << w; }},
  };
  for (const SignCase& c : cases) {
    for (uint64_t seed = 1; seed <= kSeeds; ++seed) {
      c.check(SignDiff(c.label, seed), std::string(data::kChexpertLabels[c.label]) + " seed " + std::to_string(seed));
    }
  }
}

TEST(PhantomTest, EverySignSurvivesA32PixelImageInBothViews) {
  for (int label = 1; label < data::kNumChexpertLabels; ++label) {
    for (View view : {View::kFrontalAP, View::kLateral}) {
      for (uint64_t seed = 1; seed <= 3; ++seed) {
        const cv::Mat d = cv::abs(SignDiff(label, seed, view, 32));
        // Large enough to learn: a visible peak and a footprint of several pixels.
        EXPECT_GT(MaxIn(d), 0.06) << data::kChexpertLabels[label] << " view " << static_cast<int>(view);
        EXPECT_GT(cv::countNonZero(d > 0.03), 3) << data::kChexpertLabels[label];
      }
    }
  }
}

TEST(PhantomTest, LateralSignsAtPlausiblePlaces) {
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    // Effusion fills the posterior costophrenic sulcus (bottom right of the lateral view).
    EXPECT_GT(MeanIn(SignDiff(data::kPleuralEffusion, seed, View::kLateral), {0.62, 0.68, 0.76, 0.78}), 0.1);
    // The enlarged heart reaches further back and down.
    EXPECT_GT(MeanIn(SignDiff(data::kCardiomegaly, seed, View::kLateral), {0.48, 0.55, 0.58, 0.7}), 0.1);
  }
}

TEST(PhantomTest, TogglingOneSignLeavesTheRestUnchanged) {
  PhantomSpec spec;
  spec.seed = 9;
  spec.findings[data::kEdema] = spec.findings[data::kSupportDevices] = true;
  const cv::Mat before = RenderPhantom(spec, kSize);
  spec.findings[data::kLungLesion] = true;
  const cv::Mat after = RenderPhantom(spec, kSize);
  const int changed = cv::countNonZero(cv::abs(after - before) > 1e-4);
  EXPECT_GT(changed, 4);
  EXPECT_LT(changed, kSize * kSize / 20);  // Only around the nodule.
}

}  // namespace
}  // namespace fedtune::synth
