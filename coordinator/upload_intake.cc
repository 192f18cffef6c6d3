// RoundManager's upload intake (see round_manager.h): where an upload goes (PrepareUpload), the claim of a stream
// and the limits on partial uploads (BeginUpload, EndUpload), and acceptance (AcceptUpload: the SHA-256 the
// receiver computed, decoding against the round's global model, validation, the aggregator, the update record).
// Each upload is prepared once, by BeginUpload; AcceptUpload only checks that its round is still open, before the
// delta is validated (without the lock) and again before it is added. The delta is never whole in memory: a first
// pass over the spool file decodes and validates it tensor by tensor (UpdateValidator: names, shapes, dtypes,
// finite values, the norm bound), a second one decodes it again and adds it to the aggregator tensor by tensor
// (Aggregator::AddFrom), under the lock, so that no one sees a half-added delta; a refused delta never reaches the
// aggregator.
#include <cmath>
#include <memory>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/federation/states.h"
#include "common/fl/bundle_file.h"
#include "common/fl/encoding.h"
#include "common/fl/validate.h"
#include "common/io/sha256.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "coordinator/coordinator_metrics.h"
#include "coordinator/round_manager.h"

namespace fedtune::coordinator {

using federation::RunState;
using federation::UploadStatus;
namespace {

// InvalidArgument naming the field of an UploadHeader outside its range.
absl::Status CheckUploadHeader(const v1::UploadHeader& header, int64_t max_upload_bytes) {
  if (header.total_bytes() < 1 || header.total_bytes() > max_upload_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("upload: total_bytes ", header.total_bytes(), " is outside [1, ",
                                                   max_upload_bytes, "] (max_upload_bytes)"));
  }
  if (header.offset() < 0 || header.offset() > header.total_bytes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("upload: offset ", header.offset(), " is outside [0, total_bytes ", header.total_bytes(), "]"));
  }
  if (header.num_samples() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("upload: num_samples ", header.num_samples(), " must be > 0"));
  }
  if (!std::isfinite(header.train_loss()) || !std::isfinite(header.validation_loss())) {
    return absl::InvalidArgumentError(absl::StrCat("upload: train_loss ", header.train_loss(), " and validation_loss ",
                                                   header.validation_loss(), " must be finite"));
  }
  // MASKED_UINT32: a secure-aggregation upload (a masked vector, read by the session's rules in AcceptUpload).
  if (header.delta_encoding() == v1::NamedTensor::MASKED_UINT32) return absl::OkStatus();
  if (absl::StatusOr<std::optional<fl::Encoding>> encoding = fl::GetEncoding(header); !encoding.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("upload: ", encoding.status().message()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<UploadTarget> RoundManager::PrepareUploadLocked(const std::string& site_id, const std::string& run_id,
                                                               int round, const std::string& sha256) {
  if (!io::IsSha256Hex(sha256)) {
    return absl::InvalidArgumentError(absl::StrCat("sha256 '", sha256, "' is not 64 lowercase hex digits"));
  }
  if (round < 1) return absl::InvalidArgumentError(absl::StrCat("round ", round, " must be >= 1 (run ", run_id, ")"));
  ASSIGN_OR_RETURN(RunRecord run, store_->GetRun(run_id));
  if (std::find(run.sites.begin(), run.sites.end(), site_id) == run.sites.end()) {
    return absl::PermissionDeniedError(absl::StrCat("site ", site_id, " is not selected for run ", run_id));
  }
  RETURN_IF_ERROR(CheckRound(round, 1, run));
  ASSIGN_OR_RETURN(std::vector<UpdateRecord> mine,
                   store_->ListUpdates(run_id, round, std::nullopt, site_id, UploadStatus::kAccepted));
  for (const UpdateRecord& u : mine) {
    if (u.sha256 == sha256) {
      UploadTarget target;
      target.accepted = true;
      target.attempt = u.attempt;
      return target;
    }
  }
  if (!active_ || active_->run.run_id != run_id || active_->run.state != RunState::kRunning ||
      active_->round.round != round) {
    return absl::FailedPreconditionError(
        absl::StrCat("run ", run_id, " round ", round, " is not open (run ", federation::Text(run.state),
                     run.state == RunState::kRunning ? absl::StrCat(", current round ", run.current_round) : "", ")"));
  }
  for (const UpdateRecord& u : mine) {
    if (u.attempt == active_->round.attempt) {
      return absl::AlreadyExistsError(absl::StrCat("site ", site_id, " already has an accepted update for run ", run_id,
                                                   " round ", round, " (sha256 ", u.sha256, ")"));
    }
  }
  if (active_->declined.count(site_id) > 0) {
    return absl::FailedPreconditionError(absl::StrCat("site ", site_id, " declined run ", run_id, " round ", round,
                                                      " attempt ", active_->round.attempt, ": no update is taken"));
  }
  UploadTarget target;
  target.attempt = active_->round.attempt;
  target.spool_path = spool_.PathOf(run_id, round, target.attempt, site_id, sha256);
  return target;
}

absl::StatusOr<UploadTarget> RoundManager::PrepareUpload(const std::string& site_id, const std::string& run_id,
                                                         int round, const std::string& sha256) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(UploadTarget target, PrepareUploadLocked(site_id, run_id, round, sha256));
  if (!target.accepted) RETURN_IF_ERROR(spool_.MakeRunDir(run_id));
  return target;
}

void RoundManager::DropPartialLocked(const std::string& path) {
  SpoolDir::Remove(path);
  if (active_) active_->partials.erase(path);
}

void RoundManager::SupersedeLocked(const std::string& site_id, const std::string& keep_path) {
  if (!active_) return;
  std::vector<std::string> drop;
  for (auto& [path, partial] : active_->partials) {
    if (partial.site_id != site_id || path == keep_path) continue;
    if (receiving_.count(path) > 0) {
      partial.superseded = true;  // Its stream removes it when it ends.
    } else {
      drop.push_back(path);
    }
  }
  for (const std::string& path : drop) {
    LOG(INFO) << "site " << site_id << " superseded its partial upload " << path;
    DropPartialLocked(path);
  }
}

absl::StatusOr<UploadTarget> RoundManager::BeginUpload(const std::string& site_id, const v1::UploadHeader& header) {
  RETURN_IF_ERROR(CheckUploadHeader(header, options_.max_upload_bytes));
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(UploadTarget target, PrepareUploadLocked(site_id, header.run_id(), header.round(), header.sha256()));
  if (target.accepted) return target;
  const std::string& path = target.spool_path;
  if (receiving_.count(path) > 0) {
    return absl::AbortedError(absl::StrCat("another upload of this payload by site ", site_id, " for run ",
                                           header.run_id(), " round ", header.round(), " is in progress"));
  }
  const absl::Status over = CheckSpoolLimitsLocked(site_id, header, path);
  if (!over.ok()) {
    DropPartialLocked(path);
    absl::Status recorded = RecordRefusal(site_id, header, target.attempt, over);
    if (!recorded.ok()) LOG(ERROR) << "recording the refusal of an upload of site " << site_id << ": " << recorded;
    LOG(WARNING) << "refused an upload: " << over;
    return over;
  }
  RETURN_IF_ERROR(spool_.MakeRunDir(header.run_id()));
  SupersedeLocked(site_id, path);
  active_->partials[path] = ActiveRun::Partial{site_id, header.total_bytes(), false};
  receiving_.insert(path);
  target.claimed = true;
  return target;
}

absl::Status RoundManager::CheckSpoolLimitsLocked(const std::string& site_id, const v1::UploadHeader& header,
                                                  const std::string& path) {
  // What this upload would make of the limits: its own earlier bytes (a resume) count once, at total_bytes; the
  // site's idle partial uploads of other payloads are superseded by it, so they do not count.
  int open = 1;
  int64_t site_bytes = header.total_bytes();
  int64_t round_bytes = header.total_bytes();
  for (const auto& [other, partial] : active_->partials) {
    if (other == path || (partial.site_id == site_id && receiving_.count(other) == 0)) continue;
    round_bytes += partial.bytes;
    if (partial.site_id == site_id) {
      ++open;
      site_bytes += partial.bytes;
    }
  }
  const std::string where = absl::StrCat("site ", site_id, " run ", header.run_id(), " round ", header.round());
  absl::Status over;
  if (open > options_.max_open_uploads_per_site) {
    over = absl::ResourceExhaustedError(absl::StrCat(where, ": ", open, " partial uploads at once would exceed ",
                                                     "max_open_uploads_per_site ", options_.max_open_uploads_per_site,
                                                     "; finish or abandon the one in progress"));
  } else if (site_bytes > options_.max_spool_bytes_per_site) {
    over = absl::ResourceExhaustedError(absl::StrCat(where, ": ", site_bytes,
                                                     " bytes of partial uploads would exceed max_spool_bytes_per_site ",
                                                     options_.max_spool_bytes_per_site));
  } else if (round_bytes > options_.max_spool_bytes_per_round) {
    over = absl::ResourceExhaustedError(
        absl::StrCat(where, ": the round's partial uploads (", round_bytes, " bytes with this one) would exceed ",
                     "max_spool_bytes_per_round ", options_.max_spool_bytes_per_round, "; retry later"));
  }
  return over;
}

absl::Status RoundManager::EndUpload(const std::string& site_id, const v1::UploadHeader& header,
                                     const UploadTarget& target, absl::Status why) {
  if (!target.claimed) return why;
  absl::MutexLock lock(&mu_);
  receiving_.erase(target.spool_path);
  const bool open_attempt = active_ && active_->IsOpenAttempt(header.run_id(), header.round(), target.attempt);
  if (why.code() == absl::StatusCode::kInvalidArgument && open_attempt) {
    DropPartialLocked(target.spool_path);
    absl::Status recorded = RecordRefusal(site_id, header, target.attempt, why);
    if (!recorded.ok()) LOG(ERROR) << "recording the refusal of an upload of site " << site_id << ": " << recorded;
    LOG(WARNING) << "refused an upload of site " << site_id << " for run " << header.run_id() << " round "
                 << header.round() << ": " << why;
    return why;
  }
  bool keep = false;
  if (open_attempt) {
    auto it = active_->partials.find(target.spool_path);
    keep = it != active_->partials.end() && !it->second.superseded && SpoolDir::SizeOf(target.spool_path) > 0;
  }
  if (!keep) DropPartialLocked(target.spool_path);  // Nothing worth resuming.
  return why;
}

absl::Status RoundManager::RecordRefusal(const std::string& site_id, const v1::UploadHeader& header, int attempt,
                                         const absl::Status& why) {
  UpdateRecord u;
  u.run_id = header.run_id();
  u.round = header.round();
  u.attempt = attempt;
  u.site_id = site_id;
  u.sha256 = header.sha256();
  u.bytes = header.total_bytes();
  u.num_samples = header.num_samples();
  u.train_loss = std::isfinite(header.train_loss()) ? header.train_loss() : 0;
  u.validation_loss = std::isfinite(header.validation_loss()) ? header.validation_loss() : 0;
  u.status = UploadStatus::kRefused;
  u.message = absl::StrCat(absl::StatusCodeToString(why.code()), ": ", why.message());
  u.received_ms = NowMs();
  RETURN_IF_ERROR(store_->InsertUpdate(u).status());
  if (options_.metrics != nullptr) options_.metrics->UploadResult(site_id, federation::Text(UploadStatus::kRefused));
  return absl::OkStatus();
}

absl::StatusOr<v1::UploadResponse> RoundManager::AcceptUpload(const std::string& site_id,
                                                              const v1::UploadHeader& header,
                                                              const UploadTarget& target,
                                                              const std::string& received_sha256) {
  // Decoded on a worker thread: its lines (accepted, refused, the round it closes) name the site, run and round.
  const ScopedLogContext log_context(site_id, header.run_id(), header.round());
  const std::string what =
      absl::StrCat("update from ", site_id, " for run ", header.run_id(), " round ", header.round());
  // A claim of BeginUpload ends here, whatever the outcome.
  absl::Cleanup release = [&] {
    if (!target.claimed) return;
    absl::MutexLock lock(&mu_);
    receiving_.erase(target.spool_path);
  };
  // Every refusal: the spool file goes, the refusal is recorded. Called without mu_.
  auto refuse = [&](absl::Status why) -> absl::Status {
    {
      absl::MutexLock lock(&mu_);
      DropPartialLocked(target.spool_path);
    }
    absl::Status recorded = RecordRefusal(site_id, header, target.attempt, why);
    if (!recorded.ok()) LOG(ERROR) << "recording the refusal of the " << what << ": " << recorded;
    LOG(WARNING) << "refused " << what << ": " << why;
    return why;
  };
  if (header.num_samples() <= 0) {
    return refuse(
        absl::InvalidArgumentError(absl::StrCat(what, ": num_samples ", header.num_samples(), " must be > 0")));
  }
  if (received_sha256 != header.sha256()) {
    return refuse(absl::DataLossError(absl::StrCat(
        what, ": tampered or corrupt payload: the SHA-256 of the ", header.total_bytes(), " bytes received is ",
        received_sha256, " but the header says ", header.sha256(), "; the received data was discarded")));
  }
  absl::MutexLock decode_lock(&decode_mu_);
  // The round as the delta is decoded against it; the lock is not held while decoding.
  std::shared_ptr<const fl::TensorMap> global;
  double max_norm = 0;
  absl::StatusOr<bool> accepted_before;
  const SecAggSession* session = nullptr;  // A secure-aggregation attempt's: the payload is a masked vector.
  bool secure_aggregation = false;
  int64_t masked_length = 0;
  {
    absl::MutexLock lock(&mu_);
    accepted_before = CheckStillOpenLocked(site_id, header, target, what);
    if (accepted_before.ok() && !*accepted_before) {
      global = active_->global;
      max_norm = active_->run.config.max_update_norm();
      secure_aggregation = active_->secure_aggregation();
      session = active_->secagg.get();
      masked_length = active_->secagg_vector_length;
    }
  }
  if (!accepted_before.ok()) return refuse(accepted_before.status());
  if (*accepted_before) {
    v1::UploadResponse response;
    federation::SetStatus(UploadStatus::kAccepted, &response);
    response.set_message("accepted before (same payload)");
    return response;
  }
  if (secure_aggregation) {
    if (session == nullptr) {
      return refuse(absl::FailedPreconditionError(
          absl::StrCat(what, ": the attempt's secure aggregation did not start; the attempt fails")));
    }
    absl::StatusOr<std::vector<uint32_t>> masked = ReadMaskedUpload(target, masked_length, what);
    if (!masked.ok()) return refuse(masked.status());
    std::optional<absl::StatusOr<v1::UploadResponse>> added;
    {
      absl::MutexLock lock(&mu_);
      added = AcceptMaskedLocked(site_id, header, target, session, *masked, what);
    }
    if (added->ok()) return *std::move(added);
    return refuse(added->status());
  }
  absl::StatusOr<ValidatedDelta> delta = DecodeAndValidate(site_id, header, target, *global, max_norm, what);
  if (!delta.ok()) {
    ReleaseFreeMemory();
    return refuse(delta.status());
  }
  absl::Status refused;
  std::optional<absl::StatusOr<v1::UploadResponse>> accepted;
  {
    absl::MutexLock lock(&mu_);
    if (!active_ || !active_->IsOpenAttempt(header.run_id(), header.round(), target.attempt) ||
        active_->accepted.count(site_id) > 0 || active_->global != global) {
      refused = absl::FailedPreconditionError(absl::StrCat(what, ": the round changed while it was validated"));
    } else if (active_->declined.count(site_id) > 0) {
      refused = absl::FailedPreconditionError(absl::StrCat(what, ": site ", site_id, " declined attempt ",
                                                           target.attempt, " meanwhile: no update is taken"));
    } else if (absl::Status added =
                   active_->AddUpdateFile(target.spool_path, header.num_samples(), delta->l2_norm, what);
               !added.ok()) {
      // Validated above: only a read error gets here. A FedAvg sum that holds part of this delta cannot take it
      // out: rebuild it from the recorded updates.
      LOG(ERROR) << "adding the " << what << ": " << added;
      if (active_->aggregator->damaged()) {
        absl::Status rebuilt = RebuildAggregatorLocked();
        if (!rebuilt.ok()) LOG(ERROR) << "rebuilding the aggregator of run " << header.run_id() << ": " << rebuilt;
      }
      refused = absl::InternalError(
          absl::StrCat(what, ": the received payload could not be read back on the coordinator; upload it again"));
    } else {
      accepted = RecordAcceptedLocked(site_id, header, target, delta->l2_norm, what);
    }
  }
  ReleaseFreeMemory();  // The decode's buffers (and a close's), outside the lock.
  if (accepted.has_value()) return *std::move(accepted);
  return refuse(refused);
}

absl::StatusOr<RoundManager::ValidatedDelta> RoundManager::DecodeAndValidate(const std::string& site_id,
                                                                             const v1::UploadHeader& header,
                                                                             const UploadTarget& target,
                                                                             const fl::TensorMap& global,
                                                                             double max_norm, const std::string& what) {
  // Tensor by tensor: one decoded tensor in memory at a time, nothing of it kept (the add pass decodes again).
  fl::ValidationOptions validation;
  validation.max_l2_norm = max_norm;
  fl::UpdateValidator validator(global, validation, what);
  // A run whose personalization keeps tensors at the sites (FEDBN, SILOBN) takes partial bundles: `global` holds its
  // shared tensors only, and a delta that carries a kept one is refused, saying why.
  std::set<std::string> kept_local;
  v1::Personalization personalization = v1::PERSONALIZATION_NONE;
  {
    absl::MutexLock lock(&mu_);
    if (active_ && active_->global.get() == &global) {
      kept_local = active_->kept_local;
      personalization = active_->personalization;
    }
  }
  const auto explain = [&](const std::string& name) -> absl::Status {
    if (kept_local.count(name) == 0) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", name, "' is a BatchNorm tensor that must stay at the site under personalization ",
                     federation::Text(personalization), "; an update of this run carries exactly its ", global.size(),
                     " shared tensors"));
  };
  absl::Status invalid;  // The validator's refusal: it names the update, not the file.
  const absl::Status read = fl::ForEachDecodedTensorInFile(
      target.spool_path, &global,
      [&](const std::string& name, at::Tensor tensor) {
        invalid = validator.Add(name, tensor);
        return invalid;
      },
      explain);
  if (!invalid.ok()) return invalid;
  if (!read.ok()) {
    // The decoder names the file; the site is told about its payload only.
    const std::string detail =
        absl::StrReplaceAll(read.message(), {{target.spool_path + ": ", ""}, {target.spool_path, "payload"}});
    if (read.code() != absl::StatusCode::kInvalidArgument) {
      LOG(ERROR) << "decoding the payload of the " << what << ": " << read;
      // The round itself may say why (it closed and its spool files went); otherwise an I/O problem.
      absl::MutexLock lock(&mu_);
      absl::StatusOr<bool> open = CheckStillOpenLocked(site_id, header, target, what);
      if (!open.ok()) return open.status();
      return absl::InternalError(
          absl::StrCat(what, ": the received payload could not be read back on the coordinator; upload it again"));
    }
    return absl::Status(read.code(), absl::StrCat(what, ": ", detail));
  }
  ASSIGN_OR_RETURN(fl::UpdateSummary summary, validator.Finish());
  return ValidatedDelta{summary.l2_norm};
}

absl::StatusOr<bool> RoundManager::CheckStillOpenLocked(const std::string& site_id, const v1::UploadHeader& header,
                                                        const UploadTarget& target, const std::string& what) {
  if (active_ && active_->run.run_id == header.run_id() && active_->run.state == RunState::kRunning &&
      active_->round.round == header.round() && active_->round.attempt != target.attempt) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": attempt ", target.attempt, " ended while the upload was received"));
  }
  if (!active_ || !active_->IsOpenAttempt(header.run_id(), header.round(), target.attempt)) {
    absl::StatusOr<RunRecord> run = store_->GetRun(header.run_id());
    if (!run.ok()) return run.status();
    return absl::FailedPreconditionError(absl::StrCat(
        "run ", header.run_id(), " round ", header.round(), " is not open (run ", federation::Text(run->state),
        run->state == RunState::kRunning ? absl::StrCat(", current round ", run->current_round) : "", ")"));
  }
  auto accepted = active_->accepted.find(site_id);
  if (accepted == active_->accepted.end()) return false;
  if (accepted->second == header.sha256()) return true;  // Accepted meanwhile through another stream.
  return absl::AlreadyExistsError(absl::StrCat("site ", site_id, " already has an accepted update for run ",
                                               header.run_id(), " round ", header.round(), " (sha256 ",
                                               accepted->second, ")"));
}

absl::StatusOr<v1::UploadResponse> RoundManager::RecordAcceptedLocked(const std::string& site_id,
                                                                      const v1::UploadHeader& header,
                                                                      const UploadTarget& target, double l2_norm,
                                                                      const std::string& what) {
  UpdateRecord u;
  u.run_id = header.run_id();
  u.round = header.round();
  u.attempt = target.attempt;
  u.site_id = site_id;
  u.sha256 = header.sha256();
  u.bytes = header.total_bytes();
  u.num_samples = header.num_samples();
  u.l2_norm = l2_norm;
  u.train_loss = header.train_loss();
  u.validation_loss = header.validation_loss();
  u.status = UploadStatus::kAccepted;
  u.message = active_->secure_aggregation() ? "masked vector (secure aggregation): its norm is hidden"
                                            : absl::StrCat("norm ", l2_norm);
  u.spool_path = target.spool_path;
  u.received_ms = NowMs();
  absl::StatusOr<int64_t> inserted = store_->InsertUpdate(u);
  if (!inserted.ok()) {
    // The aggregator holds the delta but the database does not: rebuild it from the recorded updates. The spool
    // file stays (GetUploadOffset: complete), so the site's next attempt goes straight to acceptance.
    absl::Status rebuilt = RebuildAggregatorLocked();
    if (!rebuilt.ok()) LOG(ERROR) << "rebuilding the aggregator of run " << u.run_id << ": " << rebuilt;
    LOG(ERROR) << "recording the " << what << ": " << inserted.status();
    return absl::InternalError(absl::StrCat(what, ": the coordinator could not record it; upload it again"));
  }
  active_->accepted[site_id] = header.sha256();
  if (options_.metrics != nullptr) options_.metrics->UploadResult(site_id, federation::Text(UploadStatus::kAccepted));
  active_->partials.erase(target.spool_path);  // Accepted: no longer a partial upload.
  SupersedeLocked(site_id, target.spool_path);
  LOG(INFO) << "accepted " << what << " attempt " << target.attempt << ": " << u.num_samples << " samples, norm "
            << u.l2_norm << " (" << active_->accepted.size() << "/" << active_->run.sites.size() << ")";
  v1::UploadResponse response;
  federation::SetStatus(UploadStatus::kAccepted, &response);
  response.set_received_bytes(u.bytes);
  response.set_l2_norm(u.l2_norm);
  response.set_message(absl::StrCat("accepted for run ", u.run_id, " round ", u.round));
  absl::Status closed = MaybeCloseLocked();
  if (!closed.ok()) LOG(ERROR) << "closing run " << u.run_id << " round " << u.round << ": " << closed;
  task_cv_.SignalAll();
  return response;
}

}  // namespace fedtune::coordinator
