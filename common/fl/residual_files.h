// Error feedback (codec.h's ErrorFeedback) across rounds and restarts, kept in files: the residual a site carries
// from one round of a run to the next. The residual a round attempt starts from is pinned before its first
// encoding, so that encoding again after a crash gives the same payload, byte for byte; the run's residual moves on
// only once the payload that consumed it is durably recorded (CommitResidual).
//
// Each file holds a serialized TensorBundle (dense fp32); an empty file is an empty residual.
//
// Thread safety: reentrant; one encoding per set of paths at a time.
#ifndef FEDTUNE_COMMON_FL_RESIDUAL_FILES_H_
#define FEDTUNE_COMMON_FL_RESIDUAL_FILES_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/fl/codec.h"
#include "common/fl/tensor_map.h"

namespace fedtune::fl {

struct ResidualPaths {
  std::string current;  // The run's residual: what the next round starts from (may not exist yet).
  std::string before;   // The residual this round attempt started from (pinned by the first encoding).
  std::string after;    // The residual this attempt leaves, until CommitResidual copies it to `current`.
  // The `before` files of earlier attempts of the same round, most recent first: a retried attempt starts from the
  // residual its round started from, even if an earlier attempt committed its own.
  std::vector<std::string> earlier_attempts;
};

// Encodes `delta` for upload. DENSE_FP32 is lossless: plain EncodeTensors, no residual, no file touched. Any other
// encoding: pins paths.before unless it exists (a copy of the first existing of earlier_attempts, else of current,
// else an empty residual), encodes delta + that residual with ErrorFeedback, and writes the new residual to
// paths.after. Errors: those of EncodeTensors and ErrorFeedback, those of ReadResidualFile for a pinned residual,
// and those of the file copies and writes.
absl::StatusOr<EncodedBundle> EncodeWithResidual(const TensorMap& delta, const EncodeOptions& options,
                                                 const ResidualPaths& paths);

// Moves the run's residual on: copies paths.after over paths.current (atomically) when `encoding` is lossy and
// paths.after exists; nothing otherwise. Call once the payload is durably recorded; calling it again is harmless.
absl::Status CommitResidual(Encoding encoding, const ResidualPaths& paths);

// Reads a residual file. Errors of io::ReadFile; InvalidArgument naming the path when it is not a TensorBundle or
// does not decode (DecodeTensors).
absl::StatusOr<TensorMap> ReadResidualFile(const std::string& path);

// Writes a residual file atomically (an empty residual as an empty file). Errors of EncodeTensors and
// io::WriteFileAtomically.
absl::Status WriteResidualFile(const std::string& path, const TensorMap& residual);

}  // namespace fedtune::fl

#endif  // FEDTUNE_COMMON_FL_RESIDUAL_FILES_H_
