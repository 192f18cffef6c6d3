// A model version's blob as v1::Chunk messages (offset, data, total_bytes, sha256 of the whole file), read one
// chunk at a time through a net::ChunkSender: the source of SiteService::DownloadModel (sites) and
// AdminService::ExportModel (operators), which send it with a ModelWriteReactor (model_write_reactor.h).
//
// Thread safety: reentrant (one ModelStream per call).
#ifndef FEDTUNE_COORDINATOR_MODEL_STREAM_H_
#define FEDTUNE_COORDINATOR_MODEL_STREAM_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/net/chunk_sender.h"
#include "coordinator/blob_store.h"
#include "fedtune/v1/federation.pb.h"

namespace fedtune::coordinator {

class ModelStream {
 public:
  // Opens the blob of model version `digest` (known to the database) to send it from `offset`. DataLoss naming
  // the digest when the blob is missing (its path is logged, not returned); OutOfRange when offset is outside
  // [0, the blob's size].
  static absl::StatusOr<ModelStream> Open(const BlobStore& blobs, const std::string& digest, int64_t offset);

  // Fills *chunk with the next chunk (offset, at most ClampChunkBytes(chunk_bytes) bytes of data, total_bytes,
  // sha256 = the digest) and advances. Returns false when everything was sent (*chunk untouched). DataLoss when the
  // blob cannot be read (logged with its path, not returned). The chunk's data buffer is reused from call to call.
  absl::StatusOr<bool> Next(int chunk_bytes, v1::Chunk* chunk);

  // Payload bytes handed out by Next so far.
  int64_t sent() const { return sent_; }
  int64_t total_bytes() const { return sender_->size(); }

 private:
  ModelStream(std::unique_ptr<net::ChunkSender> sender, std::string digest, int64_t offset)
      : sender_(std::move(sender)), digest_(std::move(digest)), offset_(offset) {}

  std::unique_ptr<net::ChunkSender> sender_;
  std::string digest_;
  int64_t offset_;
  int64_t sent_ = 0;
};

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_MODEL_STREAM_H_
