// Cross-site evaluation at a site (RunConfig.cross_site_evaluation; federation.proto Task.CROSS_EVALUATE):
//
//  Sharing (during the EVALUATE task of such a run): with the site's consent (SiteAgentConfig.share_adapted_model)
//  the site's adapted model is uploaded to the coordinator (UploadHeader.kind UPLOAD_KIND_ADAPTED_MODEL, round 0,
//  resumable like an update). What is uploaded is a copy of the adapted checkpoint,
//  <work_dir>/runs/<run>/shared-adapted.ckpt, whose provenance no longer names the site's manifest (source says
//  "adapted model of site S, run R"; data_summary is emptied): weights, architecture, labels, image size and
//  normalization only. Its path and SHA-256 are recorded in site.db (fed_tasks, kind "share", round 0, attempt 0)
//  before the upload, and its state "uploaded" after, so that a restarted agent uploads the same bytes (resuming from
//  the coordinator's offset) or nothing.
//
//  Evaluation (CROSS_EVALUATE): the final global model and each shared model of the task (the other sites'
//  adapted models) are downloaded (resumable, SHA-256 checked) and each shared model is evaluated against the global
//  model on the site's own test split (site_agent/commands/evaluate.h: paired DeLong on the same cases; reports under
//  <work_dir>/reports/<run>/cross-<site id>/ stay at the site). The MetricsReport of kind "cross_site", round 0,
//  holds the model "global" and one ModelEvaluation per shared model named by its owner's site id, with a
//  ModelComparison "global" vs "<site id>" each; with share_metrics = false its performance values are stripped.
//
// Thread safety: not thread-safe (the agent's task thread calls these).
#ifndef FEDTUNE_SITE_AGENT_AGENT_CROSS_EVALUATION_H_
#define FEDTUNE_SITE_AGENT_AGENT_CROSS_EVALUATION_H_

#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/train/site_data.h"
#include "fedtune/v1/federation.pb.h"
#include "fedtune/v1/federation_config.pb.h"
#include "site_agent/agent/agent_database.h"
#include "site_agent/agent/coordinator_client.h"

namespace fedtune::agent {

class Heartbeater;

// What the functions below work with; every reference must outlive the call.
struct CrossSiteContext {
  const v1::SiteAgentConfig& config;
  CoordinatorClient& client;
  AgentDatabase& db;
  const train::SiteData& site;
};

// For an EVALUATE task: uploads the adapted model when task.cross_site_evaluation() and the site consents, and
// returns whether it is shared (the final report's adapted_model_shared). Returns false without a call when the
// run has no cross-site evaluation, when the site declines (logged: "declined to share") or has no adapted model
// (logged). Errors: reading or writing the checkpoint copy (named), site.db, and the upload's (the coordinator's,
// CANCELLED).
absl::StatusOr<bool> ShareAdaptedModel(const CrossSiteContext& context, const v1::Task& task,
                                       const std::optional<AdaptedModel>& adapted, const CancelFn& cancelled);

// Works a CROSS_EVALUATE task and reports kind "cross_site" (see the file comment). InvalidArgument for a task
// without shared models or with a malformed or duplicate site id; the downloads', evaluations' and the report's
// errors; CANCELLED when the heartbeat says so.
absl::Status RunCrossEvaluation(const CrossSiteContext& context, const v1::Task& task, Heartbeater& heartbeat);

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_AGENT_CROSS_EVALUATION_H_
