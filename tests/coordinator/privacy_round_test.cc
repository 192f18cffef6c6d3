// RoundManager's privacy features without secure aggregation: declined rounds (DeclineTask) and client-level
// DP-FedAvg at the coordinator (clipping, uniform weights, Gaussian noise on the mean), with a fake clock and a tiny
// model. Secure aggregation rounds: secagg_round_test.cc.
#include <cmath>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "coordinator/round_manager.h"
#include "coordinator/round_transitions.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/coordinator/coordinator_test_util.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::coordinator {
namespace {

using ::fedtune::coordinator::testing::ConstantDelta;
using ::fedtune::coordinator::testing::EncodeDelta;
using ::fedtune::coordinator::testing::FakeClock;
using ::fedtune::coordinator::testing::LoadTensors;
using ::testing::HasSubstr;

class PrivacyRoundTest : public ::testing::Test {
 protected:
  void SetUp() override {
    global_ = testing::WriteTinyModel(tmp_.Join("initial.ckpt"));
    Open();
    absl::StatusOr<std::string> digest = blobs_->Import(tmp_.Join("initial.ckpt"));
    ASSERT_TRUE(digest.ok()) << digest.status();
    ModelVersion version;
    version.digest = *digest;
    version.path = blobs_->PathOf(*digest);
    ASSERT_TRUE(store_->PutModelVersion(version).ok());
    for (const char* site : {"site-a", "site-b", "site-c"}) {
      ASSERT_TRUE(store_->SetSiteStatus(site, federation::SiteStatus::kApproved, true, 0).ok());
    }
  }

  void Open() {
    auto store = StateStore::Open(tmp_.Join("coordinator.db"));
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    auto blobs = BlobStore::Open(tmp_.Join("blobs"));
    ASSERT_TRUE(blobs.ok()) << blobs.status();
    blobs_ = *std::move(blobs);
    RoundManagerOptions options;
    options.state_dir = tmp_.path();
    options.clock = clock_.AsFunction();
    auto manager = RoundManager::Create(store_.get(), blobs_.get(), options);
    ASSERT_TRUE(manager.ok()) << manager.status();
    manager_ = *std::move(manager);
  }

  void Restart() {
    manager_.reset();
    blobs_.reset();
    store_.reset();
    Open();
  }

  static v1::RunConfig Config(int min_sites, std::vector<std::string> sites) {
    v1::RunConfig config;
    config.set_name("privacy");
    config.set_rounds(1);
    config.set_min_sites(min_sites);
    for (const std::string& s : sites) config.add_sites(s);
    config.set_round_deadline_seconds(60);
    config.set_final_evaluation(false);
    return config;
  }

  static v1::DeclineRequest Decline(const std::string& run, int attempt, const std::string& reason) {
    v1::DeclineRequest request;
    request.set_run_id(run);
    request.set_round(1);
    request.set_attempt(attempt);
    request.set_reason(reason);
    v1::PrivacyAccount* p = request.mutable_privacy();
    p->set_epsilon(7.5);
    p->set_delta(1e-5);
    p->set_max_epsilon(8);
    p->set_private_steps(120);
    p->set_round_epsilon(9.25);
    return request;
  }

  absl::StatusOr<v1::UploadResponse> Upload(const std::string& site, const std::string& run, double value,
                                            int64_t samples = 10) {
    return testing::UploadWhole(*manager_, site, run, 1, EncodeDelta(ConstantDelta(global_, value)), samples);
  }

  fedtune::testing::TempDir tmp_;
  FakeClock clock_;
  fl::TensorMap global_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<BlobStore> blobs_;
  std::unique_ptr<RoundManager> manager_;
};

TEST_F(PrivacyRoundTest, DeclinedSiteIsNotWaitedForAndShownInStatus) {
  auto run = manager_->StartRun(Config(2, {"site-a", "site-b", "site-c"}));
  ASSERT_TRUE(run.ok()) << run.status();
  ASSERT_EQ(manager_->NextTask("site-c")->kind(), v1::Task::TRAIN);
  ASSERT_TRUE(manager_->DeclineTask("site-c", Decline(*run, 1, "privacy budget exhausted")).ok());
  // Idempotent: the same decline again is OK and recorded once.
  ASSERT_TRUE(manager_->DeclineTask("site-c", Decline(*run, 1, "privacy budget exhausted")).ok());
  EXPECT_EQ(manager_->NextTask("site-c")->kind(), v1::Task::NONE);
  // Its upload is no longer taken.
  auto late = Upload("site-c", *run, 0.01);
  EXPECT_EQ(late.status().code(), absl::StatusCode::kFailedPrecondition) << late.status();
  // A heartbeat of the declined round is told to stop.
  v1::HeartbeatRequest beat;
  beat.set_run_id(*run);
  beat.set_round(1);
  EXPECT_TRUE(manager_->Heartbeat("site-c", beat)->cancel());

  ASSERT_TRUE(Upload("site-a", *run, 0.01).ok());
  EXPECT_EQ(store_->GetRun(*run)->state, federation::RunState::kRunning);
  ASSERT_TRUE(Upload("site-b", *run, 0.03).ok());
  // Closed without site-c and before the deadline.
  EXPECT_EQ(store_->GetRun(*run)->state, federation::RunState::kCompleted);

  absl::StatusOr<v1::RunStatus> status = manager_->GetRunStatus(*run);
  ASSERT_TRUE(status.ok()) << status.status();
  ASSERT_EQ(status->rounds_size(), 1);
  int declined = 0;
  for (const v1::UpdateInfo& u : status->rounds(0).updates()) {
    if (u.site_id() != "site-c") continue;
    ++declined;
    EXPECT_EQ(u.upload_status(), v1::UPLOAD_STATUS_DECLINED);
    EXPECT_EQ(u.status(), "declined");
    EXPECT_THAT(u.message(), HasSubstr("privacy budget exhausted"));
    EXPECT_THAT(u.message(), HasSubstr("epsilon 7.5"));
    EXPECT_THAT(u.message(), HasSubstr("max_epsilon 8"));
  }
  EXPECT_EQ(declined, 1);
  EXPECT_THAT(status->rounds(0).message(), HasSubstr("2 update(s)"));
}

TEST_F(PrivacyRoundTest, DeclineIsRefusedAfterAcceptanceAndCheckedField) {
  auto run = manager_->StartRun(Config(2, {"site-a", "site-b", "site-c"}));
  ASSERT_TRUE(run.ok()) << run.status();
  ASSERT_TRUE(Upload("site-a", *run, 0.01).ok());
  absl::Status after = manager_->DeclineTask("site-a", Decline(*run, 1, "too late"));
  EXPECT_EQ(after.code(), absl::StatusCode::kFailedPrecondition) << after;
  EXPECT_THAT(after.message(), HasSubstr("accepted"));

  EXPECT_EQ(manager_->DeclineTask("site-b", Decline(*run, 1, std::string(1025, 'x'))).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(manager_->DeclineTask("site-b", Decline(*run, 1, std::string(1024, 'x'))).ok());
  EXPECT_EQ(manager_->DeclineTask("site-c", Decline(*run, 2, "")).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(manager_->DeclineTask("site-c", Decline("run-9999", 1, "")).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(store_->SetSiteStatus("site-d", federation::SiteStatus::kApproved, true, 0).ok());
  EXPECT_EQ(manager_->DeclineTask("site-d", Decline(*run, 1, "")).code(), absl::StatusCode::kPermissionDenied);
  v1::DeclineRequest beyond = Decline(*run, 1, "");
  beyond.set_round(2);
  EXPECT_EQ(manager_->DeclineTask("site-c", beyond).code(), absl::StatusCode::kOutOfRange);
}

TEST_F(PrivacyRoundTest, AttemptFailsAtOnceWhenDeclinesLeaveTooFewSitesAndDeclinesSurviveARestart) {
  auto run = manager_->StartRun(Config(2, {"site-a", "site-b", "site-c"}));
  ASSERT_TRUE(run.ok()) << run.status();
  ASSERT_TRUE(manager_->DeclineTask("site-c", Decline(*run, 1, "budget")).ok());
  Restart();  // The decline is durable: the recovered attempt still does not wait for site-c.
  EXPECT_EQ(manager_->NextTask("site-c")->kind(), v1::Task::NONE);
  ASSERT_TRUE(manager_->DeclineTask("site-b", Decline(*run, 1, "budget")).ok());
  // One site left, min_sites 2: the attempt failed without waiting for the deadline; attempt 2 offers the task again.
  auto rounds = store_->ListRounds(*run);
  ASSERT_TRUE(rounds.ok());
  ASSERT_EQ(rounds->size(), 2u);
  EXPECT_EQ((*rounds)[0].state, federation::RoundState::kFailed);
  EXPECT_THAT((*rounds)[0].message, HasSubstr("declined"));
  EXPECT_THAT((*rounds)[0].message, HasSubstr("min_sites is 2"));
  auto task = manager_->NextTask("site-c");
  ASSERT_TRUE(task.ok());
  EXPECT_EQ(task->kind(), v1::Task::TRAIN);
  EXPECT_EQ(task->attempt(), 2);
}

// The number of floating values of `tensors` and, of `next - before` over them, the mean and standard deviation.
struct StepStats {
  int64_t n = 0;
  double mean = 0;
  double stddev = 0;
};
StepStats FloatingStepStats(const fl::TensorMap& before, const fl::TensorMap& next) {
  double sum = 0, sum2 = 0;
  int64_t n = 0;
  for (const auto& [name, t] : before) {
    if (!fl::IsFloating(t)) continue;
    at::Tensor d = (next.at(name).to(at::kDouble) - t.to(at::kDouble)).flatten();
    sum += d.sum().item<double>();
    sum2 += (d * d).sum().item<double>();
    n += d.numel();
  }
  StepStats s;
  s.n = n;
  s.mean = sum / static_cast<double>(n);
  s.stddev = std::sqrt(sum2 / static_cast<double>(n) - s.mean * s.mean);
  return s;
}

TEST_F(PrivacyRoundTest, DpFedAvgClipsWeighsUniformlyAndAddsCalibratedNoise) {
  v1::RunConfig config = Config(2, {"site-a", "site-b"});
  config.set_dp("dp-fedavg");
  config.set_dp_noise_multiplier(0.1);
  config.set_dp_clip_norm(0.1);
  auto run = manager_->StartRun(config);
  ASSERT_TRUE(run.ok()) << run.status();
  auto task = manager_->NextTask("site-a");
  ASSERT_TRUE(task.ok());
  EXPECT_EQ(task->plan().dp(), "dp-fedavg");
  EXPECT_DOUBLE_EQ(task->plan().dp_noise_multiplier(), 0.1);
  EXPECT_DOUBLE_EQ(task->plan().dp_clip_norm(), 0.1);
  EXPECT_FALSE(task->plan().secure_aggregation());
  // Opposite deltas far above the clip norm, and 10 vs 30 samples: both are clipped to norm C, so each becomes
  // +-c0 = C / sqrt(N) on every floating value. Uniform weights: mean 0 (samples would give -c0 / 2).
  ASSERT_TRUE(Upload("site-a", *run, 0.5, 10).ok());
  ASSERT_TRUE(Upload("site-b", *run, -0.5, 30).ok());
  ASSERT_EQ(store_->GetRun(*run)->state, federation::RunState::kCompleted);
  const fl::TensorMap next = LoadTensors(blobs_->PathOf(store_->GetRun(*run)->final_model_digest));
  const StepStats s = FloatingStepStats(global_, next);
  ASSERT_GT(s.n, 10000);
  const double c0 = 0.1 / std::sqrt(static_cast<double>(s.n));
  // Noise std sigma * C / n = 0.1 * 0.1 / 2 = 0.005 per value: the mean over N values is within 0.005 / sqrt(N) =
  // 0.05 c0 of 0 (asserted at 4 of those), the weighted mean would be -0.5 c0.
  EXPECT_LT(std::fabs(s.mean), 0.2 * c0) << s.mean << " vs c0 " << c0;
  // The measured standard deviation (c0 is 0.005 / 0.1 / sqrt(N) of it, negligible) matches within sampling error
  // (relative 1 / sqrt(2N) < 1%).
  EXPECT_NEAR(s.stddev, 0.005, 0.005 * 0.05) << "over " << s.n << " values";
  RecordProperty("noise_stddev", absl::StrCat(s.stddev));
  RecordProperty("step_mean_over_c0", absl::StrCat(s.mean / c0));
  RecordProperty("values", absl::StrCat(s.n));
  auto rounds = store_->ListRounds(*run);
  EXPECT_THAT((*rounds)[0].message, HasSubstr("dp-fedavg"));
}

TEST(AddGaussianNoiseTest, StandardDeviationAndFreshSeeds) {
  fl::TensorMap a{{"w", at::zeros({200000})}, {"count", at::zeros({3}, at::kLong)}};
  fl::TensorMap b{{"w", at::zeros({200000})}, {"count", at::zeros({3}, at::kLong)}};
  ASSERT_TRUE(AddGaussianNoise(a, 0.25).ok());
  ASSERT_TRUE(AddGaussianNoise(b, 0.25).ok());
  EXPECT_NEAR(a["w"].std().item<double>(), 0.25, 0.25 * 0.02);
  EXPECT_NEAR(a["w"].mean().item<double>(), 0.0, 0.25 * 5 / std::sqrt(200000.0));
  EXPECT_FALSE(at::equal(a["w"], b["w"]));               // Seeded from RAND_bytes each time.
  EXPECT_EQ(a["count"].abs().sum().item<int64_t>(), 0);  // Integer tensors untouched.
  EXPECT_EQ(AddGaussianNoise(a, -1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_DOUBLE_EQ(DpFedAvgNoiseStddev(v1::RunConfig(), 4), 0.25);  // Defaults sigma 1, C 1, over 4 updates.
}

}  // namespace
}  // namespace fedtune::coordinator
