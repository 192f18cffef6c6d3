// An on-disk cache of preprocessed images (the output of CropAndResize,
// preprocess.h), so that decoding and resizing a radiograph (~55-70 ms of a
// core for a 2000x2500 16-bit PNG) is paid once, not every epoch.
//
// Keys. An entry is valid only for the exact source file and settings it was
// built from: its header stores the source's absolute path, size, modification
// time (ns), device and inode, a fingerprint of its first and last 64 KiB, and
// the CropAndResizeKey of the settings (which includes a pipeline version).
// Any difference rebuilds the entry, so a changed file or setting is never
// served stale. (Only an edit that keeps size, inode and mtime and changes
// nothing in the first and last 64 KiB would go unnoticed; ordinary writers
// change the mtime.)
//
// Storage. One file per (source, settings):
// DIR/<settings hash>/<xx>/<path hash>.fic, holding the header, the N x N
// pixels as 16-bit values (round(x * 65535)) and a 64-bit checksum of it all.
// Writes are atomic (io::WriteFileAtomically): readers in this or another
// process see an old entry or a new one, never a torn one. A corrupt or
// truncated entry fails its checks and is rebuilt, never served.
//
// Values. Get returns the 16-bit-quantized pixels (quantum 1/65535) on a hit
// and on a miss alike, so results never depend on the cache's state.
#ifndef FEDTUNE_COMMON_IMAGING_CACHE_H_
#define FEDTUNE_COMMON_IMAGING_CACHE_H_

#include <cstdint>
#include <memory>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/imaging/preprocess.h"

namespace fedtune::imaging {

// Thread-safe: any number of threads may call Get concurrently. Concurrent Gets
// of the same source wait for one another so that it is decoded once; Gets of
// different sources proceed in parallel.
class ImageCache {
 public:
  struct Stats {
    int64_t hits = 0;            // Served from a valid entry.
    int64_t misses = 0;          // No entry yet: built.
    int64_t stale = 0;           // An entry for another version of the file or another
                                 // setting: rebuilt.
    int64_t corrupt = 0;         // An entry failing its checks (magic, size, checksum): rebuilt.
    int64_t write_failures = 0;  // The image was built but could not be stored
                                 // (logged; the image is still returned).
  };

  // Opens a cache rooted at `directory` (created with its parents if missing)
  // for images preprocessed with `options`. InvalidArgument for bad options;
  // the MakeDirectories error when the directory cannot be created.
  static absl::StatusOr<std::unique_ptr<ImageCache>> Open(const std::string& directory,
                                                          const PreprocessOptions& options);

  // The preprocessed (cropped, resized, not normalized) image of the file at
  // `path`, from the cache when a valid entry exists, else decoded,
  // preprocessed and stored. Errors are those of DecodeImage/CropAndResize
  // (NotFound for a missing source, InvalidArgument for an undecodable one, or
  // one above options.decode.max_pixels: checked on hits too, as the limit is
  // not part of the entry's key); a failure to store an entry is not an error.
  absl::StatusOr<PreprocessedImage> Get(const std::string& path);

  // Where the entry for `path` lives (whether or not it exists). For tools and
  // tests.
  std::string EntryPath(const std::string& path) const;

  Stats stats() const;
  const PreprocessOptions& options() const { return options_; }
  const std::string& directory() const { return directory_; }

 private:
  ImageCache(std::string directory, const PreprocessOptions& options);

  const std::string directory_;
  const PreprocessOptions options_;
  const std::string settings_key_;

  mutable absl::Mutex mu_;
  absl::CondVar done_;  // Signalled when an entry leaves in_flight_.
  std::set<std::string> in_flight_ ABSL_GUARDED_BY(mu_);
  Stats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fedtune::imaging

#endif  // FEDTUNE_COMMON_IMAGING_CACHE_H_
