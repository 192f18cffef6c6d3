#include "common/eval/report_html.h"

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "common/stats/compare.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fedtune::eval {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

int CountOccurrences(const std::string& text, const std::string& needle) {
  int count = 0;
  for (size_t pos = text.find(needle); pos != std::string::npos; pos = text.find(needle, pos + needle.size())) {
    ++count;
  }
  return count;
}

// Five labels: "Better" (b separates, a is noise), "Worse" (the opposite), "Same" (identical scores), "<b>&"
// (b slightly better, not significantly), "Single class" (no positive case: AUC undefined).
std::vector<stats::LabelScores> SyntheticScores() {
  std::mt19937_64 rng(4);
  std::normal_distribution<double> noise(0.0, 1.0);
  const int n = 200;
  std::vector<stats::LabelScores> labels;
  for (const char* name : {"Better", "Worse", "Same", "<b>&", "Single class"}) {
    stats::LabelScores s;
    s.name = name;
    for (int i = 0; i < n; ++i) {
      const int truth = s.name == "Single class" ? 0 : (i % 3 == 0 ? 1 : 0);
      const double informative = noise(rng) + 2.0 * truth;
      const double uninformative = noise(rng);
      s.truth.push_back(truth);
      if (s.name == "Better") {
        s.a.push_back(uninformative);
        s.b.push_back(informative);
      } else if (s.name == "Worse") {
        s.a.push_back(informative);
        s.b.push_back(uninformative);
      } else if (s.name == "Same") {
        s.a.push_back(informative);
        s.b.push_back(informative);
      } else {
        s.a.push_back(informative);
        s.b.push_back(informative + 0.05 * noise(rng));
      }
    }
    labels.push_back(std::move(s));
  }
  return labels;
}

EvaluationHtmlInputs SyntheticInputs() {
  EvaluationHtmlInputs in;
  in.title = "Site A evaluation";
  in.model_a_name = "Open-source model";
  in.model_b_name = "Fine-tuned model";
  in.dataset_lines = {"Test split: 200 studies, 200 images (site-a/test.csv)"};
  in.provenance_lines = {"Open-source model: chexpert-densenet sha256 abcd", "Fine-tuned model: round 7 <final>"};
  in.scores = SyntheticScores();
  absl::StatusOr<stats::ComparisonReport> report = stats::CompareModels(in.scores);
  CHECK(report.ok()) << report.status();
  in.report = *report;
  for (int i = 0; i < 3; ++i) {
    GalleryEntry entry;
    entry.label = i == 0 ? "<b>&" : "Better";
    entry.image_id = absl::StrFormat("patient%05d/study1/view1_frontal.jpg", i);
    entry.score = 0.9 - 0.1 * i;
    // Arbitrary bytes (with NUL and high bytes) stand in for PNG data: the page must carry them unchanged.
    entry.png =
        std::string("\x89PNG\r\n\x1a\n", 8) + std::string(1, '\0') + std::string(37 + i, static_cast<char>(0xF0 + i));
    in.gallery.push_back(entry);
  }
  return in;
}

TEST(SummaryLineTest, CountsSignificantImprovementsAndDeclines) {
  stats::ComparisonReport report;
  auto add = [&](const char* name, double auc_a, double auc_b, std::optional<double> p) {
    stats::LabelComparison label;
    label.name = name;
    label.a.auc = auc_a;
    label.b.auc = auc_b;
    stats::PairedDeLong delong;
    delong.auc_a = auc_a;
    delong.auc_b = auc_b;
    delong.difference = auc_a - auc_b;
    delong.p_value = p;
    label.delong = delong;
    report.labels.push_back(label);
  };
  add("A", 0.70, 0.80, 0.01);   // Better.
  add("B", 0.70, 0.75, 0.049);  // Better.
  add("C", 0.70, 0.80, 0.05);   // Not significant at p < 0.05.
  add("D", 0.80, 0.70, 0.001);  // Worse.
  add("E", 0.80, 0.82, std::nullopt);
  stats::LabelComparison undefined;
  undefined.name = "F";
  report.labels.push_back(undefined);
  report.labels_compared = 5;
  report.mean_auc_a = 0.7714;
  report.mean_auc_b = 0.8016;
  report.wilcoxon.p_value = 0.0031;
  EXPECT_EQ(EvaluationSummaryLine(report, "Fine-tuned model"),
            "Fine-tuned model better on 2 of 5 labels at p < 0.05, worse on 1; mean AUC 0.771 \u2192 0.802, "
            "Wilcoxon p = 0.003 (1 label without a defined AUC)");
  EXPECT_EQ(EvaluationSummaryLine(report, "FT", 0.1),
            "FT better on 3 of 5 labels at p < 0.1, worse on 1; mean AUC 0.771 \u2192 0.802, "
            "Wilcoxon p = 0.003 (1 label without a defined AUC)");
  report.labels.pop_back();
  report.wilcoxon.p_value = 0.0004;
  report.mean_auc_b.reset();
  EXPECT_EQ(EvaluationSummaryLine(report, "FT"),
            "FT better on 2 of 5 labels at p < 0.05, worse on 1; mean AUC n/a, Wilcoxon p < 0.001");
}

TEST(RenderEvaluationHtmlTest, SelfContainedPageWithSummaryTablePlotsAndGallery) {
  const EvaluationHtmlInputs in = SyntheticInputs();
  // The synthetic data do what they were built to do.
  ASSERT_EQ(in.report.labels.size(), 5u);
  ASSERT_EQ(in.report.labels_compared, 4);
  ASSERT_TRUE(in.report.mean_auc_a && in.report.mean_auc_b && in.report.wilcoxon.p_value);
  ASSERT_LT(*in.report.labels[0].delong->p_value, 0.05);
  ASSERT_LT(*in.report.labels[1].delong->p_value, 0.05);
  ASSERT_GE(*in.report.labels[3].delong->p_value, 0.05);

  const std::string html = RenderEvaluationHtml(in);
  EXPECT_THAT(html, HasSubstr("<!DOCTYPE html>"));
  EXPECT_THAT(html, HasSubstr("<meta charset=\"utf-8\">"));
  // Self-contained: no external reference of any kind, no script.
  EXPECT_THAT(html, Not(HasSubstr("http://")));
  EXPECT_THAT(html, Not(HasSubstr("https://")));
  EXPECT_THAT(html, Not(HasSubstr("src=\"http")));
  EXPECT_THAT(html, Not(HasSubstr("<script")));
  EXPECT_THAT(html, Not(HasSubstr("<link")));
  EXPECT_THAT(html, Not(HasSubstr("url(")));

  // Summary.
  const std::string summary = absl::StrFormat(
      "Fine-tuned model better on 1 of 4 labels at p &lt; 0.05, worse on 1; mean AUC %.3f \u2192 %.3f, Wilcoxon p = "
      "%.3f (1 label without a defined AUC)",
      *in.report.mean_auc_a, *in.report.mean_auc_b, *in.report.wilcoxon.p_value);
  EXPECT_THAT(html, HasSubstr(summary));
  EXPECT_THAT(html, HasSubstr("<h1>Site A evaluation</h1>"));
  EXPECT_THAT(html, HasSubstr("Test split: 200 studies, 200 images (site-a/test.csv)"));
  EXPECT_THAT(html, HasSubstr("Fine-tuned model: round 7 &lt;final&gt;"));

  // Table: one row per label, AUCs with their CIs, p-values, Youden points, n/a for the single-class label.
  EXPECT_EQ(CountOccurrences(html, "<td class=\"label\">"), 5);
  for (const stats::LabelComparison& label : in.report.labels) {
    if (!label.a.auc) continue;
    EXPECT_THAT(html, HasSubstr(absl::StrFormat("%.3f <span class=\"ci\">(%.3f\u2013%.3f)</span>", *label.a.auc,
                                                label.a.ci95->first, label.a.ci95->second)))
        << label.name;
    EXPECT_THAT(html,
                HasSubstr(absl::StrFormat("%.2f / %.2f", label.b.youden->sensitivity, label.b.youden->specificity)))
        << label.name;
  }
  EXPECT_THAT(html, HasSubstr(absl::StrFormat("<td>%.3f</td>", *in.report.labels[3].delong->p_value)));
  EXPECT_THAT(html, HasSubstr("<td class=\"label\">Single class</td><td>0</td><td>200</td><td class=\"na\""));
  EXPECT_EQ(CountOccurrences(html, "<tr class=\"better\">"), 1);
  EXPECT_EQ(CountOccurrences(html, "<tr class=\"worse\">"), 1);
  // "Better": the difference column is b - a, positive.
  const stats::LabelComparison& better = in.report.labels[0];
  EXPECT_THAT(html, HasSubstr(absl::StrFormat("<td>+%.3f <span", *better.b.auc - *better.a.auc)));

  // One ROC plot per plottable label (4 of 5), with legends naming both models and their AUCs.
  EXPECT_EQ(CountOccurrences(html, "<svg"), 4);
  EXPECT_EQ(CountOccurrences(html, "</svg>"), 4);
  EXPECT_EQ(CountOccurrences(html, "<polyline class=\"curve-a\""), 4);
  EXPECT_EQ(CountOccurrences(html, "<polyline class=\"curve-b\""), 4);
  EXPECT_THAT(html, HasSubstr(absl::StrFormat("Fine-tuned model, AUC %.3f", *better.b.auc)));
  EXPECT_THAT(html, HasSubstr(absl::StrFormat("Open-source model, AUC %.3f", *better.a.auc)));
  EXPECT_THAT(html, HasSubstr("Single class: no AUC (single class)"));

  // Escaping: the label "<b>&" never appears raw.
  EXPECT_THAT(html, Not(HasSubstr("<b>&")));
  EXPECT_THAT(html, HasSubstr("<td class=\"label\">&lt;b&gt;&amp;</td>"));
  EXPECT_THAT(html, HasSubstr("<figcaption>&lt;b&gt;&amp;</figcaption>"));
  EXPECT_THAT(html, HasSubstr("<strong>&lt;b&gt;&amp;</strong>"));  // Gallery caption.

  // Gallery: each entry's data: URI decodes back to its bytes, in order.
  const std::string prefix = "data:image/png;base64,";
  size_t pos = 0;
  for (const GalleryEntry& entry : in.gallery) {
    pos = html.find(prefix, pos);
    ASSERT_NE(pos, std::string::npos);
    pos += prefix.size();
    const size_t end = html.find('"', pos);
    ASSERT_NE(end, std::string::npos);
    std::string decoded;
    ASSERT_TRUE(absl::Base64Unescape(html.substr(pos, end - pos), &decoded));
    EXPECT_EQ(decoded, entry.png);
    EXPECT_THAT(html.substr(end, 300), HasSubstr(entry.image_id));
    EXPECT_THAT(html.substr(end, 300), HasSubstr(absl::StrFormat("score %.3f", entry.score)));
  }
  EXPECT_EQ(html.find(prefix, pos), std::string::npos);
}

TEST(RenderEvaluationHtmlTest, ReadableWithoutScoresOrGallery) {
  EvaluationHtmlInputs in = SyntheticInputs();
  in.scores.erase(in.scores.begin());  // "Better" can no longer be plotted.
  in.gallery.clear();
  in.model_b_name = "Site \"A\" model";
  const std::string html = RenderEvaluationHtml(in);
  EXPECT_EQ(CountOccurrences(html, "<svg"), 3);
  EXPECT_THAT(html, HasSubstr("Better: scores not provided"));
  EXPECT_THAT(html, HasSubstr("No Grad-CAM images were produced."));
  EXPECT_THAT(html, Not(HasSubstr("data:")));
  EXPECT_THAT(html, HasSubstr("Site &quot;A&quot; model better on 1 of 4 labels"));
  EXPECT_THAT(html, Not(HasSubstr("Site \"A\"")));
}

TEST(RenderEvaluationHtmlTest, LargeTestSetsKeepPlotsSmall) {
  // 20,000 cases with distinct scores: the polylines are thinned to the plot's resolution.
  std::mt19937_64 rng(11);
  std::normal_distribution<double> noise(0.0, 1.0);
  stats::LabelScores s;
  s.name = "Edema";
  for (int i = 0; i < 20000; ++i) {
    const int truth = i % 4 == 0;
    s.truth.push_back(truth);
    s.a.push_back(noise(rng) + truth);
    s.b.push_back(noise(rng) + 1.5 * truth);
  }
  EvaluationHtmlInputs in;
  in.scores = {s};
  absl::StatusOr<stats::ComparisonReport> report = stats::CompareModels(in.scores);
  ASSERT_TRUE(report.ok()) << report.status();
  in.report = *report;
  const std::string html = RenderEvaluationHtml(in);
  EXPECT_EQ(CountOccurrences(html, "<svg"), 1);
  EXPECT_LT(html.size(), 400000u);
}

}  // namespace
}  // namespace fedtune::eval
