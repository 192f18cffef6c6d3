#include "coordinator/blob_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "common/status_macros.h"

namespace fedtune::coordinator {
namespace {

absl::Status SyncPath(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) return io::ErrnoToStatus(errno, "opening for fsync", path);
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) return io::ErrnoToStatus(err, "fsync", path);
  return absl::OkStatus();
}

}  // namespace

absl::Status SyncFileAndDir(const std::string& path) {
  RETURN_IF_ERROR(SyncPath(path, false));
  std::string dir = std::filesystem::path(path).parent_path().string();
  return SyncPath(dir.empty() ? "." : dir, true);
}

absl::StatusOr<std::unique_ptr<BlobStore>> BlobStore::Open(const std::string& dir) {
  RETURN_IF_ERROR(io::MakeDirectories(dir));
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (absl::StartsWith(entry.path().filename().string(), "tmp-")) std::filesystem::remove(entry.path(), ec);
  }
  if (ec) return absl::InternalError(absl::StrCat("listing blob directory '", dir, "': ", ec.message()));
  return std::unique_ptr<BlobStore>(new BlobStore(dir));
}

std::string BlobStore::TempPath() {
  static std::atomic<uint64_t> counter{0};
  return absl::StrCat(dir_, "/tmp-", ::getpid(), "-", counter.fetch_add(1));
}

absl::StatusOr<std::string> BlobStore::Adopt(const std::string& temp_path) {
  ASSIGN_OR_RETURN(std::string digest, io::Sha256File(temp_path));
  const std::string target = PathOf(digest);
  struct stat st;
  if (::stat(target.c_str(), &st) == 0) {
    std::filesystem::remove(temp_path);
    return digest;
  }
  RETURN_IF_ERROR(SyncPath(temp_path, false));
  if (::rename(temp_path.c_str(), target.c_str()) != 0) return io::ErrnoToStatus(errno, "renaming blob", target);
  RETURN_IF_ERROR(SyncPath(dir_, true));
  return digest;
}

absl::StatusOr<std::string> BlobStore::Import(const std::string& path) {
  const std::string temp = TempPath();
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return absl::NotFoundError(absl::StrCat("model '", path, "' not found"));
  std::filesystem::copy_file(path, temp, std::filesystem::copy_options::overwrite_existing, ec);
  if (ec) return absl::InternalError(absl::StrCat("copying '", path, "' into the blob store: ", ec.message()));
  absl::StatusOr<std::string> digest = Adopt(temp);
  if (!digest.ok()) std::filesystem::remove(temp, ec);
  return digest;
}

std::string BlobStore::PathOf(const std::string& digest) const { return absl::StrCat(dir_, "/", digest); }

absl::StatusOr<int64_t> BlobStore::Size(const std::string& digest) const {
  struct stat st;
  if (!io::IsSha256Hex(digest) || ::stat(PathOf(digest).c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("no model blob ", digest));
  }
  return static_cast<int64_t>(st.st_size);
}

}  // namespace fedtune::coordinator
