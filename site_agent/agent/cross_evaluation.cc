#include "site_agent/agent/cross_evaluation.h"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "common/logging.h"
#include "common/model/checkpoint.h"
#include "common/pki/certificate.h"
#include "common/status_macros.h"
#include "site_agent/agent/evaluation_options.h"
#include "site_agent/agent/heartbeater.h"
#include "site_agent/agent/metrics_report.h"
#include "site_agent/commands/evaluate.h"

namespace fedtune::agent {
namespace {

namespace fs = std::filesystem;

constexpr char kShareKind[] = "share";

// The recorded shared copy of the adapted model when its file still has its SHA-256; empty otherwise.
absl::StatusOr<std::optional<TaskRecord>> RecordedShare(AgentDatabase& db, const TaskKey& key) {
  ASSIGN_OR_RETURN(std::optional<TaskRecord> record, db.FindTask(key));
  if (!record || record->update_sha256.empty() || !fs::exists(record->update_path)) return std::nullopt;
  ASSIGN_OR_RETURN(std::string on_disk, io::Sha256File(record->update_path));
  if (on_disk != record->update_sha256) {
    LOG(WARNING) << record->update_path << " no longer has its recorded sha256: writing the shared copy again";
    return std::nullopt;
  }
  return record;
}

}  // namespace

absl::StatusOr<bool> ShareAdaptedModel(const CrossSiteContext& context, const v1::Task& task,
                                       const std::optional<AdaptedModel>& adapted, const CancelFn& cancelled) {
  if (!task.cross_site_evaluation()) return false;
  const std::string& site_id = context.config.site_id();
  if (!context.config.share_adapted_model()) {
    LOG(INFO) << "site " << site_id << " declined to share its adapted model of run " << task.run_id()
              << " for cross-site evaluation (share_adapted_model is false): shown as \"not shared\"";
    return false;
  }
  if (!adapted) {
    LOG(WARNING) << "site " << site_id << " has no adapted model of run " << task.run_id() << " to share";
    return false;
  }
  const TaskKey key{task.run_id(), 0, 0, kShareKind};
  ASSIGN_OR_RETURN(std::optional<TaskRecord> record, RecordedShare(context.db, key));
  if (record && record->state == "uploaded") return true;
  if (!record) {
    // A copy without the site's manifest path in its provenance: weights and architecture only.
    ASSIGN_OR_RETURN(model::Checkpoint checkpoint, model::LoadCheckpoint(adapted->path));
    checkpoint.metadata.provenance.source =
        absl::StrCat("adapted model of site ", site_id, ", run ", task.run_id(), " (shared for cross-site evaluation)");
    checkpoint.metadata.provenance.data_summary.clear();
    const fs::path run_dir = fs::path(context.config.work_dir()) / "runs" / task.run_id();
    RETURN_IF_ERROR(io::MakeDirectories(run_dir.string()));
    const std::string path = (run_dir / "shared-adapted.ckpt").string();
    RETURN_IF_ERROR(model::SaveCheckpoint(&checkpoint, path).status());
    ASSIGN_OR_RETURN(std::string sha256, io::Sha256File(path));
    ASSIGN_OR_RETURN(int64_t bytes, io::FileSize(path));
    RETURN_IF_ERROR(context.db.BeginTask(key, task));
    RETURN_IF_ERROR(context.db.RecordUpdate(key, path, sha256, bytes, 0, 0, 0));
    ASSIGN_OR_RETURN(record, context.db.FindTask(key));
    if (!record) return absl::InternalError("site.db lost the shared model's record");
  }
  UploadRequest upload;
  upload.run_id = task.run_id();
  upload.round = 0;
  upload.path = record->update_path;
  upload.sha256 = record->update_sha256;
  upload.num_samples = 1;
  upload.kind = v1::UPLOAD_KIND_ADAPTED_MODEL;
  ASSIGN_OR_RETURN(const v1::UploadResponse uploaded, context.client.UploadUpdate(upload, cancelled));
  LOG(INFO) << "site " << site_id << " shared its adapted model of run " << task.run_id() << " (sha256 "
            << upload.sha256 << "): " << uploaded.message();
  RETURN_IF_ERROR(context.db.SetTaskState(key, "uploaded"));
  return true;
}

absl::Status RunCrossEvaluation(const CrossSiteContext& context, const v1::Task& task, Heartbeater& heartbeat) {
  if (task.shared_models().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("CROSS_EVALUATE task of run ", task.run_id(), " lists no shared model"));
  }
  std::set<std::string> owners;
  for (const v1::SharedModel& m : task.shared_models()) {
    RETURN_IF_ERROR(pki::ValidateIdentityName(m.site_id(), "shared_models.site_id"));
    if (m.site_id() == context.config.site_id() || !owners.insert(m.site_id()).second) {
      return absl::InvalidArgumentError(absl::StrCat("CROSS_EVALUATE task of run ", task.run_id(),
                                                     ": shared model of site ", m.site_id(),
                                                     " is this site's own or listed twice"));
    }
  }
  const fs::path work(context.config.work_dir());
  const fs::path reports = work / "reports" / task.run_id();
  RETURN_IF_ERROR(io::MakeDirectories(reports.string()));
  const CancelFn cancelled = [&heartbeat] { return heartbeat.cancelled(); };
  const std::string models = (work / "models").string();
  ASSIGN_OR_RETURN(std::string global_path,
                   context.client.DownloadModel(task.model_digest(), task.model_bytes(), models, cancelled));
  const std::string test_manifest = (reports / "test.csv").string();
  RETURN_IF_ERROR(train::WriteSplitManifest(context.site, data::Split::kTest, test_manifest));

  v1::MetricsReport report;
  report.set_run_id(task.run_id());
  report.set_round(0);
  report.set_kind("cross_site");
  const int n = task.shared_models_size();
  for (int i = 0; i < n; ++i) {
    const v1::SharedModel& shared = task.shared_models(i);
    if (heartbeat.cancelled()) {
      return absl::CancelledError(absl::StrCat("run ", task.run_id(), ": cross-site evaluation cancelled by the ",
                                               "coordinator (", heartbeat.reason(), ")"));
    }
    heartbeat.SetState(absl::StrCat("cross-site evaluation ", i + 1, "/", n), 0.05 + 0.9 * i / n);
    ASSIGN_OR_RETURN(std::string path,
                     context.client.DownloadModel(shared.digest(), shared.bytes(), models, cancelled));
    const fs::path out = reports / absl::StrCat("cross-", shared.site_id());
    ASSIGN_OR_RETURN(EvaluateResult evaluated,
                     RunEvaluate(EvaluateOptionsFor(
                         context.config, global_path, path, test_manifest, out.string(),
                         absl::StrCat("Site ", context.config.site_id(), ", run ", task.run_id(),
                                      ": final global vs the adapted model of site ", shared.site_id()))));
    LOG(INFO) << "cross-site evaluation of site " << shared.site_id() << "'s adapted model: " << evaluated.summary_line;
    if (i == 0) {
      report.set_test_cases(evaluated.images);
      *report.add_models() = ModelEvaluationFrom(evaluated.report, ReportSide::kA, "global",
                                                 EvaluatedDigest(out.string(), "a").value_or(""));
    }
    *report.add_models() = ModelEvaluationFrom(evaluated.report, ReportSide::kB, shared.site_id(),
                                               EvaluatedDigest(out.string(), "b").value_or(""));
    *report.add_comparisons() = ModelComparisonFrom(evaluated.report, "global", shared.site_id());
  }
  if (!context.config.share_metrics()) StripPerformance(&report);
  heartbeat.SetState("reporting", 0.97);
  RETURN_IF_ERROR(context.client.ReportMetrics(report));
  LOG(INFO) << "cross-site evaluation of run " << task.run_id() << " reported (" << n << " shared model(s))";
  return absl::OkStatus();
}

}  // namespace fedtune::agent
