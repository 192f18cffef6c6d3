#include "common/io/file_util.h"

#include <sys/stat.h>

#include <filesystem>

#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::io {
namespace {

TEST(FileUtilTest, AtomicWriteReplacesAndLeavesNoTemporaries) {
  testing::TempDir dir;
  const std::string path = dir.Join("report.json");
  ASSERT_TRUE(WriteFileAtomically(path, "old").ok());
  ASSERT_TRUE(WriteFileAtomically(path, "new contents").ok());
  EXPECT_EQ(*ReadFile(path), "new contents");
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    ++files;
    EXPECT_EQ(entry.path().filename(), "report.json");
  }
  EXPECT_EQ(files, 1);
}

TEST(FileUtilTest, FailedWriteLeavesTheOldFile) {
  testing::TempDir dir;
  const std::string path = dir.Join("keep.txt");
  ASSERT_TRUE(WriteFileAtomically(path, "precious").ok());
  // A directory in the way of the rename: the write fails and the directory is
  // untouched.
  const std::string blocked = dir.Join("blocked");
  std::filesystem::create_directory(blocked);
  std::filesystem::create_directory(blocked + "/child");
  EXPECT_FALSE(WriteFileAtomically(blocked, "x").ok());
  EXPECT_TRUE(std::filesystem::is_directory(blocked + "/child"));
  EXPECT_EQ(*ReadFile(path), "precious");
  EXPECT_EQ(WriteFileAtomically(dir.Join("no/such/dir/f"), "x").code(), absl::StatusCode::kNotFound);
}

TEST(FileUtilTest, MakeDirectories) {
  testing::TempDir dir;
  EXPECT_TRUE(MakeDirectories(dir.Join("a/b/c")).ok());
  EXPECT_TRUE(MakeDirectories(dir.Join("a/b/c")).ok());
  dir.WriteFile("file", "x");
  EXPECT_FALSE(MakeDirectories(dir.Join("file")).ok());
}

}  // namespace
}  // namespace fedtune::io
