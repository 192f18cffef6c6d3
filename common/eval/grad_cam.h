// Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization",
// ICCV 2017) on the last convolutional feature map of fedtune's classifiers, and its mean over an ensemble's members.
//
// For a label k with logit y_k and the feature map A = Features(x) of shape [1, C, h, w]:
//   alpha_c = mean over (i, j) of d y_k / d A_c(i, j),   cam = ReLU(sum_c alpha_c A_c),
// upsampled bilinearly to the input's H x W. Because fedtune's classifiers compute y = Head(Pool(A)) with a global
// average pool and a linear head, the gradient is taken through Head(Pool(.)) only: the backbone runs without
// autograd, and no parameter's .grad is touched.
//
// Thread safety: the functions switch a model to eval() and back, so a model must not be used by another thread
// during a call.
#ifndef FEDTUNE_COMMON_EVAL_GRAD_CAM_H_
#define FEDTUNE_COMMON_EVAL_GRAD_CAM_H_

#include <ATen/core/Tensor.h>

#include <vector>

#include "absl/status/statusor.h"
#include "common/model/classifier.h"

namespace fedtune::eval {

// The Grad-CAM map of `label` for one image.
//   image: [1, C, H, W] floating-point, preprocessed and normalized as the model expects (moved to the model's
//          device for the computation).
//   label: output index in [0, number of outputs).
// Returns a [H, W] float32 CPU tensor, >= 0, not normalized (its scale is that of the logit's gradient). The model
// runs in eval() mode; its train/eval mode, its parameters' requires_grad and .grad are as they were afterwards.
// InvalidArgument when the image is not [1, C, H, W] floating point or the label is out of range; Internal on a
// LibTorch error (for example a channel count the model does not accept).
absl::StatusOr<at::Tensor> GradCam(model::ClassifierImpl& model, const at::Tensor& image, int label);

// The mean of the members' Grad-CAM maps (each as GradCam returns it) divided by its maximum, so that the result
// lies in [0, 1]; an all-zero mean stays all zero. [H, W] float32 CPU tensor.
// InvalidArgument when `members` is empty or holds a null model, and as GradCam.
absl::StatusOr<at::Tensor> EnsembleGradCam(const std::vector<model::Classifier>& members, const at::Tensor& image,
                                           int label);

}  // namespace fedtune::eval

#endif  // FEDTUNE_COMMON_EVAL_GRAD_CAM_H_
