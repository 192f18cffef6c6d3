// A cheap stand-in for the study's hypothesis on the synthetic data: a linear model on 16x16 thumbnails, trained
// on `public`, detects the large signs on public images, loses AUC on a hospital profile, and a model trained on
// that hospital's own images does better there. (tests/common/synth/shift_experiment.py runs the same comparison
// with a small CNN and fine-tuning; it takes minutes, so it is not part of the test suite.)
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "common/data/chexpert_labels.h"
#include "common/synth/generator.h"
#include "common/synth/profile.h"
#include "gtest/gtest.h"
#include "opencv2/imgproc.hpp"

namespace fedtune::synth {
namespace {

constexpr int kThumb = 16;
constexpr int kFeatures = kThumb * kThumb + 1;  // Pixels + bias.
const int kLabels[] = {data::kCardiomegaly, data::kEdema, data::kPleuralEffusion, data::kEnlargedCardiomediastinum};

struct Set {
  std::vector<std::vector<float>> x;
  std::vector<TrueFindings> y;
};

// Frontal images only, normalized with the study's fixed mean/std (not per set: the shift must stay visible).
Set Make(const std::string& profile_name, int count, uint64_t seed) {
  auto profile = LoadProfile(profile_name);
  EXPECT_TRUE(profile.ok()) << profile.status();
  Set set;
  for (const PlannedImage& im : PlanDataset(*profile, count, seed, 0)) {
    if (!IsFrontal(im.view)) continue;
    cv::Mat small;
    cv::resize(RenderPlannedImage(*profile, im, 32), small, cv::Size(kThumb, kThumb), 0, 0, cv::INTER_AREA);
    std::vector<float> f(kFeatures, 1.0f);
    for (int i = 0; i < kThumb * kThumb; ++i) f[i] = (small.at<float>(i / kThumb, i % kThumb) - 0.449f) / 0.226f;
    set.x.push_back(std::move(f));
    set.y.push_back(im.truth);
  }
  return set;
}

// L2-regularized logistic regression by full-batch gradient descent.
std::vector<double> Fit(const Set& s, int label) {
  std::vector<double> w(kFeatures, 0.0);
  const double n = s.x.size();
  for (int iter = 0; iter < 300; ++iter) {
    std::vector<double> grad(kFeatures, 0.0);
    for (size_t i = 0; i < s.x.size(); ++i) {
      double z = 0;
      for (int j = 0; j < kFeatures; ++j) z += w[j] * s.x[i][j];
      const double err = 1.0 / (1.0 + std::exp(-z)) - (s.y[i].present[label] ? 1.0 : 0.0);
      for (int j = 0; j < kFeatures; ++j) grad[j] += err * s.x[i][j];
    }
    for (int j = 0; j < kFeatures; ++j) w[j] -= 0.05 * (grad[j] / n + 1e-3 * w[j]);
  }
  return w;
}

// Mann-Whitney AUC (ties count half).
double Auc(const std::vector<double>& w, const Set& s, int label) {
  std::vector<double> pos, neg;
  for (size_t i = 0; i < s.x.size(); ++i) {
    const double z = std::inner_product(w.begin(), w.end(), s.x[i].begin(), 0.0);
    (s.y[i].present[label] ? pos : neg).push_back(z);
  }
  double wins = 0;
  for (double p : pos) {
    for (double q : neg) wins += p > q ? 1.0 : p == q ? 0.5 : 0.0;
  }
  return wins / (pos.size() * neg.size());
}

class LearnabilityTest : public ::testing::TestWithParam<const char*> {};

TEST_P(LearnabilityTest, PublicModelLearnsLosesOnSiteAndSiteModelDoesBetter) {
  const std::string site = GetParam();
  const Set public_train = Make("public", 700, 101);
  const Set public_test = Make("public", 400, 102);
  const Set site_train = Make(site, 700, 103);
  const Set site_test = Make(site, 400, 104);
  double public_on_public = 0, public_on_site = 0, site_on_site = 0;
  for (int label : kLabels) {
    const std::vector<double> w_public = Fit(public_train, label);
    const std::vector<double> w_site = Fit(site_train, label);
    const double a = Auc(w_public, public_test, label), b = Auc(w_public, site_test, label),
                 c = Auc(w_site, site_test, label);
    SCOPED_TRACE(data::kChexpertLabels[label]);
    EXPECT_GT(a, 0.8);
    public_on_public += a / std::size(kLabels);
    public_on_site += b / std::size(kLabels);
    site_on_site += c / std::size(kLabels);
  }
  RecordProperty("public_on_public", std::to_string(public_on_public));
  RecordProperty("public_on_site", std::to_string(public_on_site));
  RecordProperty("site_on_site", std::to_string(site_on_site));
  EXPECT_LT(public_on_site, public_on_public - 0.05);
  EXPECT_GT(site_on_site, public_on_site + 0.01);
  EXPECT_GT(public_on_site, 0.55);  // Shifted, but still better than chance.
}

INSTANTIATE_TEST_SUITE_P(Sites, LearnabilityTest, ::testing::Values("site-a", "site-b", "site-c"));

}  // namespace
}  // namespace fedtune::synth
