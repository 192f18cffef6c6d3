#include "common/train/finetune_pipeline.h"

#include <torch/torch.h>

#include <filesystem>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "common/model/checkpoint.h"
#include "common/model/ensemble.h"
#include "common/model/model_factory.h"
#include "gtest/gtest.h"
#include "tests/testing/site_manifest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::train {
namespace {

TrainResult WithDp(double q, double sigma, int64_t steps) {
  TrainResult r;
  r.dp.enabled = true;
  r.dp.sample_rate = q;
  r.dp.noise_multiplier = sigma;
  r.dp.clip_norm = 1.0;
  r.dp.steps = steps;
  return r;
}

TEST(DpSgdPhasesTest, ListsEveryMemberAndTheDuoNetWithTheirOwnSampleRates) {
  FinetuneResult result;
  result.members = {WithDp(0.1, 1.2, 30), WithDp(0.1, 1.2, 20), WithDp(0.1, 1.2, 0)};
  result.duo = WithDp(0.25, 1.2, 8);
  std::vector<DpSgdPhase> phases = DpSgdPhases(result);
  ASSERT_EQ(phases.size(), 3u);  // A member that took no step spent nothing.
  EXPECT_EQ(phases[0].network, "member0");
  EXPECT_EQ(phases[0].steps, 30);
  EXPECT_EQ(phases[1].network, "member1");
  EXPECT_EQ(phases[1].steps, 20);
  EXPECT_DOUBLE_EQ(phases[1].sample_rate, 0.1);
  EXPECT_DOUBLE_EQ(phases[1].noise_multiplier, 1.2);
  EXPECT_EQ(phases[2].network, "duonet");
  EXPECT_DOUBLE_EQ(phases[2].sample_rate, 0.25);
  EXPECT_EQ(phases[2].steps, 8);
}

TEST(DpSgdPhasesTest, OrdinaryTrainingSpendsNothing) {
  FinetuneResult result;
  result.members = {TrainResult(), TrainResult()};
  result.duo = TrainResult();
  EXPECT_TRUE(DpSgdPhases(result).empty());
  EXPECT_EQ(result.dp_member_steps, 0);
}

// The pipeline passes DP-SGD to every member and adds up the steps the site must account.
TEST(FinetunePipelineTest, DpSgdTrainsEveryMemberAndReportsTheirSteps) {
  fedtune::testing::TempDir dir;
  for (int p = 1; p <= 20; ++p) {
    cv::Mat img(32, 32, CV_8UC1, cv::Scalar(50));
    if (p % 2 == 0) cv::circle(img, cv::Point(16, 16), 7, cv::Scalar(220), -1);
    const std::string path = dir.Join(absl::StrCat("patient", 10000 + p, "/study1/view1_frontal.png"));
    std::filesystem::create_directories(std::filesystem::path(path).parent_path());
    ASSERT_TRUE(cv::imwrite(path, img));
  }
  v1::FinetuneConfig config =
      fedtune::testing::TwentyPatientConfig(dir.WriteFile("manifest.csv", fedtune::testing::TwentyPatientManifest()));
  config.set_data_root(dir.Join(""));
  torch::manual_seed(1);
  model::Ensemble ensemble;
  std::vector<model::Classifier> members;
  for (int i = 0; i < 2; ++i) members.push_back(*model::CreateModel(*model::ModelConfigForName("mobilenet_v2_tiny")));
  ensemble.solo = model::SoloNet(members);
  model::CheckpointMetadata metadata;
  metadata.image_size = 32;
  model::Checkpoint base = model::CheckpointFromEnsemble(ensemble, metadata);
  ASSERT_TRUE(model::SaveCheckpoint(&base, dir.Join("base.ckpt")).ok());
  config.set_base_model(dir.Join("base.ckpt"));
  config.set_out_dir(dir.Join("out"));
  config.set_cache_dir(dir.Join("out/cache"));
  config.set_batch_size(4);
  config.set_max_epochs(2);
  config.set_device("cpu");
  config.set_loader_threads(1);
  config.set_dp_noise_multiplier(0.8);
  config.set_dp_clip_norm(0.5);
  absl::StatusOr<FinetuneResult> result = RunFinetune(config);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->members.size(), 2u);
  const double q = 4.0 / static_cast<double>(result->train_images);
  int64_t total = 0;
  for (const TrainResult& m : result->members) {
    EXPECT_TRUE(m.dp.enabled);
    EXPECT_DOUBLE_EQ(m.dp.sample_rate, q);
    EXPECT_EQ(m.dp.noise_multiplier, 0.8);
    EXPECT_EQ(m.dp.clip_norm, 0.5);
    EXPECT_EQ(m.dp.steps, static_cast<int64_t>(m.history.size()) * std::llround(1.0 / q));
    total += m.dp.steps;
  }
  EXPECT_GT(total, 0);
  EXPECT_EQ(result->dp_member_steps, total);
  std::vector<DpSgdPhase> phases = DpSgdPhases(*result);
  ASSERT_EQ(phases.size(), 2u);
  EXPECT_EQ(phases[0].steps + phases[1].steps, total);
}

}  // namespace
}  // namespace fedtune::train
