#include "site_agent/commands/site_database.h"

#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::agent {
namespace {

TEST(SiteDatabaseTest, RunsContinueByKeyAndEpochsAreReplaced) {
  testing::TempDir dir;
  auto db = OpenSiteDatabase(dir.Join("site.db"));
  ASSERT_TRUE(db.ok()) << db.status();
  auto first = BeginFinetuneRun(**db, "key-1", "abc", "config");
  auto again = BeginFinetuneRun(**db, "key-1", "abc", "config");
  auto other = BeginFinetuneRun(**db, "key-2", "abc", "config");
  ASSERT_TRUE(first.ok() && again.ok() && other.ok());
  EXPECT_EQ(*first, *again);
  EXPECT_NE(*first, *other);
  ASSERT_TRUE(FinishFinetuneRun(**db, *first, "def").ok());
}

TEST(FinetuneRecorderTest, RecordsTheRunItsEpochsAndItsResult) {
  testing::TempDir dir;
  const std::string path = dir.Join("site.db");
  v1::FinetuneConfig config;
  config.set_manifest("manifest.csv");
  for (int attempt = 0; attempt < 2; ++attempt) {  // The second attempt is a resumed fine-tuning: the same run.
    FinetuneRecorder recorder(path, config);
    ASSERT_TRUE(recorder.OnStart("abc").ok());
    train::EpochRecord r;
    r.epoch = 0;
    r.validation_loss = attempt == 0 ? 0.9 : 0.7;  // The same epoch again, after a resume: replaced.
    ASSERT_TRUE(recorder.OnEpoch("member0-densenet121", r).ok());
    r.epoch = 1;
    ASSERT_TRUE(recorder.OnEpoch("duonet", r).ok());
    train::FinetuneResult result;
    result.weights_sha256 = "def";
    ASSERT_TRUE(recorder.OnFinish(result).ok());
  }
  auto db = OpenSiteDatabase(path);
  ASSERT_TRUE(db.ok()) << db.status();
  auto epochs = (*db)->Prepare("SELECT COUNT(*), MIN(validation_loss), COUNT(DISTINCT run_id) FROM finetune_epochs;");
  ASSERT_TRUE(epochs.ok());
  ASSERT_TRUE(*epochs->Step());
  EXPECT_EQ(epochs->ColumnInt(0), 2);
  EXPECT_DOUBLE_EQ(epochs->ColumnDouble(1), 0.7);
  EXPECT_EQ(epochs->ColumnInt(2), 1);
  auto runs = (*db)->Prepare("SELECT COUNT(*), MAX(base_digest), MAX(result_digest) FROM finetune_runs;");
  ASSERT_TRUE(runs.ok());
  ASSERT_TRUE(*runs->Step());
  EXPECT_EQ(runs->ColumnInt(0), 1);
  EXPECT_EQ(runs->ColumnText(1), "abc");
  EXPECT_EQ(runs->ColumnText(2), "def");
}

TEST(FinetuneRecorderTest, AnEpochBeforeTheStartIsOurBug) {
  testing::TempDir dir;
  FinetuneRecorder recorder(dir.Join("site.db"), v1::FinetuneConfig());
  EXPECT_EQ(recorder.OnEpoch("member0", train::EpochRecord()).code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace fedtune::agent
