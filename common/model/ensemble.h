// Ensembles of classifiers (Irvin et al.'s CheXpert setting, as in the study):
//   SoloNet: members see the same image; the prediction is the mean of the members' sigmoid probabilities.
//   DuoNet: a frontal and a lateral backbone; their pooled features are concatenated and fed (after dropout) to a
//           new final linear layer.
// Study-level prediction uses the DuoNet when a study has both views and one exists, the SoloNet otherwise.
// Conversion to and from checkpoints (checkpoint.h) lives here too.
//
// Thread safety: as for torch::nn::Module (see classifier.h).
#ifndef FEDTUNE_COMMON_MODEL_ENSEMBLE_H_
#define FEDTUNE_COMMON_MODEL_ENSEMBLE_H_

#include <torch/nn/module.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>

#include <vector>

#include "absl/status/statusor.h"
#include "common/model/checkpoint.h"
#include "common/model/classifier.h"

namespace fedtune::model {

class SoloNetImpl : public torch::nn::Module {
 public:
  // Members are registered as "member0", "member1", ... All must have the same number of outputs (CHECK).
  explicit SoloNetImpl(std::vector<Classifier> members);
  // Mean of the members' sigmoid probabilities: [N, C, H, W] -> [N, num_outputs].
  torch::Tensor forward(const torch::Tensor& x);
  const std::vector<Classifier>& members() const { return members_; }
  int64_t num_outputs() const;

 private:
  std::vector<Classifier> members_;
};
TORCH_MODULE(SoloNet);

class DuoNetImpl : public torch::nn::Module {
 public:
  // Registers "frontal", "lateral", "dropout" (p = head_dropout) and "fc" (Linear(frontal features + lateral
  // features -> num_outputs), freshly initialized). The backbones' own heads are kept (their keys stay in the state
  // dict) but unused.
  DuoNetImpl(Classifier frontal, Classifier lateral, int64_t num_outputs, double head_dropout);
  // Logits [N, num_outputs] from paired views [N, C, H, W] each (same N; sizes may differ between views).
  torch::Tensor forward(const torch::Tensor& frontal, const torch::Tensor& lateral);
  const Classifier& frontal() const { return frontal_; }
  const Classifier& lateral() const { return lateral_; }
  int64_t num_outputs() const { return fc_->options.out_features(); }
  double head_dropout() const { return dropout_->options.p(); }

 private:
  Classifier frontal_, lateral_;
  torch::nn::Dropout dropout_{nullptr};
  torch::nn::Linear fc_{nullptr};
};
TORCH_MODULE(DuoNet);

// A model as fedtune deploys it: a SoloNet, optionally a DuoNet.
struct Ensemble {
  SoloNet solo{nullptr};
  DuoNet duo{nullptr};  // nullptr when absent.
};

// The images of one study, preprocessed, each [K, C, H, W] (K may be 0 for a missing view).
struct StudyImages {
  torch::Tensor frontal;
  torch::Tensor lateral;
};

// Probabilities [num_outputs] for one study: with a DuoNet and both views, the mean over all (frontal, lateral)
// pairs of sigmoid(DuoNet logits); otherwise the SoloNet's probabilities averaged over all the study's images
// (frontal, and lateral ones when there is no frontal image). Runs in eval mode under NoGradGuard on the models'
// device (the inputs are moved there). InvalidArgument when the study has no image or shapes are inconsistent;
// Internal on a LibTorch error.
absl::StatusOr<torch::Tensor> PredictStudy(Ensemble& ensemble, const StudyImages& study);

// Builds an ensemble from checkpoint weights (strict: every key must be present with its shape). InvalidArgument
// naming the member and key otherwise.
absl::StatusOr<Ensemble> EnsembleFromCheckpoint(const Checkpoint& checkpoint);
// Copies an ensemble's weights and configs into a checkpoint with the given metadata (digest not yet computed).
Checkpoint CheckpointFromEnsemble(const Ensemble& ensemble, CheckpointMetadata metadata);

}  // namespace fedtune::model

#endif  // FEDTUNE_COMMON_MODEL_ENSEMBLE_H_
