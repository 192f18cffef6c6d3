#include "common/train/dp_sgd.h"

#include <torch/torch.h>

#include <cmath>
#include <map>
#include <numeric>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <random>
#include <tuple>

#include "common/model/ensemble.h"
#include "common/model/model_factory.h"
#include "common/train/loss.h"
#include "common/train/trainer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::train {
namespace {

using ::testing::HasSubstr;

model::Classifier TinyModel(double dropout, uint64_t seed = 11, const std::string& name = "mobilenet_v2_tiny") {
  torch::manual_seed(seed);
  auto config = model::ModelConfigForName(name);
  EXPECT_TRUE(config.ok());
  config->head_dropout = dropout;
  auto m = model::CreateModel(*config);
  EXPECT_TRUE(m.ok()) << m.status();
  return *m;
}

double Norm(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  double sq = 0;
  for (size_t k = 0; k < a.size(); ++k) sq += (a[k] - b[k]).to(torch::kFloat64).pow(2).sum().item<double>();
  return std::sqrt(sq);
}

// The acceptance test, first half: one sample's loss made huge moves the clipped sum by at most C.
TEST(DpSgdTest, AnOutliersContributionToTheClippedSumIsAtMostC) {
  // DenseNet's ReLUs (unlike MobileNetV2's ReLU6) let a bright image's logits, hence its loss, grow with it.
  model::Classifier model = TinyModel(0.0, 11, "densenet_tiny");
  torch::manual_seed(3);
  torch::Tensor x = torch::randn({5, 1, 32, 32});
  torch::Tensor y = (torch::rand({5, 14}) > 0.5).to(torch::kFloat32);
  torch::Tensor m = torch::ones({5, 14});
  // The outlier: a bright image whose targets are the opposite of what the model predicts for it.
  x[4] = x[4] * 1000;
  ASSERT_TRUE(SetDpTrainingMode(*model).ok());
  {
    torch::NoGradGuard no_grad;
    y[4] = (model->forward(x.narrow(0, 4, 1))[0] < 0).to(torch::kFloat32);
  }
  torch::Tensor pos_weight = torch::full({14}, 3.0);
  for (double clip : {0.05, 1.0}) {
    SCOPED_TRACE(::testing::Message() << "C " << clip);
    DpSgdOptions o;
    o.clip_norm = clip;
    auto with = ClippedNoisedGradient(model, x, y, m, pos_weight, o, nullptr);
    auto without =
        ClippedNoisedGradient(model, x.narrow(0, 0, 4), y.narrow(0, 0, 4), m.narrow(0, 0, 4), pos_weight, o, nullptr);
    ASSERT_TRUE(with.ok()) << with.status();
    ASSERT_TRUE(without.ok()) << without.status();
    ASSERT_EQ(with->sample_norms.size(), 5u);
    EXPECT_GT(with->sample_losses[4], 100.0);
    EXPECT_GT(with->sample_norms[4], 100.0 * clip);
    EXPECT_LE(Norm(with->clipped_sum, without->clipped_sum), clip * (1 + 1e-4));
    // The outlier's clipped gradient has norm ~C (it is clipped, not dropped).
    EXPECT_GE(Norm(with->clipped_sum, without->clipped_sum), clip * 0.99);
    // No noise: `noised` is the clipped sum divided by the expected batch size (1).
    EXPECT_LT(Norm(with->noised, with->clipped_sum), 1e-6);
  }
}

// Micro-batching gives each sample's own gradient: with a bound no sample reaches, the clipped sum is the gradient of
// the sum of the per-sample losses of one batched forward pass (BatchNorm frozen, so samples do not interact).
TEST(DpSgdTest, WithoutClippingTheSumIsTheGradientOfThePerSampleLosses) {
  model::Classifier model = TinyModel(0.0);
  torch::manual_seed(4);
  torch::Tensor x = torch::randn({3, 1, 32, 32});
  torch::Tensor y = torch::rand({3, 14});
  torch::Tensor m = (torch::rand({3, 14}) > 0.3).to(torch::kFloat32);
  DpSgdOptions o;
  o.clip_norm = 1e6;
  o.expected_batch_size = 2.0;
  auto sum = ClippedNoisedGradient(model, x, y, m, torch::Tensor(), o, nullptr);
  ASSERT_TRUE(sum.ok()) << sum.status();
  ASSERT_TRUE(SetDpTrainingMode(*model).ok());
  model->zero_grad();
  torch::Tensor logits = model->forward(x);
  torch::Tensor total = torch::zeros({});
  for (int64_t i = 0; i < 3; ++i) {
    total = total + MaskedBceWithLogits(logits.narrow(0, i, 1), y.narrow(0, i, 1), m.narrow(0, i, 1), torch::Tensor());
  }
  total.backward();
  std::vector<at::Tensor> reference;
  for (const auto& p : model->parameters()) reference.push_back(p.grad().clone());
  double ref_norm = 0;
  for (const auto& g : reference) ref_norm += g.pow(2).sum().item<double>();
  ref_norm = std::sqrt(ref_norm);
  ASSERT_GT(ref_norm, 1e-3);
  EXPECT_LT(Norm(sum->clipped_sum, reference), 1e-4 * ref_norm);
  std::vector<at::Tensor> halved;
  for (const auto& g : reference) halved.push_back(g / 2.0);
  EXPECT_LT(Norm(sum->noised, halved), 1e-4 * ref_norm);
}

// Several intra-op threads run whole images on worker threads: the same per-image norms and the same sum (up to
// the order of the additions), and the thread count is restored.
TEST(DpSgdTest, WorkerThreadsGiveTheSameResult) {
  model::Classifier model = TinyModel(0.0);
  torch::manual_seed(5);
  torch::Tensor x = torch::randn({5, 1, 32, 32});
  torch::Tensor y = torch::rand({5, 14});
  torch::Tensor m = torch::ones({5, 14});
  DpSgdOptions o;
  o.clip_norm = 0.2;
  const int before = at::get_num_threads();
  at::set_num_threads(1);
  auto one = ClippedNoisedGradient(model, x, y, m, torch::Tensor(), o, nullptr);
  at::set_num_threads(3);
  auto three = ClippedNoisedGradient(model, x, y, m, torch::Tensor(), o, nullptr);
  EXPECT_EQ(at::get_num_threads(), 3);
  at::set_num_threads(before);
  ASSERT_TRUE(one.ok()) << one.status();
  ASSERT_TRUE(three.ok()) << three.status();
  ASSERT_EQ(three->sample_norms.size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_NEAR(three->sample_norms[i], one->sample_norms[i], 1e-5 * one->sample_norms[i]) << i;
    EXPECT_NEAR(three->sample_losses[i], one->sample_losses[i], 1e-5 * one->sample_losses[i]) << i;
  }
  double total = 0;
  for (const auto& g : one->clipped_sum) total += g.pow(2).sum().item<double>();
  ASSERT_GT(total, 0.0);
  EXPECT_LT(Norm(three->clipped_sum, one->clipped_sum), 1e-5 * std::sqrt(total));
}

// The acceptance test, second half: the noise's standard deviation, measured over every coordinate of many steps,
// is sigma * C (divided by the expected batch size) within sampling error.
TEST(DpSgdTest, NoiseStandardDeviationIsSigmaTimesC) {
  model::Classifier model = TinyModel(0.0);
  DpRandom random = DpRandom::ForTestingOnly(42);
  DpSgdOptions o;
  o.noise_multiplier = 1.3;
  o.clip_norm = 0.7;
  o.expected_batch_size = 4.0;
  const double expected = 1.3 * 0.7 / 4.0;
  torch::Tensor x = torch::randn({2, 1, 32, 32});
  torch::Tensor y = torch::rand({2, 14});
  double sum = 0, sq = 0;
  int64_t n = 0;
  for (int step = 0; step < 20; ++step) {
    // Empty batches (noise only) and batches whose masks are all zero (zero gradients): the result is the noise.
    const int64_t b = step % 2 == 0 ? 0 : 2;
    auto g = ClippedNoisedGradient(model, x.narrow(0, 0, b), y.narrow(0, 0, b), torch::zeros({b, 14}), torch::Tensor(),
                                   o, &random);
    ASSERT_TRUE(g.ok()) << g.status();
    for (size_t k = 0; k < g->noised.size(); ++k) {
      EXPECT_EQ(g->clipped_sum[k].abs().max().item<double>(), 0.0);
      torch::Tensor v = g->noised[k].to(torch::kFloat64);
      sum += v.sum().item<double>();
      sq += v.pow(2).sum().item<double>();
      n += v.numel();
    }
  }
  ASSERT_GT(n, 100000);
  const double mean = sum / n;
  const double sd = std::sqrt(sq / n - mean * mean);
  // Standard errors: of the mean expected / sqrt(n), of the standard deviation expected / sqrt(2n); allow 6 of each.
  EXPECT_LT(std::abs(mean), 6 * expected / std::sqrt(n));
  EXPECT_LT(std::abs(sd - expected), 6 * expected / std::sqrt(2.0 * n))
      << "measured " << sd << " expected " << expected;
}

TEST(DpSgdTest, SystemEntropyGivesNoiseNoSeedReproduces) {
  auto a = DpRandom::FromSystemEntropy();
  auto b = DpRandom::FromSystemEntropy();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_FALSE(torch::equal(*a->StandardNormal({64}), *b->StandardNormal({64})));
  DpRandom c = DpRandom::ForTestingOnly(1);
  DpRandom d = DpRandom::ForTestingOnly(1);
  EXPECT_TRUE(torch::equal(*c.StandardNormal({64}), *d.StandardNormal({64})));
}

TEST(DpSgdTest, PoissonBatchesHaveTheExpectedSizeOnAverage) {
  DpRandom random = DpRandom::ForTestingOnly(7);
  const int64_t n = 1000, steps = 400;
  const double q = 0.05;
  std::vector<std::vector<size_t>> batches = random.PoissonBatches(n, q, steps);
  ASSERT_EQ(batches.size(), static_cast<size_t>(steps));
  double sum = 0, sq = 0;
  std::vector<int> hits(n, 0);
  for (const auto& batch : batches) {
    for (size_t i = 0; i < batch.size(); ++i) {
      ASSERT_LT(batch[i], static_cast<size_t>(n));
      if (i > 0) {
        ASSERT_LT(batch[i - 1], batch[i]);
      }
      ++hits[batch[i]];
    }
    sum += batch.size();
    sq += static_cast<double>(batch.size()) * batch.size();
  }
  const double mean = sum / steps, var = sq / steps - mean * mean;
  // Binomial(1000, 0.05): mean 50, variance 47.5; the mean of 400 steps has a standard error of 0.34.
  EXPECT_NEAR(mean, 50.0, 2.5);
  EXPECT_GT(var, 30.0);
  EXPECT_LT(var, 70.0);
  // Every position is sampled (not only the first ones): the first and last hundred samples each get ~2000 hits.
  EXPECT_NEAR(std::accumulate(hits.begin(), hits.begin() + 100, 0), 2000, 300);
  EXPECT_NEAR(std::accumulate(hits.end() - 100, hits.end(), 0), 2000, 300);
  for (const auto& batch : random.PoissonBatches(10, 1.0, 3)) EXPECT_EQ(batch.size(), 10u);
  for (const auto& batch : random.PoissonBatches(10, 0.0, 3)) EXPECT_TRUE(batch.empty());
}

TEST(DpSgdTest, TrainingModeFreezesBatchNormOnlyAndRefusesBatchNormWithoutStatistics) {
  model::Classifier model = TinyModel(0.2);
  ASSERT_TRUE(SetDpTrainingMode(*model).ok());
  int batch_norms = 0, dropouts = 0;
  for (const auto& m : model->modules()) {
    if (m->as<torch::nn::BatchNorm2d>()) {
      EXPECT_FALSE(m->is_training());
      ++batch_norms;
    } else if (m->as<torch::nn::Dropout>()) {
      EXPECT_TRUE(m->is_training());
      ++dropouts;
    }
  }
  EXPECT_GT(batch_norms, 5);
  EXPECT_EQ(dropouts, 1);
  torch::nn::Sequential bad(torch::nn::Conv2d(1, 2, 3),
                            torch::nn::BatchNorm2d(torch::nn::BatchNorm2dOptions(2).track_running_stats(false)));
  absl::Status s = SetDpTrainingMode(*bad);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("'1'"));
}

TEST(DpSgdTest, RefusesBadOptionsAndShapes) {
  model::Classifier model = TinyModel(0.0);
  torch::Tensor x = torch::randn({2, 1, 32, 32}), y = torch::rand({2, 14}), m = torch::ones({2, 14});
  DpRandom random = DpRandom::ForTestingOnly(1);
  for (auto [sigma, clip, expected] : std::vector<std::tuple<double, double, double>>{
           {0.05, 1, 1}, {-1, 1, 1}, {NAN, 1, 1}, {2e4, 1, 1}, {1, 0, 1}, {1, INFINITY, 1}, {1, 1, 0}}) {
    DpSgdOptions o;
    o.noise_multiplier = sigma;
    o.clip_norm = clip;
    o.expected_batch_size = expected;
    EXPECT_EQ(ClippedNoisedGradient(model, x, y, m, torch::Tensor(), o, &random).status().code(),
              absl::StatusCode::kInvalidArgument)
        << sigma << " " << clip << " " << expected;
  }
  DpSgdOptions noisy;
  noisy.noise_multiplier = 1;
  EXPECT_EQ(ClippedNoisedGradient(model, x, y, m, torch::Tensor(), noisy, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ClippedNoisedGradient(model, x, y.narrow(0, 0, 1), m, torch::Tensor(), noisy, &random).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Images with a bright disc (label 0 positive) or not; label 1 is the opposite.
std::vector<loader::LoaderSample> MakeData(const testing::TempDir& dir, const std::string& prefix, int count,
                                           bool lateral = false) {
  std::mt19937_64 rng(count);
  std::vector<loader::LoaderSample> out;
  for (int i = 0; i < count; ++i) {
    const bool positive = (i % 2) == 0;
    cv::Mat img(32, 32, CV_8UC1, cv::Scalar(40 + static_cast<int>(rng() % 20)));
    if (positive) cv::circle(img, cv::Point(8 + rng() % 16, 8 + rng() % 16), 6, cv::Scalar(230), -1);
    const std::string name = prefix + std::to_string(i) + ".png";
    cv::imwrite(dir.Join(name), img);
    loader::LoaderSample s;
    s.id = name;
    s.file = dir.Join(name);
    if (lateral) s.lateral_file = s.file;
    s.target[0] = positive ? 1.0f : 0.0f;
    s.target[1] = positive ? 0.0f : 1.0f;
    s.mask[0] = 1.0f;
    s.mask[1] = 1.0f;
    out.push_back(s);
  }
  return out;
}

loader::LoaderOptions LoaderOptionsForTest(bool training) {
  loader::LoaderOptions o;
  o.batch_size = 8;
  o.num_threads = 1;
  o.seed = 3;
  o.augment = training;
  o.shuffle = training;
  o.preprocess.size = 32;
  o.preprocess.crop_borders = false;
  return o;
}

std::map<std::string, torch::Tensor> Buffers(torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& b : m.named_buffers()) out[b.key()] = b.value().clone();
  return out;
}

TEST(DpSgdFitTest, TrainsWithFrozenBatchNormReportsItsStepsAndResumes) {
  testing::TempDir dir;
  auto train = loader::BatchLoader::Create(MakeData(dir, "t", 24), LoaderOptionsForTest(true));
  auto validation = loader::BatchLoader::Create(MakeData(dir, "v", 8), LoaderOptionsForTest(false));
  ASSERT_TRUE(train.ok() && validation.ok());
  model::Classifier model = TinyModel(0.2);
  const std::map<std::string, torch::Tensor> buffers = Buffers(*model);
  std::map<std::string, torch::Tensor> weights;
  for (const auto& p : model->named_parameters()) weights[p.key()] = p.value().detach().clone();
  TrainerOptions o;
  o.learning_rate = 0.01;
  o.max_epochs = 2;
  o.patience = 10;
  o.device = "cpu";
  o.progress = false;
  o.proximal_mu = 0.1;
  o.dp_noise_multiplier = 1.0;
  o.dp_clip_norm = 1.0;
  o.state_path = dir.Join("state.pt");
  auto result = Fit(model, **train, **validation, torch::Tensor(), o);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->history.size(), 2u);
  // 24 images, expected batch 8: q = 1/3, 3 steps per epoch.
  EXPECT_TRUE(result->dp.enabled);
  EXPECT_DOUBLE_EQ(result->dp.sample_rate, 8.0 / 24.0);
  EXPECT_EQ(result->dp.steps_per_epoch, 3);
  EXPECT_EQ(result->dp.steps, 6);
  EXPECT_EQ(result->dp.noise_multiplier, 1.0);
  EXPECT_EQ(result->dp.clip_norm, 1.0);
  for (const EpochRecord& r : result->history) {
    EXPECT_TRUE(std::isfinite(r.train_loss) && std::isfinite(r.validation_loss));
  }
  // Frozen BatchNorm: running statistics (and their counters) are those of the start; the weights moved.
  for (const auto& [name, b] : Buffers(*model)) EXPECT_TRUE(torch::equal(b, buffers.at(name))) << name;
  double moved = 0;
  for (const auto& p : model->named_parameters()) moved += (p.value() - weights.at(p.key())).abs().sum().item<double>();
  EXPECT_GT(moved, 0.0);

  // Resume: two more epochs on top of the two saved; the steps count all four.
  o.max_epochs = 4;
  auto resumed = Fit(model, **train, **validation, torch::Tensor(), o);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->resumed_after_epoch, 1);
  EXPECT_EQ(resumed->history.size(), 4u);
  EXPECT_EQ(resumed->dp.steps, 12);
  for (const auto& [name, b] : Buffers(*model)) EXPECT_TRUE(torch::equal(b, buffers.at(name))) << name;

  // Another noise multiplier does not resume this state.
  o.dp_noise_multiplier = 2.0;
  EXPECT_EQ(Fit(model, **train, **validation, torch::Tensor(), o).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(DpSgdFitTest, TrainsADuoNetOnPairs) {
  testing::TempDir dir;
  auto train = loader::BatchLoader::Create(MakeData(dir, "t", 8, /*lateral=*/true), LoaderOptionsForTest(true));
  auto validation = loader::BatchLoader::Create(MakeData(dir, "v", 4, /*lateral=*/true), LoaderOptionsForTest(false));
  ASSERT_TRUE(train.ok() && validation.ok());
  model::DuoNet duo(TinyModel(0.0, 1), TinyModel(0.0, 2), 14, 0.2);
  const std::map<std::string, torch::Tensor> buffers = Buffers(*duo);
  std::map<std::string, torch::Tensor> weights;
  for (const auto& p : duo->named_parameters()) weights[p.key()] = p.value().detach().clone();
  TrainerOptions o;
  o.max_epochs = 1;
  o.device = "cpu";
  o.progress = false;
  o.dp_noise_multiplier = 0.5;
  o.dp_clip_norm = 0.5;
  auto result = FitDuo(duo, **train, **validation, torch::Tensor(), o);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->dp.enabled);
  EXPECT_DOUBLE_EQ(result->dp.sample_rate, 1.0);  // Expected batch 8 of 8 pairs.
  EXPECT_EQ(result->dp.steps, 1);
  for (const auto& [name, b] : Buffers(*duo)) EXPECT_TRUE(torch::equal(b, buffers.at(name))) << name;
  // The backbones' unused heads are left alone (and trainable again); the rest moved.
  const std::string head = duo->frontal()->head_prefix();
  for (const auto& p : duo->named_parameters()) {
    EXPECT_TRUE(p.value().requires_grad()) << p.key();
    const bool unused = p.key().rfind("frontal." + head, 0) == 0 || p.key().rfind("lateral." + head, 0) == 0;
    if (unused) {
      EXPECT_TRUE(torch::equal(p.value(), weights.at(p.key()))) << p.key();
    }
  }
  EXPECT_FALSE(torch::equal(duo->named_parameters()["fc.weight"], weights.at("fc.weight")));
}

TEST(DpSgdFitTest, RefusesBadDpOptions) {
  testing::TempDir dir;
  auto train = loader::BatchLoader::Create(MakeData(dir, "t", 4), LoaderOptionsForTest(true));
  ASSERT_TRUE(train.ok());
  model::Classifier model = TinyModel(0.0);
  TrainerOptions o;
  o.device = "cpu";
  o.progress = false;
  o.max_epochs = 1;
  struct Case {
    double sigma, clip;
    bool mixed;
    const char* message;
  } cases[] = {{0.05, 1, false, "noise multiplier"},   {-1, 1, false, "dp_noise_multiplier"},
               {NAN, 1, false, "dp_noise_multiplier"}, {1, 0, false, "clip norm"},
               {1, NAN, false, "clip norm"},           {1, 1, true, "mixed_precision"}};
  for (const Case& c : cases) {
    o.dp_noise_multiplier = c.sigma;
    o.dp_clip_norm = c.clip;
    o.mixed_precision = c.mixed;
    absl::Status s = Fit(model, **train, **train, torch::Tensor(), o).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.sigma << " " << c.clip;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.message));
  }
}

}  // namespace
}  // namespace fedtune::train
