// secagg_check: reads the files a secure-aggregation federation left behind and checks what
// tests/integration/secure_aggregation_test.sh asserts about them. Prints one "ok"/"FAIL" line per check; exit 0
// when all hold, 1 otherwise, 2 for bad usage or unreadable files.
//
//   secagg_check fedavg OLD.ckpt NEW.ckpt RANGE ROSTER MAXN LOCAL.ckpt:N...
//       NEW - OLD equals plain FedAvg of the sites' deltas (LOCAL - OLD, weighted by N) on every floating tensor,
//       to the fixed-point bound of secure aggregation with ROSTER sites (common/secagg/fixed_point.h: per entry
//       n * quantum / 2 on the pre-scaled sum, pre-scaled by N / MAXN, MAXN the largest num_samples of the key
//       roster, dropped sites included, so n * quantum / 2 * MAXN / sum N after the division) plus float32 rounding
//       of the weights; prints the largest error next to the bound.
//   secagg_check masked OLD.ckpt SPOOL... -- LOCAL.ckpt...
//       every SPOOL file (an upload the coordinator stored) is a masked vector (secagg::ReadMaskedBundle), and its
//       Pearson correlation with every site's true delta (LOCAL - OLD, flattened by secagg::MakeLayout) is below
//       0.05 in magnitude (the true deltas among themselves correlate far more: printed for comparison).
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/fl/model_tensors.h"
#include "common/model/checkpoint.h"
#include "common/secagg/fixed_point.h"
#include "common/secagg/session.h"
#include "fedtune/v1/tensor.pb.h"

namespace fedtune {
namespace {

int failures = 0;

void Check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "secagg_check: %s\n", message.c_str());
  std::exit(2);
}

template <typename T>
T OrDie(absl::StatusOr<T> value) {
  if (!value.ok()) Die(std::string(value.status().message()));
  return *std::move(value);
}

fl::TensorMap Load(const std::string& path) { return fl::CheckpointTensors(OrDie(model::LoadCheckpoint(path))); }

// The flattened delta LOCAL - OLD in the masked vector's layout (double).
std::vector<double> FlatDelta(const fl::TensorMap& old, const fl::TensorMap& local, const secagg::Layout& layout) {
  fl::TensorMap delta;
  for (const auto& e : layout.entries) {
    auto a = local.find(e.name);
    if (a == local.end()) Die(absl::StrCat("a local model lacks ", e.name));
    delta[e.name] = a->second.to(at::kFloat) - old.at(e.name).to(at::kFloat);
  }
  std::vector<float> flat = OrDie(secagg::Flatten(delta, layout, 1.0));
  return std::vector<double>(flat.begin(), flat.end());
}

double Pearson(const std::vector<double>& a, const std::vector<double>& b) {
  const size_t n = a.size();
  double ma = 0, mb = 0;
  for (size_t i = 0; i < n; ++i) ma += a[i], mb += b[i];
  ma /= n, mb /= n;
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < n; ++i) {
    sab += (a[i] - ma) * (b[i] - mb), saa += (a[i] - ma) * (a[i] - ma), sbb += (b[i] - mb) * (b[i] - mb);
  }
  return (saa > 0 && sbb > 0) ? sab / std::sqrt(saa * sbb) : 0.0;
}

int FedAvg(int argc, char** argv) {
  if (argc < 8) Die("usage: fedavg OLD.ckpt NEW.ckpt RANGE ROSTER MAXN LOCAL.ckpt:N...");
  const fl::TensorMap old = Load(argv[2]);
  const fl::TensorMap now = Load(argv[3]);
  double range = 0;
  int64_t roster = 0, max_n = 0;
  if (!absl::SimpleAtod(argv[4], &range) || !absl::SimpleAtoi(argv[5], &roster) || !absl::SimpleAtoi(argv[6], &max_n) ||
      max_n <= 0) {
    Die("bad RANGE, ROSTER or MAXN");
  }
  const secagg::Layout layout = OrDie(secagg::MakeLayout(old));
  std::vector<std::vector<double>> deltas;
  std::vector<int64_t> counts;
  for (int i = 7; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t colon = arg.rfind(':');
    int64_t n = 0;
    if (colon == std::string::npos || !absl::SimpleAtoi(arg.substr(colon + 1), &n) || n <= 0) {
      Die(absl::StrCat("bad LOCAL:N '", arg, "'"));
    }
    deltas.push_back(FlatDelta(old, Load(arg.substr(0, colon)), layout));
    counts.push_back(n);
  }
  int64_t total = 0;
  for (int64_t n : counts) total += n;
  if (*std::max_element(counts.begin(), counts.end()) > max_n) Die("MAXN is below a site's N");
  const std::vector<double> got = FlatDelta(old, now, layout);
  const secagg::FixedPointCodec codec = OrDie(secagg::FixedPointCodec::Create(range, roster));
  double worst = 0, largest_weight = 0, clipped = 0;
  for (int64_t j = 0; j < layout.length; ++j) {
    double expected = 0;
    for (size_t s = 0; s < deltas.size(); ++s) {
      const double scaled = deltas[s][j] * static_cast<double>(counts[s]) / static_cast<double>(max_n);
      if (std::fabs(scaled) > range) ++clipped;
      expected += deltas[s][j] * static_cast<double>(counts[s]);
    }
    expected /= static_cast<double>(total);
    worst = std::max(worst, std::fabs(got[j] - expected));
  }
  for (const auto& [name, t] : old) {
    if (t.is_floating_point()) largest_weight = std::max(largest_weight, t.abs().max().item<double>());
  }
  // Fixed point on the pre-scaled sum, divided by total / max_n; float32 rounding of NEW = OLD + delta and of the
  // sites' LOCAL - OLD (a few ulps of the largest weight).
  const double bound = codec.SumErrorBound() * static_cast<double>(max_n) / static_cast<double>(total) +
                       4 * largest_weight * std::ldexp(1.0, -23);
  Check(clipped == 0, absl::StrCat("no pre-scaled delta value beyond the range ", range, " (", clipped, " were)"));
  Check(worst <= bound, absl::StrFormat("NEW - OLD = FedAvg of %d sites (%d entries): largest error %.3g <= bound %.3g",
                                        deltas.size(), layout.length, worst, bound));
  return failures == 0 ? 0 : 1;
}

int Masked(int argc, char** argv) {
  if (argc < 5) Die("usage: masked OLD.ckpt SPOOL... -- LOCAL.ckpt...");
  const fl::TensorMap old = Load(argv[2]);
  const secagg::Layout layout = OrDie(secagg::MakeLayout(old));
  std::vector<std::string> spools, locals;
  bool after = false;
  for (int i = 3; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") {
      after = true;
    } else {
      (after ? locals : spools).push_back(arg);
    }
  }
  if (spools.empty() || locals.empty()) Die("need SPOOL files and LOCAL models");
  std::vector<std::vector<double>> deltas;
  for (const auto& path : locals) deltas.push_back(FlatDelta(old, Load(path), layout));
  for (size_t a = 0; a + 1 < deltas.size(); ++a) {
    std::printf("     true deltas %zu and %zu correlate %.3f\n", a, a + 1, Pearson(deltas[a], deltas[a + 1]));
  }
  for (const auto& path : spools) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    v1::TensorBundle bundle;
    if (!in || !bundle.ParseFromString(bytes.str())) Die(absl::StrCat(path, ": not a TensorBundle"));
    absl::StatusOr<std::vector<uint32_t>> masked = secagg::ReadMaskedBundle(bundle, layout.length);
    Check(masked.ok(), absl::StrCat(path, " holds a masked vector (", masked.status().ToString(), ")"));
    if (!masked.ok()) continue;
    std::vector<double> as_signed(masked->size());
    for (size_t i = 0; i < masked->size(); ++i) as_signed[i] = static_cast<double>(static_cast<int32_t>((*masked)[i]));
    for (size_t s = 0; s < deltas.size(); ++s) {
      const double r = Pearson(as_signed, deltas[s]);
      Check(std::fabs(r) < 0.05,
            absl::StrFormat("%s vs the true delta of %s: correlation %.4f (|r| < 0.05)", path, locals[s], r));
    }
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace fedtune

int main(int argc, char** argv) {
  if (argc < 2) fedtune::Die("usage: secagg_check fedavg|masked ...");
  const std::string mode = argv[1];
  if (mode == "fedavg") return fedtune::FedAvg(argc, argv);
  if (mode == "masked") return fedtune::Masked(argc, argv);
  fedtune::Die(absl::StrCat("unknown mode '", mode, "'"));
}
