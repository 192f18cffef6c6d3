#include "common/synth/profile.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/data/chexpert_labels.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::synth {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kMinimal[] = R"pb(
  name: "mini"
  detector { gamma { min: 0.8 max: 1.2 } }
  labels { label: "Edema" prevalence: 0.2 }
)pb";

TEST(ProfileTest, BuiltinProfilesLoadAndDiffer) {
  EXPECT_THAT(BuiltinProfileNames(), ElementsAre("public", "site-a", "site-b", "site-c"));
  for (const std::string& name : BuiltinProfileNames()) {
    auto profile = LoadProfile(name);
    ASSERT_TRUE(profile.ok()) << profile.status();
    EXPECT_EQ(profile->name(), name);
    // Every pathology and Support Devices has a prevalence, so every label has positives in small sets.
    EXPECT_EQ(profile->labels_size(), data::kNumChexpertLabels - 1) << name;
    for (const auto& l : profile->labels()) EXPECT_GE(l.prevalence(), 0.05) << name << " " << l.label();
  }
  auto pub = LoadProfile("public");
  auto a = LoadProfile("site-a");
  auto b = LoadProfile("site-b");
  ASSERT_TRUE(pub.ok() && a.ok() && b.ok());
  // Strong detector shifts: site-a is dark (gamma > 1.3), site-b bright (gamma < 0.8), public near 1.
  EXPECT_GT(a->detector().gamma().min(), 1.3);
  EXPECT_LT(b->detector().gamma().max(), 0.8);
  EXPECT_LT(pub->detector().gamma().max(), 1.2);
  EXPECT_GT(pub->detector().gamma().min(), 0.8);
}

TEST(ProfileTest, ParsesMinimalProfile) {
  auto profile = ParseProfile(kMinimal, "mini.textproto");
  ASSERT_TRUE(profile.ok()) << profile.status();
  EXPECT_DOUBLE_EQ(profile->detector().gamma().max(), 1.2);
  const RangeValue gamma = RangeOr(profile->detector().has_gamma(), profile->detector().gamma(), 1.0);
  EXPECT_DOUBLE_EQ(gamma.min, 0.8);
  const RangeValue contrast = RangeOr(profile->detector().has_contrast(), profile->detector().contrast(), 1.0);
  EXPECT_DOUBLE_EQ(contrast.min, 1.0);
  EXPECT_DOUBLE_EQ(contrast.max, 1.0);
}

TEST(ProfileTest, LoadsUserFileAndReportsMissingOne) {
  testing::TempDir dir;
  const std::string path = dir.WriteFile("mine.textproto", kMinimal);
  auto profile = LoadProfile(path);
  ASSERT_TRUE(profile.ok()) << profile.status();
  EXPECT_EQ(profile->name(), "mini");
  auto missing = LoadProfile(dir.Join("nope.textproto"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("site-a"));
}

struct BadCase {
  std::string text;
  std::string expected;  // Substring of the error message.
};

TEST(ProfileTest, InvalidProfilesNameTheField) {
  const std::vector<BadCase> cases = {
      {R"pb(name: "x"
            detector { gamma { min: 0 max: 1 } })pb",
       "field detector.gamma.min must be > 0"},
      {R"pb(name: "x"
            detector { contrast { min: 2 max: 1 } })pb",
       "field detector.contrast min (2) must be <= max"},
      {R"pb(name: "x"
            detector { resolution { min: 0.5 max: 1.5 } })pb",
       "field detector.resolution.max"},
      {R"pb(name: "x"
            detector { invert_probability: 1.5 })pb",
       "field detector.invert_probability"},
      {R"pb(name: "x"
            borders { black_probability: -0.1 })pb",
       "field borders.black_probability"},
      {R"pb(name: "x"
            markers { text_probability: 0.5 })pb",
       "field markers.texts"},
      {R"pb(name: "x"
            positioning { scale { min: 0 max: 1 } })pb",
       "field positioning.scale.min"},
      {R"pb(name: "x"
            population { age_min: 50 age_max: 40 })pb",
       "field population.age_max"},
      {R"pb(name: "x"
            population { ap_fraction: 2 })pb",
       "field population.ap_fraction"},
      {R"pb(name: "x"
            labels { label: "Edema" prevalence: 1.5 })pb",
       "field labels[0].prevalence"},
      {R"pb(name: "x"
            labels { label: "Edema" omitted_probability: -1 })pb",
       "field labels[0].omitted_probability"},
      {R"pb(name: "x"
            labels { label: "Edema" }
            labels { label: "Oedema" })pb",
       "field labels[1].label \"Oedema\""},
      {R"pb(name: "x"
            labels { label: "No Finding" })pb",
       "derived"},
      {R"pb(name: "x"
            labels { label: "Edema" }
            labels { label: "Edema" })pb",
       "listed twice"},
      {R"pb(name: "x" co_occurrence: 3)pb", "field co_occurrence"},
      {R"pb(detector {})pb", "field name"},
  };
  for (const BadCase& c : cases) {
    auto profile = ParseProfile(c.text, "bad.textproto");
    ASSERT_FALSE(profile.ok()) << c.text;
    EXPECT_EQ(profile.status().code(), absl::StatusCode::kInvalidArgument) << c.text;
    EXPECT_THAT(profile.status().message(), HasSubstr(c.expected)) << c.text;
    EXPECT_THAT(profile.status().message(), HasSubstr("bad.textproto")) << c.text;
  }
}

TEST(ProfileTest, SyntaxErrorsGiveLineAndColumn) {
  auto unknown = ParseProfile("name: \"x\"\ndetector {\n  gama { min: 1 max: 1 }\n}\n", "typo.textproto");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(unknown.status().message(), HasSubstr("typo.textproto:3:"));
  EXPECT_THAT(unknown.status().message(), HasSubstr("gama"));
  auto unbalanced = ParseProfile("name: \"x\"\ndetector {\n", "open.textproto");
  ASSERT_FALSE(unbalanced.ok());
  EXPECT_THAT(unbalanced.status().message(), HasSubstr("open.textproto:"));
}

}  // namespace
}  // namespace fedtune::synth
