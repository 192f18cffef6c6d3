#include "common/imaging/augment.h"

#include <algorithm>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "common/imaging/fingerprint.h"
#include "common/seed.h"

namespace fedtune::imaging {
namespace {

// A tiny counter-based generator: the k-th draw is a pure function of (key, k).
// No std:: distributions, whose algorithms differ between standard libraries.
class DrawStream {
 public:
  explicit DrawStream(uint64_t key) : key_(key) {}
  // Uniform in [0, 1) with 53 random bits.
  double Next() {
    const uint64_t bits = SplitMix64Finalize(key_ + kSplitMix64Gamma * ++counter_);
    return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);
  }

 private:
  uint64_t key_;
  uint64_t counter_ = 0;
};

}  // namespace

AugmentParams DrawAugmentParams(uint64_t seed, int64_t epoch, const std::string& image_id,
                                const AugmentOptions& options) {
  const uint64_t key = SplitMix64Finalize(SplitMix64Finalize(seed ^ 0x6a09e667f3bcc908ULL) ^
                                          SplitMix64Finalize(static_cast<uint64_t>(epoch)) * 3 ^
                                          Fingerprint64(image_id, 0x3c6ef372fe94f82bULL));
  DrawStream draws(key);
  // Always draw all three values so that one option's value never shifts
  // another's draws.
  const double u_flip = draws.Next();
  const double u_rotate = draws.Next();
  const double u_angle = draws.Next();
  AugmentParams params;
  params.flip = u_flip < options.flip_probability;
  params.rotate = u_rotate < options.rotate_probability && options.max_rotation_degrees > 0.0;
  if (params.rotate) params.rotation_degrees = (2.0 * u_angle - 1.0) * options.max_rotation_degrees;
  return params;
}

absl::Status ApplyAugmentation(const AugmentParams& params, int width, int height, std::vector<float>* pixels) {
  if (width <= 0 || height <= 0 || pixels->size() != static_cast<size_t>(width) * height) {
    return absl::InvalidArgumentError(absl::StrCat("augmentation: buffer of ", pixels->size(),
                                                   " values does not hold a ", width, "x", height, " image"));
  }
  if (params.flip) {
    for (int y = 0; y < height; ++y) {
      float* row = pixels->data() + static_cast<size_t>(y) * width;
      std::reverse(row, row + width);
    }
  }
  if (params.rotate && params.rotation_degrees != 0.0) {
    try {
      const cv::Mat src(height, width, CV_32FC1, pixels->data());
      const cv::Point2f center(0.5f * (width - 1), 0.5f * (height - 1));
      const cv::Mat m = cv::getRotationMatrix2D(center, params.rotation_degrees, 1.0);
      cv::Mat dst;
      cv::warpAffine(src, dst, m, src.size(), cv::INTER_LINEAR, cv::BORDER_CONSTANT, cv::Scalar(0.0));
      dst.copyTo(src);
    } catch (const cv::Exception& e) {
      return absl::InternalError(absl::StrCat("augmentation: rotation failed: ", e.what()));
    }
  }
  return absl::OkStatus();
}

absl::Status Augment(uint64_t seed, int64_t epoch, const std::string& image_id, const AugmentOptions& options,
                     int width, int height, std::vector<float>* pixels, AugmentParams* applied) {
  const AugmentParams params = DrawAugmentParams(seed, epoch, image_id, options);
  if (applied != nullptr) *applied = params;
  return ApplyAugmentation(params, width, height, pixels);
}

}  // namespace fedtune::imaging
