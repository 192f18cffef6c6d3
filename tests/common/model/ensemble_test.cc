// Tests of common/model/ensemble.h: SoloNet averaging, DuoNet wiring, study-level prediction.
#include "common/model/ensemble.h"

#include <torch/torch.h>

#include "common/model/model_factory.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fedtune::model {
namespace {

Classifier Tiny(const std::string& name) { return *CreateModel(*ModelConfigForName(name)); }

TEST(SoloNetTest, MeanOfMemberProbabilities) {
  torch::manual_seed(21);
  Classifier a = Tiny("densenet_tiny"), b = Tiny("resnext_tiny");
  SoloNet solo(std::vector<Classifier>{a, b});
  solo->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor x = torch::rand({3, 1, 32, 32});
  torch::Tensor expected = (torch::sigmoid(a->forward(x)) + torch::sigmoid(b->forward(x))) / 2;
  EXPECT_TRUE(torch::allclose(solo->forward(x), expected));
  EXPECT_EQ(solo->num_outputs(), 14);
  // Members' keys are prefixed by their position.
  EXPECT_TRUE(solo->named_parameters().contains("member1.fc.weight"));
}

TEST(DuoNetTest, ConcatenatesPooledFeaturesIntoANewLinearLayer) {
  torch::manual_seed(22);
  Classifier f = Tiny("mobilenet_v2_tiny"), l = Tiny("densenet_tiny");
  DuoNet duo(f, l, 14, 0.8);
  auto params = duo->named_parameters();
  ASSERT_TRUE(params.contains("fc.weight"));
  EXPECT_EQ(params["fc.weight"].sizes(), (std::vector<int64_t>{14, f->num_features() + l->num_features()}));
  duo->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor xf = torch::rand({2, 1, 32, 32}), xl = torch::rand({2, 1, 40, 32});
  torch::Tensor pooled = torch::cat({f->Pool(f->Features(xf)), l->Pool(l->Features(xl))}, 1);
  torch::Tensor expected = torch::addmm(params["fc.bias"], pooled, params["fc.weight"].t());
  EXPECT_TRUE(torch::allclose(duo->forward(xf, xl), expected, 1e-5, 1e-6));
  // Dropout acts in training only.
  duo->train();
  EXPECT_FALSE(torch::allclose(duo->forward(xf, xl), duo->forward(xf, xl)));
}

TEST(PredictStudyTest, DuoNetForTwoViewsSoloNetOtherwise) {
  torch::manual_seed(23);
  Ensemble e;
  e.solo = SoloNet(std::vector<Classifier>{Tiny("mobilenet_v2_tiny")});
  e.duo = DuoNet(Tiny("mobilenet_v2_tiny"), Tiny("mobilenet_v2_tiny"), 14, 0.0);
  e.solo->eval();
  e.duo->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor frontal = torch::rand({2, 1, 32, 32}), lateral = torch::rand({1, 1, 32, 32});

  auto both = PredictStudy(e, {frontal, lateral});
  ASSERT_TRUE(both.ok()) << both.status();
  torch::Tensor pairs = torch::sigmoid(e.duo->forward(frontal, lateral.repeat({2, 1, 1, 1}))).mean(0);
  EXPECT_TRUE(torch::allclose(*both, pairs));

  auto frontal_only = PredictStudy(e, {frontal, torch::Tensor()});
  ASSERT_TRUE(frontal_only.ok());
  EXPECT_TRUE(torch::allclose(*frontal_only, e.solo->forward(frontal).mean(0)));

  auto lateral_only = PredictStudy(e, {torch::empty({0, 1, 32, 32}), lateral});
  ASSERT_TRUE(lateral_only.ok());
  EXPECT_TRUE(torch::allclose(*lateral_only, e.solo->forward(lateral)[0]));

  Ensemble solo_only{e.solo, nullptr};
  EXPECT_TRUE(torch::allclose(*PredictStudy(solo_only, {frontal, lateral}), e.solo->forward(frontal).mean(0)));

  EXPECT_EQ(PredictStudy(e, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PredictStudy(e, {torch::rand({1, 3, 32, 32}), torch::Tensor()}).status().code(),
            absl::StatusCode::kInvalidArgument);  // Wrong channel count.
}

}  // namespace
}  // namespace fedtune::model
