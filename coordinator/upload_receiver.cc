#include "coordinator/upload_receiver.h"

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/net/chunk_receiver.h"
#include "common/status_macros.h"

namespace fedtune::coordinator {
namespace {

// Receives the stream's data from header.offset into the spool file, hashing it as it arrives; returns its
// SHA-256 once the file holds header.total_bytes. What arrived is fsynced also when the stream broke, so that
// GetUploadOffset can resume from it.
absl::StatusOr<std::string> ReceiveInto(const std::string& path, const v1::UploadHeader& header,
                                        const UploadStream& stream, const std::string& upload, int64_t* bytes_up) {
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
  v1::UploadChunk chunk;
  while (status.ok() && stream.read(&chunk)) {
    if (chunk.payload_case() != v1::UploadChunk::kData) {
      status = absl::InvalidArgumentError(absl::StrCat(upload, ": only the first message may carry a header"));
      break;
    }
    status = receiver->Append(receiver->offset(), chunk.data());
    if (status.ok()) *bytes_up += static_cast<int64_t>(chunk.data().size());
  }
  const absl::Status synced = receiver->Sync();
  RETURN_IF_ERROR(status);
  RETURN_IF_ERROR(synced);
  if (stream.cancelled && stream.cancelled()) return absl::CancelledError(absl::StrCat(upload, " cancelled"));
  if (receiver->offset() < header.total_bytes()) {
    return absl::FailedPreconditionError(absl::StrCat(upload, " incomplete: ", receiver->offset(), " of ",
                                                      header.total_bytes(), " bytes received; resume from offset ",
                                                      receiver->offset()));
  }
  return receiver->Digest();
}

}  // namespace

UploadOutcome ReceiveUpload(RoundManager* rounds, const std::string& site_id, const UploadStream& stream) {
  UploadOutcome out;
  v1::UploadChunk first;
  if (!stream.read(&first)) {
    out.result = absl::InvalidArgumentError("upload: empty stream (no header)");
    return out;
  }
  if (first.payload_case() != v1::UploadChunk::kHeader) {
    out.result = absl::InvalidArgumentError("upload: the first message must carry the UploadHeader");
    return out;
  }
  out.header = first.header();
  const v1::UploadHeader& header = out.header;
  absl::StatusOr<UploadTarget> target = rounds->BeginUpload(site_id, header);
  if (!target.ok()) {
    out.result = target.status();
    return out;
  }
  if (target->accepted) {
    v1::UploadResponse response;
    federation::SetStatus(federation::UploadStatus::kAccepted, &response);
    response.set_received_bytes(header.total_bytes());
    response.set_message("accepted before (same payload)");
    out.result = std::move(response);
    return out;
  }
  const std::string upload =
      absl::StrCat("upload of site ", site_id, " for run ", header.run_id(), " round ", header.round());
  absl::StatusOr<std::string> sha256 = ReceiveInto(target->spool_path, header, stream, upload, &out.bytes_up);
  if (!sha256.ok()) {
    out.result = rounds->EndUpload(site_id, header, *target, sha256.status());
    return out;
  }
  out.result = rounds->AcceptUpload(site_id, header, *target, *sha256);
  return out;
}

}  // namespace fedtune::coordinator
