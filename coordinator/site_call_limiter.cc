#include "coordinator/site_call_limiter.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace fedtune::coordinator {

SiteCallLimiter::Slot::Slot(Slot&& other) noexcept
    : limiter_(std::exchange(other.limiter_, nullptr)), site_id_(std::move(other.site_id_)), stream_(other.stream_) {}

SiteCallLimiter::Slot& SiteCallLimiter::Slot::operator=(Slot&& other) noexcept {
  if (this != &other) {
    if (limiter_ != nullptr) limiter_->Release(site_id_, stream_);
    limiter_ = std::exchange(other.limiter_, nullptr);
    site_id_ = std::move(other.site_id_);
    stream_ = other.stream_;
  }
  return *this;
}

SiteCallLimiter::Slot::~Slot() {
  if (limiter_ != nullptr) limiter_->Release(site_id_, stream_);
}

absl::StatusOr<SiteCallLimiter::Slot> SiteCallLimiter::Acquire(const std::string& site_id, bool stream) {
  absl::MutexLock lock(&mu_);
  InFlight& f = in_flight_[site_id];
  absl::Status refused;
  if (f.calls >= limits_.max_calls_per_site) {
    refused = absl::ResourceExhaustedError(absl::StrCat("site ", site_id, " has ", f.calls,
                                                        " calls in progress (max_calls_per_site ",
                                                        limits_.max_calls_per_site, "); retry when one has ended"));
  } else if (stream && f.streams >= limits_.max_streams_per_site) {
    refused = absl::ResourceExhaustedError(absl::StrCat("site ", site_id, " has ", f.streams,
                                                        " streams in progress (max_streams_per_site ",
                                                        limits_.max_streams_per_site, "); retry when one has ended"));
  }
  if (!refused.ok()) {
    if (f.calls == 0) in_flight_.erase(site_id);
    return refused;
  }
  ++f.calls;
  if (stream) ++f.streams;
  return Slot(this, site_id, stream);
}

void SiteCallLimiter::Release(const std::string& site_id, bool stream) {
  absl::MutexLock lock(&mu_);
  auto it = in_flight_.find(site_id);
  CHECK(it != in_flight_.end()) << "releasing a call of site " << site_id << " that holds none";
  --it->second.calls;
  if (stream) --it->second.streams;
  if (it->second.calls <= 0) in_flight_.erase(it);
}

int SiteCallLimiter::calls(const std::string& site_id) {
  absl::MutexLock lock(&mu_);
  auto it = in_flight_.find(site_id);
  return it == in_flight_.end() ? 0 : it->second.calls;
}

int SiteCallLimiter::streams(const std::string& site_id) {
  absl::MutexLock lock(&mu_);
  auto it = in_flight_.find(site_id);
  return it == in_flight_.end() ? 0 : it->second.streams;
}

}  // namespace fedtune::coordinator
