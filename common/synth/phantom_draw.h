// The drawing layer of the phantom (phantom.h): normalized coordinates, the painter, the lung geometry, and one
// function per finding sign. Internal to phantom.cc and phantom_signs.cc; users include phantom.h.
//
// Coordinates are normalized to the image side (u across, v down, both in [0, 1]); canvases are square CV_32F
// images of the painter's side with intensities as phantom.h describes.
//
// Thread safety: all functions are reentrant; each uses only its arguments.
#ifndef FEDTUNE_COMMON_SYNTH_PHANTOM_DRAW_H_
#define FEDTUNE_COMMON_SYNTH_PHANTOM_DRAW_H_

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/synth/phantom.h"
#include "common/synth/rng.h"
#include "opencv2/core.hpp"
#include "opencv2/imgproc.hpp"

namespace fedtune::synth::internal {

constexpr int kMinDrawSize = 128;  // Draw at least this large, then area-resample: anti-aliasing for small outputs.
constexpr int kShift = 3;          // Sub-pixel bits for OpenCV drawing.
constexpr double kAir = 0.03;
constexpr double kSoftTissue = 0.45;
constexpr double kLung = 0.16;
constexpr double kMediastinum = 0.60;
constexpr double kDevice = 0.95;

struct Pt {
  double u, v;
};

// One lung field: its outline, hilum, lateral (or, on the lateral view, posterior) wall, and which way is lateral.
struct Lung {
  std::vector<Pt> outline;
  std::vector<Pt> lateral_wall;  // From top to bottom, along the chest wall.
  Pt hilum;
  bool lateral_is_low_u;  // True when the chest wall is at smaller u than the mediastinum.
  double u0, u1, v0, v1;  // Bounding box.
};

// Everything drawn, in normalized coordinates.
struct Geometry {
  std::vector<Pt> body;
  std::vector<Lung> lungs;
  std::vector<std::vector<Pt>> ribs;  // Each a polyline from the spine outwards.
  std::vector<int> rib_lung;          // The lung each rib crosses.
};

// Draws in normalized coordinates onto a square CV_32F canvas of side n.
class Painter {
 public:
  explicit Painter(int n) : n_(n) {}
  int n() const { return n_; }
  cv::Point P(Pt p) const {
    return cv::Point(static_cast<int>(std::lround(p.u * n_ * (1 << kShift))),
                     static_cast<int>(std::lround(p.v * n_ * (1 << kShift))));
  }
  int Px(double length) const { return std::max(1, static_cast<int>(std::lround(length * n_))); }
  cv::Mat Zeros() const { return cv::Mat::zeros(n_, n_, CV_32F); }
  void FillPoly(cv::Mat& m, const std::vector<Pt>& pts, double value) const {
    std::vector<cv::Point> q;
    for (const Pt& p : pts) q.push_back(P(p));
    cv::fillPoly(m, std::vector<std::vector<cv::Point>>{q}, cv::Scalar(value), cv::LINE_8, kShift);
  }
  void Polyline(cv::Mat& m, const std::vector<Pt>& pts, double value, double thickness) const {
    std::vector<cv::Point> q;
    for (const Pt& p : pts) q.push_back(P(p));
    cv::polylines(m, std::vector<std::vector<cv::Point>>{q}, false, cv::Scalar(value), Px(thickness), cv::LINE_8,
                  kShift);
  }
  void Ellipse(cv::Mat& m, Pt c, double au, double av, double angle_deg, double value, int thickness = -1) const {
    cv::ellipse(m, P(c), cv::Size(std::lround(au * n_ * (1 << kShift)), std::lround(av * n_ * (1 << kShift))),
                angle_deg, 0, 360, cv::Scalar(value), thickness, cv::LINE_8, kShift);
  }
  void Blur(cv::Mat& m, double sigma) const {
    const double s = sigma * n_;
    if (s < 0.3) return;
    cv::GaussianBlur(m, m, cv::Size(0, 0), s, s, cv::BORDER_REPLICATE);
  }

 private:
  int n_;
};

// canvas += gain * layer (elementwise), optionally restricted to mask.
void AddLayer(cv::Mat& canvas, const cv::Mat& layer, double gain, const cv::Mat& mask = cv::Mat());

// canvas = canvas + alpha * (value - canvas), alpha a soft mask in [0, 1] times `strength`.
void BlendToward(cv::Mat& canvas, const cv::Mat& alpha, double value, double strength);

// Transforms points about a centre: u scaled by su, v by sv, then shifted down by dv.
std::vector<Pt> Scale(const std::vector<Pt>& pts, Pt c, double su, double sv, double dv = 0);

// A quadratic Bezier curve as a polyline.
std::vector<Pt> Bezier(Pt a, Pt b, Pt c, int steps = 10);

// A uniformly random point inside the lung (rejection sampling on the mask), kept `margin` inside its box.
Pt PointInLung(const Painter& p, const cv::Mat& mask, const Lung& lung, Rng& rng, double v_lo = 0, double v_hi = 1);

// What every sign is drawn with: the painter, the geometry, each lung's mask (and their union), the view and the
// sign strength.
struct Context {
  const Painter& p;
  const Geometry& g;
  const std::vector<cv::Mat>& lung_masks;
  cv::Mat all_lungs;
  View view;
  double s;  // Sign strength.
};

// The finding signs (phantom.h lists what each looks like), drawn onto `canvas` with placement drawn from `rng`.
// DrawFracture also displaces a rib on `ribs`, the rib layer.
void DrawPneumothorax(cv::Mat& canvas, const Context& c, Rng& rng);
void DrawEffusion(cv::Mat& canvas, const Context& c, Rng& rng);
void DrawEdema(cv::Mat& canvas, const Context& c, Rng& rng);
void DrawConsolidation(cv::Mat& canvas, const Context& c, Rng& rng);
void DrawPneumonia(cv::Mat& canvas, const Context& c, Rng& rng);
void DrawAtelectasis(cv::Mat& canvas, const Context& c, Rng& rng);
void DrawLesion(cv::Mat& canvas, const Context& c, Rng& rng);
void DrawLungOpacity(cv::Mat& canvas, const Context& c, Rng& rng);
void DrawPleuralOther(cv::Mat& canvas, const Context& c, Rng& rng);
void DrawFracture(cv::Mat& canvas, cv::Mat& ribs, const Context& c, Rng& rng);
void DrawSupportDevices(cv::Mat& canvas, const Context& c, Rng& rng);

}  // namespace fedtune::synth::internal

#endif  // FEDTUNE_COMMON_SYNTH_PHANTOM_DRAW_H_
