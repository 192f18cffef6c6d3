#include "common/fl/personalization.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/fl/model_tensors.h"
#include "common/model/ensemble.h"
#include "common/model/model_factory.h"
#include "common/status_macros.h"

namespace fedtune::fl {
namespace {

bool IsBatchNorm(const torch::nn::Module& module) {
  return module.as<torch::nn::BatchNorm1d>() != nullptr || module.as<torch::nn::BatchNorm2d>() != nullptr ||
         module.as<torch::nn::BatchNorm3d>() != nullptr;
}

// Adds the BatchNorm tensors of `network` under "<section>/<module path>.<name>", checking that `weights` (the
// checkpoint's state dict of that network) has each.
absl::Status AddBatchNormTensors(torch::nn::Module& network, const std::string& section,
                                 const model::StateDict& weights, std::map<std::string, BatchNormRole>* out) {
  for (const auto& item : network.named_modules(/*name_prefix=*/"", /*include_self=*/true)) {
    const std::shared_ptr<torch::nn::Module>& module = item.value();
    if (!IsBatchNorm(*module)) continue;
    const std::string prefix = item.key().empty() ? "" : absl::StrCat(item.key(), ".");
    auto add = [&](const std::string& key, BatchNormRole role) -> absl::Status {
      const std::string state_key = absl::StrCat(prefix, key);
      if (weights.count(state_key) == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(section, ": the checkpoint lacks the BatchNorm tensor '", state_key, "' of its network"));
      }
      (*out)[absl::StrCat(section, "/", state_key)] = role;
      return absl::OkStatus();
    };
    for (const auto& p : module->named_parameters(/*recurse=*/false)) {
      RETURN_IF_ERROR(add(p.key(), BatchNormRole::kAffine));
    }
    for (const auto& b : module->named_buffers(/*recurse=*/false)) {
      RETURN_IF_ERROR(add(b.key(), BatchNormRole::kStatistics));
    }
  }
  return absl::OkStatus();
}

// Saves LibTorch's default CPU generator and puts it back on destruction: building a network to look at its modules
// draws its initialization from it.
class GeneratorGuard {
 public:
  GeneratorGuard() : generator_(at::detail::getDefaultCPUGenerator()) {
    std::lock_guard<std::mutex> lock(generator_.mutex());
    state_ = generator_.get_state();
  }
  ~GeneratorGuard() {
    std::lock_guard<std::mutex> lock(generator_.mutex());
    generator_.set_state(state_);
  }

 private:
  at::Generator generator_;
  at::Tensor state_;
};

absl::StatusOr<std::map<std::string, BatchNormRole>> Classify(const model::Checkpoint& checkpoint) {
  GeneratorGuard keep_generator;
  std::map<std::string, BatchNormRole> out;
  for (size_t i = 0; i < checkpoint.members.size(); ++i) {
    const std::string section = absl::StrCat("member", i);
    absl::StatusOr<model::Classifier> network = model::CreateModel(checkpoint.members[i].config);
    if (!network.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(section, ": ", network.status().message()));
    }
    RETURN_IF_ERROR(AddBatchNormTensors(**network, section, checkpoint.members[i].weights, &out));
  }
  if (checkpoint.duo.has_value()) {
    const model::DuoWeights& d = *checkpoint.duo;
    absl::StatusOr<model::Classifier> frontal = model::CreateModel(d.frontal);
    absl::StatusOr<model::Classifier> lateral = model::CreateModel(d.lateral);
    if (!frontal.ok() || !lateral.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("duo: ", (frontal.ok() ? lateral.status() : frontal.status()).message()));
    }
    model::DuoNet duo(*frontal, *lateral, d.num_outputs, d.head_dropout);
    RETURN_IF_ERROR(AddBatchNormTensors(*duo, "duo", d.weights, &out));
  }
  return out;
}

}  // namespace

absl::StatusOr<std::map<std::string, BatchNormRole>> BatchNormTensors(const model::Checkpoint& checkpoint) {
  try {
    return Classify(checkpoint);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat("building the checkpoint's networks: ", e.what_without_backtrace()));
  }
}

bool KeepsTensorsLocal(v1::Personalization personalization) {
  return personalization == v1::PERSONALIZATION_FEDBN || personalization == v1::PERSONALIZATION_SILOBN;
}

absl::StatusOr<std::set<std::string>> LocalTensorNames(const model::Checkpoint& checkpoint,
                                                       v1::Personalization personalization) {
  switch (personalization) {
    case v1::PERSONALIZATION_UNSPECIFIED:
    case v1::PERSONALIZATION_NONE:
    case v1::PERSONALIZATION_DITTO:
      return std::set<std::string>();
    case v1::PERSONALIZATION_FEDBN:
    case v1::PERSONALIZATION_SILOBN:
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown personalization ", static_cast<int>(personalization)));
  }
  ASSIGN_OR_RETURN(auto batchnorm, BatchNormTensors(checkpoint));
  std::set<std::string> out;
  for (const auto& [name, role] : batchnorm) {
    if (personalization == v1::PERSONALIZATION_FEDBN || role == BatchNormRole::kStatistics) out.insert(name);
  }
  return out;
}

absl::StatusOr<std::set<std::string>> SharedTensorNames(const model::Checkpoint& checkpoint,
                                                        v1::Personalization personalization) {
  ASSIGN_OR_RETURN(std::set<std::string> local, LocalTensorNames(checkpoint, personalization));
  std::set<std::string> out;
  for (const auto& [name, tensor] : CheckpointTensors(checkpoint)) {
    if (local.count(name) == 0) out.insert(name);
  }
  return out;
}

TensorMap SelectTensors(const TensorMap& tensors, const std::set<std::string>& names) {
  TensorMap out;
  for (const std::string& name : names) {
    auto it = tensors.find(name);
    if (it != tensors.end()) out.emplace(name, it->second);
  }
  return out;
}

TensorMap DropTensors(const TensorMap& tensors, const std::set<std::string>& names) {
  TensorMap out;
  for (const auto& [name, tensor] : tensors) {
    if (names.count(name) == 0) out.emplace(name, tensor);
  }
  return out;
}

absl::StatusOr<model::Checkpoint> ReplaceTensors(const model::Checkpoint& checkpoint, const TensorMap& replacement,
                                                 absl::string_view what) {
  TensorMap all = CheckpointTensors(checkpoint);
  for (const auto& [name, tensor] : replacement) {
    auto it = all.find(name);
    if (it == all.end()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": tensor '", name, "' is not a tensor of the model"));
    }
    RETURN_IF_ERROR(CheckSameSchema({{name, it->second}}, {{name, tensor}}, what));
    it->second = tensor;
  }
  return CheckpointWithTensors(checkpoint, all);
}

}  // namespace fedtune::fl
