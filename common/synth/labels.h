// The labels of synthetic studies: true findings with CheXpert-like co-occurrence and the CheXpert hierarchy, and
// what a site's radiologist reports (uncertain, omitted, not mentioned) given its reporting practice.
#ifndef FEDTUNE_COMMON_SYNTH_LABELS_H_
#define FEDTUNE_COMMON_SYNTH_LABELS_H_

#include <array>
#include <cstdint>
#include <string>

#include "common/data/chexpert_labels.h"
#include "common/synth/rng.h"
#include "fedtune/v1/synth_profile.pb.h"

namespace fedtune::synth {

// True findings, indexed by data::ChexpertLabel.
using LabelVector = std::array<bool, data::kNumChexpertLabels>;

// A reported value as written in a CheXpert CSV: blank, 0.0, -1.0 or 1.0.
enum class Reported : int8_t { kBlank = 0, kNegative = 1, kUncertain = 2, kPositive = 3 };
using ReportVector = std::array<Reported, data::kNumChexpertLabels>;

// "", "0.0", "-1.0", "1.0".
const char* ReportedToCsv(Reported value);

// The per-label numbers of a profile, looked up once. Labels absent from the profile have all probabilities 0.
struct LabelModel {
  std::array<double, data::kNumChexpertLabels> prevalence{};
  std::array<double, data::kNumChexpertLabels> uncertain{};
  std::array<double, data::kNumChexpertLabels> omitted{};
  std::array<double, data::kNumChexpertLabels> absent_uncertain{};
  std::array<double, data::kNumChexpertLabels> negative_mention{};
  double co_occurrence = 0;
  // Thresholds of the latent normal variables: finding i present iff z_i > threshold[i] (= Phi^-1(1 - prevalence)).
  std::array<double, data::kNumChexpertLabels> threshold{};
};

// Builds the model from a validated profile.
LabelModel MakeLabelModel(const fedtune::v1::SynthProfile& profile);

// Draws one study's true findings. Each finding i other than No Finding is present iff a latent standard normal
// z_i exceeds Phi^-1(1 - prevalence_i), so its own marginal probability is exactly its prevalence; the z_i share
// four latent factors (cardiac: Cardiomegaly, Enlarged Cardiomediastinum, Edema, Pleural Effusion; infection:
// Consolidation, Pneumonia, Atelectasis, Lung Opacity, Pleural Effusion; intensive care: Support Devices, Edema,
// Atelectasis, Pneumothorax, Pleural Effusion; trauma: Fracture, Pneumothorax, Pleural Other) with loadings scaled
// by co_occurrence. Then the hierarchy (data::kChexpertHierarchy) makes parents present, and No Finding is set iff
// no finding other than Support Devices is present.
// `own` marks the findings drawn by their own latent variable (before the hierarchy): a parent present only through
// a child has present = true, own = false.
struct TrueFindings {
  LabelVector present{};
  LabelVector own{};
};
TrueFindings SampleTrueLabels(const LabelModel& model, Rng& rng);

// What the site reports for a study with findings `truth`: per finding (except No Finding), a present finding is
// reported -1.0 with probability uncertain, else blank with probability omitted, else 1.0; an absent finding is
// reported -1.0 with probability absent_uncertain, else 0.0 with probability negative_mention, else blank. The
// hierarchy is then respected on the report: a parent is raised to at least its child's value in the order
// blank < 0.0 < -1.0 < 1.0. No Finding is reported 1.0 iff no finding other than Support Devices is reported 1.0
// or -1.0, else blank.
ReportVector ReportLabels(const LabelModel& model, const LabelVector& truth, Rng& rng);

}  // namespace fedtune::synth

#endif  // FEDTUNE_COMMON_SYNTH_LABELS_H_
