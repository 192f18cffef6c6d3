// Tests of common/privacy/rdp_accountant.h: RDP, epsilon and best order against an independent Python reference
// (rdp_reference.py) over a grid of settings, closed forms, composition, the consortium maximum, the noise solver and
// the parameter bounds.
#include "common/privacy/rdp_accountant.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::privacy {
namespace {

using ::testing::HasSubstr;

struct Setting {
  double q;
  double sigma;
  int64_t steps;
  double delta;
};

struct Reference {
  double epsilon = 0;
  double best_order = 0;
  std::vector<double> orders, rdp;
};

Reference RunReference(const Setting& s) {
  const std::string script = std::string(FEDTUNE_SOURCE_DIR) + "/tests/common/privacy/rdp_reference.py";
  std::string out;
  const std::string cmd =
      absl::StrCat(FEDTUNE_PYTHON, " ", script, " ", s.q, " ", s.sigma, " ", s.steps, " ", s.delta, " 2>/dev/null");
  EXPECT_EQ(testing::RunCommand(cmd, &out), 0) << cmd << "\n" << out;
  Reference ref;
  std::istringstream in(out);
  in >> ref.epsilon >> ref.best_order;
  double a, r;
  while (in >> a >> r) {
    ref.orders.push_back(a);
    ref.rdp.push_back(r);
  }
  return ref;
}

// q = 1 (no subsampling), small q, large sigma, the Abadi et al. MNIST setting (q = 0.01, sigma = 1.1, 10^4 steps),
// a fractional best order, and a long run.
const Setting kGrid[] = {
    {1.0, 1.0, 10, 1e-5}, {0.001, 0.8, 1000, 1e-6}, {0.02, 50, 100, 1e-5},     {0.01, 1.1, 10000, 1e-5},
    {0.5, 0.5, 5, 1e-5},  {0.1, 2.0, 500, 1e-5},    {0.004, 1.0, 50000, 1e-5}, {0.3, 0.3, 1, 1e-3},
};

TEST(RdpAccountantTest, MatchesIndependentReference) {
  for (const Setting& s : kGrid) {
    SCOPED_TRACE(absl::StrCat("q=", s.q, " sigma=", s.sigma, " steps=", s.steps, " delta=", s.delta));
    Reference ref = RunReference(s);
    ASSERT_EQ(ref.orders, DefaultOrders());
    absl::StatusOr<std::vector<double>> rdp = ComputeRdp(s.q, s.sigma, s.steps, DefaultOrders());
    ASSERT_TRUE(rdp.ok()) << rdp.status();
    int compared = 0;
    double max_rel = 0;
    for (size_t k = 0; k < ref.orders.size(); ++k) {
      if (!std::isfinite(ref.rdp[k]) || ref.rdp[k] > 1e6) continue;  // Beyond the reference's double range.
      // 1e-6 relative (quad's and decimal's accuracy is far better), plus 1e-12 per step absolute for the tiny RDP of
      // small q and large sigma where the C++'s log-space sum has ~1e-16 absolute rounding per term.
      EXPECT_NEAR((*rdp)[k], ref.rdp[k], 1e-6 * ref.rdp[k] + 1e-12 * s.steps) << "order " << ref.orders[k];
      if (ref.rdp[k] > 0) max_rel = std::max(max_rel, std::fabs((*rdp)[k] - ref.rdp[k]) / ref.rdp[k]);
      ++compared;
    }
    std::printf("q=%g sigma=%g steps=%lld: max relative RDP difference %.2e\n", s.q, s.sigma,
                static_cast<long long>(s.steps), max_rel);
    EXPECT_GT(compared, 100);
    absl::StatusOr<PrivacySpent> spent = RdpToEpsilon(DefaultOrders(), *rdp, s.delta);
    ASSERT_TRUE(spent.ok()) << spent.status();
    EXPECT_NEAR(spent->epsilon, ref.epsilon, 1e-6 * ref.epsilon);
    EXPECT_EQ(spent->best_order, ref.best_order);
  }
}

TEST(RdpAccountantTest, ClosedForms) {
  // No subsampling: the Gaussian mechanism's alpha / (2 sigma^2).
  EXPECT_DOUBLE_EQ(*SampledGaussianRdp(1.0, 2.0, 8), 1.0);
  EXPECT_DOUBLE_EQ(*SampledGaussianRdp(1.0, 2.0, 2.5), 2.5 / 8);
  // Nothing sampled: no privacy loss.
  EXPECT_EQ(*SampledGaussianRdp(0.0, 1.0, 3.5), 0.0);
  // Order 2 by hand: A_2 = 1 + q^2 (exp(1 / sigma^2) - 1).
  const double q = 0.1, sigma = 1.5;
  EXPECT_NEAR(*SampledGaussianRdp(q, sigma, 2), std::log1p(q * q * std::expm1(1 / (sigma * sigma))), 1e-15);
  // Subsampling only helps, and RDP grows with the order.
  EXPECT_LT(*SampledGaussianRdp(0.5, 1.0, 4.5), *SampledGaussianRdp(1.0, 1.0, 4.5));
  EXPECT_LT(*SampledGaussianRdp(0.05, 1.0, 3.7), *SampledGaussianRdp(0.05, 1.0, 3.8));
}

TEST(RdpAccountantTest, DefaultOrdersAreOpacus) {
  const std::vector<double>& orders = DefaultOrders();
  ASSERT_EQ(orders.size(), 151u);
  EXPECT_DOUBLE_EQ(orders.front(), 1.1);
  EXPECT_DOUBLE_EQ(orders[98], 10.9);
  EXPECT_EQ(orders[99], 12);
  EXPECT_EQ(orders.back(), 63);
}

TEST(RdpAccountantTest, ComposesOverStepsAndPhases) {
  RdpAccountant in_rounds, at_once, mixed;
  for (int round = 0; round < 5; ++round) ASSERT_TRUE(in_rounds.AddSteps(0.02, 1.0, 40).ok());
  ASSERT_TRUE(at_once.AddSteps(0.02, 1.0, 200).ok());
  for (size_t k = 0; k < at_once.rdp().size(); ++k) EXPECT_NEAR(in_rounds.rdp()[k], at_once.rdp()[k], 1e-12);
  // Heterogeneous phases: RDP adds per order.
  ASSERT_TRUE(mixed.AddSteps(0.02, 1.0, 200).ok());
  ASSERT_TRUE(mixed.AddSteps(0.05, 2.0, 30).ok());
  std::vector<double> second = *ComputeRdp(0.05, 2.0, 30, DefaultOrders());
  for (size_t k = 0; k < mixed.rdp().size(); ++k) {
    EXPECT_NEAR(mixed.rdp()[k], at_once.rdp()[k] + second[k], 1e-12);
  }
  EXPECT_GT(mixed.GetPrivacySpent(1e-5)->epsilon, at_once.GetPrivacySpent(1e-5)->epsilon);
  // A failed phase leaves the accountant unchanged.
  std::vector<double> before = mixed.rdp();
  EXPECT_FALSE(mixed.AddSteps(2.0, 1.0, 10).ok());
  EXPECT_EQ(mixed.rdp(), before);
}

TEST(RdpAccountantTest, ConsortiumEpsilonIsTheMaximumOverSites) {
  std::vector<RdpAccountant> sites(3);
  ASSERT_TRUE(sites[0].AddSteps(0.01, 1.0, 1000).ok());
  ASSERT_TRUE(sites[1].AddSteps(0.05, 1.0, 1000).ok());  // Smallest site: highest sample rate, largest epsilon.
  ASSERT_TRUE(sites[2].AddSteps(0.02, 1.0, 1000).ok());
  PrivacySpent consortium = *ConsortiumEpsilon(sites, 1e-5);
  EXPECT_EQ(consortium.epsilon, sites[1].GetPrivacySpent(1e-5)->epsilon);
  EXPECT_EQ(consortium.best_order, sites[1].GetPrivacySpent(1e-5)->best_order);
  EXPECT_EQ(ConsortiumEpsilon({}, 1e-5).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(RdpAccountantTest, NoiseSolverRoundTrips) {
  for (double target : {0.5, 1.0, 3.0, 8.0}) {
    SCOPED_TRACE(absl::StrCat("target ", target));
    absl::StatusOr<NoiseSolution> solution = SolveNoiseMultiplier(target, 0.01, 2000, 1e-5);
    ASSERT_TRUE(solution.ok()) << solution.status();
    EXPECT_LE(solution->spent.epsilon, target);
    RdpAccountant check;
    ASSERT_TRUE(check.AddSteps(0.01, solution->noise_multiplier, 2000).ok());
    EXPECT_EQ(check.GetPrivacySpent(1e-5)->epsilon, solution->spent.epsilon);
    // A noise multiplier 1e-3 smaller (10x the tolerance) overshoots the target: the solution is the smallest.
    RdpAccountant less;
    ASSERT_TRUE(less.AddSteps(0.01, solution->noise_multiplier * (1 - 1e-3), 2000).ok());
    EXPECT_GT(less.GetPrivacySpent(1e-5)->epsilon, target);
  }
}

TEST(RdpAccountantTest, NoiseSolverRejectsUnreachableTargets) {
  // With no steps, epsilon is the floor set by delta alone (about 0.2 at delta = 1e-5): smaller targets are out of
  // reach for any noise.
  absl::StatusOr<NoiseSolution> floor = SolveNoiseMultiplier(0.01, 0.01, 0, 1e-5);
  EXPECT_EQ(floor.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(floor.status().message(), HasSubstr("unreachable"));
  EXPECT_EQ(SolveNoiseMultiplier(0, 0.01, 100, 1e-5).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SolveNoiseMultiplier(1, 0.01, 100, 1e-5, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SolveNoiseMultiplier(NAN, 0.01, 100, 1e-5).status().code(), absl::StatusCode::kInvalidArgument);
  // A generous target is met at the smallest allowed noise.
  EXPECT_EQ(SolveNoiseMultiplier(1e6, 0.01, 10, 1e-5)->noise_multiplier, kMinNoiseMultiplier);
}

TEST(RdpAccountantTest, RejectsOutOfBoundParameters) {
  auto code = [](const absl::Status& s) { return s.code(); };
  const auto kBad = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(code(SampledGaussianRdp(-0.1, 1, 2).status()), kBad);
  EXPECT_EQ(code(SampledGaussianRdp(1.5, 1, 2).status()), kBad);
  EXPECT_EQ(code(SampledGaussianRdp(NAN, 1, 2).status()), kBad);
  EXPECT_EQ(code(SampledGaussianRdp(0.1, 0, 2).status()), kBad);
  EXPECT_EQ(code(SampledGaussianRdp(0.1, INFINITY, 2).status()), kBad);
  EXPECT_EQ(code(SampledGaussianRdp(0.1, NAN, 2).status()), kBad);
  EXPECT_EQ(code(SampledGaussianRdp(0.1, 1, 1).status()), kBad);
  EXPECT_EQ(code(SampledGaussianRdp(0.1, 1, 2000).status()), kBad);
  EXPECT_THAT(SampledGaussianRdp(0.1, -1, 2).status().message(), HasSubstr("noise multiplier"));
  EXPECT_THAT(SampledGaussianRdp(2, 1, 2).status().message(), HasSubstr("sample rate"));
  EXPECT_THAT(ComputeRdp(0.1, 1, -1, DefaultOrders()).status().message(), HasSubstr("steps"));
  EXPECT_EQ(code(ComputeRdp(0.1, 1, kMaxSteps + 1, DefaultOrders()).status()), kBad);
  std::vector<double> rdp(DefaultOrders().size(), 1.0);
  for (double delta : {0.0, 1.0, -1e-5, double(NAN)}) {
    EXPECT_THAT(RdpToEpsilon(DefaultOrders(), rdp, delta).status().message(), HasSubstr("delta"));
  }
  EXPECT_EQ(code(RdpToEpsilon({1.0, 2.0}, {1, 1}, 1e-5).status()), kBad);
  EXPECT_EQ(code(RdpToEpsilon({2.0}, {1, 1}, 1e-5).status()), kBad);
  EXPECT_EQ(code(RdpToEpsilon({}, {}, 1e-5).status()), kBad);
  EXPECT_EQ(code(RdpToEpsilon({2.0}, {INFINITY}, 1e-5).status()), absl::StatusCode::kOutOfRange);
  // The extremes of the bounds still give finite values.
  EXPECT_TRUE(std::isfinite(*SampledGaussianRdp(0.5, kMinNoiseMultiplier, 10.9)));
  EXPECT_TRUE(std::isfinite(*SampledGaussianRdp(0.999, kMinNoiseMultiplier, 1.1)));
  EXPECT_GT(*SampledGaussianRdp(1e-9, kMaxNoiseMultiplier, 63), 0 - 1e-300);
  EXPECT_TRUE(std::isfinite(ComputeRdp(0.01, 1.0, kMaxSteps, DefaultOrders())->back()));
}

}  // namespace
}  // namespace fedtune::privacy
