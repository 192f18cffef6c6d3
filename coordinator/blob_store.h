// Content-addressed model files: <dir>/<sha256 of the file bytes>. A blob is written once, atomically (temporary
// file in the same directory, fsync, rename, directory fsync), and never modified: a digest names exactly one
// content, so a crash leaves either no blob or a complete one (temporaries, "tmp-*", are removed at open).
//
// Thread safety: thread-safe (distinct temporaries per call; rename is atomic).
#ifndef FEDTUNE_COORDINATOR_BLOB_STORE_H_
#define FEDTUNE_COORDINATOR_BLOB_STORE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fedtune::coordinator {

class BlobStore {
 public:
  // Creates `dir` when needed and removes leftover temporaries. I/O errors naming the directory.
  static absl::StatusOr<std::unique_ptr<BlobStore>> Open(const std::string& dir);

  // A fresh temporary path inside the store, for a writer that then calls Adopt (e.g. SaveCheckpoint).
  std::string TempPath();

  // Moves the finished file `temp_path` (on the store's file system, normally from TempPath) into the store under
  // its SHA-256 and returns the digest; when the blob exists already the temporary is removed.
  absl::StatusOr<std::string> Adopt(const std::string& temp_path);

  // Copies `path` into the store (the initial model import). NotFound naming the path.
  absl::StatusOr<std::string> Import(const std::string& path);

  // <dir>/<digest>; does not check existence.
  std::string PathOf(const std::string& digest) const;
  // Size of a stored blob; NotFound naming the digest.
  absl::StatusOr<int64_t> Size(const std::string& digest) const;

  const std::string& dir() const { return dir_; }

 private:
  explicit BlobStore(std::string dir) : dir_(std::move(dir)) {}
  std::string dir_;
};

// fsync of a file, then of its directory. Internal naming the path on failure.
absl::Status SyncFileAndDir(const std::string& path);

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_BLOB_STORE_H_
