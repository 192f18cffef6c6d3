#include "common/store/database.h"

#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::store {
namespace {

using ::testing::HasSubstr;

const std::vector<Migration>& Schema() {
  static const std::vector<Migration> kSchema = {
      {1, "CREATE TABLE epochs (epoch INTEGER PRIMARY KEY, loss REAL NOT NULL);"},
      {2, "ALTER TABLE epochs ADD COLUMN note TEXT;"},
  };
  return kSchema;
}

TEST(DatabaseTest, MigratesAndPersistsAcrossReopen) {
  testing::TempDir dir;
  const std::string path = dir.Join("state.db");
  {
    auto db = Database::Open(path, absl::MakeConstSpan(Schema()).subspan(0, 1));
    ASSERT_TRUE(db.ok()) << db.status();
    EXPECT_EQ((*db)->SchemaVersion(), 1);
    auto insert = (*db)->Prepare("INSERT INTO epochs (epoch, loss) VALUES (?, ?);");
    ASSERT_TRUE(insert.ok());
    ASSERT_TRUE(insert->Bind(1, int64_t{1}).Bind(2, 0.5).Run().ok());
  }
  auto db = Database::Open(path, Schema());
  ASSERT_TRUE(db.ok()) << db.status();
  EXPECT_EQ((*db)->SchemaVersion(), 2);
  auto select = (*db)->Prepare("SELECT epoch, loss, note FROM epochs;");
  ASSERT_TRUE(select.ok());
  ASSERT_TRUE(*select->Step());
  EXPECT_EQ(select->ColumnInt(0), 1);
  EXPECT_EQ(select->ColumnDouble(1), 0.5);
  EXPECT_TRUE(select->ColumnIsNull(2));
  EXPECT_FALSE(*select->Step());
}

TEST(DatabaseTest, TransactionRollsBackOnError) {
  auto db = Database::Open(":memory:", Schema());
  ASSERT_TRUE(db.ok());
  absl::Status status = (*db)->InTransaction([&]() -> absl::Status {
    auto st = (*db)->Execute("INSERT INTO epochs (epoch, loss) VALUES (1, 0.1);");
    if (!st.ok()) return st;
    return absl::InternalError("stop");
  });
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  auto count = (*db)->Prepare("SELECT COUNT(*) FROM epochs;");
  ASSERT_TRUE(*count->Step());
  EXPECT_EQ(count->ColumnInt(0), 0);
}

TEST(DatabaseTest, ErrorsAreMappedAndNamed) {
  testing::TempDir dir;
  auto db = Database::Open(dir.Join("x.db"), Schema());
  ASSERT_TRUE(db.ok());
  ASSERT_TRUE((*db)->Execute("INSERT INTO epochs (epoch, loss) VALUES (1, 0.1);").ok());
  absl::Status dup = (*db)->Execute("INSERT INTO epochs (epoch, loss) VALUES (1, 0.2);");
  EXPECT_EQ(dup.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(dup.message()), HasSubstr("x.db"));
  EXPECT_FALSE((*db)->Prepare("SELEKT 1").ok());
  auto bad_bind = (*db)->Prepare("SELECT ?;");
  ASSERT_TRUE(bad_bind.ok());
  EXPECT_EQ(bad_bind->Bind(5, int64_t{1}).Step().status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DatabaseTest, GarbageFileIsDataLossAndNewerSchemaIsRefused) {
  testing::TempDir dir;
  const std::string garbage = dir.WriteFile("garbage.db", std::string(4096, 'x'));
  EXPECT_EQ(Database::Open(garbage, Schema()).status().code(), absl::StatusCode::kDataLoss);
  const std::string path = dir.Join("new.db");
  ASSERT_TRUE(Database::Open(path, Schema()).ok());
  auto old = Database::Open(path, absl::MakeConstSpan(Schema()).subspan(0, 1));
  EXPECT_EQ(old.status().code(), absl::StatusCode::kFailedPrecondition);
  std::vector<Migration> misnumbered = {{2, "SELECT 1;"}};
  EXPECT_EQ(Database::Open(":memory:", misnumbered).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DatabaseTest, TwoConnectionsSeeEachOthersCommits) {
  testing::TempDir dir;
  const std::string path = dir.Join("shared.db");
  auto a = Database::Open(path, Schema());
  auto b = Database::Open(path, Schema());
  ASSERT_TRUE(a.ok() && b.ok());
  std::thread writer([&] { ASSERT_TRUE((*a)->Execute("INSERT INTO epochs (epoch, loss) VALUES (7, 1.5);").ok()); });
  writer.join();
  auto select = (*b)->Prepare("SELECT loss FROM epochs WHERE epoch = 7;");
  ASSERT_TRUE(*select->Step());
  EXPECT_EQ(select->ColumnDouble(0), 1.5);
}

}  // namespace
}  // namespace fedtune::store
