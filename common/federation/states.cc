#include "common/federation/states.h"

#include <glog/logging.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/types/span.h"

namespace fedtune::federation {
namespace {

// One state in its three forms. Each enum has one table below, the single place its forms are related.
template <typename E, typename P>
struct Form {
  E state;
  absl::string_view text;
  P proto;
};

constexpr Form<RunState, v1::RunState> kRunStates[] = {
    {RunState::kRunning, "running", v1::RUN_STATE_RUNNING},
    {RunState::kEvaluating, "evaluating", v1::RUN_STATE_EVALUATING},
    {RunState::kCompleted, "completed", v1::RUN_STATE_COMPLETED},
    {RunState::kFailed, "failed", v1::RUN_STATE_FAILED},
    {RunState::kAborted, "aborted", v1::RUN_STATE_ABORTED},
};
constexpr Form<RoundState, v1::RoundState> kRoundStates[] = {
    {RoundState::kOpen, "open", v1::ROUND_STATE_OPEN},
    {RoundState::kClosed, "closed", v1::ROUND_STATE_CLOSED},
    {RoundState::kFailed, "failed", v1::ROUND_STATE_FAILED},
    {RoundState::kAborted, "aborted", v1::ROUND_STATE_ABORTED},
};
constexpr Form<UploadStatus, v1::UploadStatus> kUploadStatuses[] = {
    {UploadStatus::kAccepted, "accepted", v1::UPLOAD_STATUS_ACCEPTED},
    {UploadStatus::kRefused, "refused", v1::UPLOAD_STATUS_REFUSED},
    {UploadStatus::kDeclined, "declined", v1::UPLOAD_STATUS_DECLINED},
};
constexpr Form<SiteStatus, v1::SiteStatus> kSiteStatuses[] = {
    {SiteStatus::kPending, "pending", v1::SITE_STATUS_PENDING},
    {SiteStatus::kApproved, "approved", v1::SITE_STATUS_APPROVED},
    {SiteStatus::kRevoked, "revoked", v1::SITE_STATUS_REVOKED},
};

// Every enumerator is in its table (the tests check it); a missing one is our bug.
template <typename E, typename P>
const Form<E, P>& FormOf(absl::Span<const Form<E, P>> forms, E state) {
  for (const Form<E, P>& f : forms) {
    if (f.state == state) return f;
  }
  LOG(FATAL) << "state " << static_cast<int>(state) << " has no form";
}

template <typename E, typename P>
absl::StatusOr<E> ParseText(absl::Span<const Form<E, P>> forms, absl::string_view what, absl::string_view text) {
  for (const Form<E, P>& f : forms) {
    if (f.text == text) return f.state;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown ", what, " '", absl::CEscape(text), "' (expected one of: ",
      absl::StrJoin(forms, ", ", [](std::string* out, const Form<E, P>& f) { absl::StrAppend(out, f.text); }), ")"));
}

template <typename E, typename P>
absl::StatusOr<E> ParseProto(absl::Span<const Form<E, P>> forms, P value, absl::string_view field) {
  if (static_cast<int>(value) == 0) return absl::InvalidArgumentError(absl::StrCat(field, " is not set"));
  for (const Form<E, P>& f : forms) {
    if (f.proto == value) return f.state;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(field, " has the unknown value ", static_cast<int>(value), " (a newer peer's state?)"));
}

// The enum field, or the deprecated text field when the enum is unspecified (a peer of the previous release).
template <typename E, typename P>
absl::StatusOr<E> ReadField(absl::Span<const Form<E, P>> forms, absl::string_view what, P value,
                            const std::string& text, absl::string_view field, absl::string_view text_field) {
  if (static_cast<int>(value) != 0 || text.empty()) return ParseProto(forms, value, field);
  absl::StatusOr<E> parsed = ParseText(forms, what, text);
  if (!parsed.ok()) return absl::InvalidArgumentError(absl::StrCat(text_field, ": ", parsed.status().message()));
  return parsed;
}

template <typename E, typename P>
std::string Display(absl::Span<const Form<E, P>> forms, P value, const std::string& text) {
  if (static_cast<int>(value) == 0) return text;
  for (const Form<E, P>& f : forms) {
    if (f.proto == value) return std::string(f.text);
  }
  return absl::StrCat("unknown (", static_cast<int>(value), ")");
}

}  // namespace

bool IsFinal(RunState state) {
  return state == RunState::kCompleted || state == RunState::kFailed || state == RunState::kAborted;
}

absl::string_view Text(RunState state) { return FormOf<RunState, v1::RunState>(kRunStates, state).text; }
absl::string_view Text(RoundState state) { return FormOf<RoundState, v1::RoundState>(kRoundStates, state).text; }
absl::string_view Text(UploadStatus status) {
  return FormOf<UploadStatus, v1::UploadStatus>(kUploadStatuses, status).text;
}
absl::string_view Text(SiteStatus status) { return FormOf<SiteStatus, v1::SiteStatus>(kSiteStatuses, status).text; }

absl::StatusOr<RunState> ParseRunState(absl::string_view text) {
  return ParseText<RunState, v1::RunState>(kRunStates, "run state", text);
}
absl::StatusOr<RoundState> ParseRoundState(absl::string_view text) {
  return ParseText<RoundState, v1::RoundState>(kRoundStates, "round state", text);
}
absl::StatusOr<UploadStatus> ParseUploadStatus(absl::string_view text) {
  return ParseText<UploadStatus, v1::UploadStatus>(kUploadStatuses, "upload status", text);
}
absl::StatusOr<SiteStatus> ParseSiteStatus(absl::string_view text) {
  return ParseText<SiteStatus, v1::SiteStatus>(kSiteStatuses, "site status", text);
}

v1::RunState ToProto(RunState state) { return FormOf<RunState, v1::RunState>(kRunStates, state).proto; }
v1::RoundState ToProto(RoundState state) { return FormOf<RoundState, v1::RoundState>(kRoundStates, state).proto; }
v1::UploadStatus ToProto(UploadStatus status) {
  return FormOf<UploadStatus, v1::UploadStatus>(kUploadStatuses, status).proto;
}
v1::SiteStatus ToProto(SiteStatus status) { return FormOf<SiteStatus, v1::SiteStatus>(kSiteStatuses, status).proto; }

absl::StatusOr<RunState> FromProto(v1::RunState value, absl::string_view field) {
  return ParseProto<RunState, v1::RunState>(kRunStates, value, field);
}
absl::StatusOr<RoundState> FromProto(v1::RoundState value, absl::string_view field) {
  return ParseProto<RoundState, v1::RoundState>(kRoundStates, value, field);
}
absl::StatusOr<UploadStatus> FromProto(v1::UploadStatus value, absl::string_view field) {
  return ParseProto<UploadStatus, v1::UploadStatus>(kUploadStatuses, value, field);
}
absl::StatusOr<SiteStatus> FromProto(v1::SiteStatus value, absl::string_view field) {
  return ParseProto<SiteStatus, v1::SiteStatus>(kSiteStatuses, value, field);
}

void SetState(RunState state, v1::RunStatus* status) {
  status->set_run_state(ToProto(state));
  status->set_state(std::string(Text(state)));
}
void SetState(RoundState state, v1::RoundInfo* round) {
  round->set_round_state(ToProto(state));
  round->set_state(std::string(Text(state)));
}
void SetStatus(UploadStatus status, v1::UpdateInfo* update) {
  update->set_upload_status(ToProto(status));
  update->set_status(std::string(Text(status)));
}
void SetStatus(UploadStatus status, v1::UploadResponse* response) {
  response->set_upload_status(ToProto(status));
  response->set_status(std::string(Text(status)));
}
void SetStatus(SiteStatus status, v1::SiteInfo* site) {
  site->set_site_status(ToProto(status));
  site->set_status(std::string(Text(status)));
}
void SetStatus(SiteStatus status, v1::HelloResponse* response) {
  response->set_site_status(ToProto(status));
  response->set_status(std::string(Text(status)));
}

absl::StatusOr<RunState> GetState(const v1::RunStatus& s) {
  return ReadField<RunState, v1::RunState>(kRunStates, "run state", s.run_state(), s.state(), "RunStatus.run_state",
                                           "RunStatus.state");
}
absl::StatusOr<RoundState> GetState(const v1::RoundInfo& r) {
  return ReadField<RoundState, v1::RoundState>(kRoundStates, "round state", r.round_state(), r.state(),
                                               "RoundInfo.round_state", "RoundInfo.state");
}
absl::StatusOr<UploadStatus> GetStatus(const v1::UpdateInfo& u) {
  return ReadField<UploadStatus, v1::UploadStatus>(kUploadStatuses, "upload status", u.upload_status(), u.status(),
                                                   "UpdateInfo.upload_status", "UpdateInfo.status");
}
absl::StatusOr<UploadStatus> GetStatus(const v1::UploadResponse& r) {
  return ReadField<UploadStatus, v1::UploadStatus>(kUploadStatuses, "upload status", r.upload_status(), r.status(),
                                                   "UploadResponse.upload_status", "UploadResponse.status");
}
absl::StatusOr<SiteStatus> GetStatus(const v1::SiteInfo& s) {
  return ReadField<SiteStatus, v1::SiteStatus>(kSiteStatuses, "site status", s.site_status(), s.status(),
                                               "SiteInfo.site_status", "SiteInfo.status");
}
absl::StatusOr<SiteStatus> GetStatus(const v1::HelloResponse& r) {
  return ReadField<SiteStatus, v1::SiteStatus>(kSiteStatuses, "site status", r.site_status(), r.status(),
                                               "HelloResponse.site_status", "HelloResponse.status");
}

bool IsAccepted(const v1::UpdateInfo& update) {
  const absl::StatusOr<UploadStatus> status = GetStatus(update);
  return status.ok() && *status == UploadStatus::kAccepted;
}

std::string DisplayText(const v1::RunStatus& s) {
  return Display<RunState, v1::RunState>(kRunStates, s.run_state(), s.state());
}
std::string DisplayText(const v1::RoundInfo& r) {
  return Display<RoundState, v1::RoundState>(kRoundStates, r.round_state(), r.state());
}
std::string DisplayText(const v1::UpdateInfo& u) {
  return Display<UploadStatus, v1::UploadStatus>(kUploadStatuses, u.upload_status(), u.status());
}
std::string DisplayText(const v1::SiteInfo& s) {
  return Display<SiteStatus, v1::SiteStatus>(kSiteStatuses, s.site_status(), s.status());
}

v1::Personalization ToProto(v1::RunConfig::Personalization value) {
  switch (value) {
    case v1::RunConfig::NONE:
      return v1::PERSONALIZATION_NONE;
    case v1::RunConfig::FEDBN:
      return v1::PERSONALIZATION_FEDBN;
    case v1::RunConfig::SILOBN:
      return v1::PERSONALIZATION_SILOBN;
    case v1::RunConfig::DITTO:
      return v1::PERSONALIZATION_DITTO;
  }
  return v1::PERSONALIZATION_NONE;
}

absl::StatusOr<v1::Personalization> ReadPersonalization(v1::Personalization value, absl::string_view field) {
  switch (value) {
    case v1::PERSONALIZATION_UNSPECIFIED:
    case v1::PERSONALIZATION_NONE:
      return v1::PERSONALIZATION_NONE;
    case v1::PERSONALIZATION_FEDBN:
    case v1::PERSONALIZATION_SILOBN:
    case v1::PERSONALIZATION_DITTO:
      return value;
    default:
      break;
  }
  return absl::InvalidArgumentError(absl::StrCat(field, ": unknown personalization ", static_cast<int>(value),
                                                 " (this build knows NONE, FEDBN, SILOBN, DITTO)"));
}

absl::string_view Text(v1::Personalization value) {
  switch (value) {
    case v1::PERSONALIZATION_UNSPECIFIED:
    case v1::PERSONALIZATION_NONE:
      return "none";
    case v1::PERSONALIZATION_FEDBN:
      return "fedbn";
    case v1::PERSONALIZATION_SILOBN:
      return "silobn";
    case v1::PERSONALIZATION_DITTO:
      return "ditto";
    default:
      break;
  }
  return "unknown";
}

}  // namespace fedtune::federation
