// One UploadUpdate stream taken in, without gRPC: an UploadSession is fed the stream's messages one at a time
// (SiteService's callback reactor as they arrive; ReceiveUpload in a loop for the fuzz harness
// tests/fuzz/upload_fuzz.cc, which drives the same code with message sequences of its own).
//
// Protocol (federation.proto): the first message is the UploadHeader, the others carry data. RoundManager::
// BeginUpload checks the header and claims the spool file; a net::ChunkReceiver writes the data, which starts at
// header.offset, into it from that offset (replacing what followed), at most header.total_bytes in all, and hashes
// it as it arrives. What arrived is fsynced when the stream ends, broken or not, so that GetUploadOffset resumes
// from it. With total_bytes in, RoundManager::AcceptUpload takes the received SHA-256, decodes, validates and
// aggregates; otherwise RoundManager::EndUpload keeps the bytes for a resume, or refuses the upload when the peer
// broke the protocol.
//
// Thread safety: thread-compatible (one session per stream; RoundManager is thread-safe).
#ifndef FEDTUNE_COORDINATOR_UPLOAD_RECEIVER_H_
#define FEDTUNE_COORDINATOR_UPLOAD_RECEIVER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "common/net/chunk_receiver.h"
#include "coordinator/round_manager.h"
#include "fedtune/v1/federation.pb.h"

namespace fedtune::coordinator {

struct UploadOutcome {
  v1::UploadHeader header;  // As received (empty when no header came).
  int64_t bytes_up = 0;     // Payload bytes this stream carried.
  absl::StatusOr<v1::UploadResponse> result;
};

// The receiving side of one upload stream of `site_id` (the authenticated certificate CN).
// Use: Take each message while it returns true; then End once the stream ended (or Take returned false); then, if
// NeedsDecode(), call Conclude where a decode may run (it takes as long as decoding the payload), otherwise at once.
//
// Outcome errors: InvalidArgument for an empty stream, a first message without the header, a header after the first
// message, more data than total_bytes; FailedPrecondition for an offset beyond the bytes held ("ask
// GetUploadOffset") or a stream that ended early ("resume from offset N"); Cancelled; Internal when the spool file
// cannot be written (the detail, with its path, is logged, not returned); RoundManager::BeginUpload's and
// AcceptUpload's errors. No message names a server path.
class UploadSession {
 public:
  // `rounds` must outlive the session.
  UploadSession(RoundManager* rounds, std::string site_id);
  ~UploadSession();
  UploadSession(const UploadSession&) = delete;
  UploadSession& operator=(const UploadSession&) = delete;

  // Takes the next message (its data may be moved from). False when no more messages are wanted: the outcome is
  // settled (a protocol error, a refused header, a payload accepted before).
  bool Take(v1::UploadChunk& chunk);
  // The stream ended (`cancelled`: by cancellation). Syncs what arrived. Call once, after the last Take.
  void End(bool cancelled);
  // After End: true when the whole payload arrived and Conclude will decode it.
  bool NeedsDecode() const;
  // After End: the outcome (AcceptUpload when NeedsDecode, else EndUpload's or the protocol's). Call once.
  UploadOutcome Conclude();

 private:
  RoundManager* const rounds_;
  const std::string site_id_;
  UploadOutcome out_;
  std::string what_;                    // "upload of site S for run R round N" once the header came.
  std::optional<UploadTarget> target_;  // Claimed by BeginUpload (not for a payload accepted before).
  std::unique_ptr<net::ChunkReceiver> receiver_;
  absl::Status status_;                                        // First error of the stream (OK while receiving).
  std::optional<absl::StatusOr<v1::UploadResponse>> settled_;  // The outcome, when known before End.
  std::optional<std::string> sha256_;                          // The received payload's digest when it is complete.
};

// A whole stream through an UploadSession: `read` gives the next message (false at the end of the stream:
// half-close, cancellation, broken connection); `cancelled` (may be empty) is asked once the reads ended.
struct UploadStream {
  std::function<bool(v1::UploadChunk*)> read;  // Required.
  std::function<bool()> cancelled;             // Default: never.
};
UploadOutcome ReceiveUpload(RoundManager* rounds, const std::string& site_id, const UploadStream& stream);

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_UPLOAD_RECEIVER_H_
