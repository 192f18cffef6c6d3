#include "coordinator/state_store.h"

#include "common/store/database.h"
#include "coordinator/state_schema.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::coordinator {
namespace {

using federation::RoundState;
using federation::RunState;
using federation::SiteStatus;
using federation::UploadStatus;
using ::testing::AllOf;
using ::testing::HasSubstr;

std::unique_ptr<StateStore> OpenStore(const std::string& path) {
  auto store = StateStore::Open(path);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? *std::move(store) : nullptr;
}

RunRecord MakeRun(const std::string& id) {
  RunRecord run;
  run.run_id = id;
  run.name = "study";
  run.config.set_rounds(2);
  run.config.add_sites("site-a");
  run.state = RunState::kRunning;
  run.sites = {"site-a", "site-b"};
  run.base_model_digest = std::string(64, 'a');
  run.current_round = 1;
  run.started_ms = 1000;
  return run;
}

RoundRecord MakeRound(const std::string& run, int round, int attempt) {
  RoundRecord r;
  r.run_id = run;
  r.round = round;
  r.attempt = attempt;
  r.state = RoundState::kOpen;
  r.model_digest = std::string(64, 'a');
  r.opened_ms = 1000;
  r.deadline_ms = 2000;
  return r;
}

TEST(StateStoreTest, SitesKeepStatusAcrossHellosAndReopen) {
  fedtune::testing::TempDir tmp;
  const std::string path = tmp.Join("coordinator.db");
  {
    auto store = OpenStore(path);
    v1::DatasetSummary dataset;
    dataset.set_images(42);
    v1::Capabilities caps;
    caps.set_device("cpu");
    auto site = store->RecordHello("site-a", "17", dataset, caps, SiteStatus::kPending, 5);
    ASSERT_TRUE(site.ok()) << site.status();
    EXPECT_EQ(site->status, SiteStatus::kPending);
    ASSERT_TRUE(store->SetSiteStatus("site-a", SiteStatus::kApproved, false, 6).ok());
    // A second hello keeps the operator's decision and updates the summary.
    dataset.set_images(43);
    site = store->RecordHello("site-a", "18", dataset, caps, SiteStatus::kPending, 7);
    ASSERT_TRUE(site.ok());
    EXPECT_EQ(site->status, SiteStatus::kApproved);
    EXPECT_EQ(site->certificate_serial, "18");
    EXPECT_EQ(site->first_seen_ms, 5);
    EXPECT_EQ(site->last_seen_ms, 7);
    EXPECT_EQ(store->SetSiteStatus("nobody", SiteStatus::kRevoked, false, 8).status().code(),
              absl::StatusCode::kNotFound);
    ASSERT_TRUE(store->SetSiteStatus("site-z", SiteStatus::kApproved, true, 8).ok());
    ASSERT_TRUE(store->SetSiteState("site-a", "training epoch 1/2", 0.5, 0.3, 9).ok());
  }
  auto store = OpenStore(path);
  auto sites = store->ListSites();
  ASSERT_TRUE(sites.ok());
  ASSERT_EQ(sites->size(), 2u);
  EXPECT_EQ((*sites)[0].site_id, "site-a");
  EXPECT_EQ((*sites)[0].dataset.images(), 43);
  EXPECT_EQ((*sites)[0].capabilities.device(), "cpu");
  EXPECT_EQ((*sites)[0].state, "training epoch 1/2");
  EXPECT_DOUBLE_EQ((*sites)[0].progress, 0.5);
  EXPECT_EQ((*sites)[1].site_id, "site-z");
  EXPECT_EQ((*sites)[1].status, SiteStatus::kApproved);
}

TEST(StateStoreTest, RunsRoundsAndTransitionsAreTransactional) {
  auto store = OpenStore(":memory:");
  auto id = store->NextRunId();
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(*id, "run-0001");
  ASSERT_TRUE(store->CreateRun(MakeRun(*id), MakeRound(*id, 1, 1)).ok());
  EXPECT_EQ(*store->NextRunId(), "run-0002");
  // A failing transition (the new round's key already exists) changes nothing.
  RunTransition bad;
  bad.run = MakeRun(*id);
  bad.run.state = RunState::kFailed;
  bad.open_round = MakeRound(*id, 1, 1);
  EXPECT_FALSE(store->ApplyTransition(bad).ok());
  auto run = store->GetRun(*id);
  ASSERT_TRUE(run.ok());
  EXPECT_EQ(run->state, RunState::kRunning);
  EXPECT_EQ(run->sites, (std::vector<std::string>{"site-a", "site-b"}));
  EXPECT_EQ(run->config.rounds(), 2);

  RunTransition close;
  close.run = *run;
  close.run.current_round = 2;
  close.finish_round = MakeRound(*id, 1, 1);
  close.finish_round->state = RoundState::kClosed;
  close.finish_round->result_digest = std::string(64, 'b');
  close.new_model = ModelVersion{std::string(64, 'b'), std::string(64, 'a'), "/blobs/b", *id, 1, 10, 1500};
  close.open_round = MakeRound(*id, 2, 1);
  ASSERT_TRUE(store->ApplyTransition(close).ok());
  auto rounds = store->ListRounds(*id);
  ASSERT_TRUE(rounds.ok());
  ASSERT_EQ(rounds->size(), 2u);
  EXPECT_EQ((*rounds)[0].state, RoundState::kClosed);
  EXPECT_EQ((*rounds)[0].result_digest, std::string(64, 'b'));
  EXPECT_EQ((*rounds)[1].state, RoundState::kOpen);
  auto active = store->ActiveRun();
  ASSERT_TRUE(active.ok());
  ASSERT_TRUE(active->has_value());
  EXPECT_EQ((*active)->current_round, 2);
  auto latest = store->LatestModelVersion();
  ASSERT_TRUE(latest.ok() && latest->has_value());
  EXPECT_EQ((*latest)->parent_digest, std::string(64, 'a'));
  EXPECT_EQ(store->FindModelVersions("bbbbbbbb")->size(), 1u);
  EXPECT_EQ(store->FindModelVersions("%")->size(), 0u);
  EXPECT_EQ(store->GetRun("run-9").status().code(), absl::StatusCode::kNotFound);
  // The runs that use a model: by base model ('a'), by having made it ('b'); none for an unknown digest.
  ASSERT_EQ(store->RunsUsingModel(std::string(64, 'a'))->size(), 1u);
  ASSERT_EQ(store->RunsUsingModel(std::string(64, 'b'))->size(), 1u);
  EXPECT_EQ(store->RunsUsingModel(std::string(64, 'b'))->front().run_id, *id);
  EXPECT_TRUE(store->RunsUsingModel(std::string(64, 'c'))->empty());
  EXPECT_TRUE(store->RunsUsingModel("")->empty());
}

TEST(StateStoreTest, OneAcceptedUpdatePerSiteAndAttempt) {
  auto store = OpenStore(":memory:");
  UpdateRecord u;
  u.run_id = "run-0001";
  u.round = 1;
  u.attempt = 1;
  u.site_id = "site-a";
  u.sha256 = std::string(64, 'c');
  u.bytes = 100;
  u.num_samples = 10;
  u.status = UploadStatus::kRefused;
  ASSERT_TRUE(store->InsertUpdate(u).ok());
  u.status = UploadStatus::kAccepted;
  ASSERT_TRUE(store->InsertUpdate(u).ok());
  u.sha256 = std::string(64, 'd');
  absl::StatusOr<int64_t> again = store->InsertUpdate(u);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(again.status().message(), HasSubstr("site-a"));
  u.attempt = 2;
  ASSERT_TRUE(store->InsertUpdate(u).ok());
  EXPECT_EQ(store->ListUpdates("run-0001", 1, std::nullopt, "site-a", UploadStatus::kAccepted)->size(), 2u);
  EXPECT_EQ(store->ListUpdates("run-0001", 1, 1, "", std::nullopt)->size(), 2u);
  EXPECT_EQ(store->ListUpdates("run-0001", 2, std::nullopt, "", std::nullopt)->size(), 0u);
  EXPECT_EQ(store->ListUpdates("run-0001", std::nullopt, std::nullopt, "", std::nullopt)->size(), 3u);
  // A negative round is a value like any other, not a wildcard: a site once sent round -1 and was answered
  // "accepted before" with another round's update.
  EXPECT_EQ(store->ListUpdates("run-0001", -1, 1, "site-a", UploadStatus::kAccepted)->size(), 0u);
  EXPECT_EQ(store->ListUpdates("run-0001", 1, -1, "site-a", UploadStatus::kAccepted)->size(), 0u);
}

TEST(StateStoreTest, MetricsTransfersAndAudit) {
  auto store = OpenStore(":memory:");
  MetricsRecord m;
  m.run_id = "run-0001";
  m.site_id = "site-a";
  m.kind = "final";
  m.report.set_kind("final");
  m.report.set_test_cases(7);
  ASSERT_TRUE(store->InsertMetrics(m).ok());
  m.kind = "round";
  m.round = 2;
  m.report.set_kind("round");
  ASSERT_TRUE(store->InsertMetrics(m).ok());
  auto metrics = store->ListMetrics("run-0001");
  ASSERT_TRUE(metrics.ok());
  ASSERT_EQ(metrics->size(), 2u);
  EXPECT_EQ((*metrics)[0].kind, "round");  // Rounds first, the final evaluation last.
  EXPECT_EQ((*metrics)[1].report.test_cases(), 7);
  // A report sent again (a restarted site) replaces the earlier one.
  m.report.set_test_cases(9);
  ASSERT_TRUE(store->InsertMetrics(m).ok());
  metrics = store->ListMetrics("run-0001");
  ASSERT_TRUE(metrics.ok());
  ASSERT_EQ(metrics->size(), 2u);
  EXPECT_EQ((*metrics)[0].report.test_cases(), 9);

  ASSERT_TRUE(store->AddTransfer("run-0001", "site-a", 100, 0).ok());
  ASSERT_TRUE(store->AddTransfer("run-0001", "site-a", 50, 7).ok());
  auto transfers = store->GetTransfers("run-0001");
  ASSERT_TRUE(transfers.ok());
  EXPECT_EQ((*transfers)["site-a"], std::make_pair(int64_t{150}, int64_t{7}));
  ASSERT_TRUE(store->AddTransfer("run-0001", "site-b", 1, 2).ok());
  ASSERT_TRUE(store->AddTransfer("run-0002", "site-a", 10, 20).ok());
  ASSERT_TRUE(store->AddTransfer("run-0003", "site-a", 99, 99).ok());
  auto totals = store->GetRunTransferTotals({"run-0001", "run-0002", "run-0009"});
  ASSERT_TRUE(totals.ok()) << totals.status();
  EXPECT_EQ(*totals,
            (std::map<std::string, std::pair<int64_t, int64_t>>{{"run-0001", {151, 9}}, {"run-0002", {10, 20}}}));
  std::vector<std::string> many(1200, "run-x");
  many.back() = "run-0003";
  totals = store->GetRunTransferTotals(many);  // More than one batch of bound parameters.
  ASSERT_TRUE(totals.ok()) << totals.status();
  EXPECT_EQ(totals->size(), 1u);
  EXPECT_EQ((*totals)["run-0003"], std::make_pair(int64_t{99}, int64_t{99}));

  AuditRecord a;
  a.rpc = "SiteService/Hello";
  a.peer_cn = "site-a";
  a.decision = "deny";
  a.code = "PERMISSION_DENIED";
  ASSERT_TRUE(store->InsertAudit(a).ok());
  auto audit = store->ListAudit();
  ASSERT_TRUE(audit.ok());
  ASSERT_EQ(audit->size(), 1u);
  EXPECT_EQ((*audit)[0].code, "PERMISSION_DENIED");
}

// Key pinning (PinSiteKey / ReplaceSiteKey): first contact pins, a pre-approved site is pinned at its first call,
// another key is only recorded as an offer, and the operator's acceptance moves the offer into the pin; all of it
// survives a reopen (migration 2 columns).
TEST(StateStoreTest, SiteKeyPinningAndReplacement) {
  fedtune::testing::TempDir tmp;
  const std::string path = tmp.Join("coordinator.db");
  const std::string key_a(64, 'a'), key_b(64, 'b'), key_c(64, 'c');
  {
    auto store = OpenStore(path);
    EXPECT_EQ(store->PinSiteKey("site-a", key_a, "1", /*create=*/false, 1).status().code(),
              absl::StatusCode::kNotFound);
    EXPECT_EQ(store->PinSiteKey("site-a", "", "1", true, 1).status().code(), absl::StatusCode::kInvalidArgument);
    absl::StatusOr<SiteRecord> site = store->PinSiteKey("site-a", key_a, "1", /*create=*/true, 10);
    ASSERT_TRUE(site.ok()) << site.status();
    EXPECT_EQ(site->status, SiteStatus::kPending);
    EXPECT_EQ(site->key_sha256, key_a);
    EXPECT_EQ(site->key_pinned_ms, 10);
    EXPECT_EQ(site->first_seen_ms, 10);
    // The Hello that follows keeps the pin and the status.
    site = store->RecordHello("site-a", "1", v1::DatasetSummary(), v1::Capabilities(), SiteStatus::kApproved, 11);
    ASSERT_TRUE(site.ok());
    EXPECT_EQ(site->status, SiteStatus::kPending);
    EXPECT_EQ(site->key_sha256, key_a);
    // Another key: not pinned, only offered.
    site = store->PinSiteKey("site-a", key_b, "2", true, 12);
    ASSERT_TRUE(site.ok());
    EXPECT_EQ(site->key_sha256, key_a);
    EXPECT_EQ(site->offered_key_sha256, key_b);
    EXPECT_EQ(site->offered_serial, "2");
    // The right key again changes nothing (the offer stays visible to the operator).
    site = store->PinSiteKey("site-a", key_a, "1", false, 13);
    ASSERT_TRUE(site.ok());
    EXPECT_EQ(site->key_sha256, key_a);
    EXPECT_EQ(site->offered_key_sha256, key_b);
    // Acceptance checks the expected key, then pins the offer and approves.
    absl::Status wrong = store->ReplaceSiteKey("site-a", key_c.substr(0, 16), 14).status();
    EXPECT_EQ(wrong.code(), absl::StatusCode::kFailedPrecondition) << wrong;
    EXPECT_THAT(wrong.message(), HasSubstr(key_b));
    EXPECT_EQ(store->GetSite("site-a")->value().key_sha256, key_a);
    site = store->ReplaceSiteKey("site-a", key_b.substr(0, 16), 15);
    ASSERT_TRUE(site.ok()) << site.status();
    EXPECT_EQ(site->key_sha256, key_b);
    EXPECT_EQ(site->key_pinned_ms, 15);
    EXPECT_EQ(site->offered_key_sha256, "");
    EXPECT_EQ(site->status, SiteStatus::kApproved);
    absl::Status none = store->ReplaceSiteKey("site-a", "", 16).status();
    EXPECT_EQ(none.code(), absl::StatusCode::kFailedPrecondition) << none;
    EXPECT_THAT(none.message(), HasSubstr(key_b));
    EXPECT_EQ(store->ReplaceSiteKey("nobody", "", 16).status().code(), absl::StatusCode::kNotFound);
    // A site approved before its first call is pinned at that call.
    ASSERT_TRUE(store->SetSiteStatus("site-p", SiteStatus::kApproved, true, 20).ok());
    EXPECT_EQ(store->GetSite("site-p")->value().key_sha256, "");
    site = store->PinSiteKey("site-p", key_c, "5", false, 21);
    ASSERT_TRUE(site.ok());
    EXPECT_EQ(site->key_sha256, key_c);
    EXPECT_EQ(site->status, SiteStatus::kApproved);
  }
  auto store = OpenStore(path);
  absl::StatusOr<std::optional<SiteRecord>> a = store->GetSite("site-a");
  ASSERT_TRUE(a.ok() && a->has_value());
  EXPECT_EQ((*a)->key_sha256, key_b);
  EXPECT_EQ((*store->GetSite("site-p"))->key_sha256, key_c);
}

// The state columns stay text, as older coordinators wrote them; text that names no state (a newer or damaged
// database) is DataLoss naming the table, the row and the column, not a guess.
TEST(StateStoreTest, UnknownStateTextIsDataLossNamingTheColumn) {
  fedtune::testing::TempDir tmp;
  const std::string path = tmp.Join("coordinator.db");
  {
    auto store = OpenStore(path);
    ASSERT_TRUE(store->CreateRun(MakeRun("run-0001"), MakeRound("run-0001", 1, 1)).ok());
    ASSERT_TRUE(store->SetSiteStatus("site-a", SiteStatus::kApproved, true, 1).ok());
    UpdateRecord u;
    u.run_id = "run-0001";
    u.round = 1;
    u.attempt = 1;
    u.site_id = "site-a";
    u.sha256 = std::string(64, 'b');
    ASSERT_TRUE(store->InsertUpdate(u).ok());
  }
  {  // What each column holds: the text forms of the states.
    auto db = store::Database::Open(path, schema::Migrations());
    ASSERT_TRUE(db.ok()) << db.status();
    auto st = (*db)->Prepare(
        "SELECT (SELECT state FROM runs) || ',' || (SELECT state FROM rounds) || ',' || (SELECT status FROM sites) || "
        "',' || (SELECT status FROM updates)");
    ASSERT_TRUE(st.ok()) << st.status();
    ASSERT_TRUE(st->Step().value());
    EXPECT_EQ(st->ColumnText(0), "running,open,approved,accepted");
    ASSERT_TRUE((*db)
                    ->Execute("UPDATE runs SET state = 'paused'; UPDATE rounds SET state = 'half-open'; "
                              "UPDATE sites SET status = 'APPROVED'; UPDATE updates SET status = ''")
                    .ok());
  }
  auto store = OpenStore(path);
  absl::Status run = store->GetRun("run-0001").status();
  EXPECT_TRUE(absl::IsDataLoss(run)) << run;
  EXPECT_THAT(run.message(), AllOf(HasSubstr("runs.state"), HasSubstr("run-0001"), HasSubstr("'paused'")));
  absl::Status active = store->ActiveRun().status();
  EXPECT_TRUE(active.ok()) << active;  // 'paused' is not an active state: the query does not select it.
  absl::Status rounds = store->ListRounds("run-0001").status();
  EXPECT_TRUE(absl::IsDataLoss(rounds)) << rounds;
  EXPECT_THAT(rounds.message(), AllOf(HasSubstr("rounds.state"), HasSubstr("round 1 attempt 1")));
  absl::Status site = store->GetSite("site-a").status();
  EXPECT_TRUE(absl::IsDataLoss(site)) << site;
  EXPECT_THAT(site.message(), AllOf(HasSubstr("sites.status"), HasSubstr("site-a"), HasSubstr("'APPROVED'")));
  EXPECT_TRUE(absl::IsDataLoss(store->ListSites().status()));
  absl::Status updates = store->ListUpdates("run-0001", std::nullopt, std::nullopt, "", std::nullopt).status();
  EXPECT_TRUE(absl::IsDataLoss(updates)) << updates;
  EXPECT_THAT(updates.message(), AllOf(HasSubstr("updates.status"), HasSubstr("site-a")));
}

}  // namespace
}  // namespace fedtune::coordinator
