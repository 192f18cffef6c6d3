#include "common/eval/grad_cam.h"

#include <torch/torch.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace fedtune::eval {
namespace {

// Puts a module back into the mode it was found in, whatever path the caller leaves by.
class TrainingModeRestorer {
 public:
  explicit TrainingModeRestorer(torch::nn::Module& module) : module_(module), was_training_(module.is_training()) {}
  ~TrainingModeRestorer() { module_.train(was_training_); }
  TrainingModeRestorer(const TrainingModeRestorer&) = delete;
  TrainingModeRestorer& operator=(const TrainingModeRestorer&) = delete;

 private:
  torch::nn::Module& module_;
  bool was_training_;
};

std::string ShapeString(const at::Tensor& t) {
  std::string out = "[";
  for (int64_t d = 0; d < t.dim(); ++d) absl::StrAppend(&out, d ? ", " : "", t.size(d));
  return out + "]";
}

}  // namespace

absl::StatusOr<at::Tensor> GradCam(model::ClassifierImpl& model, const at::Tensor& image, int label) {
  if (!image.defined() || image.dim() != 4 || image.size(0) != 1 || image.size(2) < 1 || image.size(3) < 1) {
    return absl::InvalidArgumentError(absl::StrCat("Grad-CAM needs one image of shape [1, C, H, W], got ",
                                                   image.defined() ? ShapeString(image) : "an undefined tensor"));
  }
  if (!image.is_floating_point()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Grad-CAM needs a floating-point image, got ", std::string(c10::toString(image.scalar_type()))));
  }
  const int64_t height = image.size(2);
  const int64_t width = image.size(3);
  try {
    TrainingModeRestorer restore_mode(model);
    model.eval();
    torch::Device device = torch::kCPU;
    torch::Dtype dtype = torch::kFloat32;
    const std::vector<torch::Tensor> params = model.parameters();
    if (!params.empty()) {
      device = params.front().device();
      dtype = params.front().scalar_type();
    }
    torch::Tensor features;
    {
      // The backbone's gradients are not needed: only d logit / d features.
      torch::NoGradGuard no_grad;
      features = model.Features(image.to(device, dtype));
    }
    if (features.dim() != 4 || features.size(0) != 1) {
      return absl::InternalError(
          absl::StrCat("Grad-CAM: Features() returned ", ShapeString(features), ", expected [1, C, h, w]"));
    }
    torch::AutoGradMode enable_grad(true);
    torch::Tensor leaf = features.detach().requires_grad_(true);
    torch::Tensor logits = model.Head(model::ClassifierImpl::Pool(leaf));
    if (logits.dim() != 2 || label < 0 || label >= logits.size(1)) {
      return absl::InvalidArgumentError(absl::StrCat("Grad-CAM: label index ", label, " is out of range for ",
                                                     logits.dim() == 2 ? logits.size(1) : 0, " model outputs"));
    }
    torch::Tensor score = logits.select(1, label).sum();
    // autograd::grad returns the gradient for `leaf` only; parameters' .grad fields are left alone.
    torch::Tensor grads = torch::autograd::grad({score}, {leaf}, /*grad_outputs=*/{}, /*retain_graph=*/false,
                                                /*create_graph=*/false, /*allow_unused=*/true)[0];
    if (!grads.defined()) grads = torch::zeros_like(leaf);  // The head ignores the features: no evidence anywhere.
    torch::NoGradGuard no_grad;
    torch::Tensor weights = grads.mean({2, 3}, /*keepdim=*/true);                         // [1, C, 1, 1]
    torch::Tensor cam = torch::relu((weights * leaf.detach()).sum(1, /*keepdim=*/true));  // [1, 1, h, w]
    if (cam.size(2) != height || cam.size(3) != width) {
      cam = torch::nn::functional::interpolate(cam, torch::nn::functional::InterpolateFuncOptions()
                                                        .size(std::vector<int64_t>{height, width})
                                                        .mode(torch::kBilinear)
                                                        .align_corners(false));
      cam = torch::relu(cam);  // Bilinear weights are convex; this only removes rounding below zero.
    }
    return cam.select(0, 0).select(0, 0).to(torch::kCPU, torch::kFloat32).contiguous();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("Grad-CAM on an image ", ShapeString(image), " for label ", label, ": ",
                                            e.what_without_backtrace()));
  }
}

absl::StatusOr<at::Tensor> EnsembleGradCam(const std::vector<model::Classifier>& members, const at::Tensor& image,
                                           int label) {
  if (members.empty()) return absl::InvalidArgumentError("ensemble Grad-CAM needs at least one member");
  torch::Tensor sum;
  for (size_t i = 0; i < members.size(); ++i) {
    if (members[i] == nullptr) return absl::InvalidArgumentError(absl::StrCat("ensemble member ", i, " is null"));
    absl::StatusOr<at::Tensor> cam = GradCam(*members[i], image, label);
    if (!cam.ok()) {
      return absl::Status(cam.status().code(), absl::StrCat("ensemble member ", i, ": ", cam.status().message()));
    }
    sum = sum.defined() ? sum + *cam : *cam;
  }
  try {
    torch::NoGradGuard no_grad;
    torch::Tensor mean = sum / static_cast<double>(members.size());
    const double max = mean.max().item<double>();
    if (max > 0) mean = mean / max;
    return mean.clamp(0.0, 1.0).contiguous();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("ensemble Grad-CAM: ", e.what_without_backtrace()));
  }
}

}  // namespace fedtune::eval
