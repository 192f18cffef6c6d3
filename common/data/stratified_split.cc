#include "common/data/stratified_split.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace fedtune::data {
namespace {

// Uniform integer in [0, n) from the engine's raw bits.
// std::uniform_int_distribution is implementation-defined; this keeps splits
// identical across standard libraries for a seed.
uint64_t UniformBelow(std::mt19937_64& rng, uint64_t n) {
  const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % n;
  uint64_t x;
  do {
    x = rng();
  } while (x >= limit);
  return x % n;
}

template <typename T>
void Shuffle(std::vector<T>& v, std::mt19937_64& rng) {
  for (size_t i = v.size(); i > 1; --i) {
    std::swap(v[i - 1], v[UniformBelow(rng, i)]);
  }
}

absl::StatusOr<std::vector<double>> NormalizedRatios(const std::vector<double>& ratios) {
  if (ratios.empty()) return absl::InvalidArgumentError("no split ratios");
  double sum = 0;
  for (double r : ratios) {
    if (!(r >= 0) || !std::isfinite(r)) {
      return absl::InvalidArgumentError(absl::StrCat("split ratio ", r, " is not a finite number >= 0"));
    }
    sum += r;
  }
  if (!(sum > 0)) return absl::InvalidArgumentError("split ratios sum to 0");
  std::vector<double> out;
  for (double r : ratios) out.push_back(r / sum);
  return out;
}

absl::Status ValidateUnits(const std::vector<StratificationUnit>& units) {
  for (size_t u = 0; u < units.size(); ++u) {
    if (units[u].size < 0) {
      return absl::InvalidArgumentError(absl::StrCat("unit ", u, " has a negative size"));
    }
    if (units[u].label_counts.size() != units[0].label_counts.size()) {
      return absl::InvalidArgumentError(absl::StrCat("unit ", u, " has ", units[u].label_counts.size(),
                                                     " label counts, unit 0 has ", units[0].label_counts.size()));
    }
    for (int64_t c : units[u].label_counts) {
      if (c < 0) {
        return absl::InvalidArgumentError(absl::StrCat("unit ", u, " has a negative label count"));
      }
    }
  }
  return absl::OkStatus();
}

// Among parts with a positive ratio, those maximizing key(j) (within a
// tolerance for accumulated rounding).
template <typename Key>
std::vector<int> ArgMaxParts(const std::vector<int>& candidates, Key key) {
  std::vector<int> best;
  double best_value = -std::numeric_limits<double>::infinity();
  for (int j : candidates) {
    const double v = key(j);
    if (v > best_value + 1e-9) {
      best_value = v;
      best = {j};
    } else if (std::abs(v - best_value) <= 1e-9) {
      best.push_back(j);
    }
  }
  return best;
}

}  // namespace

std::string SplitName(Split split) {
  switch (split) {
    case Split::kTrain:
      return "train";
    case Split::kValidation:
      return "validation";
    case Split::kTest:
      return "test";
  }
  LOG(FATAL) << "bad Split " << static_cast<int>(split);
  return "";
}

absl::StatusOr<std::vector<int>> IterativeStratification(const std::vector<StratificationUnit>& units,
                                                         const std::vector<double>& ratios, uint64_t seed) {
  ASSIGN_OR_RETURN(std::vector<double> r, NormalizedRatios(ratios));
  RETURN_IF_ERROR(ValidateUnits(units));
  const int parts = static_cast<int>(r.size());
  const size_t labels = units.empty() ? 0 : units[0].label_counts.size();
  std::mt19937_64 rng(seed);

  std::vector<int> active;  // Parts that want anything.
  for (int j = 0; j < parts; ++j) {
    if (r[j] > 0) active.push_back(j);
  }
  double total_size = 0;
  std::vector<double> total_count(labels, 0.0);
  // Per label, the unassigned units with a positive of that label.
  std::vector<int64_t> units_with_label(labels, 0);
  for (const StratificationUnit& u : units) {
    total_size += u.size;
    for (size_t l = 0; l < labels; ++l) {
      total_count[l] += u.label_counts[l];
      if (u.label_counts[l] > 0) ++units_with_label[l];
    }
  }
  std::vector<double> want_size(parts);
  std::vector<std::vector<double>> want_label(parts, std::vector<double>(labels));
  for (int j = 0; j < parts; ++j) {
    want_size[j] = r[j] * total_size;
    for (size_t l = 0; l < labels; ++l) {
      want_label[j][l] = r[j] * total_count[l];
    }
  }

  std::vector<int> assignment(units.size(), -1);
  auto assign = [&](size_t u, int j) {
    assignment[u] = j;
    want_size[j] -= units[u].size;
    for (size_t l = 0; l < labels; ++l) {
      want_label[j][l] -= units[u].label_counts[l];
      if (units[u].label_counts[l] > 0) --units_with_label[l];
    }
  };
  auto pick = [&](std::vector<int> tied) { return tied.size() == 1 ? tied[0] : tied[UniformBelow(rng, tied.size())]; };

  while (true) {
    // The label with the fewest unassigned positive units (lowest index on
    // ties).
    int label = -1;
    for (size_t l = 0; l < labels; ++l) {
      if (units_with_label[l] > 0 && (label < 0 || units_with_label[l] < units_with_label[label])) {
        label = l;
      }
    }
    if (label < 0) break;
    std::vector<size_t> order;
    for (size_t u = 0; u < units.size(); ++u) {
      if (assignment[u] < 0 && units[u].label_counts[label] > 0) {
        order.push_back(u);
      }
    }
    Shuffle(order, rng);
    for (size_t u : order) {
      std::vector<int> tied = ArgMaxParts(active, [&](int j) { return want_label[j][label]; });
      if (tied.size() > 1) {
        tied = ArgMaxParts(tied, [&](int j) { return want_size[j]; });
      }
      assign(u, pick(tied));
    }
  }
  std::vector<size_t> rest;
  for (size_t u = 0; u < units.size(); ++u) {
    if (assignment[u] < 0) rest.push_back(u);
  }
  Shuffle(rest, rng);
  for (size_t u : rest) {
    assign(u, pick(ArgMaxParts(active, [&](int j) { return want_size[j]; })));
  }
  return assignment;
}

absl::StatusOr<std::vector<int>> RandomPartition(const std::vector<StratificationUnit>& units,
                                                 const std::vector<double>& ratios, uint64_t seed) {
  ASSIGN_OR_RETURN(std::vector<double> r, NormalizedRatios(ratios));
  RETURN_IF_ERROR(ValidateUnits(units));
  std::mt19937_64 rng(seed);
  std::vector<int> active;
  for (int j = 0; j < static_cast<int>(r.size()); ++j) {
    if (r[j] > 0) active.push_back(j);
  }
  double total_size = 0;
  for (const StratificationUnit& u : units) total_size += u.size;
  std::vector<double> want_size(r.size());
  for (size_t j = 0; j < r.size(); ++j) want_size[j] = r[j] * total_size;
  std::vector<size_t> order(units.size());
  for (size_t u = 0; u < units.size(); ++u) order[u] = u;
  Shuffle(order, rng);
  std::vector<int> assignment(units.size(), -1);
  for (size_t u : order) {
    std::vector<int> tied = ArgMaxParts(active, [&](int j) { return want_size[j]; });
    const int j = tied.size() == 1 ? tied[0] : tied[UniformBelow(rng, tied.size())];
    assignment[u] = j;
    want_size[j] -= units[u].size;
  }
  return assignment;
}

std::vector<size_t> DatasetSplit::EntriesIn(Split split) const {
  std::vector<size_t> out;
  for (size_t i = 0; i < of_entry.size(); ++i) {
    if (of_entry[i] == split) out.push_back(i);
  }
  return out;
}

absl::StatusOr<DatasetSplit> SplitByPatient(const Manifest& manifest, const SplitOptions& options) {
  const std::vector<Patient>& patients = manifest.patients();
  std::vector<StratificationUnit> units(patients.size());
  for (size_t p = 0; p < patients.size(); ++p) {
    units[p].size = 0;
    units[p].label_counts.assign(kNumChexpertLabels, 0);
    for (size_t s : patients[p].studies) {
      for (const std::vector<size_t>* images : {&manifest.studies()[s].frontal, &manifest.studies()[s].lateral}) {
        for (size_t e : *images) {
          ++units[p].size;
          for (int l = 0; l < kNumChexpertLabels; ++l) {
            if (manifest.entries()[e].labels[l] == RawLabel::kPositive) {
              ++units[p].label_counts[l];
            }
          }
        }
      }
    }
  }
  const std::vector<double> ratios = {options.train, options.validation, options.test};
  std::vector<int> assignment;
  if (options.method == SplitMethod::kIterative) {
    ASSIGN_OR_RETURN(assignment, IterativeStratification(units, ratios, options.seed));
  } else {
    ASSIGN_OR_RETURN(assignment, RandomPartition(units, ratios, options.seed));
  }
  DatasetSplit split;
  split.of_patient.reserve(patients.size());
  for (int part : assignment) {
    split.of_patient.push_back(static_cast<Split>(part));
  }
  split.of_entry.reserve(manifest.entries().size());
  for (size_t e = 0; e < manifest.entries().size(); ++e) {
    const size_t study = manifest.study_of_entry()[e];
    split.of_entry.push_back(split.of_patient[manifest.patient_of_study()[study]]);
  }
  return split;
}

SplitReport SummarizeSplit(const Manifest& manifest, const DatasetSplit& split) {
  CHECK_EQ(split.of_entry.size(), manifest.entries().size());
  CHECK_EQ(split.of_patient.size(), manifest.patients().size());
  SplitReport report;
  auto add_images = [&](SplitSummary& s, size_t e) {
    ++s.images;
    for (int l = 0; l < kNumChexpertLabels; ++l) {
      if (manifest.entries()[e].labels[l] == RawLabel::kPositive) {
        ++s.positives[l];
      }
    }
  };
  for (size_t e = 0; e < manifest.entries().size(); ++e) {
    add_images(report.all, e);
    add_images(report.splits[static_cast<int>(split.of_entry[e])], e);
  }
  report.all.patients = manifest.patients().size();
  report.all.studies = manifest.studies().size();
  for (size_t p = 0; p < manifest.patients().size(); ++p) {
    SplitSummary& s = report.splits[static_cast<int>(split.of_patient[p])];
    ++s.patients;
    s.studies += manifest.patients()[p].studies.size();
  }
  auto finish = [](SplitSummary& s) {
    for (int l = 0; l < kNumChexpertLabels; ++l) {
      s.proportion[l] = s.images > 0 ? static_cast<double>(s.positives[l]) / s.images : 0.0;
    }
  };
  finish(report.all);
  double sum = 0;
  int n = 0;
  for (SplitSummary& s : report.splits) {
    finish(s);
    if (s.images == 0) continue;
    for (int l = 0; l < kNumChexpertLabels; ++l) {
      const double d = std::abs(s.proportion[l] - report.all.proportion[l]);
      report.max_abs_deviation = std::max(report.max_abs_deviation, d);
      sum += d;
      ++n;
    }
  }
  report.mean_abs_deviation = n > 0 ? sum / n : 0.0;
  return report;
}

std::string FormatSplitReport(const SplitReport& report) {
  std::string out = absl::StrFormat("%-28s %8s %8s %10s %8s\n", "% positive", "all", "train", "validation", "test");
  for (int l = 0; l < kNumChexpertLabels; ++l) {
    absl::StrAppendFormat(&out, "%-28s %8.2f %8.2f %10.2f %8.2f\n", kChexpertLabels[l], 100 * report.all.proportion[l],
                          100 * report.splits[0].proportion[l], 100 * report.splits[1].proportion[l],
                          100 * report.splits[2].proportion[l]);
  }
  auto row = [&](const char* name, auto field) {
    absl::StrAppendFormat(&out, "%-28s %8d %8d %10d %8d\n", name, field(report.all), field(report.splits[0]),
                          field(report.splits[1]), field(report.splits[2]));
  };
  row("patients", [](const SplitSummary& s) { return s.patients; });
  row("studies", [](const SplitSummary& s) { return s.studies; });
  row("images", [](const SplitSummary& s) { return s.images; });
  absl::StrAppendFormat(&out,
                        "label proportion deviation from the whole set: max "
                        "%.2f, mean %.2f points\n",
                        100 * report.max_abs_deviation, 100 * report.mean_abs_deviation);
  return out;
}

}  // namespace fedtune::data
