// How the agent runs RunEvaluate (site_agent/commands/evaluate.h) for its tasks, shared by the round, final, local-only
// and cross-site evaluations: the options from the site's config, and the digests RunEvaluate recorded.
//
// Thread safety: reentrant.
#ifndef FEDTUNE_SITE_AGENT_AGENT_EVALUATION_OPTIONS_H_
#define FEDTUNE_SITE_AGENT_AGENT_EVALUATION_OPTIONS_H_

#include <string>

#include "absl/status/statusor.h"
#include "fedtune/v1/federation_config.pb.h"
#include "site_agent/commands/evaluate.h"

namespace fedtune::agent {

// RunEvaluate's options for models `a` (the reference) and `b` on `manifest`, written to `out_dir`, with the site's
// data root, device, input settings (crop_borders, max_image_pixels, raster_bits_stored: auto is resolved over the
// site's whole manifest), loader threads and Grad-CAM count.
EvaluateOptions EvaluateOptionsFor(const v1::SiteAgentConfig& config, const std::string& a, const std::string& b,
                                   const std::string& manifest, const std::string& out_dir, std::string title);

// weights_sha256 of RunEvaluate's model `side` ("a" or "b") from <report_dir>/report.json. The file's read errors;
// DataLoss naming the file when it has no models.<side>.
absl::StatusOr<std::string> EvaluatedDigest(const std::string& report_dir, const char* side);

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_AGENT_EVALUATION_OPTIONS_H_
