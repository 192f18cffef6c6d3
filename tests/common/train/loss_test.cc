#include "common/train/loss.h"

#include <torch/torch.h>

#include <cmath>

#include "common/train/early_stopping.h"
#include "gtest/gtest.h"

namespace fedtune::train {
namespace {

double Bce(double x, double t, double pw) {
  const double s = 1.0 / (1.0 + std::exp(-x));
  return -(pw * t * std::log(s) + (1 - t) * std::log(1 - s));
}

TEST(LossTest, HandValuesWithSoftTargetsMaskAndPositiveWeights) {
  torch::Tensor logits = torch::tensor({{0.0, 2.0, -1.0}, {0.5, -3.0, 1.5}}, torch::kFloat64);
  torch::Tensor targets = torch::tensor({{1.0, 0.7, 0.0}, {0.0, 1.0, 0.62}}, torch::kFloat64);
  torch::Tensor mask = torch::tensor({{1.0, 1.0, 0.0}, {1.0, 1.0, 1.0}}, torch::kFloat64);
  torch::Tensor pw = torch::tensor({2.0, 1.0, 4.0}, torch::kFloat64);
  const double expected =
      (Bce(0.0, 1.0, 2.0) + Bce(2.0, 0.7, 1.0) + Bce(0.5, 0.0, 2.0) + Bce(-3.0, 1.0, 1.0) + Bce(1.5, 0.62, 4.0)) / 5.0;
  EXPECT_NEAR(MaskedBceWithLogits(logits, targets, mask, pw).item<double>(), expected, 1e-12);
  // -2 log(1/2) for the first element alone.
  EXPECT_NEAR(Bce(0.0, 1.0, 2.0), 2 * std::log(2.0), 1e-15);
}

TEST(LossTest, UndefinedPositiveWeightMeansOnesAndEmptyMaskIsZero) {
  torch::Tensor logits = torch::tensor({{0.3, -0.2}}, torch::kFloat64);
  torch::Tensor targets = torch::tensor({{1.0, 0.0}}, torch::kFloat64);
  torch::Tensor ones = torch::ones({1, 2}, torch::kFloat64);
  EXPECT_NEAR(MaskedBceWithLogits(logits, targets, ones, torch::Tensor()).item<double>(),
              (Bce(0.3, 1, 1) + Bce(-0.2, 0, 1)) / 2, 1e-12);
  torch::Tensor x = logits.clone().requires_grad_(true);
  torch::Tensor loss = MaskedBceWithLogits(x, targets, torch::zeros({1, 2}, torch::kFloat64), torch::Tensor());
  EXPECT_EQ(loss.item<double>(), 0.0);
  loss.backward();
  EXPECT_EQ(x.grad().abs().sum().item<double>(), 0.0);
}

TEST(LossTest, MaskedElementsGetNoGradient) {
  torch::Tensor x = torch::zeros({1, 3}, torch::kFloat64).requires_grad_(true);
  torch::Tensor loss = MaskedBceWithLogits(x, torch::ones({1, 3}, torch::kFloat64),
                                           torch::tensor({{1.0, 0.0, 1.0}}, torch::kFloat64), torch::Tensor());
  loss.backward();
  EXPECT_EQ(x.grad()[0][1].item<double>(), 0.0);
  EXPECT_NEAR(x.grad()[0][0].item<double>(), -0.25, 1e-12);  // d/dx of -log(sigmoid(x)) / 2 at 0.
}

TEST(EarlyStoppingTest, StopsAfterPatienceEpochsWithoutImprovement) {
  EarlyStopping s(3);
  EXPECT_TRUE(s.Update(0, 1.0));
  EXPECT_TRUE(s.Update(1, 0.8));
  EXPECT_FALSE(s.Update(2, 0.9));
  EXPECT_FALSE(s.Update(3, 0.8));  // Equal is not an improvement.
  EXPECT_FALSE(s.ShouldStop());
  EXPECT_FALSE(s.Update(4, 0.85));
  EXPECT_TRUE(s.ShouldStop());
  EXPECT_EQ(s.best_epoch(), 1);
  EXPECT_EQ(s.best_loss(), 0.8);
  EarlyStopping restored(3);
  restored.Restore(s.best_loss(), s.best_epoch(), 2);
  EXPECT_FALSE(restored.ShouldStop());
  EXPECT_TRUE(restored.Update(5, 0.5));
  EXPECT_EQ(restored.epochs_without_improvement(), 0);
}

}  // namespace
}  // namespace fedtune::train
