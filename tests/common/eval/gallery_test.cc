#include "common/eval/gallery.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <memory>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <vector>

#include "common/eval/overlay.h"
#include "common/model/model_factory.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/eval/known_answer_classifier.h"

namespace fedtune::eval {
namespace {

using ::fedtune::testing::KnownAnswerClassifier;
using ::testing::ElementsAre;

TEST(TopScoringIndicesTest, HighestFirstWithDeterministicTies) {
  const std::vector<double> scores = {0.2, 0.9, 0.5, 0.9, std::nan(""), 0.1};
  EXPECT_THAT(TopScoringIndices(scores, 3), ElementsAre(1, 3, 2));
  EXPECT_THAT(TopScoringIndices(scores, 1), ElementsAre(1));
  EXPECT_THAT(TopScoringIndices(scores, 0), ElementsAre());
  EXPECT_THAT(TopScoringIndices(scores, 100), ElementsAre(1, 3, 2, 0, 5));
  EXPECT_THAT(TopScoringIndices({}, 2), ElementsAre());
}

imaging::PreprocessedImage BrightSquareImage() {
  imaging::PreprocessedImage image;
  image.size = 32;
  image.pixels.assign(32 * 32, 0.2f);
  for (int r = 8; r < 16; ++r) {
    for (int c = 8; c < 16; ++c) image.pixels[r * 32 + c] = 1.0f;
  }
  return image;
}

TEST(EnsembleGradCamOverlayPngTest, NormalizesTheImageAndOverlaysTheEnsembleMap) {
  // Bright-evidence model: its map is ReLU of the normalized image, i.e. non-zero only where the pixel exceeds the
  // normalization mean (the bright square).
  std::vector<model::Classifier> members = {
      std::make_shared<KnownAnswerClassifier>(std::vector<std::vector<float>>{{1.0f, 0.0f}})};
  imaging::PreprocessOptions options;
  options.mean = 0.5f;
  options.std = 0.25f;
  const imaging::PreprocessedImage image = BrightSquareImage();
  absl::StatusOr<std::string> png = EnsembleGradCamOverlayPng(members, image, options, 0, 0.5);
  ASSERT_TRUE(png.ok()) << png.status();

  at::Tensor expected_cam = at::zeros({32, 32});
  expected_cam.slice(0, 8, 16).slice(1, 8, 16).fill_(1.0);
  absl::StatusOr<std::string> expected = GradCamOverlayPng(image.pixels, 32, expected_cam, 0.5);
  ASSERT_TRUE(expected.ok());
  EXPECT_EQ(*png, *expected);

  std::vector<uchar> bytes(png->begin(), png->end());
  const cv::Mat decoded = cv::imdecode(bytes, cv::IMREAD_COLOR);
  ASSERT_EQ(decoded.rows, 32);
  EXPECT_GT(decoded.at<cv::Vec3b>(12, 12)[2], decoded.at<cv::Vec3b>(12, 12)[0]);  // Red in the square.
  EXPECT_GT(decoded.at<cv::Vec3b>(28, 28)[0], decoded.at<cv::Vec3b>(28, 28)[2]);  // Blue outside.
}

TEST(EnsembleGradCamOverlayPngTest, RealTinyModelAndErrors) {
  torch::manual_seed(3);
  absl::StatusOr<model::ModelConfig> config = model::ModelConfigForName("resnext_tiny");
  ASSERT_TRUE(config.ok());
  absl::StatusOr<model::Classifier> model = model::CreateModel(*config);
  ASSERT_TRUE(model.ok()) << model.status();
  const imaging::PreprocessedImage image = BrightSquareImage();
  absl::StatusOr<std::string> png = EnsembleGradCamOverlayPng({*model}, image, imaging::PreprocessOptions(), 13);
  ASSERT_TRUE(png.ok()) << png.status();
  std::vector<uchar> bytes(png->begin(), png->end());
  const cv::Mat decoded = cv::imdecode(bytes, cv::IMREAD_COLOR);
  EXPECT_EQ(decoded.rows, 32);
  EXPECT_EQ(decoded.cols, 32);

  EXPECT_EQ(EnsembleGradCamOverlayPng({*model}, image, imaging::PreprocessOptions(), 14).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EnsembleGradCamOverlayPng({}, image, imaging::PreprocessOptions(), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  imaging::PreprocessedImage truncated = image;
  truncated.pixels.pop_back();
  EXPECT_EQ(EnsembleGradCamOverlayPng({*model}, truncated, imaging::PreprocessOptions(), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtune::eval
