// StateStore's failure reports from sites (migration 4, see state_store.h): the latest kMaxFailuresPerSite reports
// of each site, most recent first.
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "coordinator/state_schema.h"
#include "coordinator/state_store.h"

namespace fedtune::coordinator {
namespace {

constexpr char kFailureColumns[] = "id, site_id, report, received_ms";

// The SiteFailure of the current row (kFailureColumns); DataLoss naming the row when its report does not parse.
absl::StatusOr<v1::SiteFailure> ReadFailure(const store::Statement& st) {
  v1::SiteFailure failure;
  failure.set_site_id(st.ColumnText(1));
  if (!failure.mutable_report()->ParseFromString(st.ColumnText(2))) {
    return absl::DataLossError(absl::StrCat("site_failures row ", st.ColumnInt(0), " (site ", failure.site_id(),
                                            "): the stored failure report does not parse"));
  }
  failure.set_received_ms(st.ColumnInt(3));
  return failure;
}

}  // namespace

absl::Status StateStore::InsertSiteFailure(const v1::SiteFailure& failure) {
  if (failure.site_id().empty()) return absl::InvalidArgumentError("failure report without a site id");
  absl::MutexLock lock(&mu_);
  return db_->InTransaction([&]() -> absl::Status {
    ASSIGN_OR_RETURN(store::Statement st, db_->Prepare("INSERT INTO site_failures(site_id, run_id, report, "
                                                       "received_ms) VALUES(?,?,?,?)"));
    st.Bind(1, failure.site_id()).Bind(2, failure.report().run_id());
    st.BindBlob(3, failure.report().SerializeAsString()).Bind(4, failure.received_ms());
    RETURN_IF_ERROR(st.Run());
    // The bound of what one site can make the coordinator keep.
    ASSIGN_OR_RETURN(store::Statement prune,
                     db_->Prepare("DELETE FROM site_failures WHERE site_id = ?1 AND id NOT IN (SELECT id FROM "
                                  "site_failures WHERE site_id = ?1 ORDER BY id DESC LIMIT ?2)"));
    prune.Bind(1, failure.site_id()).Bind(2, int64_t{kMaxFailuresPerSite});
    return prune.Run();
  });
}

absl::StatusOr<std::vector<v1::SiteFailure>> StateStore::ListSiteFailures(const std::string& site_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(store::Statement st, db_->Prepare(absl::StrCat("SELECT ", kFailureColumns,
                                                                  " FROM site_failures WHERE site_id = ? "
                                                                  "ORDER BY id DESC LIMIT ?")));
  st.Bind(1, site_id).Bind(2, int64_t{kMaxFailuresPerSite});
  std::vector<v1::SiteFailure> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    ASSIGN_OR_RETURN(v1::SiteFailure failure, ReadFailure(st));
    out.push_back(std::move(failure));
  }
  return out;
}

absl::StatusOr<std::map<std::string, v1::SiteFailure>> StateStore::LatestSiteFailures(
    const std::optional<std::string>& run_id) {
  absl::MutexLock lock(&mu_);
  const std::string latest = run_id.has_value() ? "SELECT MAX(id) FROM site_failures WHERE run_id = ? GROUP BY site_id"
                                                : "SELECT MAX(id) FROM site_failures GROUP BY site_id";
  ASSIGN_OR_RETURN(store::Statement st, db_->Prepare(absl::StrCat("SELECT ", kFailureColumns,
                                                                  " FROM site_failures WHERE id IN (", latest, ")")));
  if (run_id.has_value()) st.Bind(1, *run_id);
  std::map<std::string, v1::SiteFailure> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    ASSIGN_OR_RETURN(v1::SiteFailure failure, ReadFailure(st));
    std::string site = failure.site_id();
    out[site] = std::move(failure);
  }
  return out;
}

}  // namespace fedtune::coordinator
