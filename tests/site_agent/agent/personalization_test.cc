// Tests of site_agent/agent/personalization.h: the state a site keeps between rounds under FEDBN/SILOBN (its own
// BatchNorm tensors), the model a round starts from (also after a restart and in a later attempt), the partial delta,
// the final adapted model, and Ditto's personal start. No training: tiny checkpoints stand for fine-tuned models.
#include "site_agent/agent/personalization.h"

#include <torch/torch.h>

#include <filesystem>

#include "common/fl/bundle_file.h"
#include "common/fl/model_tensors.h"
#include "common/fl/personalization.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "site_agent/commands/model_init.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::agent {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

model::Checkpoint Tiny(uint64_t seed) {
  absl::StatusOr<model::Checkpoint> c = InitCheckpoint({"mobilenet_v2_tiny"}, 32, 0.0, seed);
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

// `base` with every tensor moved by `shift` (integer counters by 1): a stand-in for a fine-tuned model.
model::Checkpoint Moved(const model::Checkpoint& base, double shift) {
  fl::TensorMap t = fl::CheckpointTensors(base);
  for (auto& [name, tensor] : t) tensor = fl::IsFloating(tensor) ? tensor + shift : tensor + 1;
  return *fl::CheckpointWithTensors(base, t);
}

bool Equal(const at::Tensor& a, const at::Tensor& b) { return a.sizes() == b.sizes() && a.equal(b); }

class SitePersonalizationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    global_ = Tiny(3);
    global_path_ = dir_.Join("global.ckpt");
    ASSERT_TRUE(model::SaveCheckpoint(&global_, global_path_).ok());
    local_ = *fl::LocalTensorNames(global_, v1::PERSONALIZATION_FEDBN);
    ASSERT_FALSE(local_.empty());
  }
  RoundDirs Dirs(int round, int attempt) {
    RoundDirs d;
    d.run_dir = dir_.Join("runs/r");
    d.round_dir = dir_.Join("runs/r/round-" + std::to_string(round) + "-" + std::to_string(attempt));
    for (int a = attempt - 1; a >= 0; --a) {
      d.earlier_attempts.push_back(dir_.Join("runs/r/round-" + std::to_string(round) + "-" + std::to_string(a)));
    }
    EXPECT_TRUE(io::MakeDirectories(d.round_dir).ok());
    return d;
  }

  testing::TempDir dir_;
  model::Checkpoint global_;
  std::string global_path_;
  std::set<std::string> local_;
};

TEST_F(SitePersonalizationTest, NoneAndDittoStartFromTheGlobalModelAndShareEverything) {
  for (v1::Personalization p : {v1::PERSONALIZATION_NONE, v1::PERSONALIZATION_DITTO}) {
    absl::StatusOr<RoundStart> start = PrepareRoundStart(p, global_, global_path_, Dirs(1, 1));
    ASSERT_TRUE(start.ok()) << start.status();
    EXPECT_EQ(start->path, global_path_);
    EXPECT_TRUE(start->local.empty());
    absl::StatusOr<fl::TensorMap> delta = SharedDelta(*start, Moved(global_, 0.5));
    ASSERT_TRUE(delta.ok()) << delta.status();
    EXPECT_EQ(delta->size(), fl::CheckpointTensors(global_).size());
  }
  EXPECT_FALSE(fs::exists(dir_.Join("runs/r/round-1-1/start.ckpt")));
}

TEST_F(SitePersonalizationTest, FedBnKeepsTheSitesBatchNormAcrossRoundsRestartsAndAttempts) {
  // Round 1: nothing kept yet, the round starts from the global model's own tensors.
  absl::StatusOr<RoundStart> r1 = PrepareRoundStart(v1::PERSONALIZATION_FEDBN, global_, global_path_, Dirs(1, 1));
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_EQ(r1->local, local_);
  EXPECT_EQ(r1->path, dir_.Join("runs/r/round-1-1/start.ckpt"));
  EXPECT_EQ(model::LoadCheckpoint(r1->path)->weights_sha256, global_.weights_sha256);

  // The round's fine-tuning moved everything; the delta carries the shared tensors only, tuned - start.
  const model::Checkpoint tuned1 = Moved(global_, 0.25);
  absl::StatusOr<fl::TensorMap> delta = SharedDelta(*r1, tuned1);
  ASSERT_TRUE(delta.ok()) << delta.status();
  EXPECT_EQ(delta->size(), fl::CheckpointTensors(global_).size() - local_.size());
  for (const auto& [name, tensor] : *delta) {
    EXPECT_EQ(local_.count(name), 0u) << name << " left the site";
    if (fl::IsFloating(tensor) && tensor.numel() > 0) {
      EXPECT_NEAR(tensor.flatten()[0].item<double>(), 0.25, 1e-6);
    }
  }
  ASSERT_TRUE(KeepLocalTensors(*r1, tuned1, dir_.Join("runs/r")).ok());
  const std::string kept_path = PersonalFilesOf(dir_.Join("runs/r")).local_tensors;
  absl::StatusOr<fl::TensorMap> kept = fl::DecodeTensorBundleFile(kept_path);
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(kept->size(), local_.size());
  const fl::TensorMap tuned1_tensors = fl::CheckpointTensors(tuned1);
  for (const auto& [name, tensor] : *kept) EXPECT_TRUE(Equal(tensor, tuned1_tensors.at(name))) << name;

  // Round 2 with a new global model: its shared tensors, the site's own BatchNorm.
  const model::Checkpoint global2 = Moved(global_, 1.0);
  absl::StatusOr<RoundStart> r2 = PrepareRoundStart(v1::PERSONALIZATION_FEDBN, global2, "unused", Dirs(2, 1));
  ASSERT_TRUE(r2.ok()) << r2.status();
  const fl::TensorMap g2 = fl::CheckpointTensors(global2);
  const fl::TensorMap s2 = fl::CheckpointTensors(*model::LoadCheckpoint(r2->path));
  for (const auto& [name, tensor] : s2) {
    EXPECT_TRUE(Equal(tensor, local_.count(name) ? tuned1_tensors.at(name) : g2.at(name))) << name;
  }
  const std::string start2 = *io::Sha256File(r2->path);

  // The site's state moves on (round 2 fine-tuned, say) and the agent restarts: round 2 starts from the same model.
  ASSERT_TRUE(KeepLocalTensors(*r2, Moved(global2, 7.0), dir_.Join("runs/r")).ok());
  absl::StatusOr<RoundStart> again = PrepareRoundStart(v1::PERSONALIZATION_FEDBN, global2, "unused", Dirs(2, 1));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*io::Sha256File(again->path), start2);
  // So does a later attempt of round 2.
  absl::StatusOr<RoundStart> attempt2 = PrepareRoundStart(v1::PERSONALIZATION_FEDBN, global2, "unused", Dirs(2, 2));
  ASSERT_TRUE(attempt2.ok()) << attempt2.status();
  EXPECT_EQ(attempt2->checkpoint.weights_sha256, r2->checkpoint.weights_sha256);
}

TEST_F(SitePersonalizationTest, SiloBnKeepsStatisticsOnly) {
  absl::StatusOr<RoundStart> r1 = PrepareRoundStart(v1::PERSONALIZATION_SILOBN, global_, global_path_, Dirs(1, 1));
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_LT(r1->local.size(), local_.size());
  for (const std::string& name : r1->local) {
    EXPECT_TRUE(name.find("running_") != std::string::npos || name.find("num_batches_tracked") != std::string::npos)
        << name;
  }
  absl::StatusOr<fl::TensorMap> delta = SharedDelta(*r1, Moved(global_, 0.1));
  ASSERT_TRUE(delta.ok());
  EXPECT_EQ(delta->count("member0/features.0.1.weight"), 1u);
  EXPECT_EQ(delta->count("member0/features.0.1.running_mean"), 0u);
}

TEST_F(SitePersonalizationTest, FinalAdaptedIsTheGlobalModelWithTheSitesOwnTensors) {
  const std::string adapted = dir_.Join("adapted/r/model.ckpt");
  // Never trained: no adapted model.
  absl::StatusOr<std::optional<std::string>> none =
      WriteFinalAdapted(v1::PERSONALIZATION_FEDBN, global_path_, dir_.Join("runs/r"), adapted);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->has_value());
  EXPECT_FALSE(WriteFinalAdapted(v1::PERSONALIZATION_NONE, global_path_, dir_.Join("runs/r"), adapted)->has_value());

  absl::StatusOr<RoundStart> r1 = PrepareRoundStart(v1::PERSONALIZATION_FEDBN, global_, global_path_, Dirs(1, 1));
  ASSERT_TRUE(r1.ok());
  const model::Checkpoint tuned = Moved(global_, 0.5);
  ASSERT_TRUE(KeepLocalTensors(*r1, tuned, dir_.Join("runs/r")).ok());
  absl::StatusOr<std::optional<std::string>> digest =
      WriteFinalAdapted(v1::PERSONALIZATION_FEDBN, global_path_, dir_.Join("runs/r"), adapted);
  ASSERT_TRUE(digest.ok()) << digest.status();
  ASSERT_TRUE(digest->has_value());
  absl::StatusOr<model::Checkpoint> loaded = model::LoadCheckpoint(adapted);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->weights_sha256, **digest);
  const fl::TensorMap a = fl::CheckpointTensors(*loaded);
  const fl::TensorMap g = fl::CheckpointTensors(global_);
  const fl::TensorMap t = fl::CheckpointTensors(tuned);
  for (const auto& [name, tensor] : a) EXPECT_TRUE(Equal(tensor, local_.count(name) ? t.at(name) : g.at(name))) << name;
}

TEST_F(SitePersonalizationTest, KeptTensorsThatDoNotFitAreDataLossNamingTheFile) {
  const std::string kept_path = PersonalFilesOf(dir_.Join("runs/r")).local_tensors;
  ASSERT_TRUE(io::MakeDirectories(dir_.Join("runs/r")).ok());
  ASSERT_TRUE(fl::WriteTensorBundleFile(kept_path, {{"member0/features.0.1.weight", torch::zeros({2})}}).ok());
  absl::Status s = PrepareRoundStart(v1::PERSONALIZATION_FEDBN, global_, global_path_, Dirs(1, 1)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr(kept_path));
}

TEST_F(SitePersonalizationTest, DittoPersonalStartIsStableWithinARound) {
  const std::string run_dir = dir_.Join("runs/r");
  absl::StatusOr<std::string> first = PersonalStart(Dirs(1, 1), global_path_);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*io::Sha256File(*first), *io::Sha256File(global_path_));  // Round 1: the global model.
  // The round's personal model is kept; a restart of round 1 still starts from the global model.
  model::Checkpoint personal = Moved(global_, 0.3);
  ASSERT_TRUE(model::SaveCheckpoint(&personal, PersonalFilesOf(run_dir).personal_model).ok());
  EXPECT_EQ(*io::Sha256File(*PersonalStart(Dirs(1, 1), global_path_)), *io::Sha256File(global_path_));
  EXPECT_EQ(*io::Sha256File(*PersonalStart(Dirs(1, 2), global_path_)), *io::Sha256File(global_path_));
  // Round 2: the previous round's personal model.
  absl::StatusOr<std::string> second = PersonalStart(Dirs(2, 1), global_path_);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(model::LoadCheckpoint(*second)->weights_sha256, personal.weights_sha256);
}

}  // namespace
}  // namespace fedtune::agent
