#include "common/eval/grad_cam.h"

#include <torch/torch.h>

#include <memory>
#include <vector>

#include "common/model/model_factory.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/eval/known_answer_classifier.h"

namespace fedtune::eval {
namespace {

using ::fedtune::testing::KnownAnswerClassifier;

constexpr int kSize = 32;

// Background 0, a bright square (value 1) at rows/cols [8, 16), a dark square (value -0.5) at rows [20, 28),
// cols [4, 12).
torch::Tensor TestImage() {
  torch::Tensor image = torch::zeros({1, 1, kSize, kSize});
  image.index_put_({0, 0, torch::indexing::Slice(8, 16), torch::indexing::Slice(8, 16)}, 1.0);
  image.index_put_({0, 0, torch::indexing::Slice(20, 28), torch::indexing::Slice(4, 12)}, -0.5);
  return image;
}

std::pair<int64_t, int64_t> ArgMax2d(const torch::Tensor& map) {
  const int64_t flat = map.flatten().argmax().item<int64_t>();
  return {flat / map.size(1), flat % map.size(1)};
}

TEST(GradCamTest, KnownModelGivesTheReluOfItsEvidence) {
  // Label 0 looks for brightness, label 1 for darkness.
  KnownAnswerClassifier model({{1.0f, 0.0f}, {0.0f, 1.0f}});
  const torch::Tensor image = TestImage();

  absl::StatusOr<at::Tensor> bright = GradCam(model, image, 0);
  ASSERT_TRUE(bright.ok()) << bright.status();
  ASSERT_EQ(bright->sizes(), (std::vector<int64_t>{kSize, kSize}));
  EXPECT_EQ(bright->scalar_type(), torch::kFloat32);
  const torch::Tensor expected_bright = torch::relu(image[0][0]) / (kSize * kSize);
  EXPECT_TRUE(torch::allclose(*bright, expected_bright, /*rtol=*/1e-5, /*atol=*/1e-9));
  // Peak inside the bright square; the dark square and the background are exactly 0.
  auto [row, col] = ArgMax2d(*bright);
  EXPECT_TRUE(row >= 8 && row < 16 && col >= 8 && col < 16) << row << "," << col;
  EXPECT_EQ(bright->index({torch::indexing::Slice(20, 28), torch::indexing::Slice(4, 12)}).abs().max().item<float>(),
            0.0f);
  EXPECT_EQ((*bright)[0][0].item<float>(), 0.0f);

  absl::StatusOr<at::Tensor> dark = GradCam(model, image, 1);
  ASSERT_TRUE(dark.ok()) << dark.status();
  EXPECT_TRUE(torch::allclose(*dark, torch::relu(-image[0][0]) / (kSize * kSize), 1e-5, 1e-9));
  std::tie(row, col) = ArgMax2d(*dark);
  EXPECT_TRUE(row >= 20 && row < 28 && col >= 4 && col < 12) << row << "," << col;
  EXPECT_EQ(dark->index({torch::indexing::Slice(8, 16), torch::indexing::Slice(8, 16)}).abs().max().item<float>(),
            0.0f);
}

TEST(GradCamTest, MixedWeightsAreSummedBeforeTheRelu) {
  // y = mean(bright) - 3 mean(dark): the dark square is negative evidence and is cut by the ReLU, the bright square
  // stays.
  KnownAnswerClassifier model({{2.0f, -3.0f}});
  const torch::Tensor image = TestImage();
  absl::StatusOr<at::Tensor> cam = GradCam(model, image, 0);
  ASSERT_TRUE(cam.ok()) << cam.status();
  const torch::Tensor expected =
      torch::relu(2.0 * torch::relu(image[0][0]) - 3.0 * torch::relu(-image[0][0])) / (kSize * kSize);
  EXPECT_TRUE(torch::allclose(*cam, expected, 1e-5, 1e-9));
  EXPECT_NEAR((*cam)[10][10].item<float>(), 2.0f / (kSize * kSize), 1e-8);
}

TEST(GradCamTest, OnlyNegativeEvidenceGivesAnAllZeroMap) {
  KnownAnswerClassifier model({{-1.0f, -1.0f}});
  absl::StatusOr<at::Tensor> cam = GradCam(model, TestImage(), 0);
  ASSERT_TRUE(cam.ok()) << cam.status();
  EXPECT_EQ(cam->abs().max().item<float>(), 0.0f);

  std::vector<model::Classifier> members = {
      std::make_shared<KnownAnswerClassifier>(std::vector<std::vector<float>>{{-1.0f, -1.0f}})};
  absl::StatusOr<at::Tensor> ensemble = EnsembleGradCam(members, TestImage(), 0);
  ASSERT_TRUE(ensemble.ok()) << ensemble.status();
  EXPECT_TRUE(ensemble->isfinite().all().item<bool>());
  EXPECT_EQ(ensemble->abs().max().item<float>(), 0.0f);
}

TEST(GradCamTest, CoarseFeatureMapsAreUpsampledToTheInput) {
  KnownAnswerClassifier model({{1.0f, 0.0f}}, /*pool_factor=*/4);  // 8 x 8 feature map.
  absl::StatusOr<at::Tensor> cam = GradCam(model, TestImage(), 0);
  ASSERT_TRUE(cam.ok()) << cam.status();
  ASSERT_EQ(cam->sizes(), (std::vector<int64_t>{kSize, kSize}));
  EXPECT_GE(cam->min().item<float>(), 0.0f);
  auto [row, col] = ArgMax2d(*cam);
  EXPECT_TRUE(row >= 8 && row < 16 && col >= 8 && col < 16) << row << "," << col;
  // Far from the bright square the map is 0; bilinear upsampling of the 8 x 8 map equals its own interpolation.
  EXPECT_EQ((*cam)[28][28].item<float>(), 0.0f);
  EXPECT_EQ((*cam)[0][31].item<float>(), 0.0f);
  const torch::Tensor coarse = torch::avg_pool2d(torch::relu(TestImage()), 4) / 64.0;
  const torch::Tensor expected = torch::nn::functional::interpolate(coarse,
                                                                    torch::nn::functional::InterpolateFuncOptions()
                                                                        .size(std::vector<int64_t>{kSize, kSize})
                                                                        .mode(torch::kBilinear)
                                                                        .align_corners(false));
  EXPECT_TRUE(torch::allclose(*cam, expected[0][0], 1e-5, 1e-9));
}

TEST(GradCamTest, EnsembleAveragesMembersAndScalesToOne) {
  // Member 0 sees the bright square (peak 1/1024), member 1 the dark square (peak 0.5/1024): the mean peaks in the
  // bright square, so after scaling bright = 1 and dark = 0.5.
  std::vector<model::Classifier> members = {
      std::make_shared<KnownAnswerClassifier>(std::vector<std::vector<float>>{{1.0f, 0.0f}}),
      std::make_shared<KnownAnswerClassifier>(std::vector<std::vector<float>>{{0.0f, 1.0f}})};
  const torch::Tensor image = TestImage();
  absl::StatusOr<at::Tensor> cam = EnsembleGradCam(members, image, 0);
  ASSERT_TRUE(cam.ok()) << cam.status();
  EXPECT_TRUE(torch::allclose(*cam, image[0][0].abs(), 1e-5, 1e-7));
  EXPECT_FLOAT_EQ((*cam)[10][10].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ((*cam)[24][6].item<float>(), 0.5f);
  EXPECT_EQ((*cam)[0][0].item<float>(), 0.0f);
}

TEST(GradCamTest, RestoresModeAndLeavesParameterGradientsAlone) {
  KnownAnswerClassifier model({{1.0f, 0.0f}});
  model.train();
  for (const torch::Tensor& p : model.parameters()) ASSERT_FALSE(p.grad().defined());
  ASSERT_TRUE(GradCam(model, TestImage(), 0).ok());
  EXPECT_TRUE(model.is_training());
  for (const torch::Tensor& p : model.parameters()) {
    EXPECT_TRUE(p.requires_grad());
    EXPECT_FALSE(p.grad().defined());
  }

  model.eval();
  for (torch::Tensor& p : model.parameters()) p.set_requires_grad(false);
  absl::StatusOr<at::Tensor> frozen = GradCam(model, TestImage(), 0);
  ASSERT_TRUE(frozen.ok()) << frozen.status();  // Works on a frozen model too.
  EXPECT_GT(frozen->max().item<float>(), 0.0f);
  EXPECT_FALSE(model.is_training());
  for (const torch::Tensor& p : model.parameters()) EXPECT_FALSE(p.requires_grad());
  // Also under an enclosing NoGradGuard, as evaluation code usually runs.
  torch::NoGradGuard no_grad;
  absl::StatusOr<at::Tensor> guarded = GradCam(model, TestImage(), 0);
  ASSERT_TRUE(guarded.ok()) << guarded.status();
  EXPECT_TRUE(torch::equal(*guarded, *frozen));
}

TEST(GradCamTest, RejectsBadInputs) {
  KnownAnswerClassifier model({{1.0f, 0.0f}, {0.0f, 1.0f}});
  const torch::Tensor image = TestImage();
  EXPECT_EQ(GradCam(model, image, 2).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GradCam(model, image, -1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GradCam(model, image[0], 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GradCam(model, torch::zeros({2, 1, kSize, kSize}), 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GradCam(model, torch::zeros({1, 1, kSize, kSize}, torch::kInt64), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GradCam(model, torch::Tensor(), 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EnsembleGradCam({}, image, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EnsembleGradCam({nullptr}, image, 0).status().code(), absl::StatusCode::kInvalidArgument);
  absl::Status status =
      EnsembleGradCam({std::make_shared<KnownAnswerClassifier>(std::vector<std::vector<float>>{{1.0f, 0.0f}})}, image,
                      1)
          .status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr("member 0"));
}

TEST(GradCamTest, RealTinyModels) {
  torch::manual_seed(7);
  std::vector<model::Classifier> members;
  for (const char* name : {"mobilenet_v2_tiny", "densenet_tiny"}) {
    absl::StatusOr<model::ModelConfig> config = model::ModelConfigForName(name);
    ASSERT_TRUE(config.ok()) << config.status();
    absl::StatusOr<model::Classifier> model = model::CreateModel(*config);
    ASSERT_TRUE(model.ok()) << model.status();
    members.push_back(*model);
  }
  const torch::Tensor image = torch::randn({1, 1, 64, 64});
  for (size_t i = 0; i < members.size(); ++i) {
    absl::StatusOr<at::Tensor> cam = GradCam(*members[i], image, 3);
    ASSERT_TRUE(cam.ok()) << cam.status();
    EXPECT_EQ(cam->sizes(), (std::vector<int64_t>{64, 64}));
    EXPECT_TRUE(cam->isfinite().all().item<bool>());
    EXPECT_GE(cam->min().item<float>(), 0.0f);
    EXPECT_TRUE(members[i]->is_training());  // CreateModel returns train() mode; restored.
  }
  absl::StatusOr<at::Tensor> ensemble = EnsembleGradCam(members, image, 3);
  ASSERT_TRUE(ensemble.ok()) << ensemble.status();
  EXPECT_EQ(ensemble->sizes(), (std::vector<int64_t>{64, 64}));
  EXPECT_TRUE(ensemble->isfinite().all().item<bool>());
  EXPECT_GE(ensemble->min().item<float>(), 0.0f);
  EXPECT_FLOAT_EQ(ensemble->max().item<float>(), 1.0f);

  // The ensemble of one model twice is that model's map scaled to [0, 1].
  absl::StatusOr<at::Tensor> single = GradCam(*members[0], image, 3);
  absl::StatusOr<at::Tensor> doubled = EnsembleGradCam({members[0], members[0]}, image, 3);
  ASSERT_TRUE(single.ok() && doubled.ok());
  EXPECT_TRUE(torch::allclose(*doubled, *single / single->max(), 1e-5, 1e-6));

  // A 3-channel image for a 1-channel model is a LibTorch error, reported as Internal.
  EXPECT_EQ(GradCam(*members[0], torch::randn({1, 3, 64, 64}), 0).status().code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace fedtune::eval
