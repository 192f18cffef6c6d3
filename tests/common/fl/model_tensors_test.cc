#include "common/fl/model_tensors.h"

#include <torch/torch.h>

#include "gtest/gtest.h"

namespace fedtune::fl {
namespace {

model::Checkpoint TwoMembersAndDuo() {
  model::Checkpoint c;
  c.members.resize(2);
  c.members[0].weights["conv.weight"] = torch::ones({2, 3});
  c.members[0].weights["bn.num_batches_tracked"] = torch::tensor(int64_t{4});
  c.members[1].weights["conv.weight"] = torch::full({4}, 2.0);
  c.duo.emplace();
  c.duo->weights["fc.bias"] = torch::zeros({14});
  c.weights_sha256 = "abc";
  return c;
}

TEST(ModelTensorsTest, NamesEveryNetworkOfTheEnsemble) {
  TensorMap t = CheckpointTensors(TwoMembersAndDuo());
  ASSERT_EQ(t.size(), 4u);
  EXPECT_TRUE(t.count("member0/conv.weight"));
  EXPECT_TRUE(t.count("member0/bn.num_batches_tracked"));
  EXPECT_TRUE(t.count("member1/conv.weight"));
  EXPECT_TRUE(t.count("duo/fc.bias"));
  EXPECT_EQ(t.at("member1/conv.weight").sizes(), torch::IntArrayRef({4}));
}

TEST(ModelTensorsTest, WithTensorsReplacesWeightsAndKeepsTheRest) {
  model::Checkpoint like = TwoMembersAndDuo();
  like.metadata.image_size = 64;
  TensorMap t = CheckpointTensors(like);
  t["member1/conv.weight"] = torch::full({4}, 5.0);
  t["duo/fc.bias"] = torch::ones({14});
  absl::StatusOr<model::Checkpoint> out = CheckpointWithTensors(like, t);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->metadata.image_size, 64);
  EXPECT_TRUE(out->weights_sha256.empty());
  EXPECT_EQ(out->members[1].weights.at("conv.weight")[0].item<double>(), 5.0);
  EXPECT_EQ(out->duo->weights.at("fc.bias")[3].item<double>(), 1.0);
  EXPECT_EQ(like.members[1].weights.at("conv.weight")[0].item<double>(), 2.0);  // `like` untouched.
}

TEST(ModelTensorsTest, WithTensorsRefusesAnotherSchema) {
  model::Checkpoint like = TwoMembersAndDuo();
  TensorMap t = CheckpointTensors(like);
  t["member1/conv.weight"] = torch::zeros({5});
  EXPECT_EQ(CheckpointWithTensors(like, t).status().code(), absl::StatusCode::kInvalidArgument);
  t = CheckpointTensors(like);
  t.erase("duo/fc.bias");
  absl::Status missing = CheckpointWithTensors(like, t).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(missing.message().find("duo/fc.bias"), absl::string_view::npos) << missing;
}

}  // namespace
}  // namespace fedtune::fl
