// Train/validation/test splits of a manifest at the patient level (every image
// of a patient lands in one split), stratified for multi-label data by
// iterative stratification (Sechidis, Tsoumakas & Vlahavas, "On the
// Stratification of Multi-Label Data", ECML PKDD 2011), plus the per-split
// label proportions to report.
//
// Iterative stratification, as used here with patients as the units: the
// desired number of images of each split is ratio * N and the desired number of
// positives of label l is ratio * N_l. Repeatedly take the label with the
// fewest positive units still unassigned; hand each of those units (in seeded
// random order) to the split that still wants the most positives of that label
// (ties: the split that still wants the most images; then random), and subtract
// the unit's images and positives from that split's wants. Units with no
// positive label go, in seeded random order, to the split that still wants the
// most images. Rare labels are placed first, so they spread evenly.
//
// Every function here is a pure function of its arguments: thread-safe.
#ifndef FEDTUNE_COMMON_DATA_STRATIFIED_SPLIT_H_
#define FEDTUNE_COMMON_DATA_STRATIFIED_SPLIT_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/data/chexpert_labels.h"
#include "common/data/manifest.h"

namespace fedtune::data {

enum class Split : int8_t { kTrain = 0, kValidation = 1, kTest = 2 };
inline constexpr int kNumSplits = 3;
std::string SplitName(Split split);  // "train", "validation", "test".

// A unit to place (a patient): its number of examples (images) and, per label,
// how many of them are positive.
struct StratificationUnit {
  int64_t size = 1;
  std::vector<int64_t> label_counts;  // Same length for every unit.
};

// Iterative stratification of `units` into ratios.size() parts (see the file
// comment). Returns the part index of each unit. Deterministic for (units,
// ratios, seed). Ratios must be >= 0 with a positive sum (they are normalized);
// a part with ratio 0 receives nothing. InvalidArgument for bad ratios,
// negative sizes or counts, or units whose label_counts differ in length. Cost
// O(labels * units).
absl::StatusOr<std::vector<int>> IterativeStratification(const std::vector<StratificationUnit>& units,
                                                         const std::vector<double>& ratios, uint64_t seed);

// The baseline: units in seeded random order, each to the part that still wants
// the most examples. Same contract as IterativeStratification, labels ignored.
absl::StatusOr<std::vector<int>> RandomPartition(const std::vector<StratificationUnit>& units,
                                                 const std::vector<double>& ratios, uint64_t seed);

enum class SplitMethod : int8_t {
  kIterative = 0,  // Iterative stratification (default).
  kRandom = 1,     // Random patient split, for comparison.
};

struct SplitOptions {
  // Fractions of images wanted in each split; >= 0, normalized by their sum.
  // Defaults 0.8 / 0.1 / 0.1.
  double train = 0.8;
  double validation = 0.1;
  double test = 0.1;
  uint64_t seed = 0;  // Default 0. Record it with the run.
  SplitMethod method = SplitMethod::kIterative;
};

// The split of every entry and every patient of one manifest.
struct DatasetSplit {
  std::vector<Split> of_entry;    // Parallel to Manifest::entries().
  std::vector<Split> of_patient;  // Parallel to Manifest::patients().

  // Indices into Manifest::entries() of the entries in `split`, in manifest
  // order.
  std::vector<size_t> EntriesIn(Split split) const;
};

// Splits the manifest's patients; the stratification counts, per patient and
// label, the images whose raw label is positive. InvalidArgument for bad
// ratios.
absl::StatusOr<DatasetSplit> SplitByPatient(const Manifest& manifest, const SplitOptions& options);

// Counts of a set of images: patients, studies, images, and per label the
// positive images and their proportion.
struct SplitSummary {
  int64_t patients = 0;
  int64_t studies = 0;
  int64_t images = 0;
  std::array<int64_t, kNumChexpertLabels> positives{};
  // positives / images (0 for an empty split).
  std::array<double, kNumChexpertLabels> proportion{};
};

struct SplitReport {
  SplitSummary all;
  std::array<SplitSummary, kNumSplits> splits;
  // Largest |proportion in a non-empty split - proportion in the whole set|
  // over labels and splits.
  double max_abs_deviation = 0;
  // Mean of the same absolute deviations over labels and non-empty splits.
  double mean_abs_deviation = 0;
};

SplitReport SummarizeSplit(const Manifest& manifest, const DatasetSplit& split);

// A table for logs and reports: one row per label, columns all / train /
// validation / test (percent positive), then the sizes and the deviations.
std::string FormatSplitReport(const SplitReport& report);

}  // namespace fedtune::data

#endif  // FEDTUNE_COMMON_DATA_STRATIFIED_SPLIT_H_
