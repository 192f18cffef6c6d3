// Building blocks of the report's Grad-CAM gallery: choosing the cases to show and turning one preprocessed image
// into its ensemble Grad-CAM overlay.
#ifndef FEDTUNE_COMMON_EVAL_GALLERY_H_
#define FEDTUNE_COMMON_EVAL_GALLERY_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/imaging/preprocess.h"
#include "common/model/classifier.h"

namespace fedtune::eval {

// Indices of the k highest scores, highest first; equal scores in increasing index order (deterministic). Returns
// all indices when k >= scores.size(). NaN scores are never selected.
std::vector<size_t> TopScoringIndices(absl::Span<const double> scores, size_t k);

// The ensemble Grad-CAM overlay (EnsembleGradCam, then GradCamOverlayPng) of one image for one label, as PNG bytes.
//   image:   a preprocessed image (pixels in [0, 1], not normalized); it is normalized here with options.mean and
//            options.std, and repeated over channels when the members take more than one input channel.
//   alpha:   as GradCamOverlayPng.
// Errors as EnsembleGradCam and GradCamOverlayPng; InvalidArgument when image.pixels does not hold size * size
// values.
absl::StatusOr<std::string> EnsembleGradCamOverlayPng(const std::vector<model::Classifier>& members,
                                                      const imaging::PreprocessedImage& image,
                                                      const imaging::PreprocessOptions& options, int label,
                                                      double alpha = 0.4);

}  // namespace fedtune::eval

#endif  // FEDTUNE_COMMON_EVAL_GALLERY_H_
