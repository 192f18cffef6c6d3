#include "common/fl/aggregate.h"

#include <ATen/ATen.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/fl/test_tensors.h"

namespace fedtune::fl {
namespace {

using test_tensors::Randn;
using test_tensors::ToVec;
using test_tensors::Vec;
using ::testing::ElementsAre;
using ::testing::FloatEq;
using ::testing::HasSubstr;

std::unique_ptr<Aggregator> Make(AggregationMethod method, double trim = 0.1, double clip = 0.0) {
  AggregatorOptions options;
  options.method = method;
  options.trim_fraction = trim;
  options.clip_norm = clip;
  absl::StatusOr<std::unique_ptr<Aggregator>> agg = MakeAggregator(options);
  EXPECT_TRUE(agg.ok()) << agg.status();
  return *std::move(agg);
}

TensorMap Delta(std::vector<float> w, int64_t batches) {
  TensorMap m;
  m["w"] = Vec(std::move(w));
  m["bn.num_batches_tracked"] = at::scalar_tensor(batches, at::kLong);
  return m;
}

TensorMap ResultOf(Aggregator& agg) {
  absl::StatusOr<TensorMap> r = agg.Result();
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : TensorMap{};
}

// Three deltas: d1 = [1, 10] (1 sample), d2 = [2, 20] (1), d3 = [6, -30] (2).
void AddThree(Aggregator& agg) {
  ASSERT_TRUE(agg.Add(Delta({1, 10}, 100), 1).ok());
  ASSERT_TRUE(agg.Add(Delta({2, 20}, 120), 1).ok());
  ASSERT_TRUE(agg.Add(Delta({6, -30}, 90), 2).ok());
}

TEST(AggregateTest, FedAvgHandValues) {
  auto agg = Make(AggregationMethod::kFedAvg);
  AddThree(*agg);
  TensorMap r = ResultOf(*agg);
  // (1 d1 + 1 d2 + 2 d3) / 4 = [15/4, -30/4]
  EXPECT_THAT(ToVec(r["w"]), ElementsAre(FloatEq(3.75f), FloatEq(-7.5f)));
  // Counters are not averaged: the largest delta.
  EXPECT_EQ(r["bn.num_batches_tracked"].scalar_type(), at::kLong);
  EXPECT_EQ(r["bn.num_batches_tracked"].item<int64_t>(), 120);
  EXPECT_EQ(agg->num_updates(), 3);
  EXPECT_EQ(agg->total_samples(), 4);
  EXPECT_TRUE(agg->streaming());
}

TEST(AggregateTest, MedianAndTrimmedMeanHandValues) {
  auto median = Make(AggregationMethod::kMedian);
  AddThree(*median);
  EXPECT_THAT(ToVec(ResultOf(*median)["w"]), ElementsAre(FloatEq(2.0f), FloatEq(10.0f)));
  EXPECT_EQ(ResultOf(*median)["bn.num_batches_tracked"].item<int64_t>(), 120);
  EXPECT_FALSE(median->streaming());

  // Even count: mean of the two middle values; sample counts are ignored.
  ASSERT_TRUE(median->Add(Delta({10, 0}, 1), 1000).ok());
  EXPECT_THAT(ToVec(ResultOf(*median)["w"]), ElementsAre(FloatEq(4.0f), FloatEq(5.0f)));  // (2+6)/2, (0+10)/2

  // 3 updates, trim 1/3 -> one dropped at each end: the median. Trim 0.2 -> floor(0.6) = 0: the plain mean.
  auto trimmed = Make(AggregationMethod::kTrimmedMean, 1.0 / 3.0);
  AddThree(*trimmed);
  EXPECT_THAT(ToVec(ResultOf(*trimmed)["w"]), ElementsAre(FloatEq(2.0f), FloatEq(10.0f)));
  auto untrimmed = Make(AggregationMethod::kTrimmedMean, 0.2);
  AddThree(*untrimmed);
  EXPECT_THAT(ToVec(ResultOf(*untrimmed)["w"]), ElementsAre(FloatEq(3.0f), FloatEq(0.0f)));

  // 5 updates, trim 0.2 -> one at each end: values 1..5 with 100 -> mean of {2, 3, 4}.
  auto five = Make(AggregationMethod::kTrimmedMean, 0.2);
  for (float x : {5.0f, 1.0f, 100.0f, 3.0f, 2.0f}) ASSERT_TRUE(five->Add(Delta({x, -x}, 1), 1).ok());
  EXPECT_THAT(ToVec(ResultOf(*five)["w"]), ElementsAre(FloatEq(10.0f / 3.0f), FloatEq(-10.0f / 3.0f)));
}

TEST(AggregateTest, ClippingHandValues) {
  // d1 = [3, 4] (norm 5) clipped to norm 1 -> [0.6, 0.8]; d2 = [0.3, 0] (norm 0.3) unchanged.
  auto agg = Make(AggregationMethod::kFedAvg, 0.0, /*clip=*/1.0);
  TensorMap d1, d2;
  d1["w"] = Vec({3, 4});
  d2["w"] = Vec({0.3f, 0});
  ASSERT_TRUE(agg->Add(d1, 1).ok());
  ASSERT_TRUE(agg->Add(d2, 1).ok());
  EXPECT_THAT(ToVec(ResultOf(*agg)["w"]), ElementsAre(FloatEq(0.45f), FloatEq(0.4f)));
  EXPECT_TRUE(at::equal(d1["w"], Vec({3, 4})));  // The caller's tensors are untouched.
  EXPECT_THAT(agg->Describe(), HasSubstr("clip 1"));

  // Tensors outside the norm (here BatchNorm statistics, by option) are not scaled.
  AggregatorOptions options;
  options.clip_norm = 1.0;
  options.norm.include_batchnorm_statistics = false;
  auto no_bn = *MakeAggregator(options);
  TensorMap d3 = d1;
  d3["bn.running_mean"] = Vec({50.0f});
  ASSERT_TRUE(no_bn->Add(d3, 2).ok());
  TensorMap r = ResultOf(*no_bn);
  EXPECT_THAT(ToVec(r["w"]), ElementsAre(FloatEq(0.6f), FloatEq(0.8f)));
  EXPECT_THAT(ToVec(r["bn.running_mean"]), ElementsAre(FloatEq(50.0f)));
}

TEST(AggregateTest, MaliciousHugeDeltaIsBeaten) {
  // Nine honest sites with deltas near h = 0.01 * N(0, 1) around a common direction, one attacker sending 1e6.
  const at::Tensor direction = Randn({1000}, 42) * 0.01;
  std::vector<TensorMap> honest;
  for (int i = 0; i < 9; ++i) {
    TensorMap d;
    d["w"] = direction + Randn({1000}, 100 + i) * 0.001;
    honest.push_back(d);
  }
  TensorMap attack;
  attack["w"] = at::full({1000}, 1e6, at::kFloat);
  const double honest_norm = direction.norm().item<double>();  // about 0.32

  auto error_of = [&](Aggregator& agg) {
    for (const TensorMap& d : honest) EXPECT_TRUE(agg.Add(d, 100).ok());
    EXPECT_TRUE(agg.Add(attack, 100).ok());
    return (ResultOf(agg)["w"] - direction).norm().item<double>();
  };
  auto fedavg = Make(AggregationMethod::kFedAvg);
  auto median = Make(AggregationMethod::kMedian);
  auto trimmed = Make(AggregationMethod::kTrimmedMean, 0.1);
  auto clipped = Make(AggregationMethod::kFedAvg, 0.0, /*clip=*/0.5);
  const double e_fedavg = error_of(*fedavg);
  const double e_median = error_of(*median);
  const double e_trimmed = error_of(*trimmed);
  const double e_clipped = error_of(*clipped);
  RecordProperty("error_fedavg", std::to_string(e_fedavg));
  RecordProperty("error_median", std::to_string(e_median));
  RecordProperty("error_trimmed", std::to_string(e_trimmed));
  RecordProperty("error_clipped", std::to_string(e_clipped));
  EXPECT_GT(e_fedavg, 1e6);  // Plain FedAvg is ruined: 1e6 / 10 per coordinate.
  EXPECT_LT(e_median, 0.2 * honest_norm) << e_median;
  EXPECT_LT(e_trimmed, 0.2 * honest_norm) << e_trimmed;
  // Clipping bounds the attacker's pull to clip / 10 = 0.05 in norm (plus the honest noise).
  EXPECT_LT(e_clipped, 0.05 + 0.05) << e_clipped;
}

TEST(AggregateTest, FedAvgMemoryDoesNotGrowWithSites) {
  TensorMap model;
  model["a"] = Randn({256, 64}, 1);
  model["b"] = Randn({64}, 2);
  model["bn.num_batches_tracked"] = at::scalar_tensor(static_cast<int64_t>(1), at::kLong);
  const int64_t model_bytes = (256 * 64 + 64) * 4 + 8;

  auto fedavg = Make(AggregationMethod::kFedAvg);
  auto median = Make(AggregationMethod::kMedian);
  at::Tensor expected_sum = at::zeros({256, 64}, at::kFloat);
  for (int site = 0; site < 40; ++site) {
    TensorMap d;
    d["a"] = Randn({256, 64}, 1000 + site);
    d["b"] = Randn({64}, 2000 + site);
    d["bn.num_batches_tracked"] = at::scalar_tensor(static_cast<int64_t>(site), at::kLong);
    expected_sum += d["a"] * (site + 1);
    ASSERT_TRUE(fedavg->Add(d, site + 1).ok());
    ASSERT_TRUE(median->Add(d, site + 1).ok());
    // No reference to the caller's tensor is kept.
    EXPECT_EQ(d["a"].use_count(), 1);
    // One accumulator, whatever the number of sites; the order statistics keep every delta.
    EXPECT_EQ(fedavg->HeldBytes(), model_bytes) << site;
    EXPECT_EQ(median->HeldBytes(), (site + 1) * (model_bytes - 8) + 8) << site;
  }
  TensorMap r = ResultOf(*fedavg);
  const double total = 40.0 * 41.0 / 2.0;
  EXPECT_LT((r["a"] - expected_sum / total).abs().max().item<double>(), 1e-5);
  EXPECT_EQ(r["bn.num_batches_tracked"].item<int64_t>(), 39);
}

TEST(AggregateTest, RejectsBadUpdatesWithoutChangingState) {
  auto agg = Make(AggregationMethod::kFedAvg);
  EXPECT_EQ(agg->Result().status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(agg->Add(Delta({1, 2}, 5), 10).ok());

  absl::Status s = agg->Add(Delta({1, 2}, 5), 0);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("num_samples 0"));
  s = agg->Add(Delta({1, 2, 3}, 5), 10);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("'w' has shape [3]"));
  TensorMap extra = Delta({1, 2}, 5);
  extra["x"] = Vec({1});
  s = agg->Add(extra, 10);
  EXPECT_THAT(s.message(), HasSubstr("unexpected x"));
  s = agg->Add(Delta({1, NAN}, 5), 10);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("'w' has non-finite"));
  EXPECT_EQ(agg->Add(TensorMap{}, 1).code(), absl::StatusCode::kInvalidArgument);

  EXPECT_EQ(agg->num_updates(), 1);
  EXPECT_EQ(agg->total_samples(), 10);
  EXPECT_THAT(ToVec(ResultOf(*agg)["w"]), ElementsAre(FloatEq(1.0f), FloatEq(2.0f)));
}

TEST(AggregateTest, KeepsDtypes) {
  auto agg = Make(AggregationMethod::kFedAvg);
  TensorMap d1, d2;
  d1["h"] = Vec({1.0f, 2.0f}).to(at::kHalf);
  d1["d"] = at::tensor({1.0, 3.0}, at::kDouble);
  d2["h"] = Vec({3.0f, 4.0f}).to(at::kHalf);
  d2["d"] = at::tensor({2.0, 5.0}, at::kDouble);
  ASSERT_TRUE(agg->Add(d1, 1).ok());
  ASSERT_TRUE(agg->Add(d2, 1).ok());
  TensorMap r = ResultOf(*agg);
  EXPECT_EQ(r["h"].scalar_type(), at::kHalf);
  EXPECT_EQ(r["d"].scalar_type(), at::kDouble);
  EXPECT_THAT(ToVec(r["h"]), ElementsAre(FloatEq(2.0f), FloatEq(3.0f)));
  EXPECT_DOUBLE_EQ(r["d"][1].item<double>(), 4.0);
}

TEST(AggregateTest, OptionsAndNames) {
  AggregatorOptions bad;
  bad.method = AggregationMethod::kTrimmedMean;
  bad.trim_fraction = 0.5;
  EXPECT_EQ(MakeAggregator(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = {};
  bad.clip_norm = -1;
  EXPECT_EQ(MakeAggregator(bad).status().code(), absl::StatusCode::kInvalidArgument);
  for (AggregationMethod m :
       {AggregationMethod::kFedAvg, AggregationMethod::kTrimmedMean, AggregationMethod::kMedian}) {
    EXPECT_EQ(*ParseAggregationMethod(AggregationMethodName(m)), m);
  }
  EXPECT_EQ(ParseAggregationMethod("krum").status().code(), absl::StatusCode::kInvalidArgument);
}

// Reddi et al. 2021, Alg. 2, computed by hand in double precision.
struct HandAdam {
  double lr, b1, b2, tau;
  std::vector<double> m, v;
  std::vector<double> Step(const std::vector<double>& d) {
    if (m.empty()) {
      m.assign(d.size(), 0.0);
      v.assign(d.size(), tau * tau);
    }
    std::vector<double> s(d.size());
    for (size_t i = 0; i < d.size(); ++i) {
      m[i] = b1 * m[i] + (1 - b1) * d[i];
      v[i] = b2 * v[i] + (1 - b2) * d[i] * d[i];
      s[i] = lr * m[i] / (std::sqrt(v[i]) + tau);
    }
    return s;
  }
};

TEST(FedAdamTest, StepsMatchHandComputation) {
  FedAdamOptions options;
  options.learning_rate = 0.1;
  auto adam = *FedAdam::Create(options);
  HandAdam hand{0.1, 0.9, 0.99, 1e-3, {}, {}};

  // Round 1 by hand: m = 0.1 d = [0.01, -0.02, 0]; v = 0.99e-6 + 0.01 d^2 = [1.0099e-4, 4.0099e-4, 0.99e-6];
  // step = 0.1 m / (sqrt(v) + 1e-3) = [0.0905028, -0.0951261, 0].
  const std::vector<std::vector<float>> rounds = {{0.1f, -0.2f, 0.0f}, {0.05f, 0.2f, -0.3f}, {-0.1f, 0.0f, 0.01f}};
  for (size_t r = 0; r < rounds.size(); ++r) {
    TensorMap d;
    d["w"] = Vec(rounds[r]);
    d["bn.running_mean"] = Vec({0.5f});
    d["bn.num_batches_tracked"] = at::scalar_tensor(static_cast<int64_t>(7), at::kLong);
    absl::StatusOr<TensorMap> step = adam->Step(d);
    ASSERT_TRUE(step.ok()) << step.status();
    std::vector<double> want = hand.Step(std::vector<double>(rounds[r].begin(), rounds[r].end()));
    std::vector<float> got = ToVec(step->at("w"));
    for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-6) << "round " << r << " i " << i;
    if (r == 0) {
      EXPECT_NEAR(got[0], 0.0905028, 1e-6);
      EXPECT_NEAR(got[1], -0.0951261, 1e-6);
      EXPECT_EQ(got[2], 0.0f);
    }
    // Statistics and counters pass through.
    EXPECT_THAT(ToVec(step->at("bn.running_mean")), ElementsAre(FloatEq(0.5f)));
    EXPECT_EQ(step->at("bn.num_batches_tracked").item<int64_t>(), 7);
  }
  EXPECT_EQ(adam->rounds(), 3);
}

TEST(FedAdamTest, StatePersistsAcrossRestart) {
  auto a = *FedAdam::Create();
  TensorMap d1, d2;
  d1["w"] = Randn({10}, 1) * 0.01;
  d2["w"] = Randn({10}, 2) * 0.01;
  ASSERT_TRUE(a->Step(d1).ok());
  TensorMap state = a->ExportState();
  EXPECT_EQ(state.size(), 2u);
  ASSERT_TRUE(state.count("m/w") && state.count("v/w"));

  auto b = *FedAdam::Create();
  ASSERT_TRUE(b->RestoreState(state, a->rounds()).ok());
  EXPECT_EQ(b->rounds(), 1);
  TensorMap sa = *a->Step(d2);
  TensorMap sb = *b->Step(d2);
  EXPECT_TRUE(at::allclose(sa["w"], sb["w"], 0, 0));

  // Schema changes and bad state are refused without touching the state.
  TensorMap wrong;
  wrong["w"] = Vec({1.0f});
  absl::Status s = a->Step(wrong).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("'w'"));
  EXPECT_EQ(b->Step(wrong).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(a->rounds(), 2);
  TensorMap unpaired;
  unpaired["m/w"] = Vec({1.0f});
  EXPECT_EQ(b->RestoreState(unpaired, 1).code(), absl::StatusCode::kInvalidArgument);
  TensorMap negative;
  negative["m/w"] = Vec({1.0f});
  negative["v/w"] = Vec({-1.0f});
  EXPECT_EQ(b->RestoreState(negative, 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(b->rounds(), 2);

  FedAdamOptions bad;
  bad.beta2 = 1.0;
  EXPECT_EQ(FedAdam::Create(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtune::fl
