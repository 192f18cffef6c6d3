// O(m*n) reference implementations of the AUC and DeLong's components, straight
// from the definitions (DeLong et al. 1988), for tests and benchmarks of
// common/stats. Deliberately simple; never used by the product.
#ifndef FEDTUNE_TESTS_TESTING_BRUTE_FORCE_STATS_H_
#define FEDTUNE_TESTS_TESTING_BRUTE_FORCE_STATS_H_

#include <cmath>
#include <vector>

namespace fedtune::testing {

struct BruteForceDeLong {
  double auc = 0;
  std::vector<double> v10;
  std::vector<double> v01;
};

inline double Psi(double x, double y) { return x > y ? 1.0 : (x == y ? 0.5 : 0.0); }

inline BruteForceDeLong BruteForceComponents(const std::vector<int>& truth, const std::vector<double>& scores) {
  std::vector<double> pos;
  std::vector<double> neg;
  for (size_t i = 0; i < truth.size(); ++i) (truth[i] == 1 ? pos : neg).push_back(scores[i]);
  BruteForceDeLong out;
  out.v10.assign(pos.size(), 0.0);
  out.v01.assign(neg.size(), 0.0);
  double total = 0;
  for (size_t i = 0; i < pos.size(); ++i) {
    for (size_t j = 0; j < neg.size(); ++j) {
      const double s = Psi(pos[i], neg[j]);
      out.v10[i] += s;
      out.v01[j] += s;
      total += s;
    }
  }
  for (double& v : out.v10) v /= static_cast<double>(neg.size());
  for (double& v : out.v01) v /= static_cast<double>(pos.size());
  out.auc = total / (static_cast<double>(pos.size()) * static_cast<double>(neg.size()));
  return out;
}

// Sample covariance (denominator N - 1) by the two-pass textbook formula.
inline double SampleCovariance(const std::vector<double>& x, const std::vector<double>& y) {
  double mx = 0;
  double my = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    mx += x[i];
    my += y[i];
  }
  mx /= static_cast<double>(x.size());
  my /= static_cast<double>(y.size());
  double s = 0;
  for (size_t i = 0; i < x.size(); ++i) s += (x[i] - mx) * (y[i] - my);
  return s / static_cast<double>(x.size() - 1);
}

// DeLong's covariance of two AUCs: S10_ab/m + S01_ab/n (a == b gives the
// variance).
inline double BruteForceCovariance(const BruteForceDeLong& a, const BruteForceDeLong& b) {
  return SampleCovariance(a.v10, b.v10) / static_cast<double>(a.v10.size()) +
         SampleCovariance(a.v01, b.v01) / static_cast<double>(a.v01.size());
}

}  // namespace fedtune::testing

#endif  // FEDTUNE_TESTS_TESTING_BRUTE_FORCE_STATS_H_
