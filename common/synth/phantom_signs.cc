// The drawing primitives and the finding signs of the phantom (phantom_draw.h).
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/synth/phantom_draw.h"

namespace fedtune::synth::internal {
namespace {

int PickLung(const Context& c, Rng& rng) { return c.g.lungs.size() == 1 ? 0 : rng.UniformInt(2); }

}  // namespace

void AddLayer(cv::Mat& canvas, const cv::Mat& layer, double gain, const cv::Mat& mask) {
  if (mask.empty()) {
    cv::scaleAdd(layer, gain, canvas, canvas);
  } else {
    cv::Mat masked;
    cv::multiply(layer, mask, masked);
    cv::scaleAdd(masked, gain, canvas, canvas);
  }
}

void BlendToward(cv::Mat& canvas, const cv::Mat& alpha, double value, double strength) {
  cv::Mat diff = cv::Scalar(value) - canvas;
  cv::Mat a;
  cv::multiply(alpha, diff, a, strength);
  canvas += a;
}

std::vector<Pt> Scale(const std::vector<Pt>& pts, Pt c, double su, double sv, double dv) {
  std::vector<Pt> out;
  for (const Pt& p : pts) out.push_back({c.u + (p.u - c.u) * su, c.v + (p.v - c.v) * sv + dv});
  return out;
}

std::vector<Pt> Bezier(Pt a, Pt b, Pt c, int steps) {
  std::vector<Pt> out;
  for (int i = 0; i <= steps; ++i) {
    const double t = static_cast<double>(i) / steps;
    const double w0 = (1 - t) * (1 - t), w1 = 2 * t * (1 - t), w2 = t * t;
    out.push_back({w0 * a.u + w1 * b.u + w2 * c.u, w0 * a.v + w1 * b.v + w2 * c.v});
  }
  return out;
}

Pt PointInLung(const Painter& p, const cv::Mat& mask, const Lung& lung, Rng& rng, double v_lo, double v_hi) {
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

}  // namespace fedtune::synth::internal
