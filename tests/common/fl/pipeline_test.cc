// One federated round with real LibTorch modules, through every piece of common/fl as the site agent and the
// coordinator will chain them: delta, error-feedback encoding, wire bytes, decoding against the global schema,
// validation, aggregation, FedAdam, applying the step.
#include <torch/torch.h>

#include <string>
#include <vector>

#include "common/fl/aggregate.h"
#include "common/fl/codec.h"
#include "common/fl/tensor_map.h"
#include "common/fl/validate.h"
#include "gtest/gtest.h"

namespace fedtune::fl {
namespace {

torch::nn::Sequential TinyNet() {
  return torch::nn::Sequential(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 4, 3).padding(1)),
                               torch::nn::BatchNorm2d(4), torch::nn::ReLU(), torch::nn::AdaptiveAvgPool2d(1),
                               torch::nn::Flatten(), torch::nn::Linear(4, 3));
}

TensorMap StateOf(const torch::nn::Module& m) {
  TensorMap out;
  for (const auto& p : m.named_parameters()) out[p.key()] = p.value().detach().clone();
  for (const auto& b : m.named_buffers()) out[b.key()] = b.value().detach().clone();
  return out;
}

void Load(torch::nn::Module& m, const TensorMap& state) {
  torch::NoGradGuard no_grad;
  for (auto& p : m.named_parameters()) p.value().copy_(state.at(p.key()));
  for (auto& b : m.named_buffers()) b.value().copy_(state.at(b.key()));
}

// `steps` SGD steps on random data from `seed`, starting from `global`.
TensorMap TrainLocally(const TensorMap& global, int steps, uint64_t seed) {
  torch::manual_seed(seed);
  auto net = TinyNet();
  Load(*net, global);
  net->train();
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1));
  for (int i = 0; i < steps; ++i) {
    torch::Tensor x = torch::randn({8, 1, 8, 8});
    torch::Tensor y = torch::randint(0, 3, {8});
    opt.zero_grad();
    torch::nn::functional::cross_entropy(net->forward(x), y).backward();
    opt.step();
  }
  return StateOf(*net);
}

struct Site {
  int steps;
  int64_t samples;
  uint64_t seed;
  ErrorFeedback feedback;
};

// One round; returns the new global model. `encoding` is the sites' compression.
TensorMap Round(const TensorMap& global, std::vector<Site>& sites, Encoding encoding, FedAdam* adam,
                std::vector<TensorMap>* locals) {
  std::unique_ptr<Aggregator> agg = *MakeAggregator({});
  for (Site& site : sites) {
    // Site: train, delta, compress with error feedback, send bytes.
    TensorMap local = TrainLocally(global, site.steps, site.seed);
    if (locals != nullptr) locals->push_back(local);
    absl::StatusOr<TensorMap> delta = ComputeDelta(local, global);
    EXPECT_TRUE(delta.ok()) << delta.status();
    absl::StatusOr<EncodedBundle> sent = site.feedback.Encode(*delta, {encoding, 0.1});
    EXPECT_TRUE(sent.ok()) << sent.status();
    const std::string wire = sent->bundle.SerializeAsString();
    // Coordinator: parse, decode against the global schema, validate, aggregate.
    absl::StatusOr<v1::TensorBundle> bundle = ParseTensorBundle(wire);
    EXPECT_TRUE(bundle.ok()) << bundle.status();
    absl::StatusOr<TensorMap> received = DecodeTensors(*bundle, &global);
    EXPECT_TRUE(received.ok()) << received.status();
    absl::StatusOr<UpdateSummary> summary = ValidateUpdate(global, *received, {/*max_l2_norm=*/100.0});
    EXPECT_TRUE(summary.ok()) << summary.status();
    EXPECT_TRUE(agg->Add(*received, site.samples).ok());
  }
  absl::StatusOr<TensorMap> step = agg->Result();
  EXPECT_TRUE(step.ok()) << step.status();
  if (adam != nullptr) step = adam->Step(*step);
  absl::StatusOr<TensorMap> next = ApplyDelta(global, *step);
  EXPECT_TRUE(next.ok()) << next.status();
  return *next;
}

TEST(PipelineTest, Fp32FedAvgIsTheWeightedMeanOfTheLocalModels) {
  torch::manual_seed(1);
  auto net = TinyNet();
  const TensorMap global = StateOf(*net);
  ASSERT_EQ(global.at("1.num_batches_tracked").scalar_type(), at::kLong);
  std::vector<Site> sites = {{2, 100, 11, {}}, {5, 300, 12, {}}, {3, 50, 13, {}}};
  std::vector<TensorMap> locals;
  const TensorMap next = Round(global, sites, Encoding::kDenseFp32, nullptr, &locals);
  for (const auto& [name, g] : next) {
    if (name == "1.num_batches_tracked") {
      EXPECT_EQ(g.item<int64_t>(), global.at(name).item<int64_t>() + 5);  // The site with the most batches.
      continue;
    }
    at::Tensor mean = (locals[0].at(name) * 100 + locals[1].at(name) * 300 + locals[2].at(name) * 50) / 450;
    EXPECT_LT((g - mean).abs().max().item<double>(), 1e-6) << name;
  }
}

TEST(PipelineTest, CompressedRoundsStayCloseToFp32) {
  torch::manual_seed(2);
  auto net = TinyNet();
  const TensorMap start = StateOf(*net);
  for (Encoding e : {Encoding::kDenseFp16, Encoding::kInt8, Encoding::kTopK}) {
    std::vector<Site> exact_sites = {{2, 100, 21, {}}, {3, 200, 22, {}}};
    std::vector<Site> lossy_sites = exact_sites;
    TensorMap exact = start, lossy = start;
    for (int round = 0; round < 3; ++round) {
      for (Site& s : exact_sites) s.seed += 100;
      for (Site& s : lossy_sites) s.seed += 100;
      exact = Round(exact, exact_sites, Encoding::kDenseFp32, nullptr, nullptr);
      lossy = Round(lossy, lossy_sites, e, nullptr, nullptr);
    }
    absl::StatusOr<TensorMap> moved = ComputeDelta(exact, start);
    absl::StatusOr<TensorMap> gap = ComputeDelta(lossy, exact);
    ASSERT_TRUE(moved.ok() && gap.ok());
    const NormOptions weights_only{/*include_batchnorm_statistics=*/false};
    const double relative = L2Norm(*gap, weights_only) / L2Norm(*moved, weights_only);
    RecordProperty("relative_gap_" + EncodingName(e), std::to_string(relative));
    // fp16 and int8 lose little; top-10% with error feedback more, but it still follows the exact trajectory.
    EXPECT_LT(relative, e == Encoding::kTopK ? 0.8 : 0.05) << EncodingName(e);
  }
}

TEST(PipelineTest, FedAdamRoundsMoveTheModel) {
  torch::manual_seed(3);
  auto net = TinyNet();
  TensorMap global = StateOf(*net);
  const TensorMap start = global;
  FedAdamOptions options;
  options.learning_rate = 0.01;
  std::unique_ptr<FedAdam> adam = *FedAdam::Create(options);
  std::vector<Site> sites = {{2, 100, 31, {}}, {2, 100, 32, {}}};
  for (int round = 0; round < 2; ++round) {
    for (Site& s : sites) s.seed += 100;
    global = Round(global, sites, Encoding::kDenseFp32, adam.get(), nullptr);
  }
  EXPECT_EQ(adam->rounds(), 2);
  absl::StatusOr<TensorMap> moved = ComputeDelta(global, start);
  ASSERT_TRUE(moved.ok());
  // Each Adam step moves a coordinate by at most about eta (|m| / sqrt(v) <= ~1 here), so two rounds by <= ~2 eta.
  const double max_move = moved->at("0.weight").abs().max().item<double>();
  EXPECT_GT(max_move, 1e-4);
  EXPECT_LT(max_move, 2.5 * 0.01);
  EXPECT_EQ(global.at("1.num_batches_tracked").item<int64_t>(), 4);
}

}  // namespace
}  // namespace fedtune::fl
