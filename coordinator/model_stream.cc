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

absl::StatusOr<bool> ModelStream::Next(int chunk_bytes, v1::Chunk* chunk) {
  if (offset_ >= sender_->size()) return false;
  absl::StatusOr<int64_t> got = sender_->ReadChunk(offset_, chunk_bytes, chunk->mutable_data());
  if (!got.ok()) {
    LOG(ERROR) << "reading the blob of model version " << digest_ << ": " << got.status();
    return absl::DataLossError(absl::StrCat("reading model version ", digest_, " failed on the coordinator"));
  }
  chunk->set_offset(offset_);
  chunk->set_total_bytes(sender_->size());
  if (chunk->sha256() != digest_) chunk->set_sha256(digest_);
  offset_ += *got;
  sent_ += *got;
  return true;
}

}  // namespace fedtune::coordinator
