#include "common/synth/synth_command.h"

#include <limits>
#include <ostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/synth/generator.h"
#include "common/synth/profile.h"

namespace fedtune::synth {
namespace {

absl::Status RunSynth(const cli::ParsedFlags& flags, std::ostream& out) {
  SynthOptions o;
  ASSIGN_OR_RETURN(o.profile, LoadProfile(flags.GetOrDie("profile")));
  ASSIGN_OR_RETURN(o.count, flags.GetInt("count", 1000));
  ASSIGN_OR_RETURN(int64_t size, flags.GetInt("size", 64));
  ASSIGN_OR_RETURN(int64_t seed, flags.GetInt("seed", 1));
  ASSIGN_OR_RETURN(o.dicom_fraction, flags.GetDouble("dicom-fraction", 0));
  ASSIGN_OR_RETURN(int64_t bits, flags.GetInt("bit-depth", 8));
  ASSIGN_OR_RETURN(int64_t threads, flags.GetInt("threads", 1));
  if (seed < 0) return absl::InvalidArgumentError(absl::StrCat("--seed must be >= 0, got ", seed));
  if (size < 0 || size > std::numeric_limits<int>::max() || bits < 0 || bits > 64 || threads < 0 || threads > 4096) {
    return absl::InvalidArgumentError("--size, --bit-depth or --threads out of range");
  }
  o.size = static_cast<int>(size);
  o.seed = static_cast<uint64_t>(seed);
  o.png_bit_depth = static_cast<int>(bits);
  o.threads = static_cast<int>(threads);
  o.out_dir = flags.GetOrDie("out");
  o.pacs_export = flags.GetBool("dicom");
  if (o.pacs_export && (flags.Has("dicom-fraction") || flags.Has("bit-depth"))) {
    return absl::InvalidArgumentError(
        "--dicom writes every image as DICOM: --dicom-fraction and --bit-depth do not apply");
  }
  ASSIGN_OR_RETURN(SynthSummary s, GenerateDataset(o));
  if (o.pacs_export) {
    out << absl::StrFormat(
               "synth: profile %s: a PACS export of %d DICOM images (%d lateral) in %d studies of %d patients at "
               "%dx%d px, plus %d non-image/duplicate objects, in %s/dicom; labels in %s/labels.csv (%.2f s)\n",
               o.profile.name(), s.images, s.lateral_images, s.studies, s.patients, o.size, o.size, s.extra_dicom_files,
               o.out_dir, o.out_dir, s.seconds)
        << std::flush;
    return absl::OkStatus();
  }
  out << absl::StrFormat(
             "synth: profile %s: %d images (%d lateral, %d DICOM) in %d studies of %d patients at %dx%d "
             "px written to %s in %.2f s\n",
             o.profile.name(), s.images, s.lateral_images, s.dicom_images, s.studies, s.patients, o.size, o.size,
             o.out_dir, s.seconds)
      << std::flush;
  return absl::OkStatus();
}

}  // namespace

cli::Command MakeSynthCommand(std::ostream& out) {
  cli::Command c;
  c.path = {"synth"};
  c.summary = "Write a synthetic multi-site chest-radiograph dataset (images, manifest.csv, truth.csv)";
  c.flags = {
      {"profile",
       absl::StrCat("Site profile: a built-in name (", absl::StrJoin(BuiltinProfileNames(), ", "),
                    ") or a text-format fedtune.v1.SynthProfile file"),
       false, true, std::nullopt, "NAME|FILE"},
      {"count", "Number of images (studies are added until this many images exist)", false, false, "1000", "N"},
      {"size", "Image side in pixels (square images)", false, false, "64", "PX"},
      {"seed", "Random seed; the output is byte-identical for a seed", false, false, "1", "K"},
      {"out", "Output folder (created): images, manifest.csv (reported labels), truth.csv (true labels)", false, true,
       std::nullopt, "DIR"},
      {"dicom-fraction", "Fraction of images written as DICOM instead of PNG", false, false, "0", "F"},
      {"bit-depth", "PNG bit depth: 8 or 16", false, false, "8", "BITS"},
      {"threads", "Rendering threads (the output does not depend on it)", false, false, "1", "T"},
      {"dicom",
       "Write a synthetic PACS export instead: DIR/dicom/ST*/SE*/IM*.dcm and DIR/labels.csv keyed by "
       "AccessionNumber (for `fedtune-site data index`)",
       true, false, std::nullopt, "VALUE"},
  };
  c.run = [&out](const cli::ParsedFlags& flags) { return RunSynth(flags, out); };
  return c;
}

}  // namespace fedtune::synth
