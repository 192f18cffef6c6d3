#include "common/eval/overlay.h"

#include <ATen/ATen.h>

#include <cmath>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/status_macros.h"

namespace fedtune::eval {

absl::StatusOr<std::string> GradCamOverlayPng(const std::vector<float>& gray01, int size, const at::Tensor& cam01,
                                              double alpha) {
  if (size <= 0) return absl::InvalidArgumentError(absl::StrCat("overlay size must be positive, got ", size));
  if (gray01.size() != static_cast<size_t>(size) * static_cast<size_t>(size)) {
    return absl::InvalidArgumentError(absl::StrCat("overlay image holds ", gray01.size(), " values, expected ", size,
                                                   " x ", size, " = ", static_cast<int64_t>(size) * size));
  }
  if (!(alpha >= 0.0 && alpha <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("overlay alpha must be in [0, 1], got ", alpha));
  }
  if (!cam01.defined() || cam01.dim() != 2 || !cam01.is_floating_point() || cam01.size(0) < 1 || cam01.size(1) < 1) {
    return absl::InvalidArgumentError("overlay Grad-CAM map must be a non-empty 2-D floating-point tensor");
  }
  for (size_t i = 0; i < gray01.size(); ++i) {
    if (!std::isfinite(gray01[i])) {
      return absl::InvalidArgumentError(absl::StrCat("overlay image value ", i, " is not finite"));
    }
  }
  try {
    at::Tensor cam = cam01.detach().to(at::kCPU, at::kFloat).contiguous();
    if (!cam.isfinite().all().item<bool>()) {
      return absl::InvalidArgumentError("overlay Grad-CAM map has a value that is not finite");
    }
    cv::Mat cam_mat(static_cast<int>(cam.size(0)), static_cast<int>(cam.size(1)), CV_32F, cam.data_ptr<float>());
    cv::Mat cam_sized;
    if (cam_mat.rows != size || cam_mat.cols != size) {
      cv::resize(cam_mat, cam_sized, cv::Size(size, size), 0, 0, cv::INTER_LINEAR);
    } else {
      cam_sized = cam_mat.clone();
    }
    cv::Mat cam8;
    cam_sized.convertTo(cam8, CV_8U, 255.0);  // Saturating: clips to [0, 255].
    cv::Mat heat;
    cv::applyColorMap(cam8, heat, cv::COLORMAP_JET);

    cv::Mat gray_mat(size, size, CV_32F, const_cast<float*>(gray01.data()));
    cv::Mat gray8, gray_bgr;
    gray_mat.convertTo(gray8, CV_8U, 255.0);
    cv::cvtColor(gray8, gray_bgr, cv::COLOR_GRAY2BGR);

    cv::Mat blended;
    cv::addWeighted(gray_bgr, 1.0 - alpha, heat, alpha, 0.0, blended);
    std::vector<uchar> png;
    if (!cv::imencode(".png", blended, png)) return absl::InternalError("OpenCV could not encode the overlay as PNG");
    return std::string(png.begin(), png.end());
  } catch (const cv::Exception& e) {
    return absl::InternalError(absl::StrCat("OpenCV while drawing the Grad-CAM overlay: ", e.what()));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("reading the Grad-CAM map: ", e.what_without_backtrace()));
  }
}

absl::Status WriteGradCamOverlay(const std::string& path, const std::vector<float>& gray01, int size,
                                 const at::Tensor& cam01, double alpha) {
  absl::StatusOr<std::string> png = GradCamOverlayPng(gray01, size, cam01, alpha);
  if (!png.ok()) return absl::Status(png.status().code(), absl::StrCat(path, ": ", png.status().message()));
  return io::WriteFileAtomically(path, *png);
}

}  // namespace fedtune::eval
