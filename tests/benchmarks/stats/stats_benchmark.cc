// AUC + DeLong variance (fast midrank algorithm) at n = 10^4, 10^5, 10^6 with
// 30% tied scores, and the O(m*n) definition at n = 10^4 as the baseline. Run
// by deploy/bench.sh; never by ctest.
#include <random>
#include <vector>

#include "benchmark/benchmark.h"
#include "common/logging.h"
#include "common/stats/delong.h"
#include "tests/testing/brute_force_stats.h"

namespace {

struct Data {
  std::vector<int> truth;
  std::vector<double> scores;
};

// 25% positives; 30% of the cases take one of 200 shared score values (ties),
// the rest continuous scores.
Data MakeData(int64_t n) {
  std::mt19937_64 rng(20261125);
  std::bernoulli_distribution positive(0.25);
  std::bernoulli_distribution tied(0.30);
  std::normal_distribution<double> noise;
  std::uniform_int_distribution<int> level(0, 199);
  Data d;
  d.truth.reserve(n);
  d.scores.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    const int y = positive(rng) ? 1 : 0;
    d.truth.push_back(y);
    d.scores.push_back(tied(rng) ? level(rng) / 50.0 - 2.0 + y : noise(rng) + y);
  }
  return d;
}

void BM_FastAucAndDeLongVariance(benchmark::State& state) {
  Data d = MakeData(state.range(0));
  for (auto _ : state) {
    auto e = fedtune::stats::EstimateAuc(d.truth, d.scores);
    CHECK(e.ok()) << e.status();
    benchmark::DoNotOptimize(e->variance);
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_FastAucAndDeLongVariance)->Arg(10'000)->Arg(100'000)->Arg(1'000'000)->Unit(benchmark::kMillisecond);

void BM_BruteForceAucAndDeLongVariance(benchmark::State& state) {
  Data d = MakeData(state.range(0));
  for (auto _ : state) {
    auto c = fedtune::testing::BruteForceComponents(d.truth, d.scores);
    double variance = fedtune::testing::BruteForceCovariance(c, c);
    benchmark::DoNotOptimize(variance);
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_BruteForceAucAndDeLongVariance)->Arg(10'000)->Unit(benchmark::kMillisecond);

void BM_FastPairedDeLong(benchmark::State& state) {
  Data d = MakeData(state.range(0));
  Data e = MakeData(state.range(0));
  for (auto _ : state) {
    auto t = fedtune::stats::PairedDeLongTest(d.truth, d.scores, e.scores);
    CHECK(t.ok()) << t.status();
    benchmark::DoNotOptimize(t->p_value);
  }
}
BENCHMARK(BM_FastPairedDeLong)->Arg(1'000'000)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
