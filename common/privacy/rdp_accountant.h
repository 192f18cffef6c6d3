// Rényi differential privacy (RDP) accounting of the sampled Gaussian mechanism (Mironov 2017, "Rényi Differential
// Privacy"; Mironov, Talwar & Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian Mechanism").
//
// One step of DP-SGD with Poisson sample rate q and noise multiplier sigma (noise std = sigma * clipping norm) has,
// at order alpha > 1, RDP  eps_alpha = log(A_alpha) / (alpha - 1)  with A_alpha from the paper's section 3.3: the
// binomial expansion for integer alpha and the two convergent series with erfc for fractional alpha, both evaluated in
// log space. RDP adds over steps and over phases with different (q, sigma); it is converted to (epsilon, delta) with
// the same formula and orders as Opacus's RDP accountant (get_privacy_spent):
//   epsilon = min over orders of  rdp_alpha - (log delta + log alpha) / (alpha - 1) + log((alpha - 1) / alpha).
// Sites hold disjoint data, so a consortium's epsilon is the maximum of its sites' epsilons (ConsortiumEpsilon).
//
// Bounds (every violation is InvalidArgument naming the parameter): sample rate q in [0, 1]; noise multiplier sigma
// finite and in [kMinNoiseMultiplier, kMaxNoiseMultiplier]; steps in [0, kMaxSteps]; delta in (0, 1); orders finite and
// > 1, at most kMaxOrder. All functions are pure and thread-safe; RdpAccountant is not thread-safe (one owner).
#ifndef FEDTUNE_COMMON_PRIVACY_RDP_ACCOUNTANT_H_
#define FEDTUNE_COMMON_PRIVACY_RDP_ACCOUNTANT_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fedtune::privacy {

inline constexpr int64_t kMaxSteps = 1'000'000'000;
inline constexpr double kMinNoiseMultiplier = 0.1;  // Below it the fractional-order series converges too slowly.
inline constexpr double kMaxNoiseMultiplier = 1e4;
inline constexpr double kMaxOrder = 1024;

// Opacus's default orders: 1.1, 1.2, ..., 10.9 (1 + x/10 for x = 1..99) then 12, 13, ..., 63 (151 orders).
const std::vector<double>& DefaultOrders();

// RDP of ONE step of the sampled Gaussian mechanism at `order`. q = 0 gives 0; q = 1 gives order / (2 sigma^2).
// InvalidArgument for out-of-bound q, sigma or order; Internal if the fractional series fails to converge (it does
// within the stated bounds).
absl::StatusOr<double> SampledGaussianRdp(double q, double sigma, double order);

// RDP of `steps` steps (steps * one step's RDP) at each of `orders`.
absl::StatusOr<std::vector<double>> ComputeRdp(double q, double sigma, int64_t steps,
                                               const std::vector<double>& orders);

struct PrivacySpent {
  double epsilon = 0;     // >= 0 (clamped at 0 where the conversion goes below it, which needs delta near 1).
  double best_order = 0;  // The order achieving the minimum (the first one on ties).
};

// Opacus's get_privacy_spent: converts RDP at `orders` (same length) to (epsilon, delta). Orders whose epsilon is NaN
// are skipped. InvalidArgument for mismatched or empty vectors, an order <= 1, delta outside (0, 1) or a negative
// RDP; OutOfRange when no order gives a finite epsilon.
absl::StatusOr<PrivacySpent> RdpToEpsilon(const std::vector<double>& orders, const std::vector<double>& rdp,
                                          double delta);

// Accumulates the RDP of one site's training: each AddSteps is a phase of `steps` steps at (q, sigma), e.g. the local
// steps of one round, or rounds * local steps at once. Not thread-safe.
class RdpAccountant {
 public:
  explicit RdpAccountant(std::vector<double> orders = DefaultOrders());

  // Adds a phase. InvalidArgument (accountant unchanged) for out-of-bound parameters or bad orders.
  absl::Status AddSteps(double q, double sigma, int64_t steps);
  // Epsilon at `delta` of everything added so far (see RdpToEpsilon).
  absl::StatusOr<PrivacySpent> GetPrivacySpent(double delta) const;

  const std::vector<double>& orders() const { return orders_; }
  const std::vector<double>& rdp() const { return rdp_; }

 private:
  std::vector<double> orders_;
  std::vector<double> rdp_;
};

// The consortium's epsilon: the maximum over sites (disjoint data, parallel composition). InvalidArgument if `sites`
// is empty; otherwise the first error of a site's GetPrivacySpent.
absl::StatusOr<PrivacySpent> ConsortiumEpsilon(const std::vector<RdpAccountant>& sites, double delta);

struct NoiseSolution {
  double noise_multiplier = 0;
  PrivacySpent spent;  // At noise_multiplier; spent.epsilon <= the target.
};

// The smallest noise multiplier (to a relative tolerance `rel_tolerance` in (0, 0.1], default 1e-4) whose epsilon after
// `steps` steps at sample rate q is at most `target_epsilon`, by bisection on sigma in [kMinNoiseMultiplier,
// kMaxNoiseMultiplier]; the returned sigma is the upper end of the final bracket, so its epsilon never exceeds the
// target. InvalidArgument for a non-positive or non-finite target or out-of-bound q, steps, delta or tolerance;
// OutOfRange when even kMaxNoiseMultiplier does not reach the target (e.g. below the floor that delta alone imposes).
absl::StatusOr<NoiseSolution> SolveNoiseMultiplier(double target_epsilon, double q, int64_t steps, double delta,
                                                   double rel_tolerance = 1e-4);

// Steps at one sample rate, all with the same noise multiplier: e.g. a SoloNet's members (q = batch / images) and its
// DuoNet (q = batch / study pairs), which the site composes (RDP adds).
struct SamplingPhase {
  double q = 0;
  int64_t steps = 0;
};
// SolveNoiseMultiplier for the composition of `phases` (1 to 64 of them, each within the bounds above): the smallest
// noise multiplier, shared by every phase, whose composed epsilon is at most the target. Errors as above, naming the
// phase.
absl::StatusOr<NoiseSolution> SolveNoiseMultiplierForPhases(double target_epsilon,
                                                            const std::vector<SamplingPhase>& phases, double delta,
                                                            double rel_tolerance = 1e-4);

}  // namespace fedtune::privacy

#endif  // FEDTUNE_COMMON_PRIVACY_RDP_ACCOUNTANT_H_
