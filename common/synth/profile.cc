#include "common/synth/profile.h"

#include <sys/stat.h>

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/data/chexpert_labels.h"
#include "common/io/file_util.h"
#include "common/io/text_proto.h"
#include "common/status_macros.h"
#include "common/synth/builtin_profiles.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"

namespace fedtune::synth {
namespace {

using fedtune::v1::SynthProfile;
using fedtune::v1::SynthRange;

// Collects the first text-format error with its position (protobuf reports 0-based line and column).
class FirstErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column, const std::string& message) override {
    if (error_.empty()) error_ = absl::StrCat(line + 1, ":", column + 1, ": ", message);
  }
  void AddWarning(int line, google::protobuf::io::ColumnNumber column, const std::string& message) override {}
  const std::string& error() const { return error_; }

 private:
  std::string error_;
};

// Validation helpers: each returns InvalidArgument naming `field`.
class Checker {
 public:
  explicit Checker(std::string source) : source_(std::move(source)) {}

  absl::Status Probability(const std::string& field, double p) const {
    if (!(p >= 0.0 && p <= 1.0)) return Error(field, absl::StrCat("must be a probability in [0, 1], got ", p));
    return absl::OkStatus();
  }
  // A present range: finite, min <= max, and both bounds within [lo, hi] (lo_open: bound must be > lo).
  absl::Status Range(const std::string& field, bool has, const SynthRange& r, double lo, double hi,
                     bool lo_open = false) const {
    if (!has) return absl::OkStatus();
    for (const auto& [name, v] : {std::pair<const char*, double>{"min", r.min()}, {"max", r.max()}}) {
      const std::string f = absl::StrCat(field, ".", name);
      if (!std::isfinite(v)) return Error(f, "must be finite");
      if (lo_open ? !(v > lo) : !(v >= lo)) return Error(f, absl::StrCat("must be ", lo_open ? "> " : ">= ", lo));
      if (v > hi) return Error(f, absl::StrCat("must be <= ", hi));
    }
    if (r.min() > r.max()) {
      return Error(field, absl::StrCat("min (", r.min(), ") must be <= max (", r.max(), ")"));
    }
    return absl::OkStatus();
  }
  absl::Status Error(const std::string& field, const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat("synth profile ", source_, ": field ", field, " ", what));
  }

 private:
  std::string source_;
};

}  // namespace

RangeValue RangeOr(bool has, const SynthRange& range, double default_value) {
  if (!has) return {default_value, default_value};
  return {range.min(), range.max()};
}

std::vector<std::string> BuiltinProfileNames() {
  std::vector<std::string> names;
  for (const BuiltinProfile& p : BuiltinProfiles()) names.push_back(p.name);
  std::sort(names.begin(), names.end());
  return names;
}

absl::Status ValidateProfile(const SynthProfile& profile) {
  const Checker c(profile.name().empty() ? std::string("<unnamed>") : profile.name());
  if (profile.name().empty()) return c.Error("name", "must not be empty");
  const auto& d = profile.detector();
  RETURN_IF_ERROR(c.Range("detector.contrast", d.has_contrast(), d.contrast(), -10, 10));
  RETURN_IF_ERROR(c.Range("detector.brightness", d.has_brightness(), d.brightness(), -1, 1));
  RETURN_IF_ERROR(c.Range("detector.gamma", d.has_gamma(), d.gamma(), 0, 10, /*lo_open=*/true));
  RETURN_IF_ERROR(c.Probability("detector.invert_probability", d.invert_probability()));
  RETURN_IF_ERROR(c.Range("detector.noise_sigma", d.has_noise_sigma(), d.noise_sigma(), 0, 1));
  RETURN_IF_ERROR(c.Range("detector.blur_sigma", d.has_blur_sigma(), d.blur_sigma(), 0, 0.2));
  RETURN_IF_ERROR(c.Range("detector.resolution", d.has_resolution(), d.resolution(), 0, 1, /*lo_open=*/true));
  const auto& b = profile.borders();
  RETURN_IF_ERROR(c.Probability("borders.black_probability", b.black_probability()));
  RETURN_IF_ERROR(c.Range("borders.width", b.has_width(), b.width(), 0, 0.3));
  RETURN_IF_ERROR(c.Probability("borders.collimation_probability", b.collimation_probability()));
  RETURN_IF_ERROR(c.Range("borders.collimation_inset", b.has_collimation_inset(), b.collimation_inset(), 0, 0.3));
  RETURN_IF_ERROR(c.Probability("borders.collimation_value", b.collimation_value()));
  const auto& m = profile.markers();
  RETURN_IF_ERROR(c.Probability("markers.text_probability", m.text_probability()));
  if (m.text_probability() > 0 && m.texts().empty()) {
    return c.Error("markers.texts", "must list at least one text when markers.text_probability > 0");
  }
  for (int i = 0; i < m.texts_size(); ++i) {
    const std::string& t = m.texts(i);
    if (t.empty() || t.size() > 16 ||
        !std::all_of(t.begin(), t.end(), [](char ch) { return ch >= 0x20 && ch < 0x7f; })) {
      return c.Error(absl::StrCat("markers.texts[", i, "]"), "must be 1-16 printable ASCII characters");
    }
  }
  RETURN_IF_ERROR(c.Range("markers.text_height", m.has_text_height(), m.text_height(), 0, 0.5));
  RETURN_IF_ERROR(c.Probability("markers.value", m.value()));
  RETURN_IF_ERROR(c.Probability("markers.block_probability", m.block_probability()));
  RETURN_IF_ERROR(c.Range("markers.block_size", m.has_block_size(), m.block_size(), 0, 0.5));
  RETURN_IF_ERROR(c.Probability("markers.block_value", m.block_value()));
  const auto& pos = profile.positioning();
  RETURN_IF_ERROR(c.Range("positioning.shift_x", pos.has_shift_x(), pos.shift_x(), -0.5, 0.5));
  RETURN_IF_ERROR(c.Range("positioning.shift_y", pos.has_shift_y(), pos.shift_y(), -0.5, 0.5));
  RETURN_IF_ERROR(c.Range("positioning.rotation_deg", pos.has_rotation_deg(), pos.rotation_deg(), -90, 90));
  RETURN_IF_ERROR(c.Range("positioning.scale", pos.has_scale(), pos.scale(), 0, 4, /*lo_open=*/true));
  if (profile.has_scanner()) {
    const auto& sc = profile.scanner();
    auto within = [&c](const char* field, double v, double lo, double hi) -> absl::Status {
      if (!std::isfinite(v) || v < lo || v > hi) {
        return c.Error(absl::StrCat("scanner.", field), absl::StrCat("must be in [", lo, ", ", hi, "], got ", v));
      }
      return absl::OkStatus();
    };
    RETURN_IF_ERROR(within("gamma", sc.gamma(), 0, 10));
    RETURN_IF_ERROR(within("gain", sc.gain(), 0, 10));
    RETURN_IF_ERROR(within("offset", sc.offset(), -1, 1));
    RETURN_IF_ERROR(within("texture_sigma", sc.texture_sigma(), 0, 0.5));
    RETURN_IF_ERROR(within("texture_scale", sc.texture_scale(), 0, 0.25));
    RETURN_IF_ERROR(within("stripe_amplitude", sc.stripe_amplitude(), 0, 0.5));
    RETURN_IF_ERROR(within("stripe_period", sc.stripe_period(), 0, 1));
  }
  const auto& pop = profile.population();
  RETURN_IF_ERROR(c.Probability("population.male_fraction", pop.male_fraction()));
  RETURN_IF_ERROR(c.Probability("population.ap_fraction", pop.ap_fraction()));
  RETURN_IF_ERROR(c.Probability("population.lateral_fraction", pop.lateral_fraction()));
  RETURN_IF_ERROR(c.Probability("population.repeat_study_probability", pop.repeat_study_probability()));
  if (pop.age_sd() < 0) return c.Error("population.age_sd", "must be >= 0");
  if (pop.age_min() < 0) return c.Error("population.age_min", "must be >= 0");
  if (pop.age_max() != 0 && pop.age_max() < pop.age_min()) {
    return c.Error("population.age_max", absl::StrCat("must be >= age_min (", pop.age_min(), ")"));
  }
  if (pop.age_max() > 120) return c.Error("population.age_max", "must be <= 120");
  RETURN_IF_ERROR(c.Probability("co_occurrence", profile.co_occurrence()));
  RETURN_IF_ERROR(c.Range("sign_strength", profile.has_sign_strength(), profile.sign_strength(), 0, 5, true));

  std::set<std::string> seen;
  for (int i = 0; i < profile.labels_size(); ++i) {
    const auto& l = profile.labels(i);
    const std::string f = absl::StrCat("labels[", i, "]");
    const auto* it = std::find_if(data::kChexpertLabels.begin(), data::kChexpertLabels.end(),
                                  [&](const char* name) { return l.label() == name; });
    if (it == data::kChexpertLabels.end()) {
      return c.Error(
          f + ".label",
          absl::StrCat("\"", l.label(), "\" is not a CheXpert label (one of: ",
                       absl::StrJoin(data::kChexpertLabels.begin() + 1, data::kChexpertLabels.end(), ", "), ")"));
    }
    if (it == data::kChexpertLabels.begin()) {
      return c.Error(f + ".label", "\"No Finding\" is derived from the other labels and may not be listed");
    }
    if (!seen.insert(l.label()).second) {
      return c.Error(f + ".label", absl::StrCat("\"", l.label(), "\" is listed twice"));
    }
    RETURN_IF_ERROR(c.Probability(f + ".prevalence", l.prevalence()));
    RETURN_IF_ERROR(c.Probability(f + ".uncertain_probability", l.uncertain_probability()));
    RETURN_IF_ERROR(c.Probability(f + ".omitted_probability", l.omitted_probability()));
    RETURN_IF_ERROR(c.Probability(f + ".absent_uncertain_probability", l.absent_uncertain_probability()));
    RETURN_IF_ERROR(c.Probability(f + ".negative_mention_probability", l.negative_mention_probability()));
  }
  return absl::OkStatus();
}

absl::StatusOr<SynthProfile> ParseProfile(absl::string_view text, absl::string_view source) {
  SynthProfile profile;
  google::protobuf::TextFormat::Parser parser;
  FirstErrorCollector errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(std::string(text), &profile)) {
    return absl::InvalidArgumentError(
        absl::StrCat("synth profile ", source, ":", errors.error().empty() ? " parse error" : errors.error()));
  }
  absl::Status status = ValidateProfile(profile);
  if (!status.ok()) {
    // Name the file too: the profile's name alone does not say where it came from.
    return absl::InvalidArgumentError(absl::StrCat(status.message(), " (in ", source, ")"));
  }
  return profile;
}

absl::StatusOr<SynthProfile> LoadProfile(const std::string& name_or_path) {
  for (const BuiltinProfile& p : BuiltinProfiles()) {
    if (name_or_path == p.name) return ParseProfile(p.text, absl::StrCat("builtin:", p.name));
  }
  struct stat st;
  if (::stat(name_or_path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("synth profile \"", name_or_path, "\" is neither a built-in profile (",
                                            absl::StrJoin(BuiltinProfileNames(), ", "), ") nor an existing file"));
  }
  ASSIGN_OR_RETURN(std::string text, io::ReadTextProtoFile(name_or_path));
  return ParseProfile(text, name_or_path);
}

}  // namespace fedtune::synth
