// Tests of common/fl/personalization.h: the BatchNorm tensors of every architecture (found from the modules,
// checked here against an independent rule on the state-dict names), and what each personalization shares.
#include "common/fl/personalization.h"

#include <torch/torch.h>

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "common/fl/model_tensors.h"
#include "common/model/ensemble.h"
#include "common/model/model_factory.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fedtune::fl {
namespace {

using ::testing::HasSubstr;

model::Classifier Make(const std::string& name) {
  absl::StatusOr<model::ModelConfig> config = model::ModelConfigForName(name);
  EXPECT_TRUE(config.ok()) << config.status();
  absl::StatusOr<model::Classifier> network = model::CreateModel(*config);
  EXPECT_TRUE(network.ok()) << network.status();
  return *network;
}

model::Checkpoint Solo(const std::vector<std::string>& names) {
  std::vector<model::Classifier> members;
  for (const std::string& n : names) members.push_back(Make(n));
  model::Ensemble e;
  e.solo = model::SoloNet(members);
  return model::CheckpointFromEnsemble(e, model::CheckpointMetadata());
}

// The independent rule: a BatchNorm module is a prefix with a running_var buffer; it has exactly weight, bias,
// running_mean, running_var, num_batches_tracked.
std::map<std::string, BatchNormRole> ByNames(const model::Checkpoint& checkpoint) {
  std::map<std::string, BatchNormRole> out;
  const TensorMap all = CheckpointTensors(checkpoint);
  for (const auto& [name, tensor] : all) {
    if (!absl::EndsWith(name, ".running_var")) continue;
    const std::string prefix = name.substr(0, name.size() - std::string("running_var").size());
    for (const char* key : {"weight", "bias"}) out[prefix + key] = BatchNormRole::kAffine;
    for (const char* key : {"running_mean", "running_var", "num_batches_tracked"}) {
      out[prefix + key] = BatchNormRole::kStatistics;
    }
  }
  for (const auto& [name, role] : out) EXPECT_EQ(all.count(name), 1u) << name;
  return out;
}

void ExpectBatchNormOf(const model::Checkpoint& checkpoint, size_t modules, const std::vector<std::string>& some) {
  absl::StatusOr<std::map<std::string, BatchNormRole>> bn = BatchNormTensors(checkpoint);
  ASSERT_TRUE(bn.ok()) << bn.status();
  EXPECT_EQ(*bn, ByNames(checkpoint));
  EXPECT_EQ(bn->size(), 5 * modules);
  for (const std::string& name : some) EXPECT_EQ(bn->count(name), 1u) << name;
  // No convolution or linear layer among them: a BatchNorm tensor is 1-D (or a scalar counter).
  const TensorMap all = CheckpointTensors(checkpoint);
  for (const auto& [name, role] : *bn) {
    EXPECT_LE(all.at(name).dim(), 1) << name;
    EXPECT_FALSE(absl::StrContains(name, "classifier") || absl::StrContains(name, "/fc.")) << name;
  }
}

TEST(PersonalizationTest, DenseNetTiny) {
  // 2 + 2 + 2 + 2 dense layers with two norms each, three transitions, norm0 and norm5.
  ExpectBatchNormOf(Solo({"densenet_tiny"}), 8 * 2 + 3 + 2,
                    {"member0/features.norm0.weight", "member0/features.denseblock1.denselayer1.norm1.running_mean",
                     "member0/features.transition1.norm.num_batches_tracked", "member0/features.norm5.bias"});
}

TEST(PersonalizationTest, DenseNet121) {
  // torchvision's densenet121: 58 dense layers x 2, three transitions, norm0 and norm5.
  ExpectBatchNormOf(Solo({"densenet121"}), 58 * 2 + 3 + 2,
                    {"member0/features.denseblock4.denselayer16.norm2.running_var"});
}

TEST(PersonalizationTest, ResNeXtTiny) {
  // bn1, four blocks of bn1..bn3, a downsample BatchNorm in each stage's first block.
  ExpectBatchNormOf(Solo({"resnext_tiny"}), 1 + 4 * 3 + 4,
                    {"member0/bn1.weight", "member0/layer1.0.bn3.running_mean", "member0/layer2.0.downsample.1.bias"});
}

TEST(PersonalizationTest, MobileNetV2Tiny) {
  // torchvision's mobilenet_v2: the stem, 17 inverted residual blocks (the first with 2 BatchNorms, the others 3),
  // the last 1x1 convolution: 1 + 2 + 16 * 3 + 1 = 52.
  ExpectBatchNormOf(Solo({"mobilenet_v2_tiny"}), 52,
                    {"member0/features.0.1.weight", "member0/features.1.conv.2.running_var",
                     "member0/features.18.1.num_batches_tracked"});
}

TEST(PersonalizationTest, SoloNetAndDuoNet) {
  model::Ensemble e;
  e.solo = model::SoloNet(std::vector<model::Classifier>{Make("densenet_tiny"), Make("resnext_tiny")});
  e.duo = model::DuoNet(Make("mobilenet_v2_tiny"), Make("densenet_tiny"), 14, 0.8);
  const model::Checkpoint checkpoint = model::CheckpointFromEnsemble(e, model::CheckpointMetadata());
  ExpectBatchNormOf(checkpoint, 21 + 17 + 52 + 21,
                    {"member0/features.norm0.weight", "member1/bn1.running_mean", "duo/frontal.features.0.1.bias",
                     "duo/lateral.features.norm5.running_var"});
}

TEST(PersonalizationTest, SharedTensorsPerStrategy) {
  const model::Checkpoint checkpoint = Solo({"mobilenet_v2_tiny"});
  const TensorMap all = CheckpointTensors(checkpoint);
  const std::map<std::string, BatchNormRole> bn = *BatchNormTensors(checkpoint);
  for (v1::Personalization none :
       {v1::PERSONALIZATION_NONE, v1::PERSONALIZATION_UNSPECIFIED, v1::PERSONALIZATION_DITTO}) {
    EXPECT_EQ(SharedTensorNames(checkpoint, none)->size(), all.size());
    EXPECT_TRUE(LocalTensorNames(checkpoint, none)->empty());
    EXPECT_FALSE(KeepsTensorsLocal(none));
  }
  const std::set<std::string> fedbn = *SharedTensorNames(checkpoint, v1::PERSONALIZATION_FEDBN);
  EXPECT_EQ(fedbn.size(), all.size() - bn.size());
  for (const auto& [name, role] : bn) EXPECT_EQ(fedbn.count(name), 0u) << name;
  EXPECT_EQ(fedbn.count("member0/features.0.0.weight"), 1u);  // The stem convolution.
  EXPECT_EQ(fedbn.count("member0/classifier.1.weight"), 1u);  // The head.
  const std::set<std::string> silobn = *SharedTensorNames(checkpoint, v1::PERSONALIZATION_SILOBN);
  EXPECT_EQ(silobn.count("member0/features.0.1.weight"), 1u);  // Affine: shared.
  EXPECT_EQ(silobn.count("member0/features.0.1.bias"), 1u);
  EXPECT_EQ(silobn.count("member0/features.0.1.running_mean"), 0u);  // Statistics: local.
  EXPECT_EQ(silobn.count("member0/features.0.1.num_batches_tracked"), 0u);
  EXPECT_EQ(silobn.size(), all.size() - 3 * bn.size() / 5);
  EXPECT_TRUE(KeepsTensorsLocal(v1::PERSONALIZATION_FEDBN));
  EXPECT_TRUE(KeepsTensorsLocal(v1::PERSONALIZATION_SILOBN));
  EXPECT_EQ(LocalTensorNames(checkpoint, static_cast<v1::Personalization>(99)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PersonalizationTest, ClassifyingLeavesTheGlobalGeneratorAsItWas) {
  const model::Checkpoint checkpoint = Solo({"densenet_tiny"});
  torch::manual_seed(5);
  const double expected = torch::rand({1}).item<double>();
  torch::manual_seed(5);
  ASSERT_TRUE(BatchNormTensors(checkpoint).ok());
  EXPECT_EQ(torch::rand({1}).item<double>(), expected);
}

TEST(PersonalizationTest, ACheckpointWithoutItsBatchNormTensorsIsRefused) {
  model::Checkpoint checkpoint = Solo({"densenet_tiny"});
  checkpoint.members[0].weights.erase("features.norm0.running_var");
  absl::Status s = BatchNormTensors(checkpoint).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("features.norm0.running_var"));
}

TEST(PersonalizationTest, SelectDropAndReplace) {
  const model::Checkpoint checkpoint = Solo({"mobilenet_v2_tiny"});
  const std::set<std::string> local = *LocalTensorNames(checkpoint, v1::PERSONALIZATION_FEDBN);
  const TensorMap all = CheckpointTensors(checkpoint);
  EXPECT_EQ(SelectTensors(all, local).size(), local.size());
  EXPECT_EQ(DropTensors(all, local).size(), all.size() - local.size());
  TensorMap own = SelectTensors(all, local);
  for (auto& [name, tensor] : own) tensor = tensor.clone().add_(1);
  absl::StatusOr<model::Checkpoint> replaced = ReplaceTensors(checkpoint, own, "kept tensors");
  ASSERT_TRUE(replaced.ok()) << replaced.status();
  const TensorMap after = CheckpointTensors(*replaced);
  for (const auto& [name, tensor] : after) {
    EXPECT_EQ(torch::equal(tensor, local.count(name) ? own.at(name) : all.at(name)), true) << name;
  }
  EXPECT_TRUE(replaced->weights_sha256.empty());
  TensorMap wrong{{"member0/features.0.1.weight", torch::zeros({3})}};
  EXPECT_THAT(ReplaceTensors(checkpoint, wrong, "kept tensors").status().message(), HasSubstr("features.0.1.weight"));
  TensorMap unknown{{"member0/nope", torch::zeros({3})}};
  EXPECT_EQ(ReplaceTensors(checkpoint, unknown, "kept tensors").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtune::fl
