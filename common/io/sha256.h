// SHA-256 digests (OpenSSL EVP) of byte strings and files, as 64 lowercase hex digits: the digests that name
// model blobs and check streamed payloads.
//
// Thread safety: Sha256 is not thread-safe (one per stream); the free functions are reentrant.
#ifndef FEDTUNE_COMMON_IO_SHA256_H_
#define FEDTUNE_COMMON_IO_SHA256_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fedtune::io {

// Incremental SHA-256.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(absl::string_view bytes);
  // The digest of everything updated so far, in hex. The object is reset afterwards.
  std::string HexDigest();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

std::string Sha256Hex(absl::string_view bytes);

// The digest of a file's contents, read in 1 MiB blocks. NotFound / PermissionDenied / Internal naming the path.
absl::StatusOr<std::string> Sha256File(const std::string& path);

// True when `text` is 64 lowercase hex digits.
bool IsSha256Hex(absl::string_view text);

}  // namespace fedtune::io

#endif  // FEDTUNE_COMMON_IO_SHA256_H_
