// The coordinator's schema migrates forward: coordinator.db files written by older fedtune programs
// (tests/fixtures/schema/<commit>/, each with a README saying how it was made) open with the current StateStore,
// read back what they hold, and the run they left in progress continues. The checked-in file is never written: each
// test works on a copy.
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "coordinator/state_store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/schema_fixture.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::coordinator {
namespace {

using federation::RoundState;
using federation::RunState;
using federation::UploadStatus;
using ::fedtune::testing::SchemaVersionOf;
using ::testing::ElementsAre;
using ::testing::EndsWith;

// Made at commit 7e2d390 (coordinator schema 2); the values below are those of its README and facts.txt.
constexpr char kFixture7e2d390[] = FEDTUNE_SOURCE_DIR "/tests/fixtures/schema/7e2d390/coordinator.db";
constexpr char kInitial[] = "d3addb2cf61f9ad4466eb8d7818b03724739930bbfe446f57048d551b73d2752";
constexpr char kRun1Result[] = "a9e1dcac8b76276551cb63989089678b2051f03e4d8d046361343955a457adbe";
constexpr char kRun2Round1[] = "9988c0ef41fb62dda8348b031a45437da0c4c42a03dc5ccb4fa9a29d346d917b";
constexpr char kSiteAKey[] = "57e0d110424215d1b93b87753a7dbc040812d71f9c7dffe3341f159bd96998af";

// The schema version a new coordinator.db gets from the current code.
int CurrentVersion(const fedtune::testing::TempDir& tmp) {
  const std::string path = tmp.Join("fresh.db");
  EXPECT_TRUE(StateStore::Open(path).ok());
  return SchemaVersionOf(path);
}

std::string CopyFixture(const fedtune::testing::TempDir& tmp) {
  return fedtune::testing::CopySchemaFixture(tmp, kFixture7e2d390);
}

std::unique_ptr<StateStore> OpenStore(const std::string& path) {
  auto store = StateStore::Open(path);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? *std::move(store) : nullptr;
}

TEST(StateStoreFixtureTest, Fixture7e2d390MigratesToTheCurrentSchema) {
  fedtune::testing::TempDir tmp;
  const std::string path = CopyFixture(tmp);
  ASSERT_EQ(SchemaVersionOf(path), 2);
  ASSERT_NE(OpenStore(path), nullptr);
  EXPECT_EQ(SchemaVersionOf(path), CurrentVersion(tmp));
  EXPECT_EQ(SchemaVersionOf(kFixture7e2d390), 2) << "the checked-in fixture was written";
}

TEST(StateStoreFixtureTest, Fixture7e2d390SitesReadBack) {
  fedtune::testing::TempDir tmp;
  auto store = OpenStore(CopyFixture(tmp));
  ASSERT_NE(store, nullptr);
  auto sites = store->ListSites();
  ASSERT_TRUE(sites.ok()) << sites.status();
  ASSERT_EQ(sites->size(), 3u);
  std::vector<std::string> ids, statuses, serials;
  for (const SiteRecord& s : *sites) {
    ids.push_back(s.site_id);
    statuses.push_back(std::string(federation::Text(s.status)));
    serials.push_back(s.certificate_serial);
    EXPECT_EQ(s.key_sha256.size(), 64u) << s.site_id << ": key pinned at its first Hello";
    EXPECT_EQ(s.offered_key_sha256, "") << s.site_id;
    EXPECT_EQ(s.dataset.images(), 80) << s.site_id;
    EXPECT_EQ(s.capabilities.device(), "cpu") << s.site_id;
  }
  EXPECT_THAT(ids, ElementsAre("site-a", "site-b", "site-c"));
  EXPECT_THAT(statuses, ElementsAre("approved", "approved", "approved"));
  EXPECT_THAT(serials, ElementsAre("3", "4", "5"));
  const SiteRecord& a = (*sites)[0];
  EXPECT_EQ(a.key_sha256, kSiteAKey);
  EXPECT_EQ(a.first_seen_ms, 1796614364502);
  EXPECT_EQ(a.dataset.studies(), 56);
  EXPECT_EQ(a.dataset.patients(), 41);
  EXPECT_EQ(a.state, "done");
  EXPECT_DOUBLE_EQ(a.progress, 1.0);
  EXPECT_DOUBLE_EQ(a.train_loss, 1.1399329900741577);
  EXPECT_EQ((*sites)[2].state, "") << "site-c never trained";
}

TEST(StateStoreFixtureTest, Fixture7e2d390RunsAndRoundsReadBack) {
  fedtune::testing::TempDir tmp;
  auto store = OpenStore(CopyFixture(tmp));
  ASSERT_NE(store, nullptr);
  auto done = store->GetRun("run-0001");
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->name, "fixture-complete");
  EXPECT_EQ(done->state, RunState::kCompleted);
  EXPECT_THAT(done->sites, ElementsAre("site-a", "site-b"));
  EXPECT_EQ(done->base_model_digest, kInitial);
  EXPECT_EQ(done->final_model_digest, kRun1Result);
  EXPECT_EQ(done->current_round, 1);
  EXPECT_EQ(done->started_ms, 1796614365223);
  EXPECT_EQ(done->finished_ms, 1796614365944);
  EXPECT_EQ(done->config.rounds(), 1);
  EXPECT_EQ(done->message,
            "completed 1 round(s); final evaluation: every site sent its final evaluation (2 of 2 sites)");

  auto active = store->ActiveRun();
  ASSERT_TRUE(active.ok()) << active.status();
  ASSERT_TRUE(active->has_value());
  const RunRecord& run = **active;
  EXPECT_EQ(run.run_id, "run-0002");
  EXPECT_EQ(run.name, "fixture-in-progress");
  EXPECT_EQ(run.state, RunState::kRunning);
  EXPECT_THAT(run.sites, ElementsAre("site-a", "site-b", "site-c"));
  EXPECT_EQ(run.base_model_digest, kRun1Result);
  EXPECT_EQ(run.final_model_digest, "");
  EXPECT_EQ(run.current_round, 2);
  EXPECT_EQ(run.fedadam_rounds, 1);
  EXPECT_THAT(run.fedadam_state_path, EndsWith("/coordinator/state/fedadam/run-0002-round-1.bundle"));
  EXPECT_EQ(run.started_ms, 1796614366562);
  EXPECT_EQ(run.finished_ms, 0);
  EXPECT_EQ(run.config.rounds(), 3);
  EXPECT_EQ(run.config.min_sites(), 2);
  EXPECT_EQ(run.config.round_deadline_seconds(), 40);
  EXPECT_EQ(run.config.local_epochs(), 2);
  EXPECT_EQ(run.config.aggregation(), "fedadam");
  EXPECT_EQ(run.config.compression(), "int8");

  auto recent = store->RecentRuns(10);
  ASSERT_TRUE(recent.ok()) << recent.status();
  ASSERT_EQ(recent->size(), 2u);
  EXPECT_EQ((*recent)[0].run_id, "run-0002");

  auto rounds = store->ListRounds("run-0002");
  ASSERT_TRUE(rounds.ok()) << rounds.status();
  ASSERT_EQ(rounds->size(), 2u);
  const RoundRecord& closed = (*rounds)[0];
  EXPECT_EQ(closed.round, 1);
  EXPECT_EQ(closed.attempt, 1);
  EXPECT_EQ(closed.state, RoundState::kClosed);
  EXPECT_EQ(closed.model_digest, kRun1Result);
  EXPECT_EQ(closed.result_digest, kRun2Round1);
  EXPECT_EQ(closed.closed_ms - closed.opened_ms, 40128) << "closed at its deadline";
  EXPECT_EQ(closed.message, "2 update(s), 94 samples: fedavg");
  const RoundRecord& open = (*rounds)[1];
  EXPECT_EQ(open.round, 2);
  EXPECT_EQ(open.attempt, 1);
  EXPECT_EQ(open.state, RoundState::kOpen);
  EXPECT_EQ(open.model_digest, kRun2Round1);
  EXPECT_EQ(open.result_digest, "");
  EXPECT_EQ(open.opened_ms, 1796614406690);
  EXPECT_EQ(open.deadline_ms, 1796614446690);
  EXPECT_EQ(open.closed_ms, 0);
}

TEST(StateStoreFixtureTest, Fixture7e2d390UpdatesModelsMetricsReadBack) {
  fedtune::testing::TempDir tmp;
  auto store = OpenStore(CopyFixture(tmp));
  ASSERT_NE(store, nullptr);
  auto updates = store->ListUpdates("run-0002", 2, std::nullopt, "", UploadStatus::kAccepted);
  ASSERT_TRUE(updates.ok()) << updates.status();
  ASSERT_EQ(updates->size(), 2u);
  const UpdateRecord& a = (*updates)[0];
  EXPECT_EQ(a.id, 5);
  EXPECT_EQ(a.site_id, "site-a");
  EXPECT_EQ(a.attempt, 1);
  EXPECT_EQ(a.sha256, "fda3b070ea1720151c4c7818282f37c3c391c61212c023fa53653293f1e1c2f3");
  EXPECT_EQ(a.bytes, 27742);
  EXPECT_EQ(a.num_samples, 49);
  EXPECT_DOUBLE_EQ(a.l2_norm, 2.5965198646662335);
  EXPECT_DOUBLE_EQ(a.train_loss, 1.1399329900741577);
  EXPECT_DOUBLE_EQ(a.validation_loss, 1.1828862428665161);
  EXPECT_EQ(a.message, "norm 2.59652");
  EXPECT_THAT(a.spool_path, EndsWith("/spool/run-0002/r2-a1-site-a-" + a.sha256 + ".upload"));
  EXPECT_EQ(a.received_ms, 1796614406993);
  EXPECT_EQ((*updates)[1].id, 6);
  EXPECT_EQ((*updates)[1].site_id, "site-b");
  EXPECT_EQ((*updates)[1].num_samples, 45);
  auto all = store->ListUpdates("run-0002", std::nullopt, std::nullopt, "", std::nullopt);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->size(), 4u);

  auto latest = store->LatestModelVersion();
  ASSERT_TRUE(latest.ok()) << latest.status();
  ASSERT_TRUE(latest->has_value());
  EXPECT_EQ((*latest)->digest, kRun2Round1);
  EXPECT_EQ((*latest)->parent_digest, kRun1Result);
  EXPECT_EQ((*latest)->run_id, "run-0002");
  EXPECT_EQ((*latest)->round, 1);
  EXPECT_EQ((*latest)->bytes, 112386);
  auto initial = store->GetModelVersion(kInitial);
  ASSERT_TRUE(initial.ok()) << initial.status();
  ASSERT_TRUE(initial->has_value());
  EXPECT_EQ((*initial)->parent_digest, "");
  EXPECT_EQ((*initial)->bytes, 112322);
  auto found = store->FindModelVersions("a9e1dcac");
  ASSERT_TRUE(found.ok()) << found.status();
  ASSERT_EQ(found->size(), 1u);
  EXPECT_EQ((*found)[0].parent_digest, kInitial);
  auto using_run1_model = store->RunsUsingModel(kRun1Result);
  ASSERT_TRUE(using_run1_model.ok()) << using_run1_model.status();
  ASSERT_EQ(using_run1_model->size(), 2u) << "run-0001 made it, run-0002 started from it";

  auto metrics = store->ListMetrics("run-0001");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  ASSERT_EQ(metrics->size(), 4u);
  int finals = 0;
  for (const MetricsRecord& m : *metrics) {
    if (m.kind != "final") continue;
    ++finals;
    EXPECT_EQ(m.report.run_id(), "run-0001");
    ASSERT_EQ(m.report.models_size(), 3);
    EXPECT_EQ(m.report.models(0).name(), "open-source");
    EXPECT_EQ(m.report.models(1).name(), "global");
    EXPECT_EQ(m.report.models(2).name(), "adapted");
    if (m.site_id == "site-a") {
      EXPECT_EQ(m.report.test_cases(), 17);
    }
  }
  EXPECT_EQ(finals, 2);

  auto transfers = store->GetTransfers("run-0002");
  ASSERT_TRUE(transfers.ok()) << transfers.status();
  ASSERT_EQ(transfers->size(), 2u);
  EXPECT_EQ(transfers->at("site-a"), std::make_pair(int64_t{112386}, int64_t{55484}));

  auto audit = store->ListAudit();
  ASSERT_TRUE(audit.ok()) << audit.status();
  ASSERT_EQ(audit->size(), 145u);
  EXPECT_EQ((*audit)[0].rpc, "SiteService/Hello");
  EXPECT_EQ((*audit)[0].peer_cn, "site-a");
  EXPECT_EQ((*audit)[0].serial, "3");
  EXPECT_EQ((*audit)[0].role, "site");
  EXPECT_EQ((*audit)[0].decision, "allow");
  EXPECT_EQ((*audit)[0].code, "OK");
}

// The next steps of run-0002 as the round manager takes them: site-c's late update, round 2 closes and round 3
// opens, round 3 closes and the run completes; then a new run. Everything is there after a reopen.
TEST(StateStoreFixtureTest, Fixture7e2d390InProgressRunContinues) {
  fedtune::testing::TempDir tmp;
  const std::string path = CopyFixture(tmp);
  const std::string round2_result(64, '2'), round3_result(64, '3');
  {
    auto store = OpenStore(path);
    ASSERT_NE(store, nullptr);
    UpdateRecord late;
    late.run_id = "run-0002";
    late.round = 2;
    late.attempt = 1;
    late.site_id = "site-c";
    late.sha256 = std::string(64, 'c');
    late.bytes = 27742;
    late.num_samples = 50;
    late.status = UploadStatus::kAccepted;
    late.received_ms = 1796614410000;
    auto id = store->InsertUpdate(late);
    ASSERT_TRUE(id.ok()) << id.status();
    EXPECT_EQ(*id, 7);
    UpdateRecord again = late;
    again.site_id = "site-a";
    EXPECT_EQ(store->InsertUpdate(again).status().code(), absl::StatusCode::kAlreadyExists)
        << "the one-accepted-update-per-site index survived the migration";

    auto run = store->GetRun("run-0002");
    ASSERT_TRUE(run.ok()) << run.status();
    auto rounds = store->ListRounds("run-0002");
    ASSERT_TRUE(rounds.ok()) << rounds.status();
    RunTransition next{*run, rounds->back(), std::nullopt, std::nullopt};
    next.run.current_round = 3;
    next.finish_round->state = RoundState::kClosed;
    next.finish_round->result_digest = round2_result;
    next.finish_round->closed_ms = 1796614411000;
    next.finish_round->message = "3 update(s), 144 samples: fedavg";
    next.new_model = ModelVersion{round2_result, kRun2Round1, "/blobs/2", "run-0002", 2, 112386, 1796614411000};
    next.open_round =
        RoundRecord{"run-0002", 3, 1, RoundState::kOpen, round2_result, "", 1796614411000, 1796614451000, 0, ""};
    ASSERT_TRUE(store->ApplyTransition(next).ok());
    ASSERT_TRUE(store->AddTransfer("run-0002", "site-c", 112386, 27742).ok());

    RunTransition last{next.run, *next.open_round, std::nullopt, std::nullopt};
    last.run.state = RunState::kCompleted;
    last.run.final_model_digest = round3_result;
    last.run.finished_ms = 1796614460000;
    last.run.fedadam_rounds = 3;
    last.finish_round->state = RoundState::kClosed;
    last.finish_round->result_digest = round3_result;
    last.finish_round->closed_ms = 1796614460000;
    last.new_model = ModelVersion{round3_result, round2_result, "/blobs/3", "run-0002", 3, 112386, 1796614460000};
    ASSERT_TRUE(store->ApplyTransition(last).ok());
    auto next_id = store->NextRunId();
    ASSERT_TRUE(next_id.ok()) << next_id.status();
    EXPECT_EQ(*next_id, "run-0003");
    RunRecord third = *run;
    third.run_id = *next_id;
    third.name = "after the migration";
    third.base_model_digest = round3_result;
    third.current_round = 1;
    ASSERT_TRUE(store
                    ->CreateRun(third, RoundRecord{*next_id, 1, 1, RoundState::kOpen, round3_result, "", 1796614470000,
                                                   1796614510000, 0, ""})
                    .ok());
    auto pinned = store->PinSiteKey("site-a", std::string(64, 'f'), "9", false, 1796614470000);
    ASSERT_TRUE(pinned.ok()) << pinned.status();
    EXPECT_EQ(pinned->key_sha256, kSiteAKey) << "another key does not replace the pinned one";
    EXPECT_EQ(pinned->offered_key_sha256, std::string(64, 'f'));
  }
  auto store = OpenStore(path);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(SchemaVersionOf(path), CurrentVersion(tmp));
  auto run = store->GetRun("run-0002");
  ASSERT_TRUE(run.ok()) << run.status();
  EXPECT_EQ(run->state, RunState::kCompleted);
  EXPECT_EQ(run->final_model_digest, round3_result);
  EXPECT_EQ(run->current_round, 3);
  EXPECT_EQ(run->started_ms, 1796614366562) << "kept from the old file";
  auto rounds = store->ListRounds("run-0002");
  ASSERT_TRUE(rounds.ok()) << rounds.status();
  ASSERT_EQ(rounds->size(), 3u);
  EXPECT_EQ((*rounds)[0].result_digest, kRun2Round1);
  EXPECT_EQ((*rounds)[1].state, RoundState::kClosed);
  EXPECT_EQ((*rounds)[1].result_digest, round2_result);
  EXPECT_EQ((*rounds)[1].opened_ms, 1796614406690) << "kept from the old file";
  EXPECT_EQ((*rounds)[2].state, RoundState::kClosed);
  auto round2 = store->ListUpdates("run-0002", 2, 1, "", UploadStatus::kAccepted);
  ASSERT_TRUE(round2.ok()) << round2.status();
  ASSERT_EQ(round2->size(), 3u);
  EXPECT_EQ((*round2)[2].site_id, "site-c");
  auto latest = store->LatestModelVersion();
  ASSERT_TRUE(latest.ok() && latest->has_value());
  EXPECT_EQ((*latest)->digest, round3_result);
  auto active = store->ActiveRun();
  ASSERT_TRUE(active.ok()) << active.status();
  ASSERT_TRUE(active->has_value());
  EXPECT_EQ((*active)->run_id, "run-0003");
  auto transfers = store->GetTransfers("run-0002");
  ASSERT_TRUE(transfers.ok()) << transfers.status();
  EXPECT_EQ(transfers->size(), 3u);
  auto site = store->GetSite("site-a");
  ASSERT_TRUE(site.ok() && site->has_value());
  EXPECT_EQ((*site)->offered_serial, "9");
}

}  // namespace
}  // namespace fedtune::coordinator
