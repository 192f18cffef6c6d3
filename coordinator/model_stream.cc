#include "coordinator/model_stream.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace fedtune::coordinator {

absl::StatusOr<ModelStream> ModelStream::Open(const BlobStore& blobs, const std::string& digest, int64_t offset) {
  absl::StatusOr<std::unique_ptr<net::ChunkSender>> sender = net::ChunkSender::Open(blobs.PathOf(digest));
  if (!sender.ok()) {
    LOG(ERROR) << "model version " << digest << ": blob " << blobs.PathOf(digest) << " is missing: " << sender.status();
    return absl::DataLossError(
        absl::StrCat("model version ", digest, " is missing in the coordinator's blob store; tell its operator"));
  }
  const int64_t total = (*sender)->size();
  if (offset < 0 || offset > total) {
    return absl::OutOfRangeError(
        absl::StrCat("offset ", offset, " is outside [0, ", total, "] of model version ", digest));
  }
  return ModelStream(*std::move(sender), digest, offset);
}

absl::Status ModelStream::Send(int chunk_bytes, const std::function<bool()>& cancelled,
                               const std::function<bool(const v1::Chunk&)>& write, const std::string& what,
                               int64_t* sent) {
  net::ChunkSenderOptions options;
  options.chunk_bytes = chunk_bytes;
  options.cancelled = cancelled;
  const int64_t total = sender_->size();
  net::SendResult result = sender_->Send(offset_, options, [&](int64_t offset, absl::string_view data) {
    v1::Chunk chunk;
    chunk.set_offset(offset);
    chunk.set_data(data.data(), data.size());
    chunk.set_total_bytes(total);
    chunk.set_sha256(digest_);
    return write(chunk);
  });
  *sent = result.sent;
  if (result.broken) return absl::UnavailableError(absl::StrCat(what, " stream broken"));
  if (result.status.code() == absl::StatusCode::kCancelled)
    return absl::CancelledError(absl::StrCat(what, " cancelled"));
  if (!result.status.ok()) {
    LOG(ERROR) << "reading the blob of model version " << digest_ << ": " << result.status;
    return absl::DataLossError(absl::StrCat("reading model version ", digest_, " failed on the coordinator"));
  }
  return absl::OkStatus();
}

}  // namespace fedtune::coordinator
