// The typed states of the federation: runs, rounds, uploads and sites, as C++ enums, with their three forms:
//   - the text form ("running", "open", "accepted", "approved", ...): what coordinator.db stores in its text
//     columns and what the CLI and the reports print, unchanged from the release that had only text;
//   - the wire form: the proto enums of protos/fedtune/v1/federation.proto (RunState, RoundState, UploadStatus,
//     SiteStatus);
//   - the fields of the protocol messages that carry them, read and written here only, because each is still paired
//     with a deprecated text field for peers of the previous release (federation.proto says how).
//
// Errors: text or a proto value that names no state is refused, never cast: InvalidArgument naming the text or the
// field. The store maps such a text column to DataLoss (coordinator/state_schema.h).
//
// Thread safety: reentrant (no state).
#ifndef FEDTUNE_COMMON_FEDERATION_STATES_H_
#define FEDTUNE_COMMON_FEDERATION_STATES_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "fedtune/v1/federation.pb.h"

namespace fedtune::federation {

// The life of a run (coordinator/round_manager.h): running -> (evaluating ->) completed, or failed / aborted.
enum class RunState { kRunning, kEvaluating, kCompleted, kFailed, kAborted };
// One attempt of a round: open -> closed (aggregated), failed (too few updates) or aborted.
enum class RoundState { kOpen, kClosed, kFailed, kAborted };
// An upload (update) as the coordinator recorded it.
// kDeclined: the site declined the round (SiteService.DeclineTask): no update, not waited for.
enum class UploadStatus { kAccepted, kRefused, kDeclined };
// A site in the coordinator's registry: pending -> approved -> revoked.
enum class SiteStatus { kPending, kApproved, kRevoked };

// True for the states a run ends in (completed, failed, aborted).
bool IsFinal(RunState state);

// ---- Text forms: "running", "evaluating", "completed", "failed", "aborted"; "open", "closed", "failed", "aborted";
// "accepted", "refused", "declined"; "pending", "approved", "revoked".
absl::string_view Text(RunState state);
absl::string_view Text(RoundState state);
absl::string_view Text(UploadStatus status);
absl::string_view Text(SiteStatus status);
// The state of a text form; InvalidArgument quoting the text and listing the valid ones otherwise.
absl::StatusOr<RunState> ParseRunState(absl::string_view text);
absl::StatusOr<RoundState> ParseRoundState(absl::string_view text);
absl::StatusOr<UploadStatus> ParseUploadStatus(absl::string_view text);
absl::StatusOr<SiteStatus> ParseSiteStatus(absl::string_view text);

// ---- Wire forms. FromProto: InvalidArgument naming `field` for *_UNSPECIFIED and for a value this build does not
// know (proto3 enums are open: a newer peer may send one).
v1::RunState ToProto(RunState state);
v1::RoundState ToProto(RoundState state);
v1::UploadStatus ToProto(UploadStatus status);
v1::SiteStatus ToProto(SiteStatus status);
absl::StatusOr<RunState> FromProto(v1::RunState value, absl::string_view field);
absl::StatusOr<RoundState> FromProto(v1::RoundState value, absl::string_view field);
absl::StatusOr<UploadStatus> FromProto(v1::UploadStatus value, absl::string_view field);
absl::StatusOr<SiteStatus> FromProto(v1::SiteStatus value, absl::string_view field);

// ---- Message fields. Set* writes the enum field and its deprecated text field. Get* reads the enum field; when it
// is unspecified (a peer of the previous release), the text field. InvalidArgument naming the field for an unknown
// value or text, and when neither field is set.
void SetState(RunState state, v1::RunStatus* status);               // RunStatus.run_state (state).
void SetState(RoundState state, v1::RoundInfo* round);              // RoundInfo.round_state (state).
void SetStatus(UploadStatus status, v1::UpdateInfo* update);        // UpdateInfo.upload_status (status).
void SetStatus(UploadStatus status, v1::UploadResponse* response);  // UploadResponse.upload_status (status).
void SetStatus(SiteStatus status, v1::SiteInfo* site);              // SiteInfo.site_status (status).
void SetStatus(SiteStatus status, v1::HelloResponse* response);     // HelloResponse.site_status (status).
absl::StatusOr<RunState> GetState(const v1::RunStatus& status);
absl::StatusOr<RoundState> GetState(const v1::RoundInfo& round);
absl::StatusOr<UploadStatus> GetStatus(const v1::UpdateInfo& update);
absl::StatusOr<UploadStatus> GetStatus(const v1::UploadResponse& response);
absl::StatusOr<SiteStatus> GetStatus(const v1::SiteInfo& site);
absl::StatusOr<SiteStatus> GetStatus(const v1::HelloResponse& response);

// True when the update reads (GetStatus) as accepted; false for refused, unknown and missing statuses (what the CLI
// and the reports count as not accepted).
bool IsAccepted(const v1::UpdateInfo& update);

// What the CLI and the reports print for the state of a message: the text form of a known state; the text field
// verbatim when the enum field is unspecified (an older coordinator; the caller escapes it, it may be any text, or
// ""); "unknown (N)" for an enum value this build does not know.
std::string DisplayText(const v1::RunStatus& status);
std::string DisplayText(const v1::RoundInfo& round);
std::string DisplayText(const v1::UpdateInfo& update);
std::string DisplayText(const v1::SiteInfo& site);

// ---- Personalization (RunConfig.personalization, TrainingPlan.personalization, MetricsReport.personalization).
// The run config's enum as the wire's; the wire's PERSONALIZATION_UNSPECIFIED (a peer of the previous release) reads
// as PERSONALIZATION_NONE; an unknown value is InvalidArgument naming `field`.
v1::Personalization ToProto(v1::RunConfig::Personalization value);
absl::StatusOr<v1::Personalization> ReadPersonalization(v1::Personalization value, absl::string_view field);
// "none", "fedbn", "silobn", "ditto" (what reports print); "unknown" for values this build does not know.
absl::string_view Text(v1::Personalization value);

}  // namespace fedtune::federation

#endif  // FEDTUNE_COMMON_FEDERATION_STATES_H_
