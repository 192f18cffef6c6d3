#include "common/eval/roc.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "common/stats/delong.h"
#include "gtest/gtest.h"

namespace fedtune::eval {
namespace {

double TrapezoidArea(const std::vector<RocPoint>& curve) {
  double area = 0;
  for (size_t i = 1; i < curve.size(); ++i) {
    area += (curve[i].fpr - curve[i - 1].fpr) * (curve[i].tpr + curve[i - 1].tpr) / 2;
  }
  return area;
}

TEST(RocCurveTest, HandExampleWithATie) {
  // Scores 0.9 (pos), 0.8 (neg), 0.8 (pos), 0.1 (neg): the tie at 0.8 is one diagonal step.
  absl::StatusOr<std::vector<RocPoint>> curve = RocCurve({1, 0, 1, 0}, {0.9, 0.8, 0.8, 0.1});
  ASSERT_TRUE(curve.ok()) << curve.status();
  ASSERT_EQ(curve->size(), 4u);
  EXPECT_EQ((*curve)[0].fpr, 0.0);
  EXPECT_EQ((*curve)[0].tpr, 0.0);
  EXPECT_EQ((*curve)[0].threshold, std::numeric_limits<double>::infinity());
  EXPECT_EQ((*curve)[1].fpr, 0.0);
  EXPECT_EQ((*curve)[1].tpr, 0.5);
  EXPECT_EQ((*curve)[1].threshold, 0.9);
  EXPECT_EQ((*curve)[2].fpr, 0.5);
  EXPECT_EQ((*curve)[2].tpr, 1.0);
  EXPECT_EQ((*curve)[2].threshold, 0.8);
  EXPECT_EQ((*curve)[3].fpr, 1.0);
  EXPECT_EQ((*curve)[3].tpr, 1.0);
  EXPECT_EQ((*curve)[3].threshold, 0.1);
  // Mann-Whitney: pairs (0.9 > 0.8) 1, (0.9 > 0.1) 1, (0.8 = 0.8) 1/2, (0.8 > 0.1) 1 -> 3.5 / 4.
  EXPECT_DOUBLE_EQ(TrapezoidArea(*curve), 0.875);
}

TEST(RocCurveTest, AreaEqualsMannWhitneyAucOnRandomDataWithTies) {
  std::mt19937_64 rng(20260525);
  for (int trial = 0; trial < 20; ++trial) {
    const int n = 50 + 97 * trial;
    std::bernoulli_distribution is_positive(0.1 + 0.04 * trial);
    std::normal_distribution<double> noise(0.0, 1.0);
    std::vector<int> truth(n);
    std::vector<double> scores(n);
    for (int i = 0; i < n; ++i) {
      truth[i] = is_positive(rng) ? 1 : 0;
      // Rounded to one decimal: many ties, within and across classes.
      scores[i] = std::round((noise(rng) + 0.8 * truth[i]) * 10) / 10;
    }
    truth[0] = 1;
    truth[1] = 0;
    absl::StatusOr<stats::AucEstimate> auc = stats::EstimateAuc(truth, scores);
    ASSERT_TRUE(auc.ok()) << auc.status();
    absl::StatusOr<std::vector<RocPoint>> curve = RocCurve(truth, scores);
    ASSERT_TRUE(curve.ok()) << curve.status();
    EXPECT_NEAR(TrapezoidArea(*curve), auc->auc, 1e-12) << "trial " << trial;
    // Monotone, from (0, 0) to (1, 1), thresholds strictly decreasing, one point per distinct score.
    EXPECT_EQ(curve->front().fpr, 0.0);
    EXPECT_EQ(curve->front().tpr, 0.0);
    EXPECT_EQ(curve->back().fpr, 1.0);
    EXPECT_EQ(curve->back().tpr, 1.0);
    std::vector<double> distinct = scores;
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    EXPECT_EQ(curve->size(), distinct.size() + 1);
    for (size_t i = 1; i < curve->size(); ++i) {
      EXPECT_GE((*curve)[i].fpr, (*curve)[i - 1].fpr);
      EXPECT_GE((*curve)[i].tpr, (*curve)[i - 1].tpr);
      EXPECT_LT((*curve)[i].threshold, (*curve)[i - 1].threshold);
    }
  }
}

TEST(RocCurveTest, PerfectAndInvertedScores) {
  absl::StatusOr<std::vector<RocPoint>> perfect = RocCurve({0, 0, 1, 1}, {0.1, 0.2, 0.3, 0.4});
  ASSERT_TRUE(perfect.ok());
  EXPECT_DOUBLE_EQ(TrapezoidArea(*perfect), 1.0);
  absl::StatusOr<std::vector<RocPoint>> inverted = RocCurve({1, 1, 0, 0}, {0.1, 0.2, 0.3, 0.4});
  ASSERT_TRUE(inverted.ok());
  EXPECT_DOUBLE_EQ(TrapezoidArea(*inverted), 0.0);
  absl::StatusOr<std::vector<RocPoint>> constant = RocCurve({1, 0, 1, 0}, {0.5, 0.5, 0.5, 0.5});
  ASSERT_TRUE(constant.ok());
  ASSERT_EQ(constant->size(), 2u);  // One diagonal step.
  EXPECT_DOUBLE_EQ(TrapezoidArea(*constant), 0.5);
}

TEST(RocCurveTest, RejectsBadInputs) {
  EXPECT_EQ(RocCurve({1, 0}, {0.5}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RocCurve({1, 2}, {0.5, 0.4}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RocCurve({1, 0}, {0.5, std::nan("")}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RocCurve({1, 1}, {0.5, 0.4}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RocCurve({0, 0}, {0.5, 0.4}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RocCurve({}, {}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedtune::eval
