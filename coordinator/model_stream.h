// A model version's blob streamed as v1::Chunk messages (offset, data, total_bytes, sha256 of the whole file) by
// a net::ChunkSender: the one sending loop of SiteService::DownloadModel (sites) and AdminService::ExportModel
// (operators).
//
// Thread safety: reentrant (one ModelStream per call).
#ifndef FEDTUNE_COORDINATOR_MODEL_STREAM_H_
#define FEDTUNE_COORDINATOR_MODEL_STREAM_H_

#include <cstdint>
#include <functional>
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

  // Sends the chunks through `write` (false: the stream broke), asking `cancelled` before each. Returns OK when
  // all was sent; Cancelled ("<what> cancelled"); Unavailable ("<what> stream broken"); DataLoss when the blob
  // cannot be read (logged with its path). *sent: the payload bytes written, also on an error.
  absl::Status Send(int chunk_bytes, const std::function<bool()>& cancelled,
                    const std::function<bool(const v1::Chunk&)>& write, const std::string& what, int64_t* sent);

 private:
  ModelStream(std::unique_ptr<net::ChunkSender> sender, std::string digest, int64_t offset)
      : sender_(std::move(sender)), digest_(std::move(digest)), offset_(offset) {}

  std::unique_ptr<net::ChunkSender> sender_;
  std::string digest_;
  int64_t offset_;
};

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_MODEL_STREAM_H_
