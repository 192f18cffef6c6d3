#include "common/fl/residual_files.h"

#include <filesystem>

#include "common/io/file_util.h"
#include "common/status_macros.h"

namespace fedtune::fl {
namespace {

namespace fs = std::filesystem;

// Pins the residual this attempt starts from at paths.before, unless an earlier encoding of it already did.
absl::Status PinStartingResidual(const ResidualPaths& paths) {
  if (fs::exists(paths.before)) return absl::OkStatus();
  std::string source = paths.current;
  for (const std::string& earlier : paths.earlier_attempts) {
    if (fs::exists(earlier)) {
      source = earlier;
      break;
    }
  }
  if (fs::exists(source)) return io::CopyFileAtomically(source, paths.before);
  return io::WriteFileAtomically(paths.before, "");
}

}  // namespace

absl::StatusOr<TensorMap> ReadResidualFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string bytes, io::ReadFile(path));
  if (bytes.empty()) return TensorMap();
  ASSIGN_OR_RETURN(v1::TensorBundle bundle, ParseTensorBundle(bytes, path));
  return DecodeTensors(bundle);
}

absl::Status WriteResidualFile(const std::string& path, const TensorMap& residual) {
  if (residual.empty()) return io::WriteFileAtomically(path, "");
  ASSIGN_OR_RETURN(EncodedBundle encoded, EncodeTensors(residual, {Encoding::kDenseFp32, 0.01}));
  return io::WriteFileAtomically(path, encoded.bundle.SerializeAsString());
}

absl::StatusOr<EncodedBundle> EncodeWithResidual(const TensorMap& delta, const EncodeOptions& options,
                                                 const ResidualPaths& paths) {
  if (options.encoding == Encoding::kDenseFp32) return EncodeTensors(delta, options);
  RETURN_IF_ERROR(PinStartingResidual(paths));
  ErrorFeedback feedback;
  ASSIGN_OR_RETURN(TensorMap residual, ReadResidualFile(paths.before));
  RETURN_IF_ERROR(feedback.SetResidual(residual));
  ASSIGN_OR_RETURN(EncodedBundle encoded, feedback.Encode(delta, options));
  RETURN_IF_ERROR(WriteResidualFile(paths.after, feedback.residual()));
  return encoded;
}

absl::Status CommitResidual(Encoding encoding, const ResidualPaths& paths) {
  if (encoding == Encoding::kDenseFp32 || !fs::exists(paths.after)) return absl::OkStatus();
  return io::CopyFileAtomically(paths.after, paths.current);
}

}  // namespace fedtune::fl
