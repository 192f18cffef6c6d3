#include "common/stats/compare.h"

#include <nlohmann/json.hpp>

#include "gtest/gtest.h"

namespace fedtune::stats {
namespace {

TEST(CompareModelsTest, PerLabelAndOverall) {
  std::vector<LabelScores> labels = {
      {"A", {1, 1, 0, 0}, {0.9, 0.4, 0.5, 0.1}, {0.9, 0.8, 0.2, 0.1}},
      {"B", {1, 0, 1, 0}, {0.5, 0.5, 0.5, 0.1}, {0.6, 0.1, 0.7, 0.2}},
  };
  auto r = CompareModels(labels);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->labels.size(), 2u);
  EXPECT_EQ(*r->labels[0].a.auc, 0.75);
  EXPECT_EQ(*r->labels[0].b.auc, 1.0);
  EXPECT_EQ(*r->labels[1].a.auc, 0.75);
  EXPECT_EQ(r->labels_compared, 2);
  EXPECT_DOUBLE_EQ(*r->mean_auc_a, 0.75);
  EXPECT_DOUBLE_EQ(*r->mean_auc_b, 1.0);
  EXPECT_EQ(r->wilcoxon.n, 2);
  EXPECT_EQ(r->wilcoxon.statistic, 0);
  std::string table = FormatComparisonTable(*r);
  EXPECT_NE(table.find("0.750"), std::string::npos) << table;
  nlohmann::ordered_json j = ComparisonReportToJson(*r);
  EXPECT_EQ(j["labels"][1]["name"], "B");
}

TEST(CompareModelsTest, MismatchedLengthsNameTheLabel) {
  auto r = CompareModels({{"Edema", {1, 0}, {0.1, 0.2}, {0.1}}});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("Edema"), absl::string_view::npos);
}

}  // namespace
}  // namespace fedtune::stats
