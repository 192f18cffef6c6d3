// StateStore's failure reports from sites (coordinator/site_failures_store.cc, migration 4): stored and listed most
// recent first, the latest kMaxFailuresPerSite kept per site, the latest per site and per (site, run), a damaged
// row, and the migration of a database of the previous schema version (3).
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/store/database.h"
#include "coordinator/state_schema.h"
#include "coordinator/state_store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/schema_fixture.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::coordinator {
namespace {

using ::fedtune::testing::SchemaVersionOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::unique_ptr<StateStore> OpenStore(const std::string& path) {
  auto store = StateStore::Open(path);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? *std::move(store) : nullptr;
}

v1::SiteFailure Failure(const std::string& site, const std::string& run, int round, int64_t received_ms) {
  v1::SiteFailure f;
  f.set_site_id(site);
  f.set_received_ms(received_ms);
  v1::FailureReport* r = f.mutable_report();
  r->set_run_id(run);
  r->set_round(round);
  r->set_attempt(1);
  r->set_task_kind(v1::Task::TRAIN);
  r->set_stage(v1::FAILURE_STAGE_TRAINING);
  r->set_error_class("INVALID_ARGUMENT");
  r->set_status_code(3);
  r->set_message(absl::StrCat("[path]: not a decodable image (round ", round, ")"));
  r->add_log_lines("I loading the manifest");
  r->add_log_lines("E [path]: not a decodable image");
  r->set_failed_ms(received_ms - 10);
  r->set_will_retry(round % 2 == 0);
  return f;
}

// The rounds of `failures`, in their order.
std::vector<int> Rounds(const std::vector<v1::SiteFailure>& failures) {
  std::vector<int> rounds;
  for (const v1::SiteFailure& f : failures) rounds.push_back(f.report().round());
  return rounds;
}

int64_t Count(const std::string& path, const std::string& where) {
  auto db = store::Database::Open(path, schema::Migrations());
  EXPECT_TRUE(db.ok()) << db.status();
  auto st = (*db)->Prepare(absl::StrCat("SELECT COUNT(*) FROM site_failures WHERE ", where));
  EXPECT_TRUE(st.ok()) << st.status();
  EXPECT_TRUE(st->Step().value());
  return st->ColumnInt(0);
}

TEST(SiteFailuresStoreTest, RecordsEveryFieldAndListsMostRecentFirst) {
  fedtune::testing::TempDir tmp;
  const std::string path = tmp.Join("coordinator.db");
  {
    auto store = OpenStore(path);
    ASSERT_TRUE(store->InsertSiteFailure(Failure("site-a", "run-0001", 1, 5000)).ok());
    ASSERT_TRUE(store->InsertSiteFailure(Failure("site-b", "run-0001", 7, 5500)).ok());
    ASSERT_TRUE(store->InsertSiteFailure(Failure("site-a", "run-0001", 2, 6000)).ok());
    // Arrival order decides, not the clock (a coordinator's clock may step back).
    ASSERT_TRUE(store->InsertSiteFailure(Failure("site-a", "", 3, 4000)).ok());
  }
  auto store = OpenStore(path);  // Reopened: the reports are durable.
  auto a = store->ListSiteFailures("site-a");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_THAT(Rounds(*a), ElementsAre(3, 2, 1));
  const v1::SiteFailure want = Failure("site-a", "run-0001", 2, 6000);
  EXPECT_EQ((*a)[1].SerializeAsString(), want.SerializeAsString()) << (*a)[1].DebugString();
  EXPECT_EQ((*a)[0].report().run_id(), "");
  auto b = store->ListSiteFailures("site-b");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_THAT(Rounds(*b), ElementsAre(7));
  EXPECT_EQ((*b)[0].site_id(), "site-b");
  auto unknown = store->ListSiteFailures("site-z");
  ASSERT_TRUE(unknown.ok()) << unknown.status();
  EXPECT_TRUE(unknown->empty());
}

TEST(SiteFailuresStoreTest, KeepsTheLatestFiftyPerSite) {
  fedtune::testing::TempDir tmp;
  const std::string path = tmp.Join("coordinator.db");
  auto store = OpenStore(path);
  for (int i = 1; i <= 5; ++i) ASSERT_TRUE(store->InsertSiteFailure(Failure("site-b", "run-0001", i, i)).ok());
  for (int i = 1; i <= kMaxFailuresPerSite + 12; ++i) {
    ASSERT_TRUE(store->InsertSiteFailure(Failure("site-a", "run-0001", i, 100 + i)).ok());
  }
  auto a = store->ListSiteFailures("site-a");
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(a->size(), size_t{kMaxFailuresPerSite});
  EXPECT_EQ(a->front().report().round(), kMaxFailuresPerSite + 12);
  EXPECT_EQ(a->back().report().round(), 13) << "the 12 oldest are gone";
  // Deleted from the table, not only left out of the list; the other site keeps its own.
  EXPECT_EQ(Count(path, "site_id = 'site-a'"), kMaxFailuresPerSite);
  EXPECT_EQ(Count(path, "site_id = 'site-b'"), 5);
  auto b = store->ListSiteFailures("site-b");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_THAT(Rounds(*b), ElementsAre(5, 4, 3, 2, 1));
}

TEST(SiteFailuresStoreTest, LatestPerSiteAndPerRun) {
  auto store = OpenStore(":memory:");
  ASSERT_TRUE(store->InsertSiteFailure(Failure("site-a", "run-0001", 1, 1000)).ok());
  ASSERT_TRUE(store->InsertSiteFailure(Failure("site-a", "run-0001", 2, 2000)).ok());
  ASSERT_TRUE(store->InsertSiteFailure(Failure("site-b", "run-0001", 1, 2500)).ok());
  ASSERT_TRUE(store->InsertSiteFailure(Failure("site-a", "run-0002", 1, 3000)).ok());
  ASSERT_TRUE(store->InsertSiteFailure(Failure("site-b", "", 0, 4000)).ok());

  auto latest = store->LatestSiteFailures(std::nullopt);
  ASSERT_TRUE(latest.ok()) << latest.status();
  ASSERT_EQ(latest->size(), 2u);
  EXPECT_EQ(latest->at("site-a").report().run_id(), "run-0002");
  EXPECT_EQ(latest->at("site-b").report().run_id(), "");
  EXPECT_EQ(latest->at("site-b").received_ms(), 4000);

  auto run1 = store->LatestSiteFailures(std::string("run-0001"));
  ASSERT_TRUE(run1.ok()) << run1.status();
  ASSERT_EQ(run1->size(), 2u);
  EXPECT_EQ(run1->at("site-a").report().round(), 2);
  EXPECT_EQ(run1->at("site-b").report().round(), 1) << "site-b's later report belongs to no run";

  auto run2 = store->LatestSiteFailures(std::string("run-0002"));
  ASSERT_TRUE(run2.ok()) << run2.status();
  ASSERT_EQ(run2->size(), 1u);
  EXPECT_EQ(run2->count("site-a"), 1u);

  auto no_run = store->LatestSiteFailures(std::string(""));
  ASSERT_TRUE(no_run.ok()) << no_run.status();
  ASSERT_EQ(no_run->size(), 1u);
  EXPECT_EQ(no_run->at("site-b").received_ms(), 4000);

  auto none = store->LatestSiteFailures(std::string("run-0003"));
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());
}

TEST(SiteFailuresStoreTest, ASiteIdIsRequiredAndADamagedReportIsDataLoss) {
  fedtune::testing::TempDir tmp;
  const std::string path = tmp.Join("coordinator.db");
  auto store = OpenStore(path);
  absl::Status refused = store->InsertSiteFailure(Failure("", "run-0001", 1, 1000));
  EXPECT_TRUE(absl::IsInvalidArgument(refused)) << refused;
  ASSERT_TRUE(store->InsertSiteFailure(Failure("site-a", "run-0001", 1, 1000)).ok());
  {
    auto db = store::Database::Open(path, schema::Migrations());
    ASSERT_TRUE(db.ok()) << db.status();
    ASSERT_TRUE((*db)->Execute("UPDATE site_failures SET report = X'0aff'").ok());
  }
  absl::Status listed = store->ListSiteFailures("site-a").status();
  EXPECT_TRUE(absl::IsDataLoss(listed)) << listed;
  EXPECT_THAT(listed.message(), HasSubstr("site-a"));
  absl::Status latest = store->LatestSiteFailures(std::nullopt).status();
  EXPECT_TRUE(absl::IsDataLoss(latest)) << latest;
}

// A coordinator.db of schema version 3 (the migrations before failure reports, as the previous release wrote it)
// opens with the current code: migrated to the current version, its rows kept, failure reports stored from then on.
TEST(SiteFailuresStoreTest, MigratesADatabaseOfTheVersionBefore) {
  fedtune::testing::TempDir tmp;
  const std::string path = tmp.Join("coordinator.db");
  const absl::Span<const store::Migration> all = schema::Migrations();
  ASSERT_GE(all.size(), 4u);
  ASSERT_EQ(all[3].version, 4) << "migration 4 creates site_failures";
  {
    auto old = store::Database::Open(path, all.subspan(0, 3));
    ASSERT_TRUE(old.ok()) << old.status();
    ASSERT_TRUE((*old)
                    ->Execute("INSERT INTO sites(site_id, status, first_seen_ms, last_seen_ms, key_sha256) "
                              "VALUES('site-a', 'approved', 10, 20, 'k');"
                              "INSERT INTO metrics(run_id, round, site_id, kind, report, received_ms) "
                              "VALUES('run-0001', 1, 'site-a', 'round', X'', 777);")
                    .ok());
    auto none = (*old)->Prepare("SELECT COUNT(*) FROM sqlite_master WHERE name = 'site_failures'");
    ASSERT_TRUE(none.ok()) << none.status();
    ASSERT_TRUE(none->Step().value());
    ASSERT_EQ(none->ColumnInt(0), 0);
  }
  ASSERT_EQ(SchemaVersionOf(path), 3);
  auto store = OpenStore(path);
  ASSERT_NE(store, nullptr);
  auto site = store->GetSite("site-a");
  ASSERT_TRUE(site.ok()) << site.status();
  ASSERT_TRUE(site->has_value());
  EXPECT_EQ((*site)->key_sha256, "k");
  auto before = store->ListSiteFailures("site-a");
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_TRUE(before->empty());
  ASSERT_TRUE(store->InsertSiteFailure(Failure("site-a", "run-0001", 1, 1000)).ok());
  auto after = store->ListSiteFailures("site-a");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_THAT(Rounds(*after), ElementsAre(1));
  auto metrics = store->ListMetrics("run-0001");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  ASSERT_EQ(metrics->size(), 1u);
  EXPECT_EQ((*metrics)[0].received_ms, 777);
  store.reset();  // Closed: the WAL is checkpointed into the file, whose version is read without SQLite's WAL.
  EXPECT_EQ(SchemaVersionOf(path), static_cast<int>(all.size()));
}

// The coordinator.db the previous release wrote (tests/fixtures/schema/11457e6: schema 3, a completed run and a run
// with round 2 open) migrates to the current schema with its rows, and takes failure reports about its runs.
TEST(SiteFailuresStoreTest, Fixture11457e6MigratesAndTakesFailureReports) {
  constexpr char kFixture[] = FEDTUNE_SOURCE_DIR "/tests/fixtures/schema/11457e6/coordinator.db";
  fedtune::testing::TempDir tmp;
  const std::string path = fedtune::testing::CopySchemaFixture(tmp, kFixture);
  ASSERT_EQ(SchemaVersionOf(path), 3);
  auto store = OpenStore(path);
  ASSERT_NE(store, nullptr);
  auto sites = store->ListSites();
  ASSERT_TRUE(sites.ok()) << sites.status();
  ASSERT_EQ(sites->size(), 3u);
  const SiteRecord& a = (*sites)[0];
  EXPECT_EQ(a.site_id, "site-a");
  EXPECT_EQ(a.first_seen_ms, 1796695496559);
  EXPECT_EQ(a.key_sha256, "95482c3b52ef9e9f93cdb4066acb280cef5f766acb2552429bbc5b0766d96320");
  EXPECT_EQ(a.state, "done");
  EXPECT_DOUBLE_EQ(a.train_loss, 1.1284460226694744);
  EXPECT_EQ((*sites)[2].state, "") << "site-c never trained";
  auto active = store->ActiveRun();
  ASSERT_TRUE(active.ok()) << active.status();
  ASSERT_TRUE(active->has_value());
  EXPECT_EQ((*active)->run_id, "run-0002");
  EXPECT_EQ((*active)->current_round, 2);
  auto updates = store->ListUpdates("run-0002", 2, std::nullopt, "", std::nullopt);
  ASSERT_TRUE(updates.ok()) << updates.status();
  EXPECT_EQ(updates->size(), 2u);
  auto none = store->LatestSiteFailures(std::nullopt);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty()) << "the new table starts empty";
  ASSERT_TRUE(store->InsertSiteFailure(Failure("site-c", "run-0002", 2, 1796695600000)).ok());
  auto run2 = store->LatestSiteFailures(std::string("run-0002"));
  ASSERT_TRUE(run2.ok()) << run2.status();
  ASSERT_EQ(run2->size(), 1u);
  EXPECT_EQ(run2->at("site-c").report().round(), 2);
  store.reset();
  EXPECT_EQ(SchemaVersionOf(path), static_cast<int>(schema::Migrations().size()));
  EXPECT_EQ(SchemaVersionOf(kFixture), 3) << "the checked-in fixture was written";
}

}  // namespace
}  // namespace fedtune::coordinator
