// Tests of the coordinator's upload intake (coordinator/upload_intake.cc) for runs whose personalization keeps
// tensors at the sites (FEDBN, SILOBN): the partial bundles they take, the ones they refuse (named), what is
// aggregated, and that the next global model keeps the base model's BatchNorm tensors. RoundManager without gRPC,
// with a fake clock and a tiny MobileNetV2.
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/fl/personalization.h"
#include "common/io/sha256.h"
#include "coordinator/round_manager.h"
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

class PartialBundleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    global_ = testing::WriteTinyModel(tmp_.Join("initial.ckpt"));
    absl::StatusOr<model::Checkpoint> checkpoint = model::LoadCheckpoint(tmp_.Join("initial.ckpt"));
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    fedbn_local_ = *fl::LocalTensorNames(*checkpoint, v1::PERSONALIZATION_FEDBN);
    silobn_local_ = *fl::LocalTensorNames(*checkpoint, v1::PERSONALIZATION_SILOBN);
    ASSERT_GT(fedbn_local_.size(), silobn_local_.size());
    ASSERT_FALSE(silobn_local_.empty());
    Open();
    absl::StatusOr<std::string> digest = blobs_->Import(tmp_.Join("initial.ckpt"));
    ASSERT_TRUE(digest.ok()) << digest.status();
    initial_digest_ = *digest;
    ModelVersion version;
    version.digest = *digest;
    version.path = blobs_->PathOf(*digest);
    ASSERT_TRUE(store_->PutModelVersion(version).ok());
    for (const char* site : {"site-a", "site-b"}) {
      ASSERT_TRUE(store_->SetSiteStatus(site, federation::SiteStatus::kApproved, true, 0).ok());
    }
  }

  void Open() {
    store_ = *StateStore::Open(tmp_.Join("coordinator.db"));
    blobs_ = *BlobStore::Open(tmp_.Join("blobs"));
    RoundManagerOptions options;
    options.state_dir = tmp_.path();
    options.clock = clock_.AsFunction();
    absl::StatusOr<std::unique_ptr<RoundManager>> manager = RoundManager::Create(store_.get(), blobs_.get(), options);
    ASSERT_TRUE(manager.ok()) << manager.status();
    manager_ = *std::move(manager);
  }

  void Restart() {
    manager_.reset();
    blobs_.reset();
    store_.reset();
    Open();
  }

  static v1::RunConfig Config(v1::RunConfig::Personalization personalization, int rounds = 1) {
    v1::RunConfig config;
    config.set_name("personalized");
    config.set_rounds(rounds);
    config.set_min_sites(2);
    config.add_sites("site-a");
    config.add_sites("site-b");
    config.set_round_deadline_seconds(60);
    config.set_final_evaluation(false);
    config.set_personalization(personalization);
    return config;
  }

  absl::StatusOr<v1::UploadResponse> Upload(const std::string& site, const std::string& run, int round,
                                            const std::string& payload, int64_t samples = 10) {
    return testing::UploadWhole(*manager_, site, run, round, payload, samples);
  }

  // A constant delta over the global model's tensors minus `drop`.
  std::string DeltaWithout(const std::set<std::string>& drop, double value) {
    fl::TensorMap delta = ConstantDelta(global_, value);
    for (const std::string& name : drop) delta.erase(name);
    return EncodeDelta(delta);
  }

  std::string FinalModelPath(const std::string& run) {
    absl::StatusOr<RunRecord> record = store_->GetRun(run);
    EXPECT_TRUE(record.ok()) << record.status();
    return blobs_->PathOf(record->final_model_digest);
  }

  fedtune::testing::TempDir tmp_;
  FakeClock clock_;
  fl::TensorMap global_;
  std::set<std::string> fedbn_local_;
  std::set<std::string> silobn_local_;
  std::string initial_digest_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<BlobStore> blobs_;
  std::unique_ptr<RoundManager> manager_;
};

TEST_F(PartialBundleTest, FedBnTasksSayItAndAFullDeltaIsRefusedNamingTheTensor) {
  absl::StatusOr<std::string> run = manager_->StartRun(Config(v1::RunConfig::FEDBN));
  ASSERT_TRUE(run.ok()) << run.status();
  absl::StatusOr<v1::Task> task = manager_->NextTask("site-a");
  ASSERT_TRUE(task.ok()) << task.status();
  EXPECT_EQ(task->plan().personalization(), v1::PERSONALIZATION_FEDBN);

  // Every tensor, BatchNorm included: refused, naming the first BatchNorm tensor in file (name) order.
  absl::Status full = Upload("site-a", *run, 1, DeltaWithout({}, 0.01)).status();
  EXPECT_EQ(full.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(full.message(), HasSubstr("site-a"));
  EXPECT_THAT(full.message(), HasSubstr(*run));
  EXPECT_THAT(full.message(), HasSubstr("round 1"));
  EXPECT_THAT(full.message(), HasSubstr(absl::StrCat("'", *fedbn_local_.begin(), "'")));
  EXPECT_THAT(full.message(), HasSubstr("must stay at the site under personalization fedbn"));

  // SiloBN's partial bundle under FedBN still carries BatchNorm weights: refused too.
  absl::Status affine = Upload("site-a", *run, 1, DeltaWithout(silobn_local_, 0.01)).status();
  EXPECT_EQ(affine.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(affine.message(), HasSubstr("must stay at the site"));

  // A shared tensor missing: refused, naming it.
  std::set<std::string> too_much = fedbn_local_;
  too_much.insert("member0/features.0.0.weight");
  absl::Status missing = Upload("site-a", *run, 1, DeltaWithout(too_much, 0.01)).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(missing.message(), HasSubstr("member0/features.0.0.weight"));
  EXPECT_THAT(missing.message(), HasSubstr("site-a"));
}

TEST_F(PartialBundleTest, FedBnAggregatesTheSharedTensorsAndKeepsTheBaseBatchNorm) {
  absl::StatusOr<std::string> run = manager_->StartRun(Config(v1::RunConfig::FEDBN, /*rounds=*/2));
  ASSERT_TRUE(run.ok()) << run.status();
  ASSERT_TRUE(Upload("site-a", *run, 1, DeltaWithout(fedbn_local_, 0.01), 10).ok());
  // A coordinator restarted mid-round takes partial bundles as before.
  Restart();
  absl::StatusOr<v1::UploadResponse> b = Upload("site-b", *run, 1, DeltaWithout(fedbn_local_, 0.04), 30);
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_TRUE(Upload("site-a", *run, 2, DeltaWithout(fedbn_local_, 0.01), 10).ok());
  ASSERT_TRUE(Upload("site-b", *run, 2, DeltaWithout(fedbn_local_, 0.01), 10).ok());
  EXPECT_EQ(store_->GetRun(*run)->state, federation::RunState::kCompleted);

  const fl::TensorMap final_model = LoadTensors(FinalModelPath(*run));
  ASSERT_EQ(final_model.size(), global_.size());
  int moved = 0;
  for (const auto& [name, tensor] : final_model) {
    if (fedbn_local_.count(name)) {
      EXPECT_TRUE(tensor.equal(global_.at(name))) << name << " is not the base model's";
    } else if (fl::IsFloating(tensor) && tensor.numel() > 0) {
      // (10 * 0.01 + 30 * 0.04) / 40 + 0.01 over two rounds.
      EXPECT_NEAR((tensor - global_.at(name)).flatten()[0].item<double>(), 0.0425, 1e-5) << name;
      ++moved;
    }
  }
  EXPECT_GT(moved, 10);
}

TEST_F(PartialBundleTest, SiloBnSharesBatchNormWeightsButNotStatistics) {
  absl::StatusOr<std::string> run = manager_->StartRun(Config(v1::RunConfig::SILOBN));
  ASSERT_TRUE(run.ok()) << run.status();
  // FedBN's smaller bundle lacks the BatchNorm weights SiloBN shares.
  absl::Status lacking = Upload("site-a", *run, 1, DeltaWithout(fedbn_local_, 0.01)).status();
  EXPECT_EQ(lacking.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(lacking.message(), HasSubstr(".weight"));
  absl::Status stats = Upload("site-a", *run, 1, DeltaWithout({}, 0.01)).status();
  EXPECT_THAT(stats.message(), HasSubstr("under personalization silobn"));
  ASSERT_TRUE(Upload("site-a", *run, 1, DeltaWithout(silobn_local_, 0.02)).ok());
  ASSERT_TRUE(Upload("site-b", *run, 1, DeltaWithout(silobn_local_, 0.02)).ok());

  const fl::TensorMap final_model = LoadTensors(FinalModelPath(*run));
  const std::string affine = "member0/features.0.1.weight";
  ASSERT_EQ(silobn_local_.count(affine), 0u);
  EXPECT_NEAR((final_model.at(affine) - global_.at(affine)).flatten()[0].item<double>(), 0.02, 1e-6);
  for (const std::string& name : silobn_local_) {
    EXPECT_TRUE(final_model.at(name).equal(global_.at(name))) << name;
  }
}

TEST_F(PartialBundleTest, NoneAndDittoTakeEveryTensor) {
  for (v1::RunConfig::Personalization p : {v1::RunConfig::NONE, v1::RunConfig::DITTO}) {
    v1::RunConfig config = Config(p);
    config.set_ditto_lambda(0.5);
    absl::StatusOr<std::string> run = manager_->StartRun(config);
    ASSERT_TRUE(run.ok()) << run.status();
    absl::StatusOr<v1::Task> task = manager_->NextTask("site-a");
    ASSERT_TRUE(task.ok());
    if (p == v1::RunConfig::DITTO) {
      EXPECT_EQ(task->plan().personalization(), v1::PERSONALIZATION_DITTO);
      EXPECT_EQ(task->plan().ditto_lambda(), 0.5);
    }
    EXPECT_EQ(Upload("site-a", *run, 1, DeltaWithout(fedbn_local_, 0.01)).status().code(),
              absl::StatusCode::kInvalidArgument);
    ASSERT_TRUE(Upload("site-a", *run, 1, DeltaWithout({}, 0.01)).ok());
    ASSERT_TRUE(Upload("site-b", *run, 1, DeltaWithout({}, 0.01)).ok());
    const fl::TensorMap final_model = LoadTensors(FinalModelPath(*run));
    const std::string stat = "member0/features.0.1.running_mean";
    ASSERT_EQ(silobn_local_.count(stat), 1u);
    EXPECT_FALSE(final_model.at(stat).equal(global_.at(stat))) << stat;
  }
}

}  // namespace
}  // namespace fedtune::coordinator
