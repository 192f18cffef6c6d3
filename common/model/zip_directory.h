// The zip directory of a torch.save archive, checked before LibTorch's reader (miniz) reads any record. Internal to
// the torch.save reader (torch_archive.cc, pickle_reader.cc); users include torch_archive.h.
//
// PyTorchStreamReader::getRecord allocates whatever uncompressed size the directory claims, and miniz itself checks
// that size against the file only for stored records without zip64 fields. ZipDirectory::Check follows miniz's own
// reading (the same end record, the same zip64 fields) and is stricter wherever the two could differ, so that what
// is checked is what miniz reads: every record stored (not compressed), named, not a directory, not encrypted,
// lying inside the file, occurring once, and no two records sharing bytes. It also checks what LibTorch 1.13's
// reader checks in its constructor (a first record inside a folder; a version record with a correct CRC and a
// supported format version), so that the reader's constructor never throws (it would leak miniz's state).
//
// Thread safety: a ZipDirectory is immutable after Check; all functions are reentrant.
#ifndef FEDTUNE_COMMON_MODEL_ZIP_DIRECTORY_H_
#define FEDTUNE_COMMON_MODEL_ZIP_DIRECTORY_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fedtune::model::internal {

// The n <= 8 bytes of `bytes` at `at`, little-endian. The caller ensures that they lie inside `bytes`.
uint64_t ReadLittleEndian(absl::string_view bytes, size_t at, int n);

// The records of an archive, by lower-cased full name ("archive/data/0"; miniz looks names up ignoring case).
class ZipDirectory {
 public:
  // Checks the directory of `zip` as above. `name` (usually the path) prefixes every message. InvalidArgument
  // naming the rule for anything refused.
  static absl::StatusOr<ZipDirectory> Check(absl::string_view zip, const std::string& name);

  // The size of record `record` ("data/0") under the archive's folder; nullopt when absent.
  std::optional<uint64_t> RecordSize(const std::string& record) const;

 private:
  struct Record {
    uint64_t data;  // Offset of the bytes in the archive.
    uint64_t size;
    uint32_t crc;
  };
  // The bytes a record occupies, local header included.
  struct Span {
    uint64_t begin, end;
    std::string record;
  };

  // Reads central directory entry `e` at byte `p` (the directory ends at `cd_end`) of `zip`, checks it, adds it to
  // records_ (and to `spans`) and returns the byte after the entry.
  absl::StatusOr<uint64_t> AddEntry(absl::string_view zip, const std::string& name, uint64_t e, uint64_t p,
                                    uint64_t cd_end, std::vector<Span>& spans);
  // Refuses records that share bytes.
  static absl::Status CheckNoOverlap(std::vector<Span> spans, const std::string& name);
  // LibTorch 1.13's PyTorchStreamReader leaks miniz's state when its constructor throws after opening the zip (a
  // missing, damaged or unsupported version record, a first record outside a folder): what it checks there is
  // checked here first, so that it never throws.
  absl::Status CheckWhatTheReaderChecks(absl::string_view zip, const std::string& name) const;

  std::string folder_;  // The first entry's folder, as PyTorchStreamReader takes it.
  std::map<std::string, Record> records_;
};

}  // namespace fedtune::model::internal

#endif  // FEDTUNE_COMMON_MODEL_ZIP_DIRECTORY_H_
