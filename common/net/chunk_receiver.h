// The receiving side of a chunked, resumable transfer into a file, independent of the RPC that carries the chunks:
// the coordinator's UploadUpdate (a site's weight delta into a spool file), the site agent's DownloadModel and the
// operator CLI's ExportModel (a model into a .part file) all feed their stream's messages to a ChunkReceiver.
//
// The payload is written from an offset (ResumeAt: what the file held beyond it is discarded) and its SHA-256 is
// computed while the bytes arrive, so the received file is never read again to hash it. Only bytes held from an
// earlier stream of another receiver (a resume after a restart, or at an earlier offset) are read, once, at ResumeAt.
// Limits: the payload's size (options.max_bytes, or the total a download announces) and the size of one chunk.
//
// Thread safety: thread-compatible (one receiver per stream).
#ifndef FEDTUNE_COMMON_NET_CHUNK_RECEIVER_H_
#define FEDTUNE_COMMON_NET_CHUNK_RECEIVER_H_

#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/io/sha256.h"
#include "common/net/chunk_sender.h"

namespace fedtune::net {

struct ChunkReceiverOptions {
  // Names the payload in messages, e.g. "upload of site s1 for run r round 2". Default "transfer".
  std::string what = "transfer";
  // The payload's size limit: a chunk that would end beyond it is refused. Default: no limit.
  int64_t max_bytes = std::numeric_limits<int64_t>::max();
  // The largest chunk taken. Default kMaxChunkBytes (the protocol's chunks are 1 KiB to 4 MiB).
  int64_t max_chunk_bytes = kMaxChunkBytes;
  // The code of a chunk that breaks the protocol (wrong offset, beyond the limits, inconsistent announcements):
  // DataLoss (default) for data from the coordinator, InvalidArgument for a site's upload (the peer's fault).
  absl::StatusCode violation_code = absl::StatusCode::kDataLoss;
  // Mode of a file the receiver creates. Default 0644.
  int file_mode = 0644;
  // Maps an I/O error of the file (which names its path) to the status returned. Default: returned as it is. The
  // coordinator logs it and returns a message without the path.
  std::function<absl::Status(absl::Status)> on_io_error;
};

class ChunkReceiver {
 public:
  // Opens (creating) the file at `path`, positioned at its end; nothing is hashed yet. I/O errors (on_io_error).
  static absl::StatusOr<std::unique_ptr<ChunkReceiver>> Open(const std::string& path, ChunkReceiverOptions options);
  ~ChunkReceiver();
  ChunkReceiver(const ChunkReceiver&) = delete;
  ChunkReceiver& operator=(const ChunkReceiver&) = delete;

  // The bytes the file holds now: where the next chunk must start. -1 after a failed write, until ResumeAt.
  int64_t offset() const { return held_; }

  // Continues the payload at `offset`: what the file holds beyond it is discarded, and bytes [0, offset) that this
  // receiver has not hashed yet are read and hashed. FailedPrecondition naming what and both offsets when the
  // file holds fewer than `offset` bytes; I/O errors (on_io_error).
  absl::Status ResumeAt(int64_t offset);
  // ResumeAt(what the file holds).
  absl::Status ResumeAtEnd();

  // Appends one chunk that starts at payload offset `at`. options.violation_code naming what when `at` is not
  // offset(), the chunk is larger than max_chunk_bytes or would end beyond max_bytes (or the announced total);
  // I/O errors (on_io_error), after which offset() is -1.
  absl::Status Append(int64_t at, absl::string_view data);
  // Append for a chunk that also announces the payload's total size and SHA-256 (each chunk of a model download
  // does): violation_code when total_bytes < 1, sha256 is not 64 lowercase hex digits or does not start with
  // `expected_sha256_prefix`, or either differs from what an earlier chunk of this receiver announced.
  absl::Status AppendAnnounced(int64_t at, absl::string_view data, int64_t total_bytes, absl::string_view sha256,
                               absl::string_view expected_sha256_prefix);

  // What the chunks announced (AppendAnnounced): the total (-1 before the first) and the SHA-256 ("" before).
  int64_t announced_total() const { return announced_total_; }
  const std::string& announced_sha256() const { return announced_sha256_; }
  // Forgets the announcements (a payload begun again from offset 0 may be another one).
  void ClearAnnouncements();

  // fsyncs the file: what arrived is durable (for a resume). I/O errors (on_io_error).
  absl::Status Sync();
  // The SHA-256 (hex) of the payload's bytes [0, offset()), from the running digest (the held bytes are read only
  // when it does not cover them). Consumes the running digest: a later call or Append reads the held bytes again.
  // FailedPrecondition after a failed write; I/O errors (on_io_error).
  absl::StatusOr<std::string> Digest();

 private:
  ChunkReceiver(int fd, std::string path, ChunkReceiverOptions options);
  absl::Status IoError(int err, const char* what) const;
  absl::Status MapIo(absl::Status error) const;
  absl::Status Violation(const std::string& message) const;
  // Reads and hashes bytes [hashed_, offset) of the file.
  absl::Status HashHeld(int64_t offset);
  // Makes hash_ cover [0, held_), reading what it lacks (from the start when it covers more or nothing valid).
  absl::Status CatchUpHash();

  int fd_;
  const std::string path_;
  const ChunkReceiverOptions options_;
  int64_t held_ = 0;     // The file's size.
  int64_t flushed_ = 0;  // Bytes whose writeback was started (sync_file_range), every kWritebackBytes.
  static constexpr int64_t kWritebackBytes = 8 << 20;
  int64_t hashed_ = 0;  // hash_ covers the bytes [0, hashed_); -1: nothing valid (after Digest, a failed write).
  io::Sha256 hash_;
  int64_t announced_total_ = -1;
  std::string announced_sha256_;
};

}  // namespace fedtune::net

#endif  // FEDTUNE_COMMON_NET_CHUNK_RECEIVER_H_
