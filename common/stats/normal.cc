#include "common/stats/normal.h"

#include <cmath>

namespace fedtune::stats {

double NormalCdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }

double TwoSidedNormalPValue(double z) { return std::erfc(std::fabs(z) / std::sqrt(2.0)); }

}  // namespace fedtune::stats
