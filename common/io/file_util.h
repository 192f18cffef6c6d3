// Whole-file reads and atomic whole-file writes. Every file that matters (reports, checkpoints, manifests written by
// fedtune) is written with WriteFileAtomically so that a crash leaves either the old or the new file, never a torn one.
#ifndef FEDTUNE_COMMON_IO_FILE_UTIL_H_
#define FEDTUNE_COMMON_IO_FILE_UTIL_H_

#include <cstdint>
#include <functional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fedtune::io {

// The status for an errno value from an operation on `path`, with message "WHAT 'PATH': strerror". Codes: NotFound
// (ENOENT, ENOTDIR), PermissionDenied (EACCES, EPERM), AlreadyExists (EEXIST), InvalidArgument (EISDIR),
// ResourceExhausted (ENOSPC, EDQUOT), Internal otherwise.
absl::Status ErrnoToStatus(int err, absl::string_view what, absl::string_view path);

// Reads a whole file. NotFound when it does not exist, PermissionDenied when not readable, InvalidArgument when it
// is a directory, Internal for other I/O failures. Messages name the path.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// How WriteFileAtomically publishes a file.
struct AtomicWriteOptions {
  // Permission bits of the file, set before the first byte is written (0600 keeps a secret private from the
  // start). Default 0644.
  int mode = 0644;
  // True: replace `path` if it exists (rename(2)). False: publish only if `path` does not exist yet, atomically
  // (link(2), no check-then-rename race); AlreadyExists "'PATH' already exists" otherwise. Default true.
  bool overwrite = true;
};

// Writes `contents` to `path` atomically: a temporary file in the same directory (mode options.mode) is written,
// flushed to disk (fsync), published as `path`, and the directory is synced. The parent directory must exist
// (NotFound otherwise); other errors as ErrnoToStatus, naming `path`. On failure `path` is untouched and the
// temporary file is removed. Thread-safe for distinct paths.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents,
                                 const AtomicWriteOptions& options = {});

// Appends one piece of a file being written; errors name the file.
using ByteSink = std::function<absl::Status(absl::string_view piece)>;

// WriteFileAtomically for contents produced piece by piece (a checkpoint or a TensorBundle streamed tensor by
// tensor, without the whole file in memory): `write` hands its pieces to the sink it is given. When `write` or the
// sink fails, its status is returned, `path` is untouched and the temporary file is removed; otherwise as
// WriteFileAtomically.
absl::Status WriteFileAtomicallyWith(const std::string& path, const std::function<absl::Status(const ByteSink&)>& write,
                                     const AtomicWriteOptions& options = {});

// The size in bytes of the file at `path`; 0 when nothing exists there (e.g. the partial file of a transfer that has
// not started). Other failures (a path through a non-directory, no permission): ErrnoToStatus's code with message
// "cannot stat 'PATH': ...". Thread-safe.
absl::StatusOr<int64_t> FileSize(const std::string& path);

// Copies the file `from` to `to` atomically: a copy beside `to` (`to`.tmp) is renamed over it, so that `to` is
// either the old or the whole new file. Internal naming both paths when the copy or the rename fails (the temporary
// copy is removed). Thread-safe for distinct destinations.
absl::Status CopyFileAtomically(const std::string& from, const std::string& to);

// Creates a directory and its parents (like mkdir -p). OK when it already exists as a directory.
absl::Status MakeDirectories(const std::string& path);

// A file opened for appending (created with mode 0644 if missing): the partial file of a resumable transfer, whose
// size is the offset to resume from. Movable, not copyable, not thread-safe. The destructor closes without syncing;
// Close() makes the appended bytes durable first.
class AppendOnlyFile {
 public:
  // NotFound / PermissionDenied / ... (ErrnoToStatus) naming the path.
  static absl::StatusOr<AppendOnlyFile> Open(const std::string& path);
  AppendOnlyFile(AppendOnlyFile&& other) noexcept;
  AppendOnlyFile& operator=(AppendOnlyFile&&) = delete;
  AppendOnlyFile(const AppendOnlyFile&) = delete;
  ~AppendOnlyFile();

  // Appends all of `data` (retrying short writes and EINTR). Errors name the path (e.g. ResourceExhausted for ENOSPC).
  absl::Status Append(absl::string_view data);
  // fsync, then close. Errors name the path. The object must not be used afterwards.
  absl::Status Close();

 private:
  AppendOnlyFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_;
  std::string path_;
};

}  // namespace fedtune::io

#endif  // FEDTUNE_COMMON_IO_FILE_UTIL_H_
