#include "common/synth/appearance.h"

#include <algorithm>
#include <cmath>

#include "common/synth/profile.h"
#include "opencv2/imgproc.hpp"

namespace fedtune::synth {
namespace {

double Draw(Rng& rng, bool has, const fedtune::v1::SynthRange& range, double default_value) {
  const RangeValue r = RangeOr(has, range, default_value);
  return rng.Uniform(r.min, r.max);
}

// The top-left corner of a w x h box placed in a corner of an n x n image, `margin` px from the edges.
cv::Point CornerOrigin(int corner, int n, int w, int h, int margin) {
  const int x = (corner % 2 == 0) ? margin : n - margin - w;
  const int y = (corner < 2) ? margin : n - margin - h;
  return {x, y};
}

// The scanner signature on a clamped image: intensity curve, correlated texture, grid stripes; clamped again.
void ApplyScanner(const AppearanceParams& a, cv::Mat& img) {
  const int n = img.rows;
  const bool curve = a.scanner_gamma != 1 || a.scanner_gain != 1 || a.scanner_offset != 0;
  if (!curve && a.texture_sigma <= 0 && a.stripe_amplitude <= 0) return;
  if (a.scanner_gamma != 1) cv::pow(img, a.scanner_gamma, img);
  if (a.scanner_gain != 1 || a.scanner_offset != 0) img.convertTo(img, CV_32F, a.scanner_gain, a.scanner_offset);
  if (a.texture_sigma > 0) {
    cv::Mat texture(n, n, CV_32F);
    cv::RNG texture_rng(a.texture_seed);
    texture_rng.fill(texture, cv::RNG::NORMAL, 0.0, 1.0);
    const double sigma = std::max(0.5, a.texture_scale * n);
    cv::GaussianBlur(texture, texture, cv::Size(0, 0), sigma, sigma, cv::BORDER_REFLECT);
    // Smoothing shrinks white noise's spread by about 2 sqrt(pi) sigma; rescale to the texture's own spread so that
    // texture_sigma is its standard deviation whatever the scale and image size.
    cv::Scalar mean, stddev;
    cv::meanStdDev(texture, mean, stddev);
    if (stddev[0] > 0) img += (texture - mean[0]) * (a.texture_sigma / stddev[0]);
  }
  if (a.stripe_amplitude > 0) {
    const double period = std::max(2.0, a.stripe_period * n);  // At least 2 px: finer stripes alias.
    cv::Mat stripes(1, n, CV_32F);
    for (int x = 0; x < n; ++x) {
      stripes.at<float>(0, x) = static_cast<float>(a.stripe_amplitude * std::cos(6.283185307179586 * x / period));
    }
    for (int y = 0; y < n; ++y) img.row(y) += stripes;
  }
  cv::min(cv::max(img, 0.0), 1.0, img);
}

}  // namespace

AppearanceParams DrawAppearance(const fedtune::v1::SynthProfile& profile, Rng& rng) {
  AppearanceParams a;
  const auto& pos = profile.positioning();
  a.shift_x = Draw(rng, pos.has_shift_x(), pos.shift_x(), 0);
  a.shift_y = Draw(rng, pos.has_shift_y(), pos.shift_y(), 0);
  a.rotation_deg = Draw(rng, pos.has_rotation_deg(), pos.rotation_deg(), 0);
  a.scale = Draw(rng, pos.has_scale(), pos.scale(), 1);
  const auto& d = profile.detector();
  a.resolution = Draw(rng, d.has_resolution(), d.resolution(), 1);
  a.blur_sigma = Draw(rng, d.has_blur_sigma(), d.blur_sigma(), 0);
  a.contrast = Draw(rng, d.has_contrast(), d.contrast(), 1);
  a.brightness = Draw(rng, d.has_brightness(), d.brightness(), 0);
  a.gamma = Draw(rng, d.has_gamma(), d.gamma(), 1);
  a.invert = rng.Bernoulli(d.invert_probability());
  a.noise_sigma = Draw(rng, d.has_noise_sigma(), d.noise_sigma(), 0);
  a.noise_seed = rng.Next();
  const auto& b = profile.borders();
  a.collimation = rng.Bernoulli(b.collimation_probability());
  for (double& inset : a.collimation_inset) inset = Draw(rng, b.has_collimation_inset(), b.collimation_inset(), 0);
  a.collimation_value = b.collimation_value();
  a.black_border = rng.Bernoulli(b.black_probability());
  for (double& w : a.border) w = Draw(rng, b.has_width(), b.width(), 0);
  const auto& m = profile.markers();
  if (rng.Bernoulli(m.text_probability()) && m.texts_size() > 0) {
    a.text = m.texts(rng.UniformInt(m.texts_size()));
  }
  a.text_height = Draw(rng, m.has_text_height(), m.text_height(), 0.06);
  a.text_value = m.value();
  a.text_corner = rng.UniformInt(4);
  a.block = rng.Bernoulli(m.block_probability());
  a.block_size = Draw(rng, m.has_block_size(), m.block_size(), 0.1);
  a.block_value = m.block_value();
  a.block_corner = (a.text_corner + 1 + rng.UniformInt(3)) % 4;  // Never on top of the text.
  a.sign_strength = Draw(rng, profile.has_sign_strength(), profile.sign_strength(), 1);
  if (profile.has_scanner()) {  // Drawn last, so that the draws above are those of a profile without a scanner.
    const auto& sc = profile.scanner();
    a.scanner_gamma = sc.gamma() > 0 ? sc.gamma() : 1;
    a.scanner_gain = sc.gain() > 0 ? sc.gain() : 1;
    a.scanner_offset = sc.offset();
    a.texture_sigma = sc.texture_sigma();
    a.texture_scale = sc.texture_scale() > 0 ? sc.texture_scale() : 0.02;
    a.stripe_amplitude = sc.stripe_amplitude();
    a.stripe_period = sc.stripe_period() > 0 ? sc.stripe_period() : 0.05;
    a.texture_seed = rng.Next();
  }
  return a;
}

cv::Mat ApplyAppearance(const cv::Mat& phantom, const AppearanceParams& a) {
  const int n = phantom.rows;
  cv::Mat img;
  // Positioning: rotate and scale about the centre, then shift.
  if (a.shift_x != 0 || a.shift_y != 0 || a.rotation_deg != 0 || a.scale != 1) {
    cv::Mat m = cv::getRotationMatrix2D(cv::Point2f(0.5f * n, 0.5f * n), a.rotation_deg, a.scale);
    m.at<double>(0, 2) += a.shift_x * n;
    m.at<double>(1, 2) += a.shift_y * n;
    cv::warpAffine(phantom, img, m, phantom.size(), cv::INTER_LINEAR, cv::BORDER_CONSTANT, cv::Scalar(0.03));
  } else {
    img = phantom.clone();
  }
  if (a.resolution < 1.0) {
    const int small = std::max(4, static_cast<int>(std::lround(n * a.resolution)));
    cv::Mat low;
    cv::resize(img, low, cv::Size(small, small), 0, 0, cv::INTER_AREA);
    cv::resize(low, img, cv::Size(n, n), 0, 0, cv::INTER_LINEAR);
  }
  if (a.blur_sigma * n >= 0.3) {
    cv::GaussianBlur(img, img, cv::Size(0, 0), a.blur_sigma * n, a.blur_sigma * n, cv::BORDER_REPLICATE);
  }
  img.convertTo(img, CV_32F, a.contrast, 0.5 - 0.5 * a.contrast + a.brightness);
  cv::min(cv::max(img, 0.0), 1.0, img);
  if (a.gamma != 1.0) cv::pow(img, a.gamma, img);
  if (a.invert) img = 1.0 - img;
  if (a.noise_sigma > 0) {
    cv::Mat noise(n, n, CV_32F);
    cv::RNG noise_rng(a.noise_seed);
    noise_rng.fill(noise, cv::RNG::NORMAL, 0.0, a.noise_sigma);
    img += noise;
  }
  cv::min(cv::max(img, 0.0), 1.0, img);
  ApplyScanner(a, img);
  auto px = [n](double f) { return static_cast<int>(std::lround(f * n)); };
  if (a.collimation) {
    const cv::Rect keep(px(a.collimation_inset[0]), px(a.collimation_inset[1]),
                        std::max(1, n - px(a.collimation_inset[0]) - px(a.collimation_inset[2])),
                        std::max(1, n - px(a.collimation_inset[1]) - px(a.collimation_inset[3])));
    cv::Mat outside(n, n, CV_8U, cv::Scalar(255));
    outside(keep & cv::Rect(0, 0, n, n)).setTo(0);
    img.setTo(a.collimation_value, outside);
  }
  if (a.black_border) {
    img.colRange(0, std::min(n, px(a.border[0]))).setTo(0);
    img.rowRange(0, std::min(n, px(a.border[1]))).setTo(0);
    img.colRange(std::max(0, n - px(a.border[2])), n).setTo(0);
    img.rowRange(std::max(0, n - px(a.border[3])), n).setTo(0);
  }
  const int margin = std::max(1, n / 32);
  if (!a.text.empty()) {
    const int font = cv::FONT_HERSHEY_SIMPLEX;
    int baseline = 0;
    const cv::Size unit = cv::getTextSize(a.text, font, 1.0, 2, &baseline);
    const double scale = std::max(0.1, a.text_height * n / unit.height);
    const int thickness = std::max(1, static_cast<int>(std::lround(scale * 2)));
    const cv::Size size = cv::getTextSize(a.text, font, scale, thickness, &baseline);
    const cv::Point origin = CornerOrigin(a.text_corner, n, std::min(size.width, n - 2 * margin), size.height, margin);
    cv::putText(img, a.text, cv::Point(origin.x, origin.y + size.height), font, scale, cv::Scalar(a.text_value),
                thickness, cv::LINE_8);
  }
  if (a.block) {
    const int side = std::max(1, px(a.block_size));
    const cv::Point origin = CornerOrigin(a.block_corner, n, side, side * 2 / 3 + 1, margin);
    cv::rectangle(img, cv::Rect(origin.x, origin.y, side, side * 2 / 3 + 1) & cv::Rect(0, 0, n, n),
                  cv::Scalar(a.block_value), cv::FILLED);
  }
  return img;
}

}  // namespace fedtune::synth
