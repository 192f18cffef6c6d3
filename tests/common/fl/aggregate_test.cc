#include "common/fl/aggregate.h"

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/fl/test_tensors.h"
#include "tests/testing/temp_dir.h"

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
  // A map the caller keeps is copied; a map moved in is taken without a copy (no second state in memory).
  EXPECT_NE(b->StateView().at("m/w").data_ptr(), state.at("m/w").data_ptr());
  auto c = *FedAdam::Create();
  TensorMap moved = a->ExportState();
  const void* moved_m = moved.at("m/w").data_ptr();
  ASSERT_TRUE(c->RestoreState(std::move(moved), a->rounds()).ok());
  EXPECT_EQ(c->StateView().at("m/w").data_ptr(), moved_m);
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

// ---- Adding tensor by tensor (AddFrom) and spilling the order statistics to disk.

// A source over `delta` in reverse name order (not the map's), failing with `fail` before the tensor named
// `fail_at` when that is set.
TensorSource SourceOf(const TensorMap& delta, const std::string& fail_at = "",
                      absl::Status fail = absl::DataLossError("read error")) {
  return [&delta, fail_at, fail](const TensorVisitor& visit) -> absl::Status {
    for (auto it = delta.rbegin(); it != delta.rend(); ++it) {
      if (it->first == fail_at) return fail;
      absl::Status s = visit(it->first, it->second);
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  };
}

// A delta of several tensors and dtypes; values drawn from a few levels when `ties` (many equal values per
// coordinate), otherwise normal.
TensorMap RandomDelta(uint64_t seed, bool ties) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  auto draw = [&](std::vector<int64_t> shape) {
    if (ties) return at::randint(-2, 3, shape, gen, at::TensorOptions().dtype(at::kFloat)).mul(0.5);
    return at::randn(shape, gen, at::TensorOptions().dtype(at::kFloat));
  };
  TensorMap d;
  d["conv.weight"] = draw({7, 3, 5, 5});
  d["conv.bias"] = draw({7});
  d["bn.running_mean"] = draw({7});
  d["bn.num_batches_tracked"] = at::scalar_tensor(static_cast<int64_t>(seed % 17), at::kLong);
  d["fc.weight"] = draw({13, 11}).to(at::kDouble);
  d["fc.half"] = draw({9}).to(at::kHalf);
  d["empty"] = draw({0, 3});
  return d;
}

void ExpectBitEqual(const TensorMap& a, const TensorMap& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (const auto& [name, t] : a) {
    ASSERT_EQ(b.count(name), 1u) << what << " " << name;
    const at::Tensor& u = b.at(name);
    EXPECT_EQ(t.scalar_type(), u.scalar_type()) << what << " " << name;
    EXPECT_EQ(t.sizes(), u.sizes()) << what << " " << name;
    EXPECT_TRUE(at::equal(t, u)) << what << " " << name;
  }
}

TEST(AggregateSpillTest, SpilledOrderStatisticsEqualTheInMemoryOnesBitForBit) {
  fedtune::testing::TempDir dir;
  for (AggregationMethod method : {AggregationMethod::kMedian, AggregationMethod::kTrimmedMean}) {
    for (double trim : {0.0, 0.1, 0.2, 0.34}) {
      if (method == AggregationMethod::kMedian && trim != 0.0) continue;
      for (int sites : {1, 2, 3, 4, 5, 8}) {
        for (bool ties : {false, true}) {
          for (int64_t block_bytes : {int64_t{1}, int64_t{1000}, int64_t{64} << 20}) {
            const std::string what = absl::StrCat(AggregationMethodName(method), " trim ", trim, " sites ", sites,
                                                  " ties ", ties, " block ", block_bytes);
            AggregatorOptions options;
            options.method = method;
            options.trim_fraction = trim;
            std::unique_ptr<Aggregator> memory = *MakeAggregator(options);
            options.spill_path = dir.Join("round.spill");
            options.spill_block_bytes = block_bytes;
            absl::StatusOr<std::unique_ptr<Aggregator>> spill = MakeAggregator(options);
            ASSERT_TRUE(spill.ok()) << spill.status();
            EXPECT_TRUE((*spill)->streaming());
            int64_t floating_bytes = 0;
            for (int site = 0; site < sites; ++site) {
              const TensorMap d = RandomDelta(100 * sites + site, ties);
              ASSERT_TRUE(memory->Add(d, site + 1).ok());
              ASSERT_TRUE((*spill)->AddFrom(SourceOf(d), site + 1).ok()) << what;
              floating_bytes = 0;
              for (const auto& [name, t] : d) {
                if (IsFloating(t)) floating_bytes += t.numel() * (t.scalar_type() == at::kDouble ? 8 : 4);
              }
            }
            // The deltas are on disk, as float32 (float64 for float64 tensors); only the counter is in memory.
            EXPECT_EQ((*spill)->SpilledBytes(), sites * floating_bytes) << what;
            EXPECT_EQ(std::filesystem::file_size(options.spill_path), static_cast<uintmax_t>(sites * floating_bytes));
            EXPECT_EQ((*spill)->HeldBytes(), 8) << what;
            ExpectBitEqual(ResultOf(*memory), ResultOf(**spill), what);
            EXPECT_EQ((*spill)->num_updates(), sites);
            EXPECT_EQ((*spill)->Describe(), memory->Describe());
            spill->reset();
            EXPECT_FALSE(std::filesystem::exists(options.spill_path)) << what;  // Removed with the aggregator.
          }
        }
      }
    }
  }
}

TEST(AggregateSpillTest, AddFromEqualsAddWithClipping) {
  for (AggregationMethod method : {AggregationMethod::kFedAvg, AggregationMethod::kTrimmedMean}) {
    fedtune::testing::TempDir dir;
    AggregatorOptions options;
    options.method = method;
    options.clip_norm = 20.0;  // Clips some of the deltas (norms around 17-25).
    std::unique_ptr<Aggregator> whole = *MakeAggregator(options);
    if (method != AggregationMethod::kFedAvg) options.spill_path = dir.Join("a.spill");
    std::unique_ptr<Aggregator> streamed = *MakeAggregator(options);
    std::unique_ptr<Aggregator> given_norm = *MakeAggregator(AggregatorOptions{options.method, 0.1, 20.0, {}});
    for (int site = 0; site < 5; ++site) {
      const TensorMap d = RandomDelta(site, false);
      ASSERT_TRUE(whole->Add(d, 3 + site).ok());
      ASSERT_TRUE(streamed->AddFrom(SourceOf(d), 3 + site).ok());
      ASSERT_TRUE(given_norm->AddFrom(SourceOf(d), 3 + site, L2Norm(d)).ok());
    }
    ExpectBitEqual(ResultOf(*whole), ResultOf(*streamed), AggregationMethodName(method));
    ExpectBitEqual(ResultOf(*whole), ResultOf(*given_norm), AggregationMethodName(method));
    EXPECT_EQ(streamed->total_samples(), whole->total_samples());
  }
}

TEST(AggregateSpillTest, AFailureHalfWayLeavesTheAggregatorAsBeforeOrDamaged) {
  fedtune::testing::TempDir dir;
  const TensorMap d0 = RandomDelta(1, false), d1 = RandomDelta(2, false), d2 = RandomDelta(3, false);
  TensorMap nan_middle = RandomDelta(4, false);
  nan_middle["conv.bias"][3] = NAN;
  TensorMap wrong_shape = RandomDelta(5, false);
  wrong_shape["conv.bias"] = Randn({8}, 9);
  TensorMap extra = RandomDelta(6, false);
  extra["unknown"] = Randn({2}, 9);
  TensorMap missing = RandomDelta(7, false);
  missing.erase("bn.running_mean");

  // The order statistics roll back: the same result as without the failures, and the file as before.
  for (AggregationMethod method : {AggregationMethod::kMedian, AggregationMethod::kTrimmedMean}) {
    AggregatorOptions options;
    options.method = method;
    options.trim_fraction = 0.25;
    std::unique_ptr<Aggregator> reference = *MakeAggregator(options);
    options.spill_path = dir.Join("r.spill");
    std::unique_ptr<Aggregator> agg = *MakeAggregator(options);
    // A failure in the first update (the layout being learnt) leaves nothing.
    EXPECT_EQ(agg->AddFrom(SourceOf(d0, "bn.num_batches_tracked"), 1).code(), absl::StatusCode::kDataLoss);
    EXPECT_EQ(agg->SpilledBytes(), 0);
    EXPECT_EQ(std::filesystem::file_size(options.spill_path), 0u);
    for (const TensorMap* d : {&d0, &d1}) {
      ASSERT_TRUE(reference->Add(*d, 1).ok());
      ASSERT_TRUE(agg->AddFrom(SourceOf(*d), 1).ok());
    }
    const int64_t spilled = agg->SpilledBytes();
    absl::Status s = agg->AddFrom(SourceOf(d2, "bn.num_batches_tracked"), 1, -1, "update from site-x");
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(s.message(), HasSubstr("update from site-x"));
    s = agg->AddFrom(SourceOf(nan_middle), 1);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr("'conv.bias' has non-finite"));
    EXPECT_THAT(agg->AddFrom(SourceOf(wrong_shape), 1).message(), HasSubstr("'conv.bias'"));
    EXPECT_THAT(agg->AddFrom(SourceOf(extra), 1).message(), HasSubstr("'unknown'"));
    EXPECT_THAT(agg->AddFrom(SourceOf(missing), 1).message(), HasSubstr("missing bn.running_mean"));
    EXPECT_FALSE(agg->damaged());
    EXPECT_EQ(agg->SpilledBytes(), spilled);
    EXPECT_EQ(std::filesystem::file_size(options.spill_path), static_cast<uintmax_t>(spilled));
    EXPECT_EQ(agg->num_updates(), 2);
    // The next update and the result are those of a run without the failures.
    ASSERT_TRUE(reference->Add(d2, 1).ok());
    ASSERT_TRUE(agg->AddFrom(SourceOf(d2), 1).ok());
    ExpectBitEqual(ResultOf(*reference), ResultOf(*agg), AggregationMethodName(method));
  }

  // FedAvg: a failure in the first update leaves it empty; later, one after part of the delta was added cannot be
  // undone: damaged, and it says so instead of returning a wrong mean.
  std::unique_ptr<Aggregator> fedavg = Make(AggregationMethod::kFedAvg);
  EXPECT_EQ(fedavg->AddFrom(SourceOf(d0, "bn.num_batches_tracked"), 1).code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(fedavg->damaged());
  EXPECT_EQ(fedavg->HeldBytes(), 0);
  ASSERT_TRUE(fedavg->AddFrom(SourceOf(d0), 1).ok());
  // Failing before any floating tensor (reverse name order: fc.weight comes first) changes nothing either.
  EXPECT_EQ(fedavg->AddFrom(SourceOf(d1, "fc.weight"), 1).code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(fedavg->damaged());
  EXPECT_EQ(fedavg->AddFrom(SourceOf(d1, "bn.num_batches_tracked"), 1).code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(fedavg->damaged());
  EXPECT_EQ(fedavg->Result().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(fedavg->AddFrom(SourceOf(d1), 1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(fedavg->Add(d1, 1).code(), absl::StatusCode::kFailedPrecondition);
  // Add checks the whole delta first: its refusals never damage.
  std::unique_ptr<Aggregator> checked = Make(AggregationMethod::kFedAvg);
  ASSERT_TRUE(checked->Add(d0, 1).ok());
  EXPECT_EQ(checked->Add(nan_middle, 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(checked->damaged());
}

TEST(AggregateSpillTest, TakeResultEqualsResultAndSpendsOnlyAFedAvgSum) {
  fedtune::testing::TempDir dir;
  for (AggregationMethod method : {AggregationMethod::kFedAvg, AggregationMethod::kMedian}) {
    AggregatorOptions options;
    options.method = method;
    options.spill_path = dir.Join("t.spill");
    std::unique_ptr<Aggregator> agg = *MakeAggregator(options);
    EXPECT_EQ(agg->TakeResult().status().code(), absl::StatusCode::kFailedPrecondition);  // Nothing added.
    EXPECT_FALSE(agg->damaged());
    for (int site = 0; site < 3; ++site) ASSERT_TRUE(agg->Add(RandomDelta(site, false), 2 + site).ok());
    const TensorMap result = ResultOf(*agg);
    absl::StatusOr<TensorMap> taken = agg->TakeResult();
    ASSERT_TRUE(taken.ok()) << taken.status();
    ExpectBitEqual(result, *taken, AggregationMethodName(method));
    if (method == AggregationMethod::kFedAvg) {
      EXPECT_TRUE(agg->damaged());  // The sum was handed over.
      EXPECT_EQ(agg->Result().status().code(), absl::StatusCode::kFailedPrecondition);
    } else {
      EXPECT_FALSE(agg->damaged());
      ExpectBitEqual(result, ResultOf(*agg), "median again");
    }
  }
}

TEST(AggregateSpillTest, FedAdamStepInPlaceEqualsStep) {
  auto a = *FedAdam::Create();
  auto b = *FedAdam::Create();
  for (uint64_t round = 1; round <= 3; ++round) {
    const TensorMap d = RandomDelta(round, false);
    absl::StatusOr<TensorMap> step = a->Step(d);
    ASSERT_TRUE(step.ok()) << step.status();
    TensorMap in_place;
    for (const auto& [name, t] : d) in_place.emplace(name, t.clone());
    const void* storage = in_place.at("conv.weight").data_ptr();
    ASSERT_TRUE(b->StepInPlace(in_place).ok());
    EXPECT_EQ(in_place.at("conv.weight").data_ptr(), storage);  // Written into the delta's own memory.
    ExpectBitEqual(*step, in_place, absl::StrCat("round ", round));
  }
  TensorMap wrong = {{"conv.weight", Randn({2}, 1)}};
  EXPECT_EQ(b->StepInPlace(wrong).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(wrong.at("conv.weight").numel(), 2);
  EXPECT_EQ(b->rounds(), 3);
}

TEST(AggregateSpillTest, SpillFileErrorsNameTheFile) {
  AggregatorOptions options;
  options.method = AggregationMethod::kMedian;
  options.spill_path = "/nonexistent-dir/x.spill";
  absl::StatusOr<std::unique_ptr<Aggregator>> agg = MakeAggregator(options);
  EXPECT_EQ(agg.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(agg.status().message(), HasSubstr("/nonexistent-dir/x.spill"));
  // FedAvg never spills: the path is ignored.
  options.method = AggregationMethod::kFedAvg;
  EXPECT_TRUE(MakeAggregator(options).ok());
}

}  // namespace
}  // namespace fedtune::fl
