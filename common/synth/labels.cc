#include "common/synth/labels.h"

#include <cmath>
#include <limits>

namespace fedtune::synth {
namespace {

constexpr int kNumFactors = 4;  // cardiac, infection, intensive care, trauma.

// Factor loadings at co_occurrence = 1. Each row's sum of squares stays below 1.
constexpr std::array<std::array<double, kNumFactors>, data::kNumChexpertLabels> kLoadings = {{
    {0, 0, 0, 0},        // No Finding (derived)
    {0.5, 0, 0, 0},      // Enlarged Cardiomediastinum
    {0.7, 0, 0, 0},      // Cardiomegaly
    {0, 0.4, 0, 0},      // Lung Opacity
    {0, 0, 0, 0},        // Lung Lesion
    {0.7, 0, 0.3, 0},    // Edema
    {0, 0.6, 0, 0},      // Consolidation
    {0, 0.6, 0, 0},      // Pneumonia
    {0, 0.5, 0.3, 0},    // Atelectasis
    {0, 0, 0.4, 0.5},    // Pneumothorax
    {0.6, 0.3, 0.3, 0},  // Pleural Effusion
    {0, 0, 0, 0.3},      // Pleural Other
    {0, 0, 0, 0.6},      // Fracture
    {0, 0, 0.6, 0},      // Support Devices
}};

double NormalCdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }

// Phi^-1(q) by bisection: run once per profile, so simplicity beats speed.
double NormalQuantile(double q) {
  if (q <= 0) return -std::numeric_limits<double>::infinity();
  if (q >= 1) return std::numeric_limits<double>::infinity();
  double lo = -40, hi = 40;
  for (int i = 0; i < 200; ++i) {
    const double mid = 0.5 * (lo + hi);
    (NormalCdf(mid) < q ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

int Rank(Reported r) {
  switch (r) {
    case Reported::kBlank:
      return 0;
    case Reported::kNegative:
      return 1;
    case Reported::kUncertain:
      return 2;
    case Reported::kPositive:
      return 3;
  }
  return 0;
}

bool IsPathology(int i) { return i != data::kNoFinding && i != data::kSupportDevices; }

}  // namespace

const char* ReportedToCsv(Reported value) {
  switch (value) {
    case Reported::kBlank:
      return "";
    case Reported::kNegative:
      return "0.0";
    case Reported::kUncertain:
      return "-1.0";
    case Reported::kPositive:
      return "1.0";
  }
  return "";
}

LabelModel MakeLabelModel(const fedtune::v1::SynthProfile& profile) {
  LabelModel model;
  for (const auto& l : profile.labels()) {
    for (int i = 1; i < data::kNumChexpertLabels; ++i) {
      if (l.label() != data::kChexpertLabels[i]) continue;
      model.prevalence[i] = l.prevalence();
      model.uncertain[i] = l.uncertain_probability();
      model.omitted[i] = l.omitted_probability();
      model.absent_uncertain[i] = l.absent_uncertain_probability();
      model.negative_mention[i] = l.negative_mention_probability();
    }
  }
  model.co_occurrence = profile.co_occurrence();
  for (int i = 0; i < data::kNumChexpertLabels; ++i) model.threshold[i] = NormalQuantile(1.0 - model.prevalence[i]);
  return model;
}

TrueFindings SampleTrueLabels(const LabelModel& model, Rng& rng) {
  std::array<double, kNumFactors> factors;
  for (double& f : factors) f = rng.Normal();
  LabelVector truth{};
  for (int i = 1; i < data::kNumChexpertLabels; ++i) {
    double shared = 0, shared_var = 0;
    for (int k = 0; k < kNumFactors; ++k) {
      const double a = kLoadings[i][k] * model.co_occurrence;
      shared += a * factors[k];
      shared_var += a * a;
    }
    const double z = shared + std::sqrt(1.0 - shared_var) * rng.Normal();
    truth[i] = z > model.threshold[i];
  }
  const LabelVector own = truth;
  for (const auto& [child, parent] : data::kChexpertHierarchy) {
    if (truth[child]) truth[parent] = true;
  }
  bool any = false;
  for (int i = 0; i < data::kNumChexpertLabels; ++i) any = any || (IsPathology(i) && truth[i]);
  truth[data::kNoFinding] = !any;
  return TrueFindings{truth, own};
}

ReportVector ReportLabels(const LabelModel& model, const LabelVector& truth, Rng& rng) {
  ReportVector report{};
  for (int i = 1; i < data::kNumChexpertLabels; ++i) {
    // Always draw the same number of values so that one label's setting does not shift another's stream.
    const double u1 = rng.Uniform(), u2 = rng.Uniform();
    if (truth[i]) {
      report[i] = u1 < model.uncertain[i] ? Reported::kUncertain
                  : u2 < model.omitted[i] ? Reported::kBlank
                                          : Reported::kPositive;
    } else {
      report[i] = u1 < model.absent_uncertain[i]   ? Reported::kUncertain
                  : u2 < model.negative_mention[i] ? Reported::kNegative
                                                   : Reported::kBlank;
    }
  }
  for (const auto& [child, parent] : data::kChexpertHierarchy) {
    if (Rank(report[child]) > Rank(report[parent])) report[parent] = report[child];
  }
  bool any = false;
  for (int i = 0; i < data::kNumChexpertLabels; ++i) {
    any = any || (IsPathology(i) && (report[i] == Reported::kPositive || report[i] == Reported::kUncertain));
  }
  report[data::kNoFinding] = any ? Reported::kBlank : Reported::kPositive;
  return report;
}

}  // namespace fedtune::synth
