#include "common/synth/phantom.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/logging.h"
#include "common/synth/phantom_draw.h"
#include "opencv2/imgproc.hpp"

namespace fedtune::synth {
namespace {

using internal::AddLayer;
using internal::Bezier;
using internal::Context;
using internal::Geometry;
using internal::kAir;
using internal::kLung;
using internal::kMediastinum;
using internal::kMinDrawSize;
using internal::kSoftTissue;
using internal::Lung;
using internal::Painter;
using internal::PointInLung;
using internal::Pt;
using internal::Scale;

std::vector<Pt> Mirror(const std::vector<Pt>& pts) {
  std::vector<Pt> out;
  for (const Pt& p : pts) out.push_back({1.0 - p.u, p.v});
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
    internal::DrawPneumothorax(canvas, ctx, r);
  }
  if (f[data::kEdema]) {
    Rng r = sign_rng(data::kEdema);
    internal::DrawEdema(canvas, ctx, r);
  }
  if (f[data::kConsolidation] && spec.own_sign[data::kConsolidation]) {
    Rng r = sign_rng(data::kConsolidation);
    internal::DrawConsolidation(canvas, ctx, r);
  }
  if (f[data::kPneumonia]) {
    Rng r = sign_rng(data::kPneumonia);
    internal::DrawPneumonia(canvas, ctx, r);
  }
  if (f[data::kAtelectasis]) {
    Rng r = sign_rng(data::kAtelectasis);
    internal::DrawAtelectasis(canvas, ctx, r);
  }
  if (f[data::kPleuralEffusion]) {
    Rng r = sign_rng(data::kPleuralEffusion);
    internal::DrawEffusion(canvas, ctx, r);
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
    internal::DrawLungOpacity(canvas, ctx, r);
  }
  if (f[data::kLungLesion]) {
    Rng r = sign_rng(data::kLungLesion);
    internal::DrawLesion(canvas, ctx, r);
  }

  // Bones: ribs and clavicles add density everywhere they cross.
  cv::Mat ribs = p.Zeros();
  for (const auto& rib : g.ribs) p.Polyline(ribs, rib, 1.0, 0.018);
  if (f[data::kFracture]) {
    Rng r = sign_rng(data::kFracture);
    internal::DrawFracture(canvas, ribs, ctx, r);
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
    internal::DrawPleuralOther(canvas, ctx, r);
  }
  if (f[data::kSupportDevices]) {
    Rng r = sign_rng(data::kSupportDevices);
    internal::DrawSupportDevices(canvas, ctx, r);
  }

  p.Blur(canvas, 0.0025);
  cv::min(cv::max(canvas, 0.0), 1.0, canvas);
  if (n == size) return canvas;
  cv::Mat out;
  cv::resize(canvas, out, cv::Size(size, size), 0, 0, cv::INTER_AREA);
  return out;
}

}  // namespace fedtune::synth
