// Per-site limits on concurrent calls: how many SiteService calls, and how many of them streams (DownloadModel,
// UploadUpdate), one site may have in progress at once. The synchronous gRPC server holds a thread per call, so
// without them one approved site could hold every server thread with long-polls or idle streams.
//
// Thread safety: thread-safe.
#ifndef FEDTUNE_COORDINATOR_SITE_CALL_LIMITER_H_
#define FEDTUNE_COORDINATOR_SITE_CALL_LIMITER_H_

#include <map>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace fedtune::coordinator {

struct SiteCallLimits {
  int max_calls_per_site = 8;    // Concurrent calls of one site, streams included (CoordinatorConfig's default).
  int max_streams_per_site = 2;  // Concurrent streams of one site.
};

class SiteCallLimiter {
 public:
  // A call's place, held until destroyed (move-only). A default-constructed slot holds nothing.
  class Slot {
   public:
    Slot() = default;
    Slot(Slot&& other) noexcept;
    Slot& operator=(Slot&& other) noexcept;
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;
    ~Slot();

   private:
    friend class SiteCallLimiter;
    Slot(SiteCallLimiter* limiter, std::string site_id, bool stream)
        : limiter_(limiter), site_id_(std::move(site_id)), stream_(stream) {}
    SiteCallLimiter* limiter_ = nullptr;
    std::string site_id_;
    bool stream_ = false;
  };

  explicit SiteCallLimiter(SiteCallLimits limits) : limits_(limits) {}

  // Takes a place for a call (`stream`: a streaming call) of `site_id`. ResourceExhausted naming the site and the
  // limit (max_calls_per_site / max_streams_per_site) when the site is at it. The limiter must outlive the slot.
  absl::StatusOr<Slot> Acquire(const std::string& site_id, bool stream);

  // Calls / streams of `site_id` in progress (tests, diagnostics).
  int calls(const std::string& site_id);
  int streams(const std::string& site_id);

 private:
  struct InFlight {
    int calls = 0;
    int streams = 0;
  };
  void Release(const std::string& site_id, bool stream);

  const SiteCallLimits limits_;
  absl::Mutex mu_;
  std::map<std::string, InFlight> in_flight_ ABSL_GUARDED_BY(mu_);  // Sites with a call in progress only.
};

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_SITE_CALL_LIMITER_H_
