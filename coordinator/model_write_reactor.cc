#include "coordinator/model_write_reactor.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace fedtune::coordinator {

ModelWriteReactor::ModelWriteReactor(ModelStream stream, int chunk_bytes, std::string what, SiteCallLimiter::Slot slot,
                                     OnEnd on_end)
    : stream_(std::move(stream)),
      chunk_bytes_(chunk_bytes),
      what_(std::move(what)),
      slot_(std::move(slot)),
      on_end_(std::move(on_end)) {
  WriteNext();
}

void ModelWriteReactor::WriteNext() {
  absl::StatusOr<bool> more = stream_.Next(chunk_bytes_, &chunk_);
  if (!more.ok()) return End(more.status());
  if (!*more) return End(absl::OkStatus());
  StartWrite(&chunk_);
}

void ModelWriteReactor::OnWriteDone(bool ok) {
  // A failed write means the call is over (cancelled, deadline, broken connection): the site resumes from the
  // bytes it holds.
  if (!ok) return End(absl::UnavailableError(absl::StrCat(what_, " stream broken")));
  written_ += static_cast<int64_t>(chunk_.data().size());
  WriteNext();
}

void ModelWriteReactor::End(const absl::Status& outcome) {
  const grpc::Status status = on_end_(outcome, written_);
  // The site's place is free before it sees the answer: its next call must not find this one still counted.
  slot_ = SiteCallLimiter::Slot();
  Finish(status);
}

void ModelWriteReactor::OnDone() { delete this; }

}  // namespace fedtune::coordinator
