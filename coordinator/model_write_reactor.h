// Server-streaming of a model version on gRPC's callback API: a ModelWriteReactor sends a ModelStream one chunk in
// flight at a time (the next chunk is read from the blob when the previous write completed), so a download holds
// no thread while the network drains it, and one chunk of memory. FinishedWriter ends a call that was refused before
// any chunk.
//
// Thread safety: gRPC serializes a reactor's callbacks; the reactor deletes itself in OnDone.
#ifndef FEDTUNE_COORDINATOR_MODEL_WRITE_REACTOR_H_
#define FEDTUNE_COORDINATOR_MODEL_WRITE_REACTOR_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "coordinator/model_stream.h"
#include "coordinator/site_call_limiter.h"
#include "fedtune/v1/federation.pb.h"

namespace fedtune::coordinator {

class ModelWriteReactor final : public grpc::ServerWriteReactor<v1::Chunk> {
 public:
  // Called once when the transfer ends, with its outcome (OK: every byte written; Unavailable "<what> stream
  // broken" when a write failed or the call was cancelled; ModelStream::Next's DataLoss) and the payload bytes
  // written; returns the status the peer gets.
  using OnEnd = std::function<grpc::Status(const absl::Status& outcome, int64_t sent)>;

  // Starts sending at once. `slot` (the caller's place among its site's calls) is held until the call is answered
  // (released before Finish, so that the site's next call never finds it still counted).
  ModelWriteReactor(ModelStream stream, int chunk_bytes, std::string what, SiteCallLimiter::Slot slot, OnEnd on_end);

  void OnWriteDone(bool ok) override;
  void OnDone() override;

 private:
  void WriteNext();
  void End(const absl::Status& outcome);

  ModelStream stream_;
  const int chunk_bytes_;
  const std::string what_;
  SiteCallLimiter::Slot slot_;
  OnEnd on_end_;
  v1::Chunk chunk_;
  int64_t written_ = 0;  // Bytes of the chunks whose write completed.
};

// A server-streaming call answered with `status` and no message.
template <typename Message>
class FinishedWriter final : public grpc::ServerWriteReactor<Message> {
 public:
  explicit FinishedWriter(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

// A client-streaming call answered with `status` without reading its messages.
template <typename Message>
class FinishedReader final : public grpc::ServerReadReactor<Message> {
 public:
  explicit FinishedReader(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_MODEL_WRITE_REACTOR_H_
