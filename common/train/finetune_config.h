// Loading and validating fine-tuning configurations (text-format fedtune.v1.FinetuneConfig): the input of the
// fine-tuning pipeline (finetune_pipeline.h), given by `fedtune-site finetune --config` and, as a template, by the
// agent's SiteAgentConfig.finetune.
#ifndef FEDTUNE_COMMON_TRAIN_FINETUNE_CONFIG_H_
#define FEDTUNE_COMMON_TRAIN_FINETUNE_CONFIG_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/data/label_policy.h"
#include "common/data/stratified_split.h"
#include "fedtune/v1/finetune.pb.h"

namespace fedtune::train {

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

// The patient-level split a config's SplitConfig describes. The fine-tuning and the agent's dataset summary both
// split with it, so that they agree on the test split. `split` must be valid (ValidateFinetuneConfig).
data::SplitOptions SplitOptionsFrom(const v1::SplitConfig& split);

// The label policy a config's LabelPolicyConfig describes. InvalidArgument for an unknown policy name or values
// data::ValidateLabelPolicy refuses.
absl::StatusOr<data::LabelPolicy> LabelPolicyFrom(const v1::LabelPolicyConfig& labels);

}  // namespace fedtune::train

#endif  // FEDTUNE_COMMON_TRAIN_FINETUNE_CONFIG_H_
