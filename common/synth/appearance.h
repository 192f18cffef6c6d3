// Site-specific appearance: what a hospital's positioning, detector, image processing and annotations do to the
// phantom (phantom.h). The parameters are drawn per image from a profile, then applied deterministically.
#ifndef FEDTUNE_COMMON_SYNTH_APPEARANCE_H_
#define FEDTUNE_COMMON_SYNTH_APPEARANCE_H_

#include <array>
#include <cstdint>
#include <string>

#include "common/synth/rng.h"
#include "fedtune/v1/synth_profile.pb.h"
#include "opencv2/core.hpp"

namespace fedtune::synth {

// One image's draws from a profile (see synth_profile.proto for the meaning of each).
struct AppearanceParams {
  double shift_x = 0, shift_y = 0, rotation_deg = 0, scale = 1;
  double resolution = 1, blur_sigma = 0;
  double contrast = 1, brightness = 0, gamma = 1;
  bool invert = false;
  double noise_sigma = 0;
  uint64_t noise_seed = 0;
  bool collimation = false;
  std::array<double, 4> collimation_inset{};  // left, top, right, bottom (fractions of the side).
  double collimation_value = 0;
  bool black_border = false;
  std::array<double, 4> border{};  // left, top, right, bottom.
  std::string text;                // Empty: no text marker.
  double text_height = 0, text_value = 1;
  int text_corner = 0;  // 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right.
  bool block = false;
  double block_size = 0, block_value = 1;
  int block_corner = 0;
  double sign_strength = 1;
  // The scanner signature (SynthScanner; neutral values when the profile has none). Only texture_seed is drawn.
  double scanner_gamma = 1, scanner_gain = 1, scanner_offset = 0;
  double texture_sigma = 0, texture_scale = 0.02;
  uint64_t texture_seed = 0;
  double stripe_amplitude = 0, stripe_period = 0.05;
};

// Draws one image's parameters from a validated profile. A profile without a scanner draws exactly what earlier
// releases drew; with one, one more value (the texture's seed) is drawn last.
AppearanceParams DrawAppearance(const fedtune::v1::SynthProfile& profile, Rng& rng);

// Applies positioning, resolution loss, blur, contrast/brightness, gamma, inversion, noise, the scanner's curve,
// texture and stripes, collimation, black borders and burned-in markers, in that order, to a square CV_32F phantom with
// values in [0, 1]. Returns a new CV_32F image of the same size, clamped to [0, 1]. Deterministic; thread-safe.
cv::Mat ApplyAppearance(const cv::Mat& phantom, const AppearanceParams& params);

}  // namespace fedtune::synth

#endif  // FEDTUNE_COMMON_SYNTH_APPEARANCE_H_
