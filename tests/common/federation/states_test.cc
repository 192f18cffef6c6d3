#include "common/federation/states.h"

#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fedtune::federation {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

const std::vector<RunState> kAllRunStates = {RunState::kRunning, RunState::kEvaluating, RunState::kCompleted,
                                             RunState::kFailed, RunState::kAborted};
const std::vector<RoundState> kAllRoundStates = {RoundState::kOpen, RoundState::kClosed, RoundState::kFailed,
                                                 RoundState::kAborted};
const std::vector<UploadStatus> kAllUploadStatuses = {UploadStatus::kAccepted, UploadStatus::kRefused,
                                                      UploadStatus::kDeclined};
const std::vector<SiteStatus> kAllSiteStatuses = {SiteStatus::kPending, SiteStatus::kApproved, SiteStatus::kRevoked};

// Every state's text is the one the database and the CLI used before states were typed, and text and proto value
// both map back to the state; no two states share a text or a proto value, and none is *_UNSPECIFIED (0).
template <typename E, typename Parse>
void ExpectRoundTrips(const std::vector<E>& all, const std::vector<std::string>& texts, Parse parse) {
  ASSERT_EQ(all.size(), texts.size());
  std::set<int> protos;
  for (size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(Text(all[i]), texts[i]);
    absl::StatusOr<E> parsed = parse(texts[i]);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, all[i]) << texts[i];
    const auto proto = ToProto(all[i]);
    EXPECT_NE(static_cast<int>(proto), 0) << texts[i];
    protos.insert(static_cast<int>(proto));
    absl::StatusOr<E> back = FromProto(proto, "field");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, all[i]) << texts[i];
  }
  EXPECT_EQ(protos.size(), all.size());
}

TEST(StatesTest, TextAndProtoRoundTrip) {
  ExpectRoundTrips(kAllRunStates, {"running", "evaluating", "completed", "failed", "aborted"}, ParseRunState);
  ExpectRoundTrips(kAllRoundStates, {"open", "closed", "failed", "aborted"}, ParseRoundState);
  ExpectRoundTrips(kAllUploadStatuses, {"accepted", "refused", "declined"}, ParseUploadStatus);
  ExpectRoundTrips(kAllSiteStatuses, {"pending", "approved", "revoked"}, ParseSiteStatus);
}

TEST(StatesTest, EveryProtoValueIsMapped) {
  for (int v = v1::RunState_MIN + 1; v <= v1::RunState_MAX; ++v) {
    EXPECT_TRUE(FromProto(static_cast<v1::RunState>(v), "f").ok()) << v;
  }
  for (int v = v1::RoundState_MIN + 1; v <= v1::RoundState_MAX; ++v) {
    EXPECT_TRUE(FromProto(static_cast<v1::RoundState>(v), "f").ok()) << v;
  }
  for (int v = v1::UploadStatus_MIN + 1; v <= v1::UploadStatus_MAX; ++v) {
    EXPECT_TRUE(FromProto(static_cast<v1::UploadStatus>(v), "f").ok()) << v;
  }
  for (int v = v1::SiteStatus_MIN + 1; v <= v1::SiteStatus_MAX; ++v) {
    EXPECT_TRUE(FromProto(static_cast<v1::SiteStatus>(v), "f").ok()) << v;
  }
}

TEST(StatesTest, FinalRunStates) {
  std::vector<RunState> final_states;
  for (RunState s : kAllRunStates) {
    if (IsFinal(s)) final_states.push_back(s);
  }
  EXPECT_EQ(final_states, (std::vector<RunState>{RunState::kCompleted, RunState::kFailed, RunState::kAborted}));
}

TEST(StatesTest, UnknownTextIsInvalidArgumentQuotingIt) {
  for (absl::string_view text : {"", "Running", "running ", "closed\x1b[2J", "done"}) {
    absl::StatusOr<RunState> run = ParseRunState(text);
    ASSERT_FALSE(run.ok()) << text;
    EXPECT_TRUE(absl::IsInvalidArgument(run.status())) << run.status();
    EXPECT_THAT(run.status().message(), AllOf(HasSubstr("unknown run state"), HasSubstr("running, evaluating")));
  }
  EXPECT_THAT(ParseRunState("closed\x1b[2J").status().message(), HasSubstr("'closed\\033[2J'"));
  EXPECT_TRUE(absl::IsInvalidArgument(ParseRoundState("running").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(ParseUploadStatus("ACCEPTED").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(ParseSiteStatus("enrolled").status()));
}

TEST(StatesTest, UnknownOrUnsetProtoValueIsInvalidArgumentNamingTheField) {
  absl::StatusOr<RunState> unknown = FromProto(static_cast<v1::RunState>(99), "RunStatus.run_state");
  ASSERT_FALSE(unknown.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(unknown.status()));
  EXPECT_THAT(unknown.status().message(), AllOf(HasSubstr("RunStatus.run_state"), HasSubstr("99")));
  absl::StatusOr<SiteStatus> unset = FromProto(v1::SITE_STATUS_UNSPECIFIED, "SiteInfo.site_status");
  ASSERT_FALSE(unset.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(unset.status()));
  EXPECT_THAT(unset.status().message(), HasSubstr("SiteInfo.site_status is not set"));
  EXPECT_TRUE(absl::IsInvalidArgument(FromProto(static_cast<v1::RoundState>(-1), "f").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(FromProto(static_cast<v1::UploadStatus>(4), "f").status()));
}

TEST(StatesTest, SetWritesTheEnumAndTheTextForOlderPeers) {
  v1::RunStatus run;
  SetState(RunState::kEvaluating, &run);
  EXPECT_EQ(run.run_state(), v1::RUN_STATE_EVALUATING);
  EXPECT_EQ(run.state(), "evaluating");
  v1::RoundInfo round;
  SetState(RoundState::kClosed, &round);
  EXPECT_EQ(round.round_state(), v1::ROUND_STATE_CLOSED);
  EXPECT_EQ(round.state(), "closed");
  v1::UpdateInfo update;
  SetStatus(UploadStatus::kRefused, &update);
  EXPECT_EQ(update.upload_status(), v1::UPLOAD_STATUS_REFUSED);
  EXPECT_EQ(update.status(), "refused");
  v1::UploadResponse response;
  SetStatus(UploadStatus::kAccepted, &response);
  EXPECT_EQ(response.upload_status(), v1::UPLOAD_STATUS_ACCEPTED);
  EXPECT_EQ(response.status(), "accepted");
  v1::SiteInfo site;
  SetStatus(SiteStatus::kRevoked, &site);
  EXPECT_EQ(site.site_status(), v1::SITE_STATUS_REVOKED);
  EXPECT_EQ(site.status(), "revoked");
  v1::HelloResponse hello;
  SetStatus(SiteStatus::kPending, &hello);
  EXPECT_EQ(hello.site_status(), v1::SITE_STATUS_PENDING);
  EXPECT_EQ(hello.status(), "pending");
}

TEST(StatesTest, GetReadsTheEnumAndFallsBackToTheTextOfAnOlderPeer) {
  // Written by this release, through the wire.
  v1::RunStatus written;
  SetState(RunState::kAborted, &written);
  v1::RunStatus received;
  ASSERT_TRUE(received.ParseFromString(written.SerializeAsString()));
  EXPECT_EQ(GetState(received).value(), RunState::kAborted);

  // A coordinator of the previous release sent text only.
  v1::RunStatus older;
  older.set_state("completed");
  EXPECT_EQ(GetState(older).value(), RunState::kCompleted);
  v1::HelloResponse older_hello;
  older_hello.set_status("approved");
  EXPECT_EQ(GetStatus(older_hello).value(), SiteStatus::kApproved);
  v1::UploadResponse older_upload;
  older_upload.set_status("accepted");
  EXPECT_EQ(GetStatus(older_upload).value(), UploadStatus::kAccepted);

  // The enum wins over the text.
  v1::RoundInfo both;
  both.set_round_state(v1::ROUND_STATE_FAILED);
  both.set_state("closed");
  EXPECT_EQ(GetState(both).value(), RoundState::kFailed);
}

TEST(StatesTest, GetRefusesUnknownValuesTextsAndMissingFieldsNamingTheField) {
  v1::RunStatus newer;
  newer.set_run_state(static_cast<v1::RunState>(42));
  newer.set_state("running");
  absl::StatusOr<RunState> run = GetState(newer);
  ASSERT_FALSE(run.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(run.status()));
  EXPECT_THAT(run.status().message(), AllOf(HasSubstr("RunStatus.run_state"), HasSubstr("42")));

  v1::UpdateInfo odd_text;
  odd_text.set_status("half-accepted");
  absl::StatusOr<UploadStatus> update = GetStatus(odd_text);
  ASSERT_FALSE(update.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(update.status()));
  EXPECT_THAT(update.status().message(), AllOf(HasSubstr("UpdateInfo.status"), HasSubstr("'half-accepted'")));

  absl::StatusOr<SiteStatus> site = GetStatus(v1::SiteInfo());
  ASSERT_FALSE(site.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(site.status()));
  EXPECT_THAT(site.status().message(), HasSubstr("SiteInfo.site_status is not set"));
  EXPECT_TRUE(absl::IsInvalidArgument(GetStatus(v1::HelloResponse()).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(GetState(v1::RoundInfo()).status()));
}

TEST(StatesTest, OnlyAnUpdateThatReadsAsAcceptedIsAccepted) {
  v1::UpdateInfo update;
  EXPECT_FALSE(IsAccepted(update));
  update.set_status("accepted");
  EXPECT_TRUE(IsAccepted(update));
  update.set_upload_status(v1::UPLOAD_STATUS_REFUSED);
  EXPECT_FALSE(IsAccepted(update));
  update.set_upload_status(static_cast<v1::UploadStatus>(5));
  EXPECT_FALSE(IsAccepted(update));
  SetStatus(UploadStatus::kAccepted, &update);
  EXPECT_TRUE(IsAccepted(update));
}

TEST(StatesTest, DisplayTextIsTheTextFormTheOlderTextOrAVisibleUnknown) {
  v1::RunStatus run;
  EXPECT_EQ(DisplayText(run), "");
  run.set_state("hostile \x1b text");  // An older coordinator's text: shown as sent (the caller escapes it).
  EXPECT_EQ(DisplayText(run), "hostile \x1b text");
  SetState(RunState::kFailed, &run);
  EXPECT_EQ(DisplayText(run), "failed");
  v1::RoundInfo round;
  round.set_round_state(static_cast<v1::RoundState>(7));
  EXPECT_EQ(DisplayText(round), "unknown (7)");
  v1::UpdateInfo update;
  SetStatus(UploadStatus::kAccepted, &update);
  EXPECT_EQ(DisplayText(update), "accepted");
  v1::SiteInfo site;
  site.set_site_status(v1::SITE_STATUS_APPROVED);
  EXPECT_EQ(DisplayText(site), "approved");
}

}  // namespace
}  // namespace fedtune::federation
