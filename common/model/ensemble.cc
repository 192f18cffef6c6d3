#include "common/model/ensemble.h"

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/model/model_factory.h"
#include "common/status_macros.h"

namespace fedtune::model {

SoloNetImpl::SoloNetImpl(std::vector<Classifier> members) : members_(std::move(members)) {
  CHECK(!members_.empty());
  for (size_t i = 0; i < members_.size(); ++i) {
    CHECK_EQ(members_[i]->config().num_outputs, members_[0]->config().num_outputs);
    register_module(absl::StrCat("member", i), members_[i]);
  }
}

int64_t SoloNetImpl::num_outputs() const { return members_[0]->config().num_outputs; }

torch::Tensor SoloNetImpl::forward(const torch::Tensor& x) {
  torch::Tensor sum;
  for (auto& member : members_) {
    torch::Tensor p = torch::sigmoid(member->forward(x));
    sum = sum.defined() ? sum + p : p;
  }
  return sum / static_cast<double>(members_.size());
}

DuoNetImpl::DuoNetImpl(Classifier frontal, Classifier lateral, int64_t num_outputs, double head_dropout)
    : frontal_(std::move(frontal)), lateral_(std::move(lateral)) {
  register_module("frontal", frontal_);
  register_module("lateral", lateral_);
  dropout_ = register_module("dropout", torch::nn::Dropout(head_dropout));
  fc_ = register_module("fc", torch::nn::Linear(frontal_->num_features() + lateral_->num_features(), num_outputs));
}

torch::Tensor DuoNetImpl::forward(const torch::Tensor& frontal, const torch::Tensor& lateral) {
  torch::Tensor f = ClassifierImpl::Pool(frontal_->Features(frontal));
  torch::Tensor l = ClassifierImpl::Pool(lateral_->Features(lateral));
  return fc_->forward(dropout_->forward(torch::cat({f, l}, 1)));
}

absl::StatusOr<torch::Tensor> PredictStudy(Ensemble& ensemble, const StudyImages& study) {
  auto count = [](const torch::Tensor& t) { return t.defined() ? t.size(0) : 0; };
  const int64_t frontal = count(study.frontal), lateral = count(study.lateral);
  if (frontal + lateral == 0) return absl::InvalidArgumentError("study has no image");
  try {
    torch::NoGradGuard no_grad;
    if (ensemble.duo && frontal > 0 && lateral > 0) {
      ensemble.duo->eval();
      const auto device = ensemble.duo->parameters().front().device();
      // All (frontal i, lateral j) pairs in one batch.
      torch::Tensor f = study.frontal.to(device).repeat_interleave(lateral, 0);
      torch::Tensor l = study.lateral.to(device).repeat({frontal, 1, 1, 1});
      return torch::sigmoid(ensemble.duo->forward(f, l)).mean(0).to(torch::kCPU);
    }
    ensemble.solo->eval();
    const auto device = ensemble.solo->parameters().front().device();
    torch::Tensor images = frontal > 0 ? study.frontal : study.lateral;
    return ensemble.solo->forward(images.to(device)).mean(0).to(torch::kCPU);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat("study prediction: ", e.what_without_backtrace()));
  }
}

absl::StatusOr<Ensemble> EnsembleFromCheckpoint(const Checkpoint& checkpoint) {
  if (checkpoint.members.empty()) return absl::InvalidArgumentError("checkpoint has no members");
  Ensemble ensemble;
  std::vector<Classifier> members;
  const int num_outputs = checkpoint.members[0].config.num_outputs;
  for (size_t i = 0; i < checkpoint.members.size(); ++i) {
    const MemberWeights& m = checkpoint.members[i];
    if (m.config.num_outputs != num_outputs) {
      return absl::InvalidArgumentError(
          absl::StrCat("member ", i, " has ", m.config.num_outputs, " outputs, member 0 has ", num_outputs));
    }
    ASSIGN_OR_RETURN(Classifier model, CreateModel(m.config));
    ImportOptions strict;
    strict.fold_stem = false;
    strict.replace_mismatched_head = false;
    auto report = LoadStateDictIntoModel(m.weights, *model, strict);
    if (!report.ok()) return absl::InvalidArgumentError(absl::StrCat("member ", i, ": ", report.status().message()));
    members.push_back(model);
  }
  ensemble.solo = SoloNet(std::move(members));
  if (checkpoint.duo) {
    const DuoWeights& d = *checkpoint.duo;
    ASSIGN_OR_RETURN(Classifier frontal, CreateModel(d.frontal));
    ASSIGN_OR_RETURN(Classifier lateral, CreateModel(d.lateral));
    DuoNet duo(frontal, lateral, d.num_outputs, d.head_dropout);
    // DuoNet is not a ClassifierImpl: copy by key, strictly.
    try {
      torch::NoGradGuard no_grad;
      std::vector<std::pair<std::string, torch::Tensor>> targets;
      for (const auto& p : duo->named_parameters()) targets.emplace_back(p.key(), p.value());
      for (const auto& b : duo->named_buffers()) targets.emplace_back(b.key(), b.value());
      if (targets.size() != d.weights.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("duo: checkpoint has ", d.weights.size(), " tensors, the model ", targets.size()));
      }
      for (auto& [key, target] : targets) {
        auto it = d.weights.find(key);
        if (it == d.weights.end()) return absl::InvalidArgumentError(absl::StrCat("duo: missing key '", key, "'"));
        if (it->second.sizes() != target.sizes()) {
          return absl::InvalidArgumentError(absl::StrCat("duo: key '", key, "' has the wrong shape"));
        }
        target.copy_(it->second.to(target.scalar_type()));
      }
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat("duo: ", e.what_without_backtrace()));
    }
    ensemble.duo = duo;
  }
  return ensemble;
}

Checkpoint CheckpointFromEnsemble(const Ensemble& ensemble, CheckpointMetadata metadata) {
  Checkpoint checkpoint;
  checkpoint.metadata = std::move(metadata);
  for (const auto& member : ensemble.solo->members()) {
    checkpoint.members.push_back({member->config(), ModuleStateDict(*member)});
  }
  if (ensemble.duo) {
    DuoWeights d;
    d.frontal = ensemble.duo->frontal()->config();
    d.lateral = ensemble.duo->lateral()->config();
    d.num_outputs = static_cast<int>(ensemble.duo->num_outputs());
    d.head_dropout = ensemble.duo->head_dropout();
    d.weights = ModuleStateDict(*ensemble.duo);
    checkpoint.duo = std::move(d);
  }
  return checkpoint;
}

}  // namespace fedtune::model
