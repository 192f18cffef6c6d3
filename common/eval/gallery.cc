#include "common/eval/gallery.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/eval/grad_cam.h"
#include "common/eval/overlay.h"
#include "common/status_macros.h"

namespace fedtune::eval {

std::vector<size_t> TopScoringIndices(absl::Span<const double> scores, size_t k) {
  std::vector<size_t> order;
  order.reserve(scores.size());
  for (size_t i = 0; i < scores.size(); ++i) {
    if (!std::isnan(scores[i])) order.push_back(i);
  }
  const size_t n = std::min(k, order.size());
  std::partial_sort(order.begin(), order.begin() + n, order.end(),
                    [&](size_t i, size_t j) { return scores[i] > scores[j] || (scores[i] == scores[j] && i < j); });
  order.resize(n);
  return order;
}

absl::StatusOr<std::string> EnsembleGradCamOverlayPng(const std::vector<model::Classifier>& members,
                                                      const imaging::PreprocessedImage& image,
                                                      const imaging::PreprocessOptions& options, int label,
                                                      double alpha) {
  if (image.size <= 0 || image.pixels.size() != static_cast<size_t>(image.size) * static_cast<size_t>(image.size)) {
    return absl::InvalidArgumentError(
        absl::StrCat("preprocessed image of size ", image.size, " holds ", image.pixels.size(), " pixels"));
  }
  if (members.empty() || members.front() == nullptr) {
    return absl::InvalidArgumentError("ensemble Grad-CAM needs at least one non-null member");
  }
  std::vector<float> normalized = image.pixels;
  imaging::Normalize(options, &normalized);
  at::Tensor cam;
  try {
    torch::Tensor input = torch::from_blob(normalized.data(), {1, 1, image.size, image.size}, torch::kFloat32).clone();
    const int channels = members.front()->config().in_channels;
    if (channels > 1) input = input.expand({1, channels, image.size, image.size}).contiguous();
    ASSIGN_OR_RETURN(cam, EnsembleGradCam(members, input, label));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("preparing the Grad-CAM input: ", e.what_without_backtrace()));
  }
  return GradCamOverlayPng(image.pixels, image.size, cam, alpha);
}

}  // namespace fedtune::eval
