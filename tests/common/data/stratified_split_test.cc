#include "common/data/stratified_split.h"

#include <cmath>
#include <map>
#include <random>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fedtune::data {
namespace {

using ::testing::HasSubstr;

double Uniform(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

// A skewed, clustered synthetic manifest: prevalences from 1% to 45%, patients
// with 1 to 8 studies (most have one), findings that persist across a patient's
// studies (so patient-level splitting matters), and lateral views that share
// their study's labels.
Manifest SkewedManifest(int patients, uint64_t seed) {
  constexpr std::array<double, kNumChexpertLabels> kPrevalence = {0.10, 0.05, 0.12, 0.40, 0.04, 0.20, 0.06,
                                                                  0.02, 0.15, 0.08, 0.30, 0.01, 0.03, 0.45};
  std::mt19937_64 rng(seed);
  std::vector<ManifestEntry> entries;
  int64_t line = 2;
  for (int p = 0; p < patients; ++p) {
    const std::string patient = absl::StrCat("patient", 10000 + p);
    // Chronic findings of this patient: present in most of their studies.
    std::array<bool, kNumChexpertLabels> chronic{};
    for (int l = 0; l < kNumChexpertLabels; ++l) {
      chronic[l] = Uniform(rng) < kPrevalence[l];
    }
    int studies = 1;
    while (studies < 8 && Uniform(rng) < 0.45) ++studies;
    for (int s = 1; s <= studies; ++s) {
      RawLabels labels;
      labels.fill(RawLabel::kBlank);
      for (int l = 0; l < kNumChexpertLabels; ++l) {
        if (chronic[l] ? Uniform(rng) < 0.85 : Uniform(rng) < 0.02) {
          labels[l] = RawLabel::kPositive;
        }
      }
      const int views = Uniform(rng) < 0.3 ? 2 : 1;
      for (int v = 1; v <= views; ++v) {
        ManifestEntry e;
        e.line = line++;
        e.path = absl::StrCat("train/", patient, "/study", s, "/view", v, v == 1 ? "_frontal.jpg" : "_lateral.jpg");
        e.patient_id = patient;
        e.study_id = absl::StrCat(patient, "/study", s);
        e.view = v == 1 ? View::kFrontal : View::kLateral;
        e.labels = labels;
        entries.push_back(e);
      }
    }
  }
  return Manifest("synthetic.csv", std::move(entries));
}

SplitOptions Options(uint64_t seed, SplitMethod method = SplitMethod::kIterative) {
  SplitOptions options;
  options.train = 0.7;
  options.validation = 0.15;
  options.test = 0.15;
  options.seed = seed;
  options.method = method;
  return options;
}

class SkewedSetTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { manifest_ = new Manifest(SkewedManifest(800, 2024)); }
  static void TearDownTestSuite() { delete manifest_; }
  static Manifest* manifest_;
};
Manifest* SkewedSetTest::manifest_ = nullptr;

TEST_F(SkewedSetTest, KeepsEveryPatientInOneSplit) {
  absl::StatusOr<DatasetSplit> split = SplitByPatient(*manifest_, Options(1));
  ASSERT_TRUE(split.ok()) << split.status();
  ASSERT_EQ(split->of_entry.size(), manifest_->entries().size());
  std::map<std::string, Split> split_of_patient;
  for (size_t e = 0; e < manifest_->entries().size(); ++e) {
    auto [it, inserted] = split_of_patient.emplace(manifest_->entries()[e].patient_id, split->of_entry[e]);
    EXPECT_EQ(it->second, split->of_entry[e]) << manifest_->entries()[e].path;
  }
  for (size_t p = 0; p < manifest_->patients().size(); ++p) {
    EXPECT_EQ(split->of_patient[p], split_of_patient.at(manifest_->patients()[p].patient_id));
  }
  // EntriesIn partitions the entries.
  size_t total = 0;
  for (Split s : {Split::kTrain, Split::kValidation, Split::kTest}) {
    for (size_t e : split->EntriesIn(s)) EXPECT_EQ(split->of_entry[e], s);
    total += split->EntriesIn(s).size();
  }
  EXPECT_EQ(total, manifest_->entries().size());
}

TEST_F(SkewedSetTest, ProportionsFollowTheWholeSetAndBeatARandomSplit) {
  double iterative_mean = 0, random_mean = 0, iterative_max = 0, random_max = 0;
  constexpr int kSeeds = 8;
  for (uint64_t seed = 1; seed <= kSeeds; ++seed) {
    absl::StatusOr<DatasetSplit> split = SplitByPatient(*manifest_, Options(seed));
    ASSERT_TRUE(split.ok()) << split.status();
    SplitReport report = SummarizeSplit(*manifest_, *split);
    SCOPED_TRACE(FormatSplitReport(report));
    // Sizes follow the ratios, in images.
    const double n = report.all.images;
    EXPECT_NEAR(report.splits[0].images / n, 0.70, 0.02);
    EXPECT_NEAR(report.splits[1].images / n, 0.15, 0.02);
    EXPECT_NEAR(report.splits[2].images / n, 0.15, 0.02);
    // Every label, every split: within 3 percentage points of the whole set.
    for (int s = 0; s < kNumSplits; ++s) {
      for (int l = 0; l < kNumChexpertLabels; ++l) {
        EXPECT_NEAR(report.splits[s].proportion[l], report.all.proportion[l], 0.03)
            << kChexpertLabels[l] << " in " << SplitName(static_cast<Split>(s)) << ", seed " << seed;
      }
    }
    iterative_mean += report.mean_abs_deviation / kSeeds;
    iterative_max += report.max_abs_deviation / kSeeds;

    absl::StatusOr<DatasetSplit> random = SplitByPatient(*manifest_, Options(seed, SplitMethod::kRandom));
    ASSERT_TRUE(random.ok()) << random.status();
    SplitReport random_report = SummarizeSplit(*manifest_, *random);
    random_mean += random_report.mean_abs_deviation / kSeeds;
    random_max += random_report.max_abs_deviation / kSeeds;
  }
  // Averaged over seeds, stratification at least halves the deviations of a
  // random patient split.
  EXPECT_LT(iterative_mean, 0.5 * random_mean) << iterative_mean << " vs " << random_mean;
  EXPECT_LT(iterative_max, 0.5 * random_max) << iterative_max << " vs " << random_max;
}

TEST_F(SkewedSetTest, ReproducibleForASeed) {
  absl::StatusOr<DatasetSplit> a = SplitByPatient(*manifest_, Options(5));
  absl::StatusOr<DatasetSplit> b = SplitByPatient(*manifest_, Options(5));
  absl::StatusOr<DatasetSplit> c = SplitByPatient(*manifest_, Options(6));
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->of_patient, b->of_patient);
  EXPECT_EQ(a->of_entry, b->of_entry);
  EXPECT_NE(a->of_patient, c->of_patient);
}

TEST_F(SkewedSetTest, ZeroRatioGetsNothing) {
  SplitOptions options = Options(3);
  options.train = 8;
  options.validation = 2;
  options.test = 0;  // Ratios are normalized: 0.8 / 0.2 / 0.
  absl::StatusOr<DatasetSplit> split = SplitByPatient(*manifest_, options);
  ASSERT_TRUE(split.ok()) << split.status();
  SplitReport report = SummarizeSplit(*manifest_, *split);
  EXPECT_EQ(report.splits[2].images, 0);
  EXPECT_EQ(report.splits[2].patients, 0);
  EXPECT_NEAR(report.splits[0].images / static_cast<double>(report.all.images), 0.8, 0.02);
}

TEST(IterativeStratificationTest, SpreadsARareLabelAcrossParts) {
  // Nine units, three of them carrying a rare label, three equal parts: each
  // part must get exactly one, whatever the seed. A random partition often does
  // not.
  std::vector<StratificationUnit> units(9);
  for (int u = 0; u < 9; ++u) units[u].label_counts = {u % 3 == 0 ? 1 : 0, 1};
  for (uint64_t seed = 0; seed < 20; ++seed) {
    absl::StatusOr<std::vector<int>> parts = IterativeStratification(units, {1, 1, 1}, seed);
    ASSERT_TRUE(parts.ok()) << parts.status();
    std::multiset<int> rare = {(*parts)[0], (*parts)[3], (*parts)[6]};
    EXPECT_EQ(rare, (std::multiset<int>{0, 1, 2})) << "seed " << seed;
    std::vector<int> size(3);
    for (int p : *parts) ++size[p];
    EXPECT_EQ(size, (std::vector<int>{3, 3, 3})) << "seed " << seed;
  }
}

TEST(IterativeStratificationTest, RejectsBadInput) {
  std::vector<StratificationUnit> units(2);
  units[0].label_counts = {1};
  units[1].label_counts = {0};
  EXPECT_THAT(IterativeStratification(units, {1, -1}, 0).status().message(), HasSubstr("ratio"));
  EXPECT_EQ(IterativeStratification(units, {0, 0}, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(IterativeStratification(units, {}, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RandomPartition(units, {1, std::nan("")}, 0).status().code(), absl::StatusCode::kInvalidArgument);
  units[1].label_counts = {0, 1};
  EXPECT_THAT(IterativeStratification(units, {1, 1}, 0).status().message(), HasSubstr("label counts"));
  units[1].label_counts = {-1};
  EXPECT_EQ(IterativeStratification(units, {1, 1}, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SplitByPatientTest, EmptyManifest) {
  Manifest empty("empty.csv", {});
  absl::StatusOr<DatasetSplit> split = SplitByPatient(empty, SplitOptions{});
  ASSERT_TRUE(split.ok()) << split.status();
  EXPECT_TRUE(split->of_entry.empty());
  SplitReport report = SummarizeSplit(empty, *split);
  EXPECT_EQ(report.all.images, 0);
  EXPECT_EQ(report.max_abs_deviation, 0);
}

TEST(FormatSplitReportTest, ListsLabelsAndSizes) {
  Manifest manifest = SkewedManifest(50, 1);
  absl::StatusOr<DatasetSplit> split = SplitByPatient(manifest, SplitOptions{});
  ASSERT_TRUE(split.ok());
  const std::string text = FormatSplitReport(SummarizeSplit(manifest, *split));
  EXPECT_THAT(text, HasSubstr("Support Devices"));
  EXPECT_THAT(text, HasSubstr("patients"));
  EXPECT_THAT(text, HasSubstr("deviation from the whole set"));
}

}  // namespace
}  // namespace fedtune::data
