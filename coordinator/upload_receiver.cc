#include "coordinator/upload_receiver.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/logging.h"

namespace fedtune::coordinator {
namespace {

// Closes a file descriptor on every path.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// An I/O error of the spool file: logged in full (it names the path), returned to the site without it.
absl::Status SpoolError(int err, const char* what, const std::string& path, const std::string& upload) {
  LOG(ERROR) << upload << ": " << io::ErrnoToStatus(err, what, path);
  return absl::InternalError(
      absl::StrCat(upload, ": the coordinator could not store the payload (", what, " failed); try again later"));
}

absl::Status WriteAll(int fd, const std::string& data, const std::string& path, const std::string& upload) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return SpoolError(errno, "writing", path, upload);
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// Appends the stream's data from header.offset to the spool file; *received is where the file ends.
absl::Status ReceiveInto(const std::string& path, const v1::UploadHeader& header, const UploadStream& stream,
                         const std::string& upload, int64_t* received, int64_t* bytes_up) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
  if (fd.get() < 0) return SpoolError(errno, "opening", path, upload);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return SpoolError(errno, "stat", path, upload);
  const int64_t held = st.st_size;
  *received = held;
  if (header.offset() > held) {
    return absl::FailedPreconditionError(absl::StrCat(upload, ": resumes at offset ", header.offset(), " but only ",
                                                      held, " bytes are held: ask GetUploadOffset"));
  }
  // Resending from an earlier offset replaces what follows it.
  if (::ftruncate(fd.get(), header.offset()) != 0) return SpoolError(errno, "truncating", path, upload);
  if (::lseek(fd.get(), header.offset(), SEEK_SET) < 0) return SpoolError(errno, "seeking", path, upload);
  *received = header.offset();
  v1::UploadChunk chunk;
  absl::Status status;
  while (stream.read(&chunk)) {
    if (chunk.payload_case() != v1::UploadChunk::kData) {
      status = absl::InvalidArgumentError(absl::StrCat(upload, ": only the first message may carry a header"));
      break;
    }
    if (static_cast<int64_t>(chunk.data().size()) > header.total_bytes() - *received) {
      status = absl::InvalidArgumentError(
          absl::StrCat(upload, ": more than the announced total_bytes ", header.total_bytes(), " were sent"));
      break;
    }
    status = WriteAll(fd.get(), chunk.data(), path, upload);
    if (!status.ok()) break;
    *received += static_cast<int64_t>(chunk.data().size());
    *bytes_up += static_cast<int64_t>(chunk.data().size());
  }
  // What arrived is kept durably, also when the stream broke, so that GetUploadOffset can resume from it.
  if (::fsync(fd.get()) != 0 && status.ok()) status = SpoolError(errno, "fsync", path, upload);
  return status;
}

}  // namespace

UploadOutcome ReceiveUpload(RoundManager* rounds, const std::string& site_id, const UploadStream& stream) {
  UploadOutcome out;
  v1::UploadChunk first;
  if (!stream.read(&first)) {
    out.result = absl::InvalidArgumentError("upload: empty stream (no header)");
    return out;
  }
  if (first.payload_case() != v1::UploadChunk::kHeader) {
    out.result = absl::InvalidArgumentError("upload: the first message must carry the UploadHeader");
    return out;
  }
  out.header = first.header();
  const v1::UploadHeader& header = out.header;
  absl::StatusOr<UploadTarget> target = rounds->BeginUpload(site_id, header);
  if (!target.ok()) {
    out.result = target.status();
    return out;
  }
  if (target->accepted) {
    v1::UploadResponse response;
    response.set_status("accepted");
    response.set_received_bytes(header.total_bytes());
    response.set_message("accepted before (same payload)");
    out.result = std::move(response);
    return out;
  }
  const std::string upload =
      absl::StrCat("upload of site ", site_id, " for run ", header.run_id(), " round ", header.round());
  int64_t received = 0;
  absl::Status status = ReceiveInto(target->spool_path, header, stream, upload, &received, &out.bytes_up);
  if (status.ok() && stream.cancelled && stream.cancelled()) {
    status = absl::CancelledError(absl::StrCat(upload, " cancelled"));
  }
  if (status.ok() && received < header.total_bytes()) {
    status = absl::FailedPreconditionError(absl::StrCat(upload, " incomplete: ", received, " of ", header.total_bytes(),
                                                        " bytes received; resume from offset ", received));
  }
  if (!status.ok()) {
    out.result = rounds->EndUpload(site_id, header, *target, status);
    return out;
  }
  out.result = rounds->AcceptUpload(site_id, header, *target);
  return out;
}

}  // namespace fedtune::coordinator
