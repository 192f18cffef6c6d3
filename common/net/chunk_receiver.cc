#include "common/net/chunk_receiver.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/status_macros.h"

namespace fedtune::net {

absl::StatusOr<std::unique_ptr<ChunkReceiver>> ChunkReceiver::Open(const std::string& path,
                                                                   ChunkReceiverOptions options) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, options.file_mode);
  if (fd < 0) {
    absl::Status error = io::ErrnoToStatus(errno, "cannot open", path);
    return options.on_io_error ? options.on_io_error(std::move(error)) : error;
  }
  std::unique_ptr<ChunkReceiver> receiver(new ChunkReceiver(fd, path, std::move(options)));
  struct stat st;
  if (::fstat(fd, &st) != 0) return receiver->IoError(errno, "cannot stat");
  receiver->held_ = static_cast<int64_t>(st.st_size);
  receiver->flushed_ = receiver->held_;
  return receiver;
}

ChunkReceiver::ChunkReceiver(int fd, std::string path, ChunkReceiverOptions options)
    : fd_(fd), path_(std::move(path)), options_(std::move(options)) {}

ChunkReceiver::~ChunkReceiver() { ::close(fd_); }

absl::Status ChunkReceiver::IoError(int err, const char* what) const {
  return MapIo(io::ErrnoToStatus(err, what, path_));
}

absl::Status ChunkReceiver::MapIo(absl::Status error) const {
  return options_.on_io_error ? options_.on_io_error(std::move(error)) : error;
}

absl::Status ChunkReceiver::Violation(const std::string& message) const {
  return absl::Status(options_.violation_code, absl::StrCat(options_.what, ": ", message));
}

absl::Status ChunkReceiver::HashHeld(int64_t offset) {
  std::vector<char> buffer(1 << 20);
  while (hashed_ < offset) {
    const size_t n = static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(buffer.size()), offset - hashed_));
    const ssize_t got = ::pread(fd_, buffer.data(), n, hashed_);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return IoError(errno, "cannot read");
    if (got == 0) {
      return MapIo(absl::DataLossError(absl::StrCat("'", path_, "' ended at byte ", hashed_, ", before ", offset)));
    }
    hash_.Update(absl::string_view(buffer.data(), static_cast<size_t>(got)));
    hashed_ += got;
  }
  return absl::OkStatus();
}

absl::Status ChunkReceiver::ResumeAt(int64_t offset) {
  struct stat st;
  if (::fstat(fd_, &st) != 0) return IoError(errno, "cannot stat");
  const int64_t size = static_cast<int64_t>(st.st_size);
  if (offset < 0 || offset > size) {
    return absl::FailedPreconditionError(
        absl::StrCat(options_.what, ": resumes at offset ", offset, " but only ", size, " bytes are held"));
  }
  // Resending from an earlier offset replaces what follows it.
  if (size > offset && ::ftruncate(fd_, offset) != 0) return IoError(errno, "cannot truncate");
  held_ = offset;
  flushed_ = offset;
  return CatchUpHash();
}

absl::Status ChunkReceiver::CatchUpHash() {
  if (hashed_ == held_) return absl::OkStatus();
  if (hashed_ < 0 || hashed_ > held_) {
    hash_.HexDigest();  // Resets it: the held bytes are hashed again from the start.
    hashed_ = 0;
  }
  return HashHeld(held_);
}

absl::Status ChunkReceiver::ResumeAtEnd() {
  struct stat st;
  if (::fstat(fd_, &st) != 0) return IoError(errno, "cannot stat");
  return ResumeAt(static_cast<int64_t>(st.st_size));
}

absl::Status ChunkReceiver::Append(int64_t at, absl::string_view data) {
  if (held_ < 0) return absl::FailedPreconditionError(absl::StrCat(options_.what, ": an earlier write failed"));
  if (at != held_) return Violation(absl::StrCat("chunk at offset ", at, ", expected ", held_));
  const int64_t n = static_cast<int64_t>(data.size());
  if (n > options_.max_chunk_bytes) {
    return Violation(absl::StrCat("a chunk of ", n, " bytes exceeds the largest chunk of ", options_.max_chunk_bytes));
  }
  const int64_t limit = announced_total_ >= 0 ? announced_total_ : options_.max_bytes;
  if (n > limit - held_) {
    return Violation(absl::StrCat("a chunk ends at byte ", held_ + n, ", beyond the announced ", limit, " bytes"));
  }
  RETURN_IF_ERROR(CatchUpHash());
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t wrote = ::pwrite(fd_, data.data() + done, data.size() - done, held_ + static_cast<int64_t>(done));
    if (wrote < 0 && errno == EINTR) continue;
    if (wrote < 0) {
      const int err = errno;
      held_ = -1;
      hashed_ = -1;
      return IoError(err, "cannot write");
    }
    done += static_cast<size_t>(wrote);
  }
  hash_.Update(data);
  held_ += n;
  hashed_ = held_;
  if (held_ - flushed_ >= kWritebackBytes) {
    // Starts the disk writes of what arrived so far without waiting for them, so that the fsync at the end of the
    // stream (Sync) finds little left to write. Advisory: an error here is the final fsync's to report.
#ifdef SYNC_FILE_RANGE_WRITE
    ::sync_file_range(fd_, flushed_, held_ - flushed_, SYNC_FILE_RANGE_WRITE);
#endif
    flushed_ = held_;
  }
  return absl::OkStatus();
}

absl::Status ChunkReceiver::AppendAnnounced(int64_t at, absl::string_view data, int64_t total_bytes,
                                            absl::string_view sha256, absl::string_view expected_sha256_prefix) {
  if (total_bytes < 1 || !io::IsSha256Hex(sha256) || !absl::StartsWith(sha256, expected_sha256_prefix) ||
      (announced_total_ >= 0 && (total_bytes != announced_total_ || sha256 != announced_sha256_))) {
    return Violation(
        absl::StrCat("inconsistent stream (sha256 '", sha256.substr(0, 64), "', total ", total_bytes, " bytes",
                     announced_total_ >= 0
                         ? absl::StrCat(", announced before: '", announced_sha256_, "', ", announced_total_, " bytes")
                         : std::string(),
                     ")"));
  }
  announced_total_ = total_bytes;
  announced_sha256_ = std::string(sha256);
  return Append(at, data);
}

void ChunkReceiver::ClearAnnouncements() {
  announced_total_ = -1;
  announced_sha256_.clear();
}

absl::Status ChunkReceiver::Sync() {
  if (::fsync(fd_) != 0) return IoError(errno, "cannot sync");
  return absl::OkStatus();
}

absl::StatusOr<std::string> ChunkReceiver::Digest() {
  if (held_ < 0) return absl::FailedPreconditionError(absl::StrCat(options_.what, ": an earlier write failed"));
  RETURN_IF_ERROR(CatchUpHash());
  hashed_ = -1;
  return hash_.HexDigest();
}

}  // namespace fedtune::net
