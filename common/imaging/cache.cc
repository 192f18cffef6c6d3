#include "common/imaging/cache.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/imaging/fingerprint.h"
#include "common/io/file_util.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace fedtune::imaging {
namespace {

constexpr char kMagic[8] = {'F', 'T', 'I', 'M', 'G', 'C', '0', '1'};
constexpr size_t kEdgeBytes = 64 * 1024;
constexpr int kMetaInts = 7;  // size, source w/h, crop x/y/w/h.

std::string Hex64(uint64_t v) { return absl::StrFormat("%016x", v); }

std::string AbsolutePath(const std::string& path) {
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(path, ec);
  return ec ? path : abs.lexically_normal().string();
}

// The identity of the source file: what must match for an entry to be valid
// (besides the settings).
absl::StatusOr<std::string> SourceIdentity(const std::string& abs_path) {
  const int fd = ::open(abs_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return io::ErrnoToStatus(errno, "cannot open image", abs_path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return io::ErrnoToStatus(err, "cannot stat image", abs_path);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(abs_path, ": not a regular file"));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  std::string edges(static_cast<size_t>(std::min<uint64_t>(size, 2 * kEdgeBytes)), '\0');
  // Head, then tail (overlapping nothing: for small files the head is the whole
  // file).
  const size_t head = std::min<size_t>(edges.size(), kEdgeBytes);
  const size_t tail = edges.size() - head;
  ssize_t got = ::pread(fd, edges.data(), head, 0);
  if (got == static_cast<ssize_t>(head) && tail > 0) {
    got = ::pread(fd, edges.data() + head, tail, static_cast<off_t>(size - tail));
    if (got == static_cast<ssize_t>(tail)) got = static_cast<ssize_t>(head);
  }
  const int err = errno;
  ::close(fd);
  if (got != static_cast<ssize_t>(head)) {
    return got < 0 ? io::ErrnoToStatus(err, "cannot read image", abs_path)
                   : absl::InternalError(absl::StrCat(abs_path, ": short read (file changing?)"));
  }
  const int64_t mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  return absl::StrCat("source=", abs_path, "\nsize=", size, "\nmtime_ns=", mtime_ns, "\ndev=", st.st_dev,
                      "\ninode=", st.st_ino, "\nedges=", Hex64(Fingerprint64(edges)), "\n");
}

void AppendRaw(std::string* out, const void* p, size_t n) { out->append(static_cast<const char*>(p), n); }

std::string SerializeEntry(const std::string& key, const PreprocessedImage& image,
                           const std::vector<uint16_t>& quantized) {
  std::string out;
  out.reserve(64 + key.size() + quantized.size() * 2);
  AppendRaw(&out, kMagic, sizeof(kMagic));
  const uint32_t key_len = static_cast<uint32_t>(key.size());
  AppendRaw(&out, &key_len, sizeof(key_len));
  out.append(key);
  const int32_t meta[kMetaInts] = {image.size,   image.source_width, image.source_height, image.crop.x,
                                   image.crop.y, image.crop.width,   image.crop.height};
  AppendRaw(&out, meta, sizeof(meta));
  AppendRaw(&out, quantized.data(), quantized.size() * sizeof(uint16_t));
  const uint64_t checksum = Fingerprint64(out);
  AppendRaw(&out, &checksum, sizeof(checksum));
  return out;
}

enum class EntryState { kValid, kStale, kCorrupt };

// Parses an entry; fills *image only when valid. `expected_size` is N.
EntryState ParseEntry(const std::string& bytes, const std::string& expected_key, int expected_size,
                      PreprocessedImage* image) {
  const size_t fixed = sizeof(kMagic) + sizeof(uint32_t);
  if (bytes.size() < fixed + sizeof(uint64_t) || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return EntryState::kCorrupt;
  }
  uint64_t stored_checksum;
  std::memcpy(&stored_checksum, bytes.data() + bytes.size() - sizeof(uint64_t), sizeof(uint64_t));
  if (Fingerprint64(bytes.data(), bytes.size() - sizeof(uint64_t)) != stored_checksum) return EntryState::kCorrupt;
  uint32_t key_len;
  std::memcpy(&key_len, bytes.data() + sizeof(kMagic), sizeof(key_len));
  const size_t n = static_cast<size_t>(expected_size) * expected_size;
  if (bytes.size() != fixed + key_len + sizeof(int32_t) * kMetaInts + n * sizeof(uint16_t) + sizeof(uint64_t)) {
    // A valid checksum with the wrong length: another N under a colliding name,
    // or a format bug. Rebuild either way.
    return bytes.size() >= fixed + key_len && bytes.compare(fixed, key_len, expected_key) != 0 ? EntryState::kStale
                                                                                               : EntryState::kCorrupt;
  }
  if (bytes.compare(fixed, key_len, expected_key) != 0) return EntryState::kStale;
  int32_t meta[kMetaInts];
  const char* p = bytes.data() + fixed + key_len;
  std::memcpy(meta, p, sizeof(meta));
  p += sizeof(meta);
  if (meta[0] != expected_size) return EntryState::kCorrupt;
  image->size = meta[0];
  image->source_width = meta[1];
  image->source_height = meta[2];
  image->crop = CropBox{meta[3], meta[4], meta[5], meta[6]};
  image->pixels.resize(n);
  constexpr float kScale = 1.0f / 65535.0f;
  for (size_t i = 0; i < n; ++i) {
    uint16_t q;
    std::memcpy(&q, p + 2 * i, 2);
    image->pixels[i] = static_cast<float>(q) * kScale;
  }
  return EntryState::kValid;
}

}  // namespace

ImageCache::ImageCache(std::string directory, const PreprocessOptions& options)
    : directory_(std::move(directory)), options_(options), settings_key_(CropAndResizeKey(options)) {}

absl::StatusOr<std::unique_ptr<ImageCache>> ImageCache::Open(const std::string& directory,
                                                             const PreprocessOptions& options) {
  RETURN_IF_ERROR(ValidatePreprocessOptions(options));
  RETURN_IF_ERROR(io::MakeDirectories(directory));
  return std::unique_ptr<ImageCache>(new ImageCache(AbsolutePath(directory), options));
}

std::string ImageCache::EntryPath(const std::string& path) const {
  const std::string name = Hex64(Fingerprint64(AbsolutePath(path)));
  return absl::StrCat(directory_, "/", Hex64(Fingerprint64(settings_key_)), "/", name.substr(0, 2), "/", name, ".fic");
}

ImageCache::Stats ImageCache::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

absl::StatusOr<PreprocessedImage> ImageCache::Get(const std::string& path) {
  const std::string abs_path = AbsolutePath(path);
  const std::string entry_path = EntryPath(path);
  {
    // One builder per entry at a time; different entries in parallel.
    absl::MutexLock lock(&mu_);
    while (in_flight_.count(entry_path) > 0) done_.Wait(&mu_);
    in_flight_.insert(entry_path);
  }
  struct Release {
    ImageCache* cache;
    const std::string& entry;
    ~Release() {
      absl::MutexLock lock(&cache->mu_);
      cache->in_flight_.erase(entry);
      cache->done_.SignalAll();
    }
  } release{this, entry_path};

  // The identity is taken before decoding: if the file changes meanwhile, the
  // entry carries the old identity and the next Get rebuilds it. Never the
  // other way round.
  ASSIGN_OR_RETURN(std::string identity, SourceIdentity(abs_path));
  const std::string key = absl::StrCat(identity, "settings=", settings_key_, "\n");

  EntryState state = EntryState::kCorrupt;
  bool existed = false;
  absl::StatusOr<std::string> bytes = io::ReadFile(entry_path);
  if (bytes.ok()) {
    existed = true;
    PreprocessedImage cached;
    state = ParseEntry(*bytes, key, options_.size, &cached);
    if (state == EntryState::kValid) {
      {
        absl::MutexLock lock(&mu_);
        ++stats_.hits;
      }
      // The limit is not part of the key: an entry made under a higher one
      // must not let through what decoding would refuse now.
      const int64_t pixels = static_cast<int64_t>(cached.source_width) * cached.source_height;
      if (pixels > options_.decode.max_pixels) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": image of ", cached.source_width, " x ", cached.source_height, " = ", pixels,
            " pixels, above the limit of ", options_.decode.max_pixels, " pixels per image (max_image_pixels)"));
      }
      return cached;
    }
  } else if (!absl::IsNotFound(bytes.status())) {
    LOG(WARNING) << "image cache: cannot read entry " << entry_path << " (" << bytes.status() << "); rebuilding it";
  }

  ASSIGN_OR_RETURN(PreprocessedImage image, LoadAndPreprocess(path, options_));
  std::vector<uint16_t> quantized(image.pixels.size());
  for (size_t i = 0; i < quantized.size(); ++i) {
    quantized[i] = static_cast<uint16_t>(std::lround(std::clamp(image.pixels[i], 0.0f, 1.0f) * 65535.0f));
    image.pixels[i] = static_cast<float>(quantized[i]) * (1.0f / 65535.0f);
  }
  absl::Status stored = io::MakeDirectories(std::filesystem::path(entry_path).parent_path().string());
  if (stored.ok()) stored = io::WriteFileAtomically(entry_path, SerializeEntry(key, image, quantized));
  if (!stored.ok()) LOG(WARNING) << "image cache: cannot store " << entry_path << " for " << path << ": " << stored;

  absl::MutexLock lock(&mu_);
  if (!existed) {
    ++stats_.misses;
  } else if (state == EntryState::kStale) {
    ++stats_.stale;
  } else {
    ++stats_.corrupt;
  }
  if (!stored.ok()) ++stats_.write_failures;
  return image;
}

}  // namespace fedtune::imaging
