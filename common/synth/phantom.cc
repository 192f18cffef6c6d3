#include "common/synth/phantom.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/logging.h"
#include "opencv2/imgproc.hpp"

namespace fedtune::synth {
namespace {

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
void AddLayer(cv::Mat& canvas, const cv::Mat& layer, double gain, const cv::Mat& mask = cv::Mat()) {
  if (mask.empty()) {
    cv::scaleAdd(layer, gain, canvas, canvas);
  } else {
    cv::Mat masked;
    cv::multiply(layer, mask, masked);
    cv::scaleAdd(masked, gain, canvas, canvas);
  }
}

// canvas = canvas + alpha * (value - canvas), alpha a soft mask in [0, 1] times `strength`.
void BlendToward(cv::Mat& canvas, const cv::Mat& alpha, double value, double strength) {
  cv::Mat diff = cv::Scalar(value) - canvas;
  cv::Mat a;
  cv::multiply(alpha, diff, a, strength);
  canvas += a;
}

std::vector<Pt> Mirror(const std::vector<Pt>& pts) {
  std::vector<Pt> out;
  for (const Pt& p : pts) out.push_back({1.0 - p.u, p.v});
  return out;
}

// Transforms points about a centre: u scaled by su, v by sv, then shifted down by dv.
std::vector<Pt> Scale(const std::vector<Pt>& pts, Pt c, double su, double sv, double dv = 0) {
  std::vector<Pt> out;
  for (const Pt& p : pts) out.push_back({c.u + (p.u - c.u) * su, c.v + (p.v - c.v) * sv + dv});
  return out;
}

void SetBounds(Lung& lung) {
  lung.u0 = lung.v0 = 1e9;
  lung.u1 = lung.v1 = -1e9;
  for (const Pt& p : lung.outline) {
    lung.u0 = std::min(lung.u0, p.u);
    lung.u1 = std::max(lung.u1, p.u);
    lung.v0 = std::min(lung.v0, p.v);
    lung.v1 = std::max(lung.v1, p.v);
  }
}

// A quadratic Bezier curve as a polyline.
std::vector<Pt> Bezier(Pt a, Pt b, Pt c, int steps = 10) {
  std::vector<Pt> out;
  for (int i = 0; i <= steps; ++i) {
    const double t = static_cast<double>(i) / steps;
    const double w0 = (1 - t) * (1 - t), w1 = 2 * t * (1 - t), w2 = t * t;
    out.push_back({w0 * a.u + w1 * b.u + w2 * c.u, w0 * a.v + w1 * b.v + w2 * c.v});
  }
  return out;
}

// Anatomy varies per image: thorax width and height, diaphragm level, rib spacing.
struct Anatomy {
  double width;       // Thorax width factor.
  double height;      // Lung height factor.
  double diaphragm;   // Diaphragm shift (down > 0).
  double heart;       // Heart size factor.
  double rib_offset;  // First rib position jitter.
};

Geometry FrontalGeometry(const Anatomy& a) {
  Geometry g;
  g.body = {{0.02, 0.17}, {0.12, 0.11}, {0.38, 0.08}, {0.41, 0.0}, {0.59, 0.0},
            {0.62, 0.08}, {0.88, 0.11}, {0.98, 0.17}, {0.97, 1.0}, {0.03, 1.0}};
  const Pt center{0.5, 0.45};
  // The patient's right lung (image left).
  std::vector<Pt> right = {{0.33, 0.16},  {0.22, 0.22},  {0.15, 0.35}, {0.125, 0.5}, {0.12, 0.64},
                           {0.125, 0.75}, {0.16, 0.725}, {0.22, 0.69}, {0.3, 0.68},  {0.38, 0.69},
                           {0.445, 0.71}, {0.445, 0.6},  {0.44, 0.4},  {0.42, 0.25}, {0.38, 0.18}};
  std::vector<Pt> right_wall = {{0.22, 0.22}, {0.15, 0.35}, {0.125, 0.5}, {0.12, 0.64}};
  for (int side = 0; side < 2; ++side) {
    Lung lung;
    const double dv = a.diaphragm + (side == 1 ? 0.02 : 0.0);  // The left hemidiaphragm sits lower.
    auto outline = Scale(right, center, a.width, a.height, dv);
    auto wall = Scale(right_wall, center, a.width, a.height, dv);
    lung.outline = side == 0 ? outline : Mirror(outline);
    lung.lateral_wall = side == 0 ? wall : Mirror(wall);
    lung.hilum = side == 0 ? Pt{0.4, 0.47} : Pt{0.6, 0.47};
    lung.lateral_is_low_u = side == 0;
    SetBounds(lung);
    g.lungs.push_back(lung);
  }
  // Posterior ribs: from the spine outwards and down.
  for (int side = 0; side < 2; ++side) {
    for (int k = 0; k < 10; ++k) {
      const double v0 = 0.14 + a.rib_offset + k * 0.058 * a.height;
      auto rib = Bezier({0.47, v0}, {0.5 - 0.32 * a.width, v0 - 0.06}, {0.5 - 0.41 * a.width, v0 + 0.1});
      g.ribs.push_back(side == 0 ? rib : Mirror(rib));
      g.rib_lung.push_back(side);
    }
  }
  return g;
}

Geometry LateralGeometry(const Anatomy& a) {
  Geometry g;
  g.body = {{0.35, 0.0}, {0.62, 0.0}, {0.68, 0.1}, {0.87, 0.2}, {0.9, 0.6},
            {0.88, 1.0}, {0.13, 1.0}, {0.1, 0.6},  {0.12, 0.3}, {0.24, 0.12}};
  Lung lung;
  const Pt center{0.5, 0.45};
  lung.outline = Scale({{0.48, 0.13},
                        {0.38, 0.16},
                        {0.26, 0.25},
                        {0.2, 0.4},
                        {0.19, 0.55},
                        {0.22, 0.66},
                        {0.3, 0.64},
                        {0.45, 0.62},
                        {0.6, 0.66},
                        {0.7, 0.73},
                        {0.77, 0.8},
                        {0.79, 0.65},
                        {0.78, 0.45},
                        {0.73, 0.28},
                        {0.62, 0.16}},
                       center, a.width, a.height, a.diaphragm);
  lung.lateral_wall = Scale({{0.73, 0.28}, {0.78, 0.45}, {0.79, 0.65}}, center, a.width, a.height, a.diaphragm);
  lung.hilum = {0.5, 0.45};
  lung.lateral_is_low_u = false;  // "Lateral" here means posterior: the sulcus and wall are at large u.
  SetBounds(lung);
  g.lungs.push_back(lung);
  for (int k = 0; k < 9; ++k) {
    const double v0 = 0.16 + a.rib_offset + k * 0.065 * a.height;
    g.ribs.push_back(Bezier({0.8, v0}, {0.7, v0 + 0.01}, {0.58, v0 + 0.1}));
    g.rib_lung.push_back(0);
  }
  return g;
}

cv::Mat LungMask(const Painter& p, const Lung& lung) {
  cv::Mat m = p.Zeros();
  p.FillPoly(m, lung.outline, 1.0);
  return m;
}

// A uniformly random point inside the lung (rejection sampling on the mask), kept `margin` inside its box.
Pt PointInLung(const Painter& p, const cv::Mat& mask, const Lung& lung, Rng& rng, double v_lo = 0, double v_hi = 1) {
  const double lo = std::max(lung.v0, lung.v0 + v_lo * (lung.v1 - lung.v0));
  const double hi = std::min(lung.v1, lung.v0 + v_hi * (lung.v1 - lung.v0));
  Pt fallback{0.5 * (lung.u0 + lung.u1), 0.5 * (lo + hi)};
  for (int attempt = 0; attempt < 64; ++attempt) {
    Pt c{rng.Uniform(lung.u0, lung.u1), rng.Uniform(lo, hi)};
    const int x = std::clamp(static_cast<int>(c.u * p.n()), 0, p.n() - 1);
    const int y = std::clamp(static_cast<int>(c.v * p.n()), 0, p.n() - 1);
    // Keep well inside: the mask must be set a little way around the point too.
    const int r = std::max(1, p.n() / 40);
    if (mask.at<float>(y, x) > 0.5f && mask.at<float>(std::max(0, y - r), x) > 0.5f &&
        mask.at<float>(std::min(p.n() - 1, y + r), x) > 0.5f && mask.at<float>(y, std::max(0, x - r)) > 0.5f &&
        mask.at<float>(y, std::min(p.n() - 1, x + r)) > 0.5f) {
      return c;
    }
  }
  return fallback;
}

struct Context {
  const Painter& p;
  const Geometry& g;
  const std::vector<cv::Mat>& lung_masks;
  cv::Mat all_lungs;
  View view;
  double s;  // Sign strength.
};

int PickLung(const Context& c, Rng& rng) { return c.g.lungs.size() == 1 ? 0 : rng.UniformInt(2); }

void DrawPneumothorax(cv::Mat& canvas, const Context& c, Rng& rng) {
  const int li = PickLung(c, rng);
  const Lung& lung = c.g.lungs[li];
  // The collapsed lung: the lung field shrunk toward its hilum.
  const double k = rng.Uniform(0.6, 0.72);
  const Pt h = lung.hilum;
  cv::Mat collapsed = c.p.Zeros();
  c.p.FillPoly(collapsed, Scale(lung.outline, h, k, k), 1.0);
  cv::Mat rim = c.lung_masks[li] - collapsed;
  cv::threshold(rim, rim, 0.5, 1.0, cv::THRESH_BINARY);
  // Only the apical and lateral rim: the base stays attached in an upright film.
  const int cut = static_cast<int>((lung.v0 + 0.7 * (lung.v1 - lung.v0)) * c.p.n());
  rim.rowRange(std::clamp(cut, 0, c.p.n()), c.p.n()).setTo(0);
  BlendToward(canvas, rim, kLung - 0.14, std::min(1.0, 0.9 * c.s));
  // The visceral pleural line.
  cv::Mat edge;
  cv::morphologyEx(collapsed, edge, cv::MORPH_GRADIENT, cv::Mat::ones(3, 3, CV_8U));
  cv::Mat upper = edge.clone();
  upper.rowRange(std::clamp(cut, 0, c.p.n()), c.p.n()).setTo(0);
  AddLayer(canvas, upper, 0.14 * c.s, c.lung_masks[li]);
}

void DrawEffusion(cv::Mat& canvas, const Context& c, Rng& rng) {
  std::vector<int> sides;
  if (c.g.lungs.size() == 2 && rng.Bernoulli(0.35)) {
    sides = {0, 1};
  } else {
    sides = {PickLung(c, rng)};
  }
  for (int li : sides) {
    const Lung& lung = c.g.lungs[li];
    const double h = rng.Uniform(0.1, 0.2) * (lung.v1 - lung.v0) / 0.59;
    const double meniscus = rng.Uniform(0.05, 0.08);
    std::vector<Pt> region;
    for (int i = 0; i <= 12; ++i) {
      const double u = lung.u0 + (lung.u1 - lung.u0) * i / 12.0;
      const double lateralness = lung.lateral_is_low_u ? 1.0 - i / 12.0 : i / 12.0;
      region.push_back({u, lung.v1 - h - meniscus * lateralness * lateralness});
    }
    region.push_back({lung.u1 + 0.02, 1.0});
    region.push_back({lung.u0 - 0.02, 1.0});
    cv::Mat alpha = c.p.Zeros();
    c.p.FillPoly(alpha, region, 1.0);
    cv::multiply(alpha, c.lung_masks[li], alpha);
    c.p.Blur(alpha, 0.006);
    BlendToward(canvas, alpha, 0.52, std::min(1.0, 0.9 * c.s));
  }
}

void DrawEdema(cv::Mat& canvas, const Context& c, Rng& rng) {
  // Perihilar haze, densest near the hila, over all lung fields.
  cv::Mat haze = c.p.Zeros();
  for (const Lung& lung : c.g.lungs) {
    const double sigma = rng.Uniform(0.12, 0.16);
    cv::Mat blob = c.p.Zeros();
    c.p.Ellipse(blob, lung.hilum, sigma, sigma * 1.2, 0, 1.0);
    c.p.Blur(blob, sigma * 0.6);
    haze = cv::max(haze, blob);
  }
  haze = haze * 0.75 + 0.25;
  // Kerley lines: short horizontal lines at the lateral bases.
  for (const Lung& lung : c.g.lungs) {
    const double wall_u = lung.lateral_is_low_u ? lung.u0 : lung.u1;
    const double dir = lung.lateral_is_low_u ? 1 : -1;
    for (int i = 0; i < 4; ++i) {
      const double v = lung.v1 - 0.08 - 0.025 * i;
      c.p.Polyline(haze, {{wall_u + dir * 0.01, v}, {wall_u + dir * 0.06, v}}, 0.6, 0.006);
    }
  }
  AddLayer(canvas, haze, 0.2 * c.s * rng.Uniform(0.85, 1.15), c.all_lungs);
}

void DrawConsolidation(cv::Mat& canvas, const Context& c, Rng& rng) {
  const int li = PickLung(c, rng);
  const Lung& lung = c.g.lungs[li];
  const bool lower = rng.Bernoulli(0.65);
  const double lo = lower ? 0.55 : 0.05, hi = lower ? 1.0 : 0.45;
  std::vector<Pt> zone = {{lung.u0 - 0.02, lung.v0 + lo * (lung.v1 - lung.v0)},
                          {lung.u1 + 0.02, lung.v0 + lo * (lung.v1 - lung.v0)},
                          {lung.u1 + 0.02, lung.v0 + hi * (lung.v1 - lung.v0)},
                          {lung.u0 - 0.02, lung.v0 + hi * (lung.v1 - lung.v0)}};
  cv::Mat alpha = c.p.Zeros();
  c.p.FillPoly(alpha, zone, 1.0);
  cv::multiply(alpha, c.lung_masks[li], alpha);
  c.p.Blur(alpha, 0.012);
  BlendToward(canvas, alpha, 0.5, std::min(1.0, 0.8 * c.s));
  // Air bronchograms: a few dark branching lines inside the patch.
  cv::Mat bronchi = c.p.Zeros();
  const Pt start = PointInLung(c.p, c.lung_masks[li], lung, rng, lo, hi);
  for (int i = 0; i < 3; ++i) {
    c.p.Polyline(bronchi, {start, {start.u + rng.Uniform(-0.07, 0.07), start.v + rng.Uniform(-0.07, 0.07)}}, 1.0,
                 0.008);
  }
  cv::multiply(bronchi, alpha, bronchi);
  AddLayer(canvas, bronchi, -0.12 * c.s);
}

void DrawPneumonia(cv::Mat& canvas, const Context& c, Rng& rng) {
  const int li = PickLung(c, rng);
  const Lung& lung = c.g.lungs[li];
  const Pt center = PointInLung(c.p, c.lung_masks[li], lung, rng, 0.35, 0.9);
  cv::Mat patches = c.p.Zeros();
  const int n = 4 + rng.UniformInt(3);
  for (int i = 0; i < n; ++i) {
    const Pt q{center.u + rng.Uniform(-0.08, 0.08), center.v + rng.Uniform(-0.08, 0.08)};
    const double r = rng.Uniform(0.035, 0.06);
    c.p.Ellipse(patches, q, r, r * rng.Uniform(0.7, 1.3), rng.Uniform(0, 180), 1.0);
  }
  c.p.Blur(patches, 0.012);
  cv::multiply(patches, c.lung_masks[li], patches);
  BlendToward(canvas, patches, 0.48, std::min(1.0, 0.75 * c.s));
}

void DrawAtelectasis(cv::Mat& canvas, const Context& c, Rng& rng) {
  const int li = PickLung(c, rng);
  const Lung& lung = c.g.lungs[li];
  const double v = lung.v0 + rng.Uniform(0.62, 0.78) * (lung.v1 - lung.v0);
  const double w = lung.u1 - lung.u0;
  const double tilt = rng.Uniform(-0.04, 0.04);
  cv::Mat band = c.p.Zeros();
  c.p.Polyline(band, {{lung.u0 + 0.1 * w, v - tilt}, {lung.u1 - 0.1 * w, v + tilt}}, 1.0, rng.Uniform(0.03, 0.04));
  c.p.Blur(band, 0.005);
  cv::multiply(band, c.lung_masks[li], band);
  BlendToward(canvas, band, 0.5, std::min(1.0, 0.85 * c.s));
}

void DrawLesion(cv::Mat& canvas, const Context& c, Rng& rng) {
  const int li = PickLung(c, rng);
  const Lung& lung = c.g.lungs[li];
  const Pt q = PointInLung(c.p, c.lung_masks[li], lung, rng, 0.1, 0.8);
  const double r = rng.Uniform(0.045, 0.07);
  cv::Mat nodule = c.p.Zeros();
  c.p.Ellipse(nodule, q, r, r * rng.Uniform(0.85, 1.15), rng.Uniform(0, 180), 1.0);
  c.p.Blur(nodule, 0.003);
  AddLayer(canvas, nodule, 0.38 * c.s);
}

void DrawLungOpacity(cv::Mat& canvas, const Context& c, Rng& rng) {
  const int li = PickLung(c, rng);
  const Lung& lung = c.g.lungs[li];
  const Pt q = PointInLung(c.p, c.lung_masks[li], lung, rng, 0.2, 0.85);
  const double r = rng.Uniform(0.09, 0.13);
  cv::Mat blob = c.p.Zeros();
  c.p.Ellipse(blob, q, r, r * rng.Uniform(0.8, 1.2), rng.Uniform(0, 180), 1.0);
  c.p.Blur(blob, 0.03);
  AddLayer(canvas, blob, 0.25 * c.s, c.lung_masks[li]);
}

void DrawPleuralOther(cv::Mat& canvas, const Context& c, Rng& rng) {
  const int li = PickLung(c, rng);
  const Lung& lung = c.g.lungs[li];
  const double inward = lung.lateral_is_low_u ? 0.012 : -0.012;
  std::vector<Pt> wall;
  for (const Pt& q : lung.lateral_wall) wall.push_back({q.u + inward, q.v});
  cv::Mat band = c.p.Zeros();
  c.p.Polyline(band, wall, 1.0, rng.Uniform(0.04, 0.05));
  // Calcified plaques along the wall.
  for (int i = 0; i < 2; ++i) {
    const Pt& q = wall[1 + rng.UniformInt(static_cast<int>(wall.size()) - 1)];
    c.p.Ellipse(band, {q.u, q.v + rng.Uniform(-0.03, 0.03)}, 0.025, 0.04, 0, 1.4);
  }
  c.p.Blur(band, 0.003);
  AddLayer(canvas, band, 0.3 * c.s);
}

void DrawFracture(cv::Mat& canvas, cv::Mat& ribs, const Context& c, Rng& rng) {
  const int rib = 2 + rng.UniformInt(static_cast<int>(c.g.ribs.size() / c.g.lungs.size()) - 4);
  const int side = PickLung(c, rng);
  const auto& curve = c.g.ribs[side * (c.g.ribs.size() / c.g.lungs.size()) + rib];
  const int at = static_cast<int>(curve.size()) * 2 / 3 + rng.UniformInt(2);
  const Pt q = curve[std::min<size_t>(at, curve.size() - 1)];
  // The break: erase a piece of the rib, redraw the outer fragment displaced, and add a callus.
  cv::Mat gap = c.p.Zeros();
  c.p.Ellipse(gap, q, 0.02, 0.02, 0, 1.0);
  ribs.setTo(0, gap > 0.5f);
  std::vector<Pt> outer(curve.begin() + std::min<size_t>(at + 1, curve.size() - 1), curve.end());
  for (Pt& o : outer) o.v += 0.02;
  if (outer.size() >= 2) c.p.Polyline(ribs, outer, 1.0, 0.018);
  cv::Mat callus = c.p.Zeros();
  c.p.Ellipse(callus, q, 0.045, 0.03, rng.Uniform(-30, 30), 1.0);
  c.p.Blur(callus, 0.004);
  AddLayer(canvas, callus, 0.4 * c.s);
}

void DrawSupportDevices(cv::Mat& canvas, const Context& c, Rng& rng) {
  cv::Mat dev = c.p.Zeros();
  const bool frontal = IsFrontal(c.view);
  bool et = rng.Bernoulli(0.6), ng = rng.Bernoulli(0.5), line = rng.Bernoulli(0.5), pacer = rng.Bernoulli(0.3),
       ecg = rng.Bernoulli(0.5);
  if (!(et || ng || line || pacer || ecg)) et = true;
  const double t = 0.014;
  if (frontal) {
    if (et) c.p.Polyline(dev, {{0.5, 0.0}, {0.5, 0.12}, {0.505, 0.3}}, 1.0, t);
    if (ng) c.p.Polyline(dev, Bezier({0.52, 0.0}, {0.51, 0.6}, {0.66, 0.86}), 1.0, t * 0.8);
    if (line) c.p.Polyline(dev, Bezier({0.22, 0.12}, {0.4, 0.17}, {0.46, 0.42}), 1.0, t * 0.8);
    if (pacer) {
      c.p.Ellipse(dev, {0.74, 0.2}, 0.05, 0.035, 10, 1.0);
      c.p.Polyline(dev, Bezier({0.72, 0.2}, {0.55, 0.3}, {0.56, 0.62}), 1.0, t * 0.7);
    }
    if (ecg) {
      for (const Pt& q : {Pt{0.18, 0.12}, Pt{0.82, 0.12}, Pt{0.8, 0.86}}) {
        c.p.Ellipse(dev, q, 0.024, 0.024, 0, 1.0, c.p.Px(0.01));
        c.p.Polyline(dev, {q, {q.u + (q.u < 0.5 ? -0.2 : 0.2), q.v + 0.08}}, 1.0, t * 0.5);
      }
    }
  } else {
    if (et) c.p.Polyline(dev, {{0.44, 0.0}, {0.46, 0.12}, {0.5, 0.3}}, 1.0, t);
    if (ng) c.p.Polyline(dev, Bezier({0.47, 0.0}, {0.6, 0.5}, {0.45, 0.86}), 1.0, t * 0.8);
    if (line) c.p.Polyline(dev, Bezier({0.4, 0.05}, {0.45, 0.2}, {0.42, 0.42}), 1.0, t * 0.8);
    if (pacer) {
      c.p.Ellipse(dev, {0.2, 0.2}, 0.025, 0.05, 0, 1.0);
      c.p.Polyline(dev, Bezier({0.21, 0.22}, {0.35, 0.35}, {0.36, 0.6}), 1.0, t * 0.7);
    }
    if (ecg) {
      for (const Pt& q : {Pt{0.14, 0.3}, Pt{0.13, 0.55}}) c.p.Ellipse(dev, q, 0.012, 0.03, 0, 1.0);
    }
  }
  BlendToward(canvas, dev, kDevice, std::min(1.0, c.s));
}

}  // namespace

cv::Mat RenderPhantom(const PhantomSpec& spec, int size) {
  CHECK_GE(size, 8);
  const int n = std::max(size, kMinDrawSize);
  const Painter p(n);
  Rng rng(DeriveSeed(spec.seed, 0x414e41544f4d59ULL));  // Anatomy stream.
  Anatomy a;
  a.width = rng.Uniform(0.93, 1.05);
  a.height = rng.Uniform(0.93, 1.05);
  a.diaphragm = rng.Uniform(-0.02, 0.03);
  a.heart = rng.Uniform(0.9, 1.08);
  a.rib_offset = rng.Uniform(-0.01, 0.01);
  const bool frontal = IsFrontal(spec.view);
  const Geometry g = frontal ? FrontalGeometry(a) : LateralGeometry(a);
  const auto& f = spec.findings;
  const double s = spec.sign_strength;

  cv::Mat canvas(n, n, CV_32F, cv::Scalar(kAir));
  p.FillPoly(canvas, g.body, kSoftTissue);
  std::vector<cv::Mat> lung_masks;
  cv::Mat all_lungs = p.Zeros();
  for (const Lung& lung : g.lungs) {
    lung_masks.push_back(LungMask(p, lung));
    all_lungs = cv::max(all_lungs, lung_masks.back());
    p.FillPoly(canvas, lung.outline, kLung);
  }
  // Lung markings: vessels radiating from the hila.
  {
    cv::Mat vessels = p.Zeros();
    for (size_t li = 0; li < g.lungs.size(); ++li) {
      for (int i = 0; i < 10; ++i) {
        const Pt q = PointInLung(p, lung_masks[li], g.lungs[li], rng);
        p.Polyline(vessels, {g.lungs[li].hilum, q}, 1.0, 0.006);
      }
    }
    p.Blur(vessels, 0.003);
    AddLayer(canvas, vessels, 0.07, all_lungs);
  }
  if (!spec.male) {  // Breast shadows over the lower lung fields.
    cv::Mat breasts = p.Zeros();
    if (frontal) {
      p.Ellipse(breasts, {0.24, 0.74}, 0.15, 0.09, 0, 1.0);
      p.Ellipse(breasts, {0.76, 0.74}, 0.15, 0.09, 0, 1.0);
    } else {
      p.Ellipse(breasts, {0.12, 0.6}, 0.08, 0.12, 0, 1.0);
    }
    p.Blur(breasts, 0.02);
    AddLayer(canvas, breasts, 0.05);
  }

  const Context ctx{p, g, lung_masks, all_lungs, spec.view, s};
  // Each sign draws from its own stream: toggling one finding leaves the others (and the anatomy) unchanged.
  auto sign_rng = [&](int label) { return Rng(DeriveSeed(spec.seed, 0x5349474eULL, label)); };
  // Parenchymal and pleural-space signs first: the mediastinum and heart are drawn over them.
  if (f[data::kPneumothorax]) {
    Rng r = sign_rng(data::kPneumothorax);
    DrawPneumothorax(canvas, ctx, r);
  }
  if (f[data::kEdema]) {
    Rng r = sign_rng(data::kEdema);
    DrawEdema(canvas, ctx, r);
  }
  if (f[data::kConsolidation] && spec.own_sign[data::kConsolidation]) {
    Rng r = sign_rng(data::kConsolidation);
    DrawConsolidation(canvas, ctx, r);
  }
  if (f[data::kPneumonia]) {
    Rng r = sign_rng(data::kPneumonia);
    DrawPneumonia(canvas, ctx, r);
  }
  if (f[data::kAtelectasis]) {
    Rng r = sign_rng(data::kAtelectasis);
    DrawAtelectasis(canvas, ctx, r);
  }
  if (f[data::kPleuralEffusion]) {
    Rng r = sign_rng(data::kPleuralEffusion);
    DrawEffusion(canvas, ctx, r);
  }

  // Mediastinum, spine, great vessels and heart.
  const double heart_mag = spec.view == View::kFrontalAP ? 1.08 : 1.0;  // AP films magnify the heart.
  const bool big_heart = f[data::kCardiomegaly];
  const bool wide_mediastinum = f[data::kEnlargedCardiomediastinum] && spec.own_sign[data::kEnlargedCardiomediastinum];
  if (frontal) {
    p.FillPoly(canvas, {{0.445, 0.06}, {0.555, 0.06}, {0.56, 0.72}, {0.44, 0.72}}, kMediastinum);
    cv::Mat spine = p.Zeros();
    for (int k = 0; k < 16; ++k) {
      const double v = 0.02 + k * 0.062;
      p.FillPoly(spine, {{0.47, v}, {0.53, v}, {0.53, v + 0.05}, {0.47, v + 0.05}}, 1.0);
    }
    AddLayer(canvas, spine, 0.08);
    // Trachea: an air column.
    p.FillPoly(canvas, {{0.485, 0.0}, {0.515, 0.0}, {0.515, 0.3}, {0.485, 0.3}}, 0.35);
    p.Ellipse(canvas, {0.565, 0.27}, 0.045, 0.035, 0, kMediastinum);  // Aortic knob.
    if (wide_mediastinum) {
      const double w = ctx.s * 0.04 + 0.08;  // Half-width 0.12 at nominal strength (0.06 normal).
      p.Ellipse(canvas, {0.5, 0.33}, w, 0.14, 0, kMediastinum);
    }
    const double au = (big_heart ? 0.08 * std::min(1.2, s) + 0.135 : 0.145 * a.heart) * heart_mag;
    const double av = (big_heart ? 0.14 : 0.1 * a.heart) * heart_mag;
    p.Ellipse(canvas, {big_heart ? 0.55 : 0.53, 0.6 + a.diaphragm}, au, av, -12, kMediastinum + 0.02);
  } else {
    cv::Mat spine = p.Zeros();
    for (int k = 0; k < 15; ++k) {
      const double v = 0.04 + k * 0.066;
      p.FillPoly(spine, {{0.8, v}, {0.88, v + 0.005}, {0.88, v + 0.055}, {0.8, v + 0.05}}, 1.0);
    }
    AddLayer(canvas, spine, 0.22);
    p.Polyline(canvas, {{0.44, 0.0}, {0.5, 0.35}}, 0.3, 0.035);  // Trachea.
    cv::Mat sternum = p.Zeros();
    p.Polyline(sternum, {{0.17, 0.2}, {0.155, 0.6}}, 1.0, 0.025);
    AddLayer(canvas, sternum, 0.15);
    const double mw = wide_mediastinum ? 0.08 + 0.05 * ctx.s : 0.07;
    p.Ellipse(canvas, {0.42, 0.33}, mw, 0.14, 0, 0.5);
    const double au = big_heart ? 0.14 + 0.07 * std::min(1.2, s) : 0.15 * a.heart;
    const double av = big_heart ? 0.16 : 0.12 * a.heart;
    p.Ellipse(canvas, {big_heart ? 0.4 : 0.36, 0.57 + a.diaphragm}, au, av, -20, 0.58);
  }

  // Focal opacities add density even where they project over the heart (a radiograph is a projection).
  if (f[data::kLungOpacity] && spec.own_sign[data::kLungOpacity]) {
    Rng r = sign_rng(data::kLungOpacity);
    DrawLungOpacity(canvas, ctx, r);
  }
  if (f[data::kLungLesion]) {
    Rng r = sign_rng(data::kLungLesion);
    DrawLesion(canvas, ctx, r);
  }

  // Bones: ribs and clavicles add density everywhere they cross.
  cv::Mat ribs = p.Zeros();
  for (const auto& rib : g.ribs) p.Polyline(ribs, rib, 1.0, 0.018);
  if (f[data::kFracture]) {
    Rng r = sign_rng(data::kFracture);
    DrawFracture(canvas, ribs, ctx, r);
  }
  if (frontal) {
    p.Polyline(ribs, {{0.47, 0.17}, {0.3, 0.15}, {0.14, 0.12}}, 1.6, 0.024);
    p.Polyline(ribs, {{0.53, 0.17}, {0.7, 0.15}, {0.86, 0.12}}, 1.6, 0.024);
  }
  cv::Mat body_mask = p.Zeros();
  p.FillPoly(body_mask, g.body, 1.0);
  AddLayer(canvas, ribs, 0.08, body_mask);

  if (f[data::kPleuralOther]) {
    Rng r = sign_rng(data::kPleuralOther);
    DrawPleuralOther(canvas, ctx, r);
  }
  if (f[data::kSupportDevices]) {
    Rng r = sign_rng(data::kSupportDevices);
    DrawSupportDevices(canvas, ctx, r);
  }

  p.Blur(canvas, 0.0025);
  cv::min(cv::max(canvas, 0.0), 1.0, canvas);
  if (n == size) return canvas;
  cv::Mat out;
  cv::resize(canvas, out, cv::Size(size, size), 0, 0, cv::INTER_AREA);
  return out;
}

}  // namespace fedtune::synth
