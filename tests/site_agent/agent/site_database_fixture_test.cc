// The site's schema migrates forward: site.db files written by older fedtune-site programs
// (tests/fixtures/schema/<commit>/, each with a README saying how it was made) open with the current code, read back
// what they hold, and take the next records. The checked-in files are never written: each test works on a copy.
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status_macros.h"
#include "gmock/gmock.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "site_agent/agent/agent_database.h"
#include "site_agent/commands/site_database.h"
#include "tests/testing/schema_fixture.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::agent {
namespace {

using ::fedtune::testing::CopySchemaFixture;
using ::fedtune::testing::SchemaVersionOf;
using ::fedtune::testing::TempDir;
using ::testing::EndsWith;
using ::testing::IsEmpty;

// Made at commit 7e2d390 (site schema 1); the values below are those of its README and facts.txt.
constexpr char kAgentFixture[] = FEDTUNE_SOURCE_DIR "/tests/fixtures/schema/7e2d390/site-a.db";
constexpr char kFinetuneFixture[] = FEDTUNE_SOURCE_DIR "/tests/fixtures/schema/7e2d390/site-a-finetune.db";
constexpr char kRun2Round1[] = "9988c0ef41fb62dda8348b031a45437da0c4c42a03dc5ccb4fa9a29d346d917b";
constexpr char kRun2Adapted[] = "d798fc0b1e4be1eacdbaa84ff26000e148533c5e04849d2cbf2a59abe117792d";

// The schema version a new site.db gets from the current code.
int CurrentVersion(const TempDir& tmp) {
  auto db = OpenSiteDatabase(tmp.Join("fresh.db"));
  EXPECT_TRUE(db.ok()) << db.status();
  return db.ok() ? (*db)->SchemaVersion() : -1;
}

std::unique_ptr<AgentDatabase> OpenAgent(const std::string& path) {
  auto db = AgentDatabase::Open(path);
  EXPECT_TRUE(db.ok()) << db.status();
  return db.ok() ? *std::move(db) : nullptr;
}

v1::Task TrainTask(const std::string& run, int round, const std::string& digest) {
  v1::Task task;
  task.set_kind(v1::Task::TRAIN);
  task.set_run_id(run);
  task.set_round(round);
  task.set_attempt(1);
  task.set_model_digest(digest);
  task.set_total_rounds(3);
  return task;
}

// Rows of `sql` (one integer or text column) as text.
absl::StatusOr<std::vector<std::string>> Column(store::Database& db, const std::string& sql) {
  ASSIGN_OR_RETURN(store::Statement st, db.Prepare(sql));
  std::vector<std::string> values;
  while (true) {
    ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) return values;
    values.push_back(st.ColumnText(0));
  }
}

TEST(SiteDatabaseFixtureTest, Fixture7e2d390AgentDatabaseReadsBack) {
  TempDir tmp;
  const std::string path = CopySchemaFixture(tmp, kAgentFixture);
  ASSERT_EQ(SchemaVersionOf(path), 1);
  auto db = OpenAgent(path);
  ASSERT_NE(db, nullptr);
  EXPECT_EQ(db->database().SchemaVersion(), CurrentVersion(tmp));
  EXPECT_EQ(SchemaVersionOf(kAgentFixture), 1) << "the checked-in fixture was written";

  auto task = db->FindTask({"run-0002", 2, 1, "train"});
  ASSERT_TRUE(task.ok()) << task.status();
  ASSERT_TRUE(task->has_value());
  EXPECT_EQ((*task)->state, "done");
  EXPECT_EQ((*task)->model_digest, kRun2Round1);
  EXPECT_THAT((*task)->update_path, EndsWith("/site-a/work/runs/run-0002/round-2-1/update.bin"));
  EXPECT_EQ((*task)->update_sha256, "fda3b070ea1720151c4c7818282f37c3c391c61212c023fa53653293f1e1c2f3");
  EXPECT_EQ((*task)->update_bytes, 27742);
  EXPECT_EQ((*task)->num_samples, 49);
  EXPECT_DOUBLE_EQ((*task)->train_loss, 1.1399329900741577);
  EXPECT_DOUBLE_EQ((*task)->validation_loss, 1.1828862428665161);
  EXPECT_EQ((*task)->message, "");
  auto evaluate = db->FindTask({"run-0001", 0, 0, "evaluate"});
  ASSERT_TRUE(evaluate.ok()) << evaluate.status();
  ASSERT_TRUE(evaluate->has_value());
  EXPECT_EQ((*evaluate)->state, "done");
  EXPECT_EQ((*evaluate)->model_digest, "a9e1dcac8b76276551cb63989089678b2051f03e4d8d046361343955a457adbe");
  auto unknown = db->FindTask({"run-0002", 3, 1, "train"});
  ASSERT_TRUE(unknown.ok()) << unknown.status();
  EXPECT_FALSE(unknown->has_value());

  auto best = db->BestAdapted("run-0002");
  ASSERT_TRUE(best.ok()) << best.status();
  ASSERT_TRUE(best->has_value());
  EXPECT_EQ((*best)->round, 1);
  EXPECT_EQ((*best)->attempt, 1);
  EXPECT_EQ((*best)->digest, kRun2Adapted);
  EXPECT_DOUBLE_EQ((*best)->validation_loss, 1.181753396987915);
  EXPECT_THAT((*best)->path, EndsWith("/site-a/work/adapted/run-0002/model.ckpt"));

  auto took_part = db->TookPart("run-0002");
  ASSERT_TRUE(took_part.ok() && *took_part);
  auto interrupted = db->InterruptedTrainTasks();
  ASSERT_TRUE(interrupted.ok()) << interrupted.status();
  EXPECT_THAT(*interrupted, IsEmpty()) << "every task of the fixture is done";
  auto marked = db->MarkRunFinished("run-0001", "completed");
  ASSERT_TRUE(marked.ok()) << marked.status();
  EXPECT_FALSE(*marked) << "run-0001 was marked finished by the old agent";
}

// The agent's next steps in run-0002: round 3's task, its update, its adapted model, the end of the run.
TEST(SiteDatabaseFixtureTest, Fixture7e2d390AgentDatabaseContinues) {
  TempDir tmp;
  const std::string path = CopySchemaFixture(tmp, kAgentFixture);
  const TaskKey round3{"run-0002", 3, 1, "train"};
  const std::string round3_model(64, '3');
  {
    auto db = OpenAgent(path);
    ASSERT_NE(db, nullptr);
    ASSERT_TRUE(db->BeginTask(round3, TrainTask("run-0002", 3, round3_model)).ok());
    ASSERT_TRUE(db->RecordUpdate(round3, tmp.Join("update.bin"), std::string(64, 'u'), 27742, 49, 1.05, 1.10).ok());
    auto interrupted = db->InterruptedTrainTasks();
    ASSERT_TRUE(interrupted.ok()) << interrupted.status();
    ASSERT_EQ(interrupted->size(), 1u) << "the new task's blob reads back";
    EXPECT_EQ((*interrupted)[0].round(), 3);
    EXPECT_EQ((*interrupted)[0].model_digest(), round3_model);
    ASSERT_TRUE(db->SetTaskState(round3, "uploaded").ok());
    ASSERT_TRUE(db->RecordAdapted({"run-0002", 3, 1, std::string(64, 'a'), 1.10, tmp.Join("adapted.ckpt")}).ok());
    ASSERT_TRUE(db->SetTaskState(round3, "done").ok());
    auto marked = db->MarkRunFinished("run-0002", "completed");
    ASSERT_TRUE(marked.ok()) << marked.status();
    EXPECT_TRUE(*marked);
  }
  auto db = OpenAgent(path);
  ASSERT_NE(db, nullptr);
  auto task = db->FindTask(round3);
  ASSERT_TRUE(task.ok()) << task.status();
  ASSERT_TRUE(task->has_value());
  EXPECT_EQ((*task)->state, "done");
  EXPECT_EQ((*task)->update_bytes, 27742);
  auto old = db->FindTask({"run-0002", 2, 1, "train"});
  ASSERT_TRUE(old.ok() && old->has_value());
  EXPECT_EQ((*old)->update_sha256, "fda3b070ea1720151c4c7818282f37c3c391c61212c023fa53653293f1e1c2f3");
  auto best = db->BestAdapted("run-0002");
  ASSERT_TRUE(best.ok() && best->has_value());
  EXPECT_EQ((*best)->round, 3) << "validation loss 1.10 beats round 1's 1.1818";
  auto marked = db->MarkRunFinished("run-0002", "completed");
  ASSERT_TRUE(marked.ok()) << marked.status();
  EXPECT_FALSE(*marked);
  auto runs = Column(db->database(), "SELECT run_id FROM fed_runs ORDER BY run_id;");
  ASSERT_TRUE(runs.ok()) << runs.status();
  EXPECT_THAT(*runs, ::testing::ElementsAre("run-0001", "run-0002"));
}

TEST(SiteDatabaseFixtureTest, Fixture7e2d390FinetuneDatabaseReadsBackAndContinues) {
  TempDir tmp;
  const std::string path = CopySchemaFixture(tmp, kFinetuneFixture);
  ASSERT_EQ(SchemaVersionOf(path), 1);
  std::string run_key;
  {
    auto db = OpenSiteDatabase(path);
    ASSERT_TRUE(db.ok()) << db.status();
    EXPECT_EQ((*db)->SchemaVersion(), CurrentVersion(tmp));
    auto keys = Column(**db, "SELECT run_key FROM finetune_runs;");
    ASSERT_TRUE(keys.ok()) << keys.status();
    ASSERT_EQ(keys->size(), 1u);
    run_key = (*keys)[0];
    EXPECT_THAT(run_key, ::testing::StartsWith("bac61bb9ee49451016d98f84d55d2517cb078cae77ecbe278cf1e55d6c4ba552|"));
    auto result = Column(**db, "SELECT result_digest FROM finetune_runs WHERE id = 1;");
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_THAT(*result, ::testing::ElementsAre(kRun2Adapted));
    auto epochs = Column(**db,
                         "SELECT member || ':' || epoch || ':' || improved FROM finetune_epochs "
                         "ORDER BY epoch;");
    ASSERT_TRUE(epochs.ok()) << epochs.status();
    EXPECT_THAT(*epochs, ::testing::ElementsAre("member0-densenet:0:1", "member0-densenet:1:0"));

    // A resumed run continues under its key and gets a third epoch; a new run gets the next id.
    auto resumed = BeginFinetuneRun(**db, run_key, "ignored", "ignored");
    ASSERT_TRUE(resumed.ok()) << resumed.status();
    EXPECT_EQ(*resumed, 1);
    // The recorder the pipeline attaches continues the same run: its key is the base digest and the config's text.
    const size_t bar = run_key.find('|');
    v1::FinetuneConfig config;
    ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(run_key.substr(bar + 1), &config));
    FinetuneRecorder recorder(path, config);
    ASSERT_TRUE(recorder.OnStart(run_key.substr(0, bar)).ok());
    ASSERT_TRUE(recorder.OnEpoch("member0-densenet", {2, 1.0, 1.1, 500.0, 0.05, true}).ok());
    ASSERT_TRUE(FinishFinetuneRun(**db, *resumed, std::string(64, 'r')).ok());
    auto next = BeginFinetuneRun(**db, "another|config", std::string(64, 'b'), "config");
    ASSERT_TRUE(next.ok()) << next.status();
    EXPECT_EQ(*next, 2);
  }
  auto db = OpenSiteDatabase(path);
  ASSERT_TRUE(db.ok()) << db.status();
  auto epochs = Column(**db, "SELECT epoch FROM finetune_epochs WHERE run_id = 1 ORDER BY epoch;");
  ASSERT_TRUE(epochs.ok()) << epochs.status();
  EXPECT_THAT(*epochs, ::testing::ElementsAre("0", "1", "2"));
  auto runs = Column(**db, "SELECT id || ':' || result_digest FROM finetune_runs WHERE result_digest IS NOT NULL;");
  ASSERT_TRUE(runs.ok()) << runs.status();
  EXPECT_THAT(*runs, ::testing::ElementsAre("1:" + std::string(64, 'r')));
}

}  // namespace
}  // namespace fedtune::agent
