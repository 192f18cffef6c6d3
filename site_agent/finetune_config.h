// Loading and validating `fedtune-site finetune` configurations (text-format fedtune.v1.FinetuneConfig).
#ifndef FEDTUNE_SITE_AGENT_FINETUNE_CONFIG_H_
#define FEDTUNE_SITE_AGENT_FINETUNE_CONFIG_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "fedtune/v1/finetune.pb.h"

namespace fedtune::agent {

// Parses text-format `text` (from `source`, used in messages), resolves relative paths against `base_dir`, fills the
// data_root default (the manifest's directory) and cache_dir default (<out_dir>/cache), and validates every field.
// InvalidArgument naming the source, line/column (syntax) or field (values).
absl::StatusOr<v1::FinetuneConfig> ParseFinetuneConfig(absl::string_view text, absl::string_view source,
                                                       const std::string& base_dir);

// Reads the file (io::ReadTextProtoFile: InvalidArgument for a non-regular file or one above io::kMaxTextProtoBytes)
// and parses it with base_dir = the file's directory. NotFound when the file does not exist.
absl::StatusOr<v1::FinetuneConfig> LoadFinetuneConfig(const std::string& path);

// Checks values only (paths must already be resolved). InvalidArgument naming the field.
absl::Status ValidateFinetuneConfig(const v1::FinetuneConfig& config);

}  // namespace fedtune::agent

#endif  // FEDTUNE_SITE_AGENT_FINETUNE_CONFIG_H_
