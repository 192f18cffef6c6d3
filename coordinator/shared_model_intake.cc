// RoundManager's intake of shared adapted models for cross-site evaluation (see round_manager.h): an upload of
// UploadKind UPLOAD_KIND_ADAPTED_MODEL, round 0, while the run evaluates. It goes through the same spool file,
// claim and resume machinery as a round's update (spool file r0-a0-<site>-<sha256>.upload; upload_receiver.h
// dispatches on the header's kind); once complete, the payload must be a fedtune checkpoint whose tensors have the
// final global model's names, shapes and dtypes (common/fl/model_tensors.h) and finite values. It then becomes a
// blob (moved, not copied), a model version and a row of shared_models, in one transaction.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/fl/model_tensors.h"
#include "common/io/sha256.h"
#include "common/logging.h"
#include "common/model/checkpoint.h"
#include "common/status_macros.h"
#include "coordinator/round_manager.h"

namespace fedtune::coordinator {

using federation::RunState;
using federation::UploadStatus;
namespace {

absl::Status CheckSharedHeader(const v1::UploadHeader& header, int64_t max_upload_bytes) {
  if (header.round() != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("adapted model upload: round ", header.round(), " must be 0 (run ", header.run_id(), ")"));
  }
  if (header.total_bytes() < 1 || header.total_bytes() > max_upload_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("adapted model upload: total_bytes ", header.total_bytes(),
                                                   " is outside [1, ", max_upload_bytes, "] (max_upload_bytes)"));
  }
  if (header.offset() < 0 || header.offset() > header.total_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("adapted model upload: offset ", header.offset(),
                                                   " is outside [0, total_bytes ", header.total_bytes(), "]"));
  }
  return absl::OkStatus();
}

std::string What(const std::string& site_id, const std::string& run_id) {
  return absl::StrCat("adapted model of site ", site_id, " for run ", run_id);
}

}  // namespace

absl::StatusOr<UploadTarget> RoundManager::PrepareSharedModelLocked(const std::string& site_id,
                                                                    const std::string& run_id, int round,
                                                                    const std::string& sha256) {
  if (!io::IsSha256Hex(sha256)) {
    return absl::InvalidArgumentError(absl::StrCat("sha256 '", sha256, "' is not 64 lowercase hex digits"));
  }
  if (round != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("adapted model upload: round ", round, " must be 0 (run ", run_id, ")"));
  }
  ASSIGN_OR_RETURN(RunRecord run, store_->GetRun(run_id));
  if (std::find(run.sites.begin(), run.sites.end(), site_id) == run.sites.end()) {
    return absl::PermissionDeniedError(absl::StrCat("site ", site_id, " is not selected for run ", run_id));
  }
  ASSIGN_OR_RETURN(std::vector<SharedModelRecord> shared, store_->ListSharedModels(run_id));
  for (const SharedModelRecord& s : shared) {
    if (s.site_id != site_id) continue;
    if (s.digest == sha256) {
      UploadTarget target;
      target.accepted = true;
      return target;
    }
    return absl::AlreadyExistsError(
        absl::StrCat("site ", site_id, " already shared its adapted model ", s.digest, " for run ", run_id));
  }
  if (!run.config.cross_site_evaluation()) {
    return absl::FailedPreconditionError(
        absl::StrCat("run ", run_id, " has no cross-site evaluation: it takes no adapted model"));
  }
  if (!active_ || active_->run.run_id != run_id || active_->run.state != RunState::kEvaluating ||
      active_->cross_stage) {
    return absl::FailedPreconditionError(absl::StrCat(
        "run ", run_id, " takes adapted models only during its final evaluation (run ", federation::Text(run.state),
        active_ && active_->run.run_id == run_id && active_->cross_stage ? ", cross-site evaluation under way" : "",
        ")"));
  }
  UploadTarget target;
  target.attempt = 0;
  target.spool_path = spool_.PathOf(run_id, 0, 0, site_id, sha256);
  return target;
}

absl::StatusOr<UploadTarget> RoundManager::PrepareSharedModelUpload(const std::string& site_id,
                                                                    const std::string& run_id, int round,
                                                                    const std::string& sha256) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(UploadTarget target, PrepareSharedModelLocked(site_id, run_id, round, sha256));
  if (!target.accepted) RETURN_IF_ERROR(spool_.MakeRunDir(run_id));
  return target;
}

absl::StatusOr<UploadTarget> RoundManager::BeginSharedModelUpload(const std::string& site_id,
                                                                  const v1::UploadHeader& header) {
  RETURN_IF_ERROR(CheckSharedHeader(header, options_.max_upload_bytes));
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(UploadTarget target,
                   PrepareSharedModelLocked(site_id, header.run_id(), header.round(), header.sha256()));
  if (target.accepted) return target;
  const std::string& path = target.spool_path;
  // One partial adapted model per site: another payload of the site's is superseded, unless a stream receives it.
  for (const auto& [other, owner] : spool_.ListAttempt(header.run_id(), 0, 0, {})) {
    if (owner != site_id || other == path) continue;
    if (receiving_.count(other) > 0) {
      return absl::AbortedError(absl::StrCat("another adapted model upload of site ", site_id, " for run ",
                                             header.run_id(), " is in progress"));
    }
    LOG(INFO) << "site " << site_id << " superseded its partial adapted model upload " << other;
    SpoolDir::Remove(other);
  }
  if (receiving_.count(path) > 0) {
    return absl::AbortedError(absl::StrCat("another upload of this adapted model by site ", site_id, " for run ",
                                           header.run_id(), " is in progress"));
  }
  RETURN_IF_ERROR(spool_.MakeRunDir(header.run_id()));
  receiving_.insert(path);
  target.claimed = true;
  return target;
}

absl::Status RoundManager::EndSharedModelUpload(const std::string& site_id, const v1::UploadHeader& header,
                                                const UploadTarget& target, absl::Status why) {
  if (!target.claimed) return why;
  absl::MutexLock lock(&mu_);
  receiving_.erase(target.spool_path);
  const bool open = active_ && active_->run.run_id == header.run_id() && active_->run.state == RunState::kEvaluating &&
                    !active_->cross_stage;
  // A protocol violation, a stage that moved on or nothing received: nothing worth resuming.
  if (why.code() == absl::StatusCode::kInvalidArgument || !open || SpoolDir::SizeOf(target.spool_path) == 0) {
    SpoolDir::Remove(target.spool_path);
    if (why.code() == absl::StatusCode::kInvalidArgument) {
      LOG(WARNING) << "refused the " << What(site_id, header.run_id()) << ": " << why;
    }
  }
  return why;
}

absl::Status RoundManager::ValidateSharedModel(const std::string& path, const model::Checkpoint& global_checkpoint,
                                               const std::string& what) {
  absl::StatusOr<model::Checkpoint> loaded = model::LoadCheckpoint(path);
  if (!loaded.ok()) {
    // The loader names the file; the site is told about its payload only.
    const std::string detail = absl::StrReplaceAll(loaded.status().message(), {{path + ": ", ""}, {path, "payload"}});
    const absl::StatusCode code = loaded.status().code() == absl::StatusCode::kResourceExhausted
                                      ? absl::StatusCode::kResourceExhausted
                                      : absl::StatusCode::kInvalidArgument;
    return absl::Status(code, absl::StrCat(what, ": not a fedtune checkpoint: ", detail));
  }
  // What the evaluating sites act on besides the weights: the same outputs, input size and normalization as the
  // global model, and the same networks (a site must not make the others preprocess at another size).
  const model::CheckpointMetadata& mine = loaded->metadata;
  const model::CheckpointMetadata& theirs = global_checkpoint.metadata;
  if (mine.labels != theirs.labels) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": its labels differ from the global model's"));
  }
  if (mine.image_size != theirs.image_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": image_size ", mine.image_size, " differs from the global model's ", theirs.image_size));
  }
  if (mine.mean != theirs.mean || mine.std != theirs.std) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": its input normalization (mean, std) differs from the global model's"));
  }
  if (loaded->members.size() != global_checkpoint.members.size() ||
      loaded->duo.has_value() != global_checkpoint.duo.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": its networks differ from the global model's"));
  }
  for (size_t i = 0; i < loaded->members.size(); ++i) {
    const model::ModelConfig& a = loaded->members[i].config;
    const model::ModelConfig& b = global_checkpoint.members[i].config;
    if (a.arch != b.arch || a.num_outputs != b.num_outputs || a.in_channels != b.in_channels) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": member ", i, "'s architecture differs from the global model's"));
    }
  }
  // Every tensor of the global checkpoint, including those the sites keep under FEDBN/SILOBN (ActiveRun::global
  // holds only the shared ones, but an adapted model is whole).
  const fl::TensorMap global = fl::CheckpointTensors(global_checkpoint);
  const fl::TensorMap tensors = fl::CheckpointTensors(*loaded);
  for (const auto& [name, expected] : global) {
    auto it = tensors.find(name);
    if (it == tensors.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": tensor ", name, " of the global model is missing (another architecture?)"));
    }
    const at::Tensor& t = it->second;
    if (t.sizes() != expected.sizes() || t.scalar_type() != expected.scalar_type()) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": tensor ", name, " has shape ", fl::ShapeString(t), " ", c10::toString(t.scalar_type()),
          ", the global model's is ", fl::ShapeString(expected), " ", c10::toString(expected.scalar_type())));
    }
    try {
      if (t.is_floating_point() && !at::isfinite(t).all().item<bool>()) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": tensor ", name, " holds NaN or Inf"));
      }
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat(what, ": checking tensor ", name, ": ", e.what_without_backtrace()));
    }
  }
  if (tensors.size() != global.size()) {
    for (const auto& [name, t] : tensors) {
      if (global.count(name) == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, ": tensor ", name, " is not in the global model (another architecture?)"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::UploadResponse> RoundManager::AcceptSharedModel(const std::string& site_id,
                                                                   const v1::UploadHeader& header,
                                                                   const UploadTarget& target,
                                                                   const std::string& received_sha256) {
  const std::string what = What(site_id, header.run_id());
  absl::Cleanup release = [&] {
    if (!target.claimed) return;
    absl::MutexLock lock(&mu_);
    receiving_.erase(target.spool_path);
  };
  auto refuse = [&](absl::Status why) -> absl::Status {
    SpoolDir::Remove(target.spool_path);
    LOG(WARNING) << "refused the " << what << ": " << why;
    return why;
  };
  if (received_sha256 != header.sha256()) {
    return refuse(absl::DataLossError(absl::StrCat(
        what, ": tampered or corrupt payload: the SHA-256 of the ", header.total_bytes(), " bytes received is ",
        received_sha256, " but the header says ", header.sha256(), "; the received data was discarded")));
  }
  absl::MutexLock decode_lock(&decode_mu_);
  model::Checkpoint global;  // Shares its tensors' storage with the active run's (read only).
  std::string final_digest;
  {
    absl::MutexLock lock(&mu_);
    absl::StatusOr<UploadTarget> now = PrepareSharedModelLocked(site_id, header.run_id(), 0, header.sha256());
    if (!now.ok()) return refuse(now.status());
    if (now->accepted) {
      SpoolDir::Remove(target.spool_path);
      v1::UploadResponse response;
      federation::SetStatus(UploadStatus::kAccepted, &response);
      response.set_message("accepted before (same payload)");
      return response;
    }
    global = active_->global_checkpoint;
    final_digest = active_->run.final_model_digest;
  }
  if (absl::Status valid = ValidateSharedModel(target.spool_path, global, what); !valid.ok()) {
    ReleaseFreeMemory();
    return refuse(valid);
  }
  ReleaseFreeMemory();
  absl::MutexLock lock(&mu_);
  absl::StatusOr<UploadTarget> now = PrepareSharedModelLocked(site_id, header.run_id(), 0, header.sha256());
  if (!now.ok()) return refuse(now.status());
  v1::UploadResponse response;
  federation::SetStatus(UploadStatus::kAccepted, &response);
  response.set_received_bytes(header.total_bytes());
  if (now->accepted) {
    SpoolDir::Remove(target.spool_path);
    response.set_message("accepted before (same payload)");
    return response;
  }
  // The blob store takes the file itself (rename): its digest is the payload's SHA-256, checked above.
  absl::StatusOr<std::string> digest = blobs_->Adopt(target.spool_path);
  if (!digest.ok()) {
    LOG(ERROR) << "storing the " << what << ": " << digest.status();
    return refuse(absl::InternalError(absl::StrCat(what, ": the coordinator could not store it; upload it again")));
  }
  const int64_t now_ms = NowMs();
  SharedModelRecord shared{header.run_id(), site_id, *digest, header.total_bytes(), now_ms};
  ModelVersion version;
  version.digest = *digest;
  version.parent_digest = final_digest;
  version.path = blobs_->PathOf(*digest);
  version.run_id = header.run_id();
  version.round = 0;
  version.bytes = header.total_bytes();
  version.created_ms = now_ms;
  if (absl::Status recorded = store_->InsertSharedModel(shared, version); !recorded.ok()) {
    LOG(ERROR) << "recording the " << what << ": " << recorded;
    if (recorded.code() == absl::StatusCode::kAlreadyExists) return recorded;
    return absl::InternalError(absl::StrCat(what, ": the coordinator could not record it; upload it again"));
  }
  v1::SharedModel& m = active_->shared[site_id];
  m.set_site_id(site_id);
  m.set_digest(*digest);
  m.set_bytes(header.total_bytes());
  LOG(INFO) << "accepted the " << what << ": model version " << *digest << " (" << header.total_bytes() << " bytes); "
            << active_->shared.size() << " shared model(s)";
  response.set_message(absl::StrCat("adapted model shared for run ", header.run_id()));
  return response;
}

}  // namespace fedtune::coordinator
