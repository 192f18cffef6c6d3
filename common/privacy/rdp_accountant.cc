#include "common/privacy/rdp_accountant.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace fedtune::privacy {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// The fractional series stops once both new terms are below exp(-30) times min(1, max(A_alpha - 1, exp(-15))), i.e.
// below double precision of log A; the cap bounds the work for any input within the stated bounds.
constexpr double kSeriesCutoff = -30;
constexpr double kMinExcessLog = -15;
constexpr int kMaxSeriesTerms = 1'000'000;

// log(exp(x) + exp(y)).
double LogAdd(double x, double y) {
  double a = std::min(x, y), b = std::max(x, y);
  if (a == -kInf) return b;
  return std::log1p(std::exp(a - b)) + b;
}

// log(exp(x) - exp(y)), x >= y (checked by the caller).
double LogSub(double x, double y) {
  if (y == -kInf) return x;
  if (x == y) return -kInf;
  return std::log(-std::expm1(y - x)) + x;
}

// log(erfc(x)), accurate where erfc underflows: for x >= 20 the asymptotic series
// erfc(x) = exp(-x^2) / (x sqrt(pi)) * (1 - 1/(2x^2) + 3/(4x^4) - 15/(8x^6) + 105/(16x^8)), whose next term is < 1e-12.
double LogErfc(double x) {
  if (x < 20) return std::log(std::erfc(x));
  double r = 1 / (x * x);
  double series = 1 - r / 2 + 3 * r * r / 4 - 15 * r * r * r / 8 + 105 * r * r * r * r / 16;
  return -x * x - std::log(x) - 0.5 * std::log(M_PI) + std::log(series);
}

// log A_alpha for integer alpha: A = sum_i C(alpha, i) (1-q)^(alpha-i) q^i exp((i^2 - i) / (2 sigma^2)).
double LogAIntegerOrder(double q, double sigma, int alpha) {
  double log_a = -kInf;
  const double log_q = std::log(q), log_1mq = std::log1p(-q);
  for (int i = 0; i <= alpha; ++i) {
    double log_coef = std::lgamma(alpha + 1.0) - std::lgamma(i + 1.0) - std::lgamma(alpha - i + 1.0);
    double term = log_coef + i * log_q + (alpha - i) * log_1mq + (1.0 * i * i - i) / (2 * sigma * sigma);
    log_a = LogAdd(log_a, term);
  }
  return log_a;
}

// log A_alpha for fractional alpha (Mironov, Talwar & Zhang, section 3.3): A = A0 + A1 with
//   A0 = sum_i C(alpha, i) q^i (1-q)^(alpha-i) exp((i^2 - i) / (2 sigma^2)) * erfc((i - z0) / (sqrt(2) sigma)) / 2,
//   A1 = sum_i C(alpha, i) q^(alpha-i) (1-q)^i exp(((alpha-i)^2 - (alpha-i)) / (2 sigma^2))
//        * erfc((z0 - (alpha-i)) / (sqrt(2) sigma)) / 2,
// z0 = sigma^2 log(1/q - 1) + 1/2. C(alpha, i) changes sign for i > alpha, so each sum carries signed log terms.
absl::StatusOr<double> LogAFractionalOrder(double q, double sigma, double alpha) {
  const double log_q = std::log(q), log_1mq = std::log1p(-q);
  const double z0 = sigma * sigma * (log_1mq - log_q) + 0.5;
  const double two_var = 2 * sigma * sigma, sqrt2_sigma = std::sqrt(2.0) * sigma;
  double log_a0 = -kInf, log_a1 = -kInf;
  double log_abs_coef = 0;  // log |C(alpha, i)|, updated by C(alpha, i+1) = C(alpha, i) (alpha - i) / (i + 1).
  bool positive = true;
  for (int i = 0; i < kMaxSeriesTerms; ++i) {
    const double j = alpha - i;
    double log_s0 = log_abs_coef + i * log_q + j * log_1mq + (1.0 * i * i - i) / two_var + std::log(0.5) +
                    LogErfc((i - z0) / sqrt2_sigma);
    double log_s1 = log_abs_coef + j * log_q + i * log_1mq + (j * j - j) / two_var + std::log(0.5) +
                    LogErfc((z0 - j) / sqrt2_sigma);
    if (positive) {
      log_a0 = LogAdd(log_a0, log_s0);
      log_a1 = LogAdd(log_a1, log_s1);
    } else {
      if (log_s0 > log_a0 || log_s1 > log_a1) {
        return absl::InternalError(absl::StrCat("RDP series at order ", alpha, " (q=", q, ", sigma=", sigma,
                                                ") lost precision to cancellation"));
      }
      log_a0 = LogSub(log_a0, log_s0);
      log_a1 = LogSub(log_a1, log_s1);
    }
    // Stop once new terms are below exp(-30) relative to A - 1 (not A): when q is small, A - 1 is tiny and carries
    // all of log A, and the terms decay only polynomially in i. The cutoff never goes below exp(-45) (bounded work).
    const double log_a = LogAdd(log_a0, log_a1);
    const double log_excess = log_a > 0 ? std::log(std::expm1(log_a)) : -kInf;
    const double cutoff = kSeriesCutoff + std::max(kMinExcessLog, std::min(0.0, log_excess));
    if (std::max(log_s0, log_s1) < cutoff) return log_a;
    log_abs_coef += std::log(std::fabs(alpha - i)) - std::log(i + 1.0);
    if (alpha - i < 0) positive = !positive;
  }
  return absl::InternalError(absl::StrCat("RDP series at order ", alpha, " (q=", q, ", sigma=", sigma,
                                          ") did not converge in ", kMaxSeriesTerms, " terms"));
}

absl::Status CheckSampleRate(double q) {
  if (!(q >= 0 && q <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("sample rate must be in [0, 1], got ", q));
  }
  return absl::OkStatus();
}

absl::Status CheckNoiseMultiplier(double sigma) {
  if (!(sigma >= kMinNoiseMultiplier && sigma <= kMaxNoiseMultiplier)) {
    return absl::InvalidArgumentError(absl::StrCat("noise multiplier must be in [", kMinNoiseMultiplier, ", ",
                                                   kMaxNoiseMultiplier, "], got ", sigma));
  }
  return absl::OkStatus();
}

absl::Status CheckSteps(int64_t steps) {
  if (steps < 0 || steps > kMaxSteps) {
    return absl::InvalidArgumentError(absl::StrCat("steps must be in [0, ", kMaxSteps, "], got ", steps));
  }
  return absl::OkStatus();
}

absl::Status CheckDelta(double delta) {
  if (!(delta > 0 && delta < 1))
    return absl::InvalidArgumentError(absl::StrCat("delta must be in (0, 1), got ", delta));
  return absl::OkStatus();
}

absl::Status CheckOrder(double order) {
  if (!(order > 1 && order <= kMaxOrder)) {
    return absl::InvalidArgumentError(absl::StrCat("RDP order must be in (1, ", kMaxOrder, "], got ", order));
  }
  return absl::OkStatus();
}

}  // namespace

const std::vector<double>& DefaultOrders() {
  static const std::vector<double>* const orders = [] {
    auto* v = new std::vector<double>;
    for (int x = 1; x < 100; ++x) v->push_back(1 + x / 10.0);
    for (int a = 12; a < 64; ++a) v->push_back(a);
    return v;
  }();
  return *orders;
}

absl::StatusOr<double> SampledGaussianRdp(double q, double sigma, double order) {
  RETURN_IF_ERROR(CheckSampleRate(q));
  RETURN_IF_ERROR(CheckNoiseMultiplier(sigma));
  RETURN_IF_ERROR(CheckOrder(order));
  if (q == 0) return 0.0;
  if (q == 1) return order / (2 * sigma * sigma);
  double log_a;
  if (order == std::floor(order)) {
    log_a = LogAIntegerOrder(q, sigma, static_cast<int>(order));
  } else {
    ASSIGN_OR_RETURN(log_a, LogAFractionalOrder(q, sigma, order));
  }
  // A >= 1 mathematically; rounding may leave log A a hair below 0.
  return std::max(0.0, log_a) / (order - 1);
}

absl::StatusOr<std::vector<double>> ComputeRdp(double q, double sigma, int64_t steps,
                                               const std::vector<double>& orders) {
  RETURN_IF_ERROR(CheckSteps(steps));
  std::vector<double> rdp;
  rdp.reserve(orders.size());
  for (double order : orders) {
    ASSIGN_OR_RETURN(double one, SampledGaussianRdp(q, sigma, order));
    rdp.push_back(one * static_cast<double>(steps));
  }
  return rdp;
}

absl::StatusOr<PrivacySpent> RdpToEpsilon(const std::vector<double>& orders, const std::vector<double>& rdp,
                                          double delta) {
  RETURN_IF_ERROR(CheckDelta(delta));
  if (orders.empty() || orders.size() != rdp.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("orders and rdp must be non-empty and of equal length, got ", orders.size(), " and ", rdp.size()));
  }
  bool found = false;
  PrivacySpent best;
  for (size_t k = 0; k < orders.size(); ++k) {
    const double a = orders[k];
    if (!(a > 1)) return absl::InvalidArgumentError(absl::StrCat("RDP order must be > 1, got ", a));
    if (rdp[k] < 0) return absl::InvalidArgumentError(absl::StrCat("RDP at order ", a, " is negative: ", rdp[k]));
    double eps = rdp[k] - (std::log(delta) + std::log(a)) / (a - 1) + std::log((a - 1) / a);
    if (std::isnan(eps) || eps == kInf) continue;
    if (!found || eps < best.epsilon) {
      best = {eps, a};
      found = true;
    }
  }
  if (!found) return absl::OutOfRangeError("no RDP order gives a finite epsilon");
  best.epsilon = std::max(0.0, best.epsilon);
  return best;
}

RdpAccountant::RdpAccountant(std::vector<double> orders) : orders_(std::move(orders)), rdp_(orders_.size(), 0.0) {}

absl::Status RdpAccountant::AddSteps(double q, double sigma, int64_t steps) {
  ASSIGN_OR_RETURN(std::vector<double> phase, ComputeRdp(q, sigma, steps, orders_));
  for (size_t k = 0; k < rdp_.size(); ++k) rdp_[k] += phase[k];
  return absl::OkStatus();
}

absl::StatusOr<PrivacySpent> RdpAccountant::GetPrivacySpent(double delta) const {
  return RdpToEpsilon(orders_, rdp_, delta);
}

absl::StatusOr<PrivacySpent> ConsortiumEpsilon(const std::vector<RdpAccountant>& sites, double delta) {
  if (sites.empty()) return absl::InvalidArgumentError("consortium epsilon: no sites");
  PrivacySpent worst;
  for (size_t s = 0; s < sites.size(); ++s) {
    ASSIGN_OR_RETURN(PrivacySpent spent, sites[s].GetPrivacySpent(delta));
    if (s == 0 || spent.epsilon > worst.epsilon) worst = spent;
  }
  return worst;
}

absl::StatusOr<NoiseSolution> SolveNoiseMultiplier(double target_epsilon, double q, int64_t steps, double delta,
                                                   double rel_tolerance) {
  return SolveNoiseMultiplierForPhases(target_epsilon, {SamplingPhase{q, steps}}, delta, rel_tolerance);
}

absl::StatusOr<NoiseSolution> SolveNoiseMultiplierForPhases(double target_epsilon,
                                                            const std::vector<SamplingPhase>& phases, double delta,
                                                            double rel_tolerance) {
  if (phases.empty() || phases.size() > 64) {
    return absl::InvalidArgumentError(absl::StrCat("1 to 64 phases, got ", phases.size()));
  }
  if (!(target_epsilon > 0 && std::isfinite(target_epsilon))) {
    return absl::InvalidArgumentError(absl::StrCat("target epsilon must be finite and > 0, got ", target_epsilon));
  }
  if (!(rel_tolerance > 0 && rel_tolerance <= 0.1)) {
    return absl::InvalidArgumentError(absl::StrCat("tolerance must be in (0, 0.1], got ", rel_tolerance));
  }
  for (size_t i = 0; i < phases.size(); ++i) {
    const absl::Status q_ok = CheckSampleRate(phases[i].q);
    const absl::Status steps_ok = CheckSteps(phases[i].steps);
    for (const absl::Status& s : {q_ok, steps_ok}) {
      if (!s.ok()) return absl::Status(s.code(), absl::StrCat("phase ", i + 1, ": ", s.message()));
    }
  }
  RETURN_IF_ERROR(CheckDelta(delta));
  auto epsilon_at = [&](double sigma) -> absl::StatusOr<PrivacySpent> {
    RdpAccountant accountant;
    for (const SamplingPhase& p : phases) RETURN_IF_ERROR(accountant.AddSteps(p.q, sigma, p.steps));
    return accountant.GetPrivacySpent(delta);
  };
  ASSIGN_OR_RETURN(PrivacySpent at_low, epsilon_at(kMinNoiseMultiplier));
  if (at_low.epsilon <= target_epsilon) return NoiseSolution{kMinNoiseMultiplier, at_low};
  // Bracket [lo, hi] with eps(lo) > target >= eps(hi): double hi from 1 (epsilon decreases as sigma grows).
  double lo = kMinNoiseMultiplier, hi = 1;
  PrivacySpent at_hi;
  for (;;) {
    ASSIGN_OR_RETURN(at_hi, epsilon_at(hi));
    if (at_hi.epsilon <= target_epsilon) break;
    lo = hi;
    if (hi == kMaxNoiseMultiplier) {
      return absl::OutOfRangeError(absl::StrCat(
          "target epsilon ", target_epsilon, " is unreachable: noise multiplier ", kMaxNoiseMultiplier,
          " still gives epsilon ", at_hi.epsilon, " (q=", phases[0].q, ", steps=", phases[0].steps,
          phases.size() > 1 ? absl::StrCat(", and ", phases.size() - 1, " more phases") : "", ", delta=", delta, ")"));
    }
    hi = std::min(2 * hi, kMaxNoiseMultiplier);
  }
  while (hi - lo > rel_tolerance * hi) {
    double mid = 0.5 * (lo + hi);
    ASSIGN_OR_RETURN(PrivacySpent at_mid, epsilon_at(mid));
    if (at_mid.epsilon <= target_epsilon) {
      hi = mid;
      at_hi = at_mid;
    } else {
      lo = mid;
    }
  }
  return NoiseSolution{hi, at_hi};
}

}  // namespace fedtune::privacy
