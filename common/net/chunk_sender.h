// The sending side of a chunked, resumable transfer from a file, independent of the RPC that carries the chunks:
// the site agent's UploadUpdate (its weight delta), the coordinator's DownloadModel and ExportModel (a model blob)
// hand each chunk to a ChunkWriter that wraps it in their stream's message.
//
// The receiving side is chunk_receiver.h; the protocol's chunks are kMinChunkBytes to kMaxChunkBytes.
//
// Thread safety: thread-compatible (one sender per stream); ClampChunkBytes is reentrant.
#ifndef FEDTUNE_COMMON_NET_CHUNK_SENDER_H_
#define FEDTUNE_COMMON_NET_CHUNK_SENDER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fedtune::net {

inline constexpr int kMinChunkBytes = 1 << 10;
inline constexpr int kMaxChunkBytes = 4 << 20;

// `bytes` clamped to [kMinChunkBytes, kMaxChunkBytes].
int ClampChunkBytes(int64_t bytes);

// Hands one chunk, the payload's bytes from `offset` (valid during the call only), to the stream. Returns false
// when the stream is broken (gRPC's Write); the stream's own status then says why.
using ChunkWriter = std::function<bool(int64_t offset, absl::string_view data)>;

struct ChunkSenderOptions {
  // Bytes per chunk (the last one may be shorter), clamped with ClampChunkBytes. Default 1 MiB.
  int chunk_bytes = 1 << 20;
  // Asked before each chunk; true stops the transfer (Cancelled). Default: never.
  std::function<bool()> cancelled;
};

struct SendResult {
  int64_t sent = 0;     // Payload bytes the writer took.
  bool broken = false;  // The writer refused a chunk (status is OK then: the stream's status says why).
  // OK when every byte was sent or the stream broke; Cancelled ("cancelled at byte N"); DataLoss when the file
  // ended early (it shrank after Open); the read's I/O error naming the path.
  absl::Status status;
};

class ChunkSender {
 public:
  // Opens the file at `path` to send it. I/O errors naming the path (NotFound for a missing file).
  static absl::StatusOr<std::unique_ptr<ChunkSender>> Open(const std::string& path);
  ~ChunkSender();
  ChunkSender(const ChunkSender&) = delete;
  ChunkSender& operator=(const ChunkSender&) = delete;

  // The file's size when it was opened.
  int64_t size() const { return size_; }

  // Sends the bytes [offset, size()) in chunks through `write`. OutOfRange (status) when offset is outside
  // [0, size()); see SendResult.
  SendResult Send(int64_t offset, const ChunkSenderOptions& options, const ChunkWriter& write);

  // Pull form, for senders that write one chunk at a time (gRPC's callback API): reads the chunk of at most
  // ClampChunkBytes(chunk_bytes) bytes at `offset` into *buffer (resized to what was read). Returns the bytes read,
  // 0 when offset == size(). OutOfRange when offset is outside [0, size()); DataLoss when the file ended early (it
  // shrank after Open); the read's I/O error naming the path.
  absl::StatusOr<int64_t> ReadChunk(int64_t offset, int chunk_bytes, std::string* buffer);

 private:
  ChunkSender(int fd, std::string path, int64_t size) : fd_(fd), path_(std::move(path)), size_(size) {}

  int fd_;
  const std::string path_;
  const int64_t size_;
};

}  // namespace fedtune::net

#endif  // FEDTUNE_COMMON_NET_CHUNK_SENDER_H_
