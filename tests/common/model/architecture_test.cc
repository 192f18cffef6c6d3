// Tests of the three architectures (common/model/densenet.h, resnext.h, mobilenet_v2.h) and model_config.h.
#include <torch/torch.h>

#include <chrono>
#include <set>
#include <string>

#include "common/model/model_config.h"
#include "common/model/model_factory.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fedtune::model {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;

Classifier Build(const std::string& name) {
  auto config = ModelConfigForName(name);
  EXPECT_TRUE(config.ok()) << config.status();
  auto model = CreateModel(*config);
  EXPECT_TRUE(model.ok()) << model.status();
  return *model;
}

std::set<std::string> StateKeys(const torch::nn::Module& m) {
  std::set<std::string> keys;
  for (const auto& p : m.named_parameters()) keys.insert(p.key());
  for (const auto& b : m.named_buffers()) keys.insert(b.key());
  return keys;
}

struct FullSizeCase {
  const char* name;
  int64_t parameters;  // 1 input channel, 14 outputs (issue 4's acceptance numbers).
  int64_t features;
  std::vector<std::string> keys;  // Some torchvision state-dict keys.
};

class FullSizeTest : public ::testing::TestWithParam<FullSizeCase> {};

TEST_P(FullSizeTest, ParameterCountKeysAndOutputShape) {
  torch::manual_seed(1);
  const FullSizeCase& c = GetParam();
  Classifier model = Build(c.name);
  EXPECT_EQ(CountParameters(*model), c.parameters);
  EXPECT_EQ(model->num_features(), c.features);
  std::set<std::string> keys = StateKeys(*model);
  for (const auto& key : c.keys) EXPECT_THAT(keys, Contains(key));
  EXPECT_THAT(keys, Contains(model->stem_weight_key()));
  EXPECT_THAT(keys, Contains(model->head_prefix() + "weight"));
  EXPECT_THAT(keys, Contains(model->head_prefix() + "bias"));

  model->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor x = torch::randn({2, 1, 64, 64});
  EXPECT_EQ(model->forward(x).sizes(), (std::vector<int64_t>{2, 14}));
  torch::Tensor f = model->Features(x);
  EXPECT_EQ(f.size(0), 2);
  EXPECT_EQ(f.size(1), c.features);
  EXPECT_EQ(f.size(2), 2);  // Stride 32.
}

INSTANTIATE_TEST_SUITE_P(
    Torchvision, FullSizeTest,
    ::testing::Values(
        FullSizeCase{"densenet121",
                     6961934,
                     1024,
                     {"features.conv0.weight", "features.norm0.running_var", "features.norm0.num_batches_tracked",
                      "features.denseblock1.denselayer1.norm1.weight", "features.denseblock4.denselayer16.conv2.weight",
                      "features.transition3.conv.weight", "features.norm5.bias", "classifier.weight"}},
        FullSizeCase{"resnext50_32x4d",
                     23002318,
                     2048,
                     {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.0.downsample.0.weight",
                      "layer1.0.downsample.1.running_var", "layer4.2.conv3.weight", "layer4.2.bn3.bias", "fc.bias"}},
        FullSizeCase{"mobilenet_v2",
                     2241230,
                     1280,
                     {"features.0.0.weight", "features.0.1.running_mean", "features.1.conv.0.0.weight",
                      "features.1.conv.1.weight", "features.2.conv.3.num_batches_tracked", "features.18.0.weight",
                      "features.18.1.bias", "classifier.1.weight"}}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(ArchitectureTest, TinyVariantsAreSmallAndFast) {
  for (const char* name : {"densenet_tiny", "resnext_tiny", "mobilenet_v2_tiny"}) {
    torch::manual_seed(2);
    Classifier model = Build(name);
    EXPECT_LT(CountParameters(*model), 300000) << name;
    model->train();
    torch::Tensor x = torch::randn({4, 1, 32, 32});
    auto start = std::chrono::steady_clock::now();
    torch::Tensor loss = model->forward(x).sum();
    loss.backward();
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_LT(seconds, 5.0) << name;  // Generous bound: milliseconds in practice.
    for (const auto& p : model->parameters()) ASSERT_TRUE(p.grad().defined()) << name;
  }
}

TEST(ArchitectureTest, OptionsChangeTheModel) {
  ModelConfig config = *ModelConfigForName("densenet_tiny");
  config.in_channels = 3;
  config.num_outputs = 5;
  Classifier model = *CreateModel(config);
  auto params = model->named_parameters();
  EXPECT_EQ(params["features.conv0.weight"].sizes(), (std::vector<int64_t>{16, 3, 7, 7}));
  EXPECT_EQ(params["classifier.weight"].sizes(), (std::vector<int64_t>{5, model->num_features()}));
  // Growth 8, blocks (2,2,2,2), 16 init: 16+16=32 ->16 ->32 ->16 ->32 ->16 ->32.
  EXPECT_EQ(model->num_features(), 32);

  ModelConfig mobile = *ModelConfigForName("mobilenet_v2");
  mobile.mobilenet.width_mult = 0.5;
  Classifier half = *CreateModel(mobile);
  EXPECT_EQ(half->named_parameters()["features.0.0.weight"].size(0), 16);
  EXPECT_EQ(half->num_features(), 1280);  // torchvision keeps 1280 for width_mult < 1.
}

TEST(ArchitectureTest, HeadDropoutActsOnlyInTraining) {
  ModelConfig config = *ModelConfigForName("mobilenet_v2_tiny");
  config.head_dropout = 0.5;
  torch::manual_seed(3);
  Classifier model = *CreateModel(config);
  torch::NoGradGuard no_grad;
  torch::Tensor pooled = torch::ones({1, model->num_features()});
  model->eval();
  EXPECT_TRUE(torch::equal(model->Head(pooled), model->Head(pooled)));
  model->train();
  EXPECT_FALSE(torch::allclose(model->Head(pooled), model->Head(pooled)));
}

TEST(ModelConfigTest, JsonRoundTripAndValidation) {
  for (const char* name : {"densenet_tiny", "resnext_tiny", "mobilenet_v2_tiny"}) {
    ModelConfig config = *ModelConfigForName(name);
    config.head_dropout = 0.25;
    auto parsed = ModelConfigFromJson(ModelConfigToJson(config));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(ModelConfigToJson(*parsed), ModelConfigToJson(config));
  }
  EXPECT_THAT(ModelConfigFromJson(R"({"arch": "vgg"})").status().message(), HasSubstr("vgg"));
  EXPECT_THAT(ModelConfigFromJson(R"({"arch": "resnext", "resnext": {"layers": [1, 1]}})").status().message(),
              HasSubstr("resnext.layers"));
  EXPECT_THAT(ModelConfigFromJson(R"({"arch": "densenet", "densenet": {"growth_rate": "x"}})").status().message(),
              HasSubstr("densenet.growth_rate"));
  EXPECT_THAT(ModelConfigFromJson(R"({"arch": "densenet", "head_dropout": 1.5})").status().message(),
              HasSubstr("head_dropout"));
  EXPECT_EQ(ModelConfigForName("alexnet").status().code(), absl::StatusCode::kInvalidArgument);
  ModelConfig bad = *ModelConfigForName("densenet_tiny");
  bad.densenet.block_config.clear();
  EXPECT_EQ(CreateModel(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtune::model
