// `fedtune synth`: writes a synthetic CheXpert-style dataset for one site profile (see generator.h for the layout
// of the output and profile.h for profiles).
#ifndef FEDTUNE_COMMON_SYNTH_SYNTH_COMMAND_H_
#define FEDTUNE_COMMON_SYNTH_SYNTH_COMMAND_H_

#include <ostream>

#include "common/cli/command.h"

namespace fedtune::synth {

// `fedtune synth --profile P --count N --size S --seed K --out DIR [--dicom-fraction F] [--bit-depth 8|16]
// [--threads T] [--dicom]`. P is a built-in profile name (public, site-a, site-b, site-c) or a text-format profile
// file. N counts images. --dicom writes a synthetic PACS export instead (generator.h). Prints a one-line summary to
// `out` (which must outlive the command). Errors: InvalidArgument (exit 2) for bad flags or an invalid profile,
// NotFound (exit 2) for an unknown profile, I/O errors (exit 1) naming the file.
cli::Command MakeSynthCommand(std::ostream& out);

}  // namespace fedtune::synth

#endif  // FEDTUNE_COMMON_SYNTH_SYNTH_COMMAND_H_
