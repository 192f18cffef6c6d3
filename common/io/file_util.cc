#include "common/io/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace fedtune::io {
namespace {

std::string ParentDir(const std::string& path) {
  std::filesystem::path p(path);
  std::string parent = p.parent_path().string();
  return parent.empty() ? "." : parent;
}

// Writes all of `data` to `fd`, retrying short writes and EINTR. 0, or the errno of the failed write.
int WriteAll(int fd, absl::string_view data) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    done += static_cast<size_t>(n);
  }
  return 0;
}

}  // namespace

absl::Status ErrnoToStatus(int err, absl::string_view what, absl::string_view path) {
  std::string msg = absl::StrCat(what, " '", path, "': ", std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(msg);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(msg);
    case EEXIST:
      return absl::AlreadyExistsError(msg);
    case EISDIR:
      return absl::InvalidArgumentError(msg);
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(msg);
    default:
      return absl::InternalError(msg);
  }
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoToStatus(errno, "cannot open", path);
  struct stat st;
  if (::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is a directory, not a file"));
  }
  std::string out;
  if (st.st_size > 0) out.reserve(static_cast<size_t>(st.st_size));
  std::vector<char> buf(1 << 16);
  while (true) {
    ssize_t got = ::read(fd, buf.data(), buf.size());
    if (got < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return ErrnoToStatus(err, "cannot read", path);
    }
    if (got == 0) break;
    out.append(buf.data(), static_cast<size_t>(got));
  }
  ::close(fd);
  return out;
}

absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents,
                                 const AtomicWriteOptions& options) {
  return WriteFileAtomicallyWith(
      path, [contents](const ByteSink& sink) { return sink(contents); }, options);
}

absl::Status WriteFileAtomicallyWith(const std::string& path, const std::function<absl::Status(const ByteSink&)>& write,
                                     const AtomicWriteOptions& options) {
  const std::string dir = ParentDir(path);
  std::string tmpl = absl::StrCat(path, ".tmp.XXXXXX");
  std::vector<char> name(tmpl.begin(), tmpl.end());
  name.push_back('\0');
  int fd = ::mkstemp(name.data());  // mkstemp creates the file with mode 0600.
  if (fd < 0) return ErrnoToStatus(errno, "cannot create a temporary file beside", path);
  const std::string tmp(name.data());
  auto fail = [&](int err, absl::string_view what) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return ErrnoToStatus(err, what, path);
  };
  if (::fchmod(fd, static_cast<mode_t>(options.mode)) != 0) return fail(errno, "cannot set permissions of");
  const ByteSink sink = [fd, &path](absl::string_view piece) {
    const int err = WriteAll(fd, piece);
    return err == 0 ? absl::OkStatus() : ErrnoToStatus(err, "cannot write", path);
  };
  if (absl::Status written = write(sink); !written.ok()) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return written;
  }
  if (::fsync(fd) != 0) return fail(errno, "cannot flush");
  if (::close(fd) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoToStatus(err, "cannot close", path);
  }
  // Without overwrite, link() publishes the file only if `path` does not exist yet (atomically, unlike a check
  // followed by rename()); the temporary name is then removed.
  const int rc = options.overwrite ? ::rename(tmp.c_str(), path.c_str()) : ::link(tmp.c_str(), path.c_str());
  const int err = errno;
  if (rc != 0 || !options.overwrite) ::unlink(tmp.c_str());
  if (rc != 0) {
    if (err == EEXIST && !options.overwrite) {
      return absl::AlreadyExistsError(absl::StrCat("'", path, "' already exists"));
    }
    return ErrnoToStatus(err, "cannot rename a temporary file onto", path);
  }
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);  // Best effort: some file systems refuse fsync on directories.
    ::close(dfd);
  }
  return absl::OkStatus();
}

absl::Status CopyFileAtomically(const std::string& from, const std::string& to) {
  const std::string tmp = to + ".tmp";
  std::error_code ec;
  std::filesystem::copy_file(from, tmp, std::filesystem::copy_options::overwrite_existing, ec);
  if (!ec) std::filesystem::rename(tmp, to, ec);
  if (ec) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    return absl::InternalError(absl::StrCat("cannot copy ", from, " to ", to, ": ", ec.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> FileSize(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return 0;
    return ErrnoToStatus(errno, "cannot stat", path);
  }
  return static_cast<int64_t>(st.st_size);
}

absl::Status MakeDirectories(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) return ErrnoToStatus(ec.value(), "cannot create directory", path);
  if (!std::filesystem::is_directory(path, ec)) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' exists and is not a directory"));
  }
  return absl::OkStatus();
}

absl::StatusOr<AppendOnlyFile> AppendOnlyFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoToStatus(errno, "cannot open", path);
  return AppendOnlyFile(fd, path);
}

AppendOnlyFile::AppendOnlyFile(AppendOnlyFile&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), path_(std::move(other.path_)) {}

AppendOnlyFile::~AppendOnlyFile() {
  if (fd_ >= 0) ::close(fd_);
}

absl::Status AppendOnlyFile::Append(absl::string_view data) {
  if (const int err = WriteAll(fd_, data); err != 0) return ErrnoToStatus(err, "cannot write", path_);
  return absl::OkStatus();
}

absl::Status AppendOnlyFile::Close() {
  const int fd = std::exchange(fd_, -1);
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoToStatus(err, "cannot sync", path_);
  }
  if (::close(fd) != 0) return ErrnoToStatus(errno, "cannot close", path_);
  return absl::OkStatus();
}

}  // namespace fedtune::io
