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

TEST(FileUtilTest, CopyFileAtomicallyReplacesTheDestinationAndNamesAFailure) {
  testing::TempDir dir;
  const std::string from = dir.WriteFile("model.ckpt", "weights");
  const std::string to = dir.WriteFile("adapted.ckpt", "older weights");
  ASSERT_TRUE(CopyFileAtomically(from, to).ok());
  EXPECT_EQ(*ReadFile(to), "weights");
  EXPECT_FALSE(std::filesystem::exists(to + ".tmp"));
  const absl::Status missing = CopyFileAtomically(dir.Join("missing.ckpt"), to);
  EXPECT_EQ(missing.code(), absl::StatusCode::kInternal);
  EXPECT_NE(missing.message().find("missing.ckpt"), absl::string_view::npos) << missing;
  EXPECT_EQ(*ReadFile(to), "weights");
}

TEST(FileUtilTest, AtomicWriteOptionsSetTheModeAndRefuseToReplace) {
  testing::TempDir dir;
  const std::string path = dir.Join("secret");
  auto mode_of = [](const std::string& p) {
    struct stat st;
    return ::stat(p.c_str(), &st) == 0 ? static_cast<int>(st.st_mode & 0777) : -1;
  };
  AtomicWriteOptions private_once;
  private_once.mode = 0600;
  private_once.overwrite = false;
  ASSERT_TRUE(WriteFileAtomically(path, "first", private_once).ok());
  EXPECT_EQ(mode_of(path), 0600);
  const absl::Status again = WriteFileAtomically(path, "second", private_once);
  EXPECT_EQ(again.code(), absl::StatusCode::kAlreadyExists) << again;
  EXPECT_NE(again.message().find(path), absl::string_view::npos) << again;
  EXPECT_EQ(*ReadFile(path), "first");
  // The default replaces, with mode 0644; no temporary file is left behind either way.
  ASSERT_TRUE(WriteFileAtomically(path, "third").ok());
  EXPECT_EQ(*ReadFile(path), "third");
  EXPECT_EQ(mode_of(path), 0644);
  int files = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(dir.path())) ++files;
  EXPECT_EQ(files, 1);
}

TEST(FileUtilTest, FileSizeIsZeroForAMissingFile) {
  testing::TempDir dir;
  EXPECT_EQ(*FileSize(dir.Join("absent.part")), 0);
  EXPECT_EQ(*FileSize(dir.WriteFile("seven", "1234567")), 7);
  dir.WriteFile("file", "x");
  const absl::StatusOr<int64_t> through_file = FileSize(dir.Join("file/child"));
  EXPECT_EQ(through_file.status().code(), absl::StatusCode::kNotFound) << through_file.status();
  EXPECT_NE(through_file.status().message().find("cannot stat"), absl::string_view::npos);
}

TEST(FileUtilTest, MakeDirectories) {
  testing::TempDir dir;
  EXPECT_TRUE(MakeDirectories(dir.Join("a/b/c")).ok());
  EXPECT_TRUE(MakeDirectories(dir.Join("a/b/c")).ok());
  dir.WriteFile("file", "x");
  EXPECT_FALSE(MakeDirectories(dir.Join("file")).ok());
}

TEST(FileUtilTest, AppendOnlyFileAppendsAndResumesAtItsSize) {
  testing::TempDir dir;
  const std::string path = dir.Join("payload.part");
  {
    absl::StatusOr<AppendOnlyFile> f = AppendOnlyFile::Open(path);
    ASSERT_TRUE(f.ok()) << f.status();
    ASSERT_TRUE(f->Append("abc").ok());
    ASSERT_TRUE(f->Append("").ok());
  }  // Closed by the destructor: a broken transfer.
  absl::StatusOr<AppendOnlyFile> again = AppendOnlyFile::Open(path);
  ASSERT_TRUE(again.ok());
  ASSERT_TRUE(again->Append("def").ok());
  ASSERT_TRUE(again->Close().ok());
  EXPECT_EQ(*ReadFile(path), "abcdef");
  absl::StatusOr<AppendOnlyFile> missing_dir = AppendOnlyFile::Open(dir.Join("no/such/f"));
  EXPECT_EQ(missing_dir.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing_dir.status().message().find("no/such/f"), absl::string_view::npos);
}

}  // namespace
}  // namespace fedtune::io
