// One UploadUpdate stream taken in, without gRPC: SiteServiceImpl::UploadUpdate hands it the stream's messages,
// and the fuzz harness tests/fuzz/upload_fuzz.cc drives the same code with message sequences of its own.
//
// Protocol (federation.proto): the first message is the UploadHeader, the others carry data. RoundManager::
// BeginUpload checks the header and claims the spool file; a net::ChunkReceiver writes the data, which starts at
// header.offset, into it from that offset (replacing what followed), at most header.total_bytes in all, and hashes
// it as it arrives. What arrived is fsynced when the stream ends, broken or not, so that GetUploadOffset resumes
// from it. With total_bytes in, RoundManager::AcceptUpload takes the received SHA-256, decodes, validates and
// aggregates; otherwise RoundManager::EndUpload keeps the bytes for a resume, or refuses the upload when the peer
// broke the protocol.
//
// Thread safety: reentrant (RoundManager is thread-safe; one stream per call).
#ifndef FEDTUNE_COORDINATOR_UPLOAD_RECEIVER_H_
#define FEDTUNE_COORDINATOR_UPLOAD_RECEIVER_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/round_manager.h"
#include "fedtune/v1/federation.pb.h"

namespace fedtune::coordinator {

struct UploadStream {
  // Reads the next message into *chunk; false at the end of the stream (half-close, cancellation, broken
  // connection). Required.
  std::function<bool(v1::UploadChunk*)> read;
  // True when the stream was cancelled; asked once the reads ended. Default: never.
  std::function<bool()> cancelled;
};

struct UploadOutcome {
  v1::UploadHeader header;  // As received (empty when no header came).
  int64_t bytes_up = 0;     // Payload bytes this stream carried.
  absl::StatusOr<v1::UploadResponse> result;
};

// Receives the upload `stream` of `site_id` (the authenticated certificate CN). result errors: InvalidArgument for
// an empty stream, a first message without the header, a header after the first message, more data than
// total_bytes; FailedPrecondition for an offset beyond the bytes held ("ask GetUploadOffset") or a stream that
// ended early ("resume from offset N"); Cancelled; Internal when the spool file cannot be written (the detail, with
// its path, is logged, not returned); RoundManager::BeginUpload's and AcceptUpload's errors. No message names a
// server path.
UploadOutcome ReceiveUpload(RoundManager* rounds, const std::string& site_id, const UploadStream& stream);

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_UPLOAD_RECEIVER_H_
