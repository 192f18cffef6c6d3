#include "coordinator/upload_receiver.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace fedtune::coordinator {
namespace {

// A site's adapted model for cross-site evaluation (RoundManager's shared-model intake), not a round's update.
bool IsAdaptedModel(const v1::UploadHeader& header) { return header.kind() == v1::UPLOAD_KIND_ADAPTED_MODEL; }

// The receiver of the spool file: data from header.offset, at most header.total_bytes, hashed as it arrives.
absl::StatusOr<std::unique_ptr<net::ChunkReceiver>> OpenReceiver(const std::string& path,
                                                                 const v1::UploadHeader& header,
                                                                 const std::string& upload) {
  net::ChunkReceiverOptions options;
  options.what = upload;
  options.max_bytes = header.total_bytes();
  options.violation_code = absl::StatusCode::kInvalidArgument;  // The site broke the protocol: refused.
  options.file_mode = 0600;
  // An I/O error of the spool file: logged in full (it names the path), returned to the site without it.
  options.on_io_error = [upload](const absl::Status& error) {
    LOG(ERROR) << upload << ": " << error;
    return absl::InternalError(absl::StrCat(upload, ": the coordinator could not store the payload (",
                                            absl::StatusCodeToString(error.code()), "); try again later"));
  };
  ASSIGN_OR_RETURN(std::unique_ptr<net::ChunkReceiver> receiver, net::ChunkReceiver::Open(path, options));
  absl::Status status = receiver->ResumeAt(header.offset());
  if (status.code() == absl::StatusCode::kFailedPrecondition) {
    return absl::FailedPreconditionError(absl::StrCat(status.message(), ": ask GetUploadOffset"));
  }
  RETURN_IF_ERROR(status);
  return receiver;
}

}  // namespace

UploadSession::UploadSession(RoundManager* rounds, std::string site_id)
    : rounds_(rounds), site_id_(std::move(site_id)) {}

UploadSession::~UploadSession() = default;

bool UploadSession::Take(v1::UploadChunk& chunk) {
  if (settled_ || !status_.ok()) return false;
  if (!target_) {
    // The first message.
    if (chunk.payload_case() != v1::UploadChunk::kHeader) {
      settled_ = absl::InvalidArgumentError("upload: the first message must carry the UploadHeader");
      return false;
    }
    out_.header = chunk.header();
    absl::StatusOr<UploadTarget> target = IsAdaptedModel(out_.header)
                                              ? rounds_->BeginSharedModelUpload(site_id_, out_.header)
                                              : rounds_->BeginUpload(site_id_, out_.header);
    if (!target.ok()) {
      settled_ = target.status();
      return false;
    }
    if (target->accepted) {
      v1::UploadResponse response;
      federation::SetStatus(federation::UploadStatus::kAccepted, &response);
      response.set_received_bytes(out_.header.total_bytes());
      response.set_message("accepted before (same payload)");
      settled_ = std::move(response);
      return false;
    }
    target_ = *std::move(target);
    what_ =
        absl::StrCat("upload of site ", site_id_, " for run ", out_.header.run_id(), " round ", out_.header.round());
    absl::StatusOr<std::unique_ptr<net::ChunkReceiver>> receiver =
        OpenReceiver(target_->spool_path, out_.header, what_);
    if (!receiver.ok()) {
      status_ = receiver.status();
      return false;
    }
    receiver_ = *std::move(receiver);
    return true;
  }
  if (chunk.payload_case() != v1::UploadChunk::kData) {
    status_ = absl::InvalidArgumentError(absl::StrCat(what_, ": only the first message may carry a header"));
    return false;
  }
  status_ = receiver_->Append(receiver_->offset(), chunk.data());
  if (status_.ok()) out_.bytes_up += static_cast<int64_t>(chunk.data().size());
  return status_.ok();
}

void UploadSession::End(bool cancelled) {
  if (settled_) return;
  if (!target_) {
    settled_ = absl::InvalidArgumentError("upload: empty stream (no header)");
    return;
  }
  if (receiver_ != nullptr) {
    const absl::Status synced = receiver_->Sync();
    if (status_.ok()) status_ = synced;
  }
  if (!status_.ok()) return;
  if (cancelled) {
    status_ = absl::CancelledError(absl::StrCat(what_, " cancelled"));
  } else if (receiver_->offset() < out_.header.total_bytes()) {
    status_ = absl::FailedPreconditionError(absl::StrCat(what_, " incomplete: ", receiver_->offset(), " of ",
                                                         out_.header.total_bytes(),
                                                         " bytes received; resume from offset ", receiver_->offset()));
  } else {
    absl::StatusOr<std::string> digest = receiver_->Digest();
    if (digest.ok()) {
      sha256_ = *std::move(digest);
    } else {
      status_ = digest.status();
    }
  }
}

bool UploadSession::NeedsDecode() const { return !settled_ && status_.ok() && sha256_.has_value(); }

UploadOutcome UploadSession::Conclude() {
  receiver_.reset();  // Closes the spool file before the decode reads it, or EndUpload removes it.
  if (settled_) {
    out_.result = *std::move(settled_);
  } else if (!status_.ok()) {
    out_.result = IsAdaptedModel(out_.header) ? rounds_->EndSharedModelUpload(site_id_, out_.header, *target_, status_)
                                              : rounds_->EndUpload(site_id_, out_.header, *target_, status_);
  } else {
    out_.result = IsAdaptedModel(out_.header) ? rounds_->AcceptSharedModel(site_id_, out_.header, *target_, *sha256_)
                                              : rounds_->AcceptUpload(site_id_, out_.header, *target_, *sha256_);
  }
  return std::move(out_);
}

UploadOutcome ReceiveUpload(RoundManager* rounds, const std::string& site_id, const UploadStream& stream) {
  UploadSession session(rounds, site_id);
  v1::UploadChunk chunk;
  while (stream.read(&chunk) && session.Take(chunk)) {
  }
  session.End(stream.cancelled && stream.cancelled());
  return session.Conclude();
}

}  // namespace fedtune::coordinator
