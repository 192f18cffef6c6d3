// The operator's views of a run, built from the database: v1::RunStatus (rounds with their updates, each site's
// state, transfers and latest failure report for the run) and v1::RunReport (the status plus each site's dataset
// summary and metrics), as AdminService's GetRunStatus, GetRunReport and ListRuns return them.
//
// Thread safety: reentrant (StateStore is thread-safe).
#ifndef FEDTUNE_COORDINATOR_RUN_VIEWS_H_
#define FEDTUNE_COORDINATOR_RUN_VIEWS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/state_store.h"
#include "fedtune/v1/federation.pb.h"

namespace fedtune::coordinator {

struct RunViewOptions {
  int64_t now_ms = 0;                  // The clock's now: a site is "lost" when not heard from since...
  int heartbeat_timeout_seconds = 60;  // ...longer than this.
};

// The status of `run_id` (empty: the latest run). NotFound when there is none; the store's errors.
absl::StatusOr<v1::RunStatus> BuildRunStatus(StateStore& store, const std::string& run_id,
                                             const RunViewOptions& options);
// The report of `run_id` (empty: the latest run). BuildRunStatus's errors.
absl::StatusOr<v1::RunReport> BuildRunReport(StateStore& store, const std::string& run_id,
                                             const RunViewOptions& options);

// ListRuns's bounds: a limit of 0 means kDefaultRunListLimit runs; a larger one than kMaxRunListLimit is capped.
inline constexpr int kDefaultRunListLimit = 100;
inline constexpr int kMaxRunListLimit = 1000;

// The `limit` most recent runs (0: kDefaultRunListLimit; at most kMaxRunListLimit), newest first, each a RunStatus
// without rounds and sites (every other field set, the run's traffic included). InvalidArgument naming `limit` when it
// is negative; the store's errors.
absl::StatusOr<v1::ListRunsResponse> BuildRunList(StateStore& store, int limit);

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_RUN_VIEWS_H_
