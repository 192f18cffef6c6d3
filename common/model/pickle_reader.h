// The restricted unpickler of the torch.save reader (the opcodes and globals torch_archive.h lists). Internal to
// torch_archive.cc; users call ReadTorchArchive.
//
// Thread safety: reentrant.
#ifndef FEDTUNE_COMMON_MODEL_PICKLE_READER_H_
#define FEDTUNE_COMMON_MODEL_PICKLE_READER_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/model/torch_archive.h"
#include "common/model/zip_directory.h"

namespace caffe2::serialize {
class PyTorchStreamReader;
}  // namespace caffe2::serialize

namespace fedtune::model::internal {

// Where storages come from: record sizes (checked by ZipDirectory::Check) and the reader.
struct RecordSource {
  const ZipDirectory* directory;
  caffe2::serialize::PyTorchStreamReader* reader;
};

// Unpickles `pickle` (an archive's data.pkl), reading each storage it references from `records` (a record the
// directory lacks, or shorter than the storage, is refused before anything is read). `name` prefixes every message.
// At most `materialized_limit` bytes of strings, storages and tensors are materialized; `archive_size` only appears
// in the message when that bound is hit. Enforces kMaxPickleValues and kMaxTensorDims while unpickling and
// CheckPickleGraph's bounds on the result; every refusal is InvalidArgument and frees what was built without
// recursion. LibTorch's reader may throw (c10::Error, std::bad_alloc): the caller catches.
absl::StatusOr<PickleValuePtr> Unpickle(absl::string_view pickle, std::string name, RecordSource records,
                                        int64_t materialized_limit, uint64_t archive_size);

}  // namespace fedtune::model::internal

#endif  // FEDTUNE_COMMON_MODEL_PICKLE_READER_H_
