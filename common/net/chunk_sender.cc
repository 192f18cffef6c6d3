#include "common/net/chunk_sender.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"

namespace fedtune::net {

int ClampChunkBytes(int64_t bytes) {
  return static_cast<int>(std::clamp<int64_t>(bytes, kMinChunkBytes, kMaxChunkBytes));
}

absl::StatusOr<std::unique_ptr<ChunkSender>> ChunkSender::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return io::ErrnoToStatus(errno, "cannot open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return io::ErrnoToStatus(err, "cannot stat", path);
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is a directory, not a file"));
  }
  return std::unique_ptr<ChunkSender>(new ChunkSender(fd, path, static_cast<int64_t>(st.st_size)));
}

ChunkSender::~ChunkSender() { ::close(fd_); }

absl::StatusOr<int64_t> ChunkSender::ReadChunk(int64_t offset, int chunk_bytes, std::string* buffer) {
  if (offset < 0 || offset > size_) {
    return absl::OutOfRangeError(absl::StrCat("offset ", offset, " is outside [0, ", size_, "] of ", path_));
  }
  const size_t n = static_cast<size_t>(std::min<int64_t>(ClampChunkBytes(chunk_bytes), size_ - offset));
  // resize() keeps the capacity: a stream reuses one buffer for all its chunks.
  buffer->resize(n);
  size_t got_total = 0;
  while (got_total < n) {
    const ssize_t got = ::pread(fd_, buffer->data() + got_total, n - got_total, offset + got_total);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      return io::ErrnoToStatus(errno, absl::StrCat("cannot read at byte ", offset + got_total, " of"), path_);
    }
    if (got == 0) {
      return absl::DataLossError(
          absl::StrCat("'", path_, "' ended at byte ", offset + got_total, ", before the ", size_, " bytes it had"));
    }
    got_total += static_cast<size_t>(got);
  }
  return static_cast<int64_t>(n);
}

SendResult ChunkSender::Send(int64_t offset, const ChunkSenderOptions& options, const ChunkWriter& write) {
  SendResult result;
  if (offset < 0 || offset > size_) {
    result.status = absl::OutOfRangeError(absl::StrCat("offset ", offset, " is outside [0, ", size_, "] of ", path_));
    return result;
  }
  std::string buffer;
  for (int64_t position = offset; position < size_;) {
    if (options.cancelled && options.cancelled()) {
      result.status = absl::CancelledError(absl::StrCat("cancelled at byte ", position, " of ", size_));
      return result;
    }
    absl::StatusOr<int64_t> got = ReadChunk(position, options.chunk_bytes, &buffer);
    if (!got.ok()) {
      result.status = got.status();
      return result;
    }
    if (!write(position, buffer)) {
      result.broken = true;
      return result;
    }
    position += *got;
    result.sent += *got;
  }
  return result;
}

}  // namespace fedtune::net
