// Grad-CAM overlays: a grayscale radiograph with a Grad-CAM map blended over it in the JET colour map (blue = no
// evidence, red = strongest evidence), encoded as PNG for the report's gallery and for files next to it.
#ifndef FEDTUNE_COMMON_EVAL_OVERLAY_H_
#define FEDTUNE_COMMON_EVAL_OVERLAY_H_

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fedtune::eval {

// Encodes the overlay as PNG bytes (8-bit BGR image of size x size pixels).
//   gray01: size * size row-major intensities in [0, 1] (as imaging::PreprocessedImage holds them; values outside
//           are clipped).
//   cam01:  a [h, w] floating-point map in [0, 1] (as EnsembleGradCam returns it; values outside are clipped),
//           resized bilinearly to size x size when its shape differs.
//   alpha:  weight of the colour map in [0, 1]; pixel = (1 - alpha) * gray + alpha * jet(cam).
// InvalidArgument when size <= 0, gray01 does not hold size * size values, a value is not finite, cam01 is not a
// defined 2-D floating-point tensor, or alpha is outside [0, 1]; Internal when OpenCV fails.
absl::StatusOr<std::string> GradCamOverlayPng(const std::vector<float>& gray01, int size, const at::Tensor& cam01,
                                              double alpha = 0.4);

// GradCamOverlayPng written to `path` with io::WriteFileAtomically. Errors as GradCamOverlayPng, and as
// WriteFileAtomically (the parent directory must exist).
absl::Status WriteGradCamOverlay(const std::string& path, const std::vector<float>& gray01, int size,
                                 const at::Tensor& cam01, double alpha = 0.4);

}  // namespace fedtune::eval

#endif  // FEDTUNE_COMMON_EVAL_OVERLAY_H_
