// personalization_check: reads the files a personalized federation left behind and checks what
// tests/integration/personalization_test.sh asserts about them (common/fl/personalization.h says which tensors each
// strategy keeps at the sites). Prints one "ok"/"FAIL" line per check; exit 0 when all hold, 1 otherwise, 2 for bad
// usage or unreadable files.
//
//   personalization_check updates P BASE.ckpt BUNDLE...       each bundle (an uploaded update) carries exactly the
//                                                             tensors P shares: no tensor P keeps at the site
//   personalization_check global P BASE.ckpt FINAL.ckpt       the final global model kept BASE's tensors that P keeps
//                                                             at the sites, bit for bit, and moved its shared ones
//   personalization_check adapted P GLOBAL.ckpt ADAPTED.ckpt KEPT.bin
//                                                             the site's adapted model = GLOBAL's shared tensors +
//                                                             the site's own kept tensors (KEPT, = local_bn.bin),
//                                                             which differ from GLOBAL's
//   personalization_check differ A.ckpt B.ckpt                two models with different weights (Ditto's personal
//                                                             model vs the global one)
// P: none, fedbn, silobn, ditto.
#include <ATen/ATen.h>

#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/fl/bundle_file.h"
#include "common/fl/model_tensors.h"
#include "common/fl/personalization.h"

namespace fedtune {
namespace {

int failures = 0;

void Check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "personalization_check: %s\n", message.c_str());
  std::exit(2);
}

template <typename T>
T OrDie(absl::StatusOr<T> value) {
  if (!value.ok()) Die(std::string(value.status().message()));
  return *std::move(value);
}

v1::Personalization Parse(const std::string& text) {
  if (text == "none") return v1::PERSONALIZATION_NONE;
  if (text == "fedbn") return v1::PERSONALIZATION_FEDBN;
  if (text == "silobn") return v1::PERSONALIZATION_SILOBN;
  if (text == "ditto") return v1::PERSONALIZATION_DITTO;
  Die(absl::StrCat("unknown personalization '", text, "'"));
}

bool Same(const at::Tensor& a, const at::Tensor& b) { return a.sizes() == b.sizes() && a.equal(b); }

int Updates(v1::Personalization p, const std::string& base_path, const std::vector<std::string>& bundles) {
  const model::Checkpoint base = OrDie(model::LoadCheckpoint(base_path));
  const std::set<std::string> shared = OrDie(fl::SharedTensorNames(base, p));
  const std::map<std::string, fl::BatchNormRole> batchnorm = OrDie(fl::BatchNormTensors(base));
  const std::set<std::string> local = OrDie(fl::LocalTensorNames(base, p));
  std::printf("model %s: %zu tensors, %zu BatchNorm tensors, %zu kept at the sites under %s\n", base_path.c_str(),
              fl::CheckpointTensors(base).size(), batchnorm.size(), local.size(),
              std::string(p == v1::PERSONALIZATION_FEDBN    ? "fedbn"
                          : p == v1::PERSONALIZATION_SILOBN ? "silobn"
                                                            : "none/ditto")
                  .c_str());
  if (p == v1::PERSONALIZATION_FEDBN) {
    Check(local.size() == batchnorm.size() && !local.empty(), "FedBN keeps every BatchNorm tensor at the sites");
  } else if (p == v1::PERSONALIZATION_SILOBN) {
    Check(!local.empty() && local.size() < batchnorm.size(), "SiloBN keeps the BatchNorm statistics at the sites");
  }
  for (const std::string& path : bundles) {
    std::set<std::string> names;
    int kept_local = 0;
    std::string first_local;
    absl::Status read = fl::ForEachNamedTensorInFile(path, [&](v1::NamedTensor& t) {
      names.insert(t.name());
      if (local.count(t.name()) > 0 && kept_local++ == 0) first_local = t.name();
      return absl::OkStatus();
    });
    if (!read.ok()) Die(std::string(read.message()));
    Check(kept_local == 0,
          absl::StrCat(path, ": ", names.size(), " tensors, ", kept_local, " of those kept at the site",
                       first_local.empty() ? "" : " (first: ", first_local, first_local.empty() ? "" : ")"));
    Check(names == shared, absl::StrCat(path, ": exactly the ", shared.size(), " shared tensors"));
  }
  return failures == 0 ? 0 : 1;
}

int Global(v1::Personalization p, const std::string& base_path, const std::string& final_path) {
  const model::Checkpoint base = OrDie(model::LoadCheckpoint(base_path));
  const model::Checkpoint final_model = OrDie(model::LoadCheckpoint(final_path));
  const std::set<std::string> local = OrDie(fl::LocalTensorNames(base, p));
  const fl::TensorMap b = fl::CheckpointTensors(base);
  const fl::TensorMap f = fl::CheckpointTensors(final_model);
  int same_local = 0;
  int moved_shared = 0;
  for (const auto& [name, tensor] : b) {
    if (local.count(name)) {
      same_local += Same(tensor, f.at(name)) ? 1 : 0;
    } else {
      moved_shared += Same(tensor, f.at(name)) ? 0 : 1;
    }
  }
  Check(same_local == static_cast<int>(local.size()),
        absl::StrCat("final global model: ", same_local, " of the ", local.size(),
                     " tensors kept at the sites equal the base model's"));
  Check(moved_shared > 0, absl::StrCat("final global model: ", moved_shared, " shared tensors moved"));
  return failures == 0 ? 0 : 1;
}

int Adapted(v1::Personalization p, const std::string& global_path, const std::string& adapted_path,
            const std::string& kept_path) {
  const model::Checkpoint global = OrDie(model::LoadCheckpoint(global_path));
  const model::Checkpoint adapted = OrDie(model::LoadCheckpoint(adapted_path));
  const std::set<std::string> local = OrDie(fl::LocalTensorNames(global, p));
  const fl::TensorMap g = fl::CheckpointTensors(global);
  const fl::TensorMap a = fl::CheckpointTensors(adapted);
  const fl::TensorMap kept = OrDie(fl::DecodeTensorBundleFile(kept_path));
  Check(kept.size() == local.size(),
        absl::StrCat(kept_path, ": ", kept.size(), " kept tensors (", local.size(), " expected)"));
  int own = 0;
  int differ_from_global = 0;
  int shared_equal = 0;
  for (const auto& [name, tensor] : a) {
    if (local.count(name)) {
      own += kept.count(name) && Same(tensor, kept.at(name)) ? 1 : 0;
      differ_from_global += Same(tensor, g.at(name)) ? 0 : 1;
    } else {
      shared_equal += Same(tensor, g.at(name)) ? 1 : 0;
    }
  }
  Check(own == static_cast<int>(local.size()),
        absl::StrCat(adapted_path, ": ", own, " of ", local.size(), " BatchNorm tensors are the site's own"));
  Check(differ_from_global > 0,
        absl::StrCat(adapted_path, ": ", differ_from_global, " of its own tensors differ from the global model's"));
  Check(shared_equal == static_cast<int>(a.size() - local.size()),
        absl::StrCat(adapted_path, ": ", shared_equal, " of ", a.size() - local.size(),
                     " shared tensors are the global model's"));
  return failures == 0 ? 0 : 1;
}

int Differ(const std::string& a_path, const std::string& b_path) {
  const model::Checkpoint a = OrDie(model::LoadCheckpoint(a_path));
  const model::Checkpoint b = OrDie(model::LoadCheckpoint(b_path));
  Check(a.weights_sha256 != b.weights_sha256,
        absl::StrCat(a_path, " (", a.weights_sha256.substr(0, 12), ") differs from ", b_path, " (",
                     b.weights_sha256.substr(0, 12), ")"));
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace fedtune

int main(int argc, char** argv) {
  using namespace fedtune;  // NOLINT: a test tool's main.
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() >= 4 && args[0] == "updates") {
    return Updates(Parse(args[1]), args[2], std::vector<std::string>(args.begin() + 3, args.end()));
  }
  if (args.size() == 4 && args[0] == "global") return Global(Parse(args[1]), args[2], args[3]);
  if (args.size() == 5 && args[0] == "adapted") return Adapted(Parse(args[1]), args[2], args[3], args[4]);
  if (args.size() == 3 && args[0] == "differ") return Differ(args[1], args[2]);
  Die("usage: see the comment at the top of tests/integration/personalization_check.cc");
}
