#include "coordinator/round_manager.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/fl/aggregate.h"
#include "common/fl/codec.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/coordinator/coordinator_test_util.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::coordinator {
namespace {

using ::fedtune::coordinator::testing::ConstantDelta;
using ::fedtune::coordinator::testing::EncodeDelta;
using ::fedtune::coordinator::testing::FakeClock;
using ::fedtune::coordinator::testing::FirstValue;
using ::fedtune::coordinator::testing::LoadTensors;
using ::testing::HasSubstr;

class RoundManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    global_ = testing::WriteTinyModel(tmp_.Join("initial.ckpt"));
    Open();
    absl::StatusOr<std::string> digest = blobs_->Import(tmp_.Join("initial.ckpt"));
    ASSERT_TRUE(digest.ok()) << digest.status();
    initial_digest_ = *digest;
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
    RoundManagerOptions options = options_;
    options.state_dir = tmp_.path();
    options.clock = clock_.AsFunction();
    auto manager = RoundManager::Create(store_.get(), blobs_.get(), options);
    ASSERT_TRUE(manager.ok()) << manager.status();
    manager_ = *std::move(manager);
  }

  // A coordinator "killed": every object dropped, then opened again from the files.
  void Restart() {
    manager_.reset();
    blobs_.reset();
    store_.reset();
    Open();
  }

  static v1::RunConfig Config(int rounds, int min_sites, std::vector<std::string> sites) {
    v1::RunConfig config;
    config.set_name("test");
    config.set_rounds(rounds);
    config.set_min_sites(min_sites);
    for (const std::string& s : sites) config.add_sites(s);
    config.set_round_deadline_seconds(60);
    config.set_final_evaluation(false);
    return config;
  }

  absl::StatusOr<v1::UploadResponse> Upload(const std::string& site, const std::string& run, int round,
                                            const std::string& payload, int64_t samples = 10) {
    return testing::UploadWhole(*manager_, site, run, round, payload, samples);
  }

  std::string Delta(double value) { return EncodeDelta(ConstantDelta(global_, value)); }

  static v1::UploadHeader Header(const std::string& run, int round, const std::string& payload, int64_t offset = 0) {
    v1::UploadHeader header;
    header.set_run_id(run);
    header.set_round(round);
    header.set_total_bytes(static_cast<int64_t>(payload.size()));
    header.set_sha256(io::Sha256Hex(payload));
    header.set_offset(offset);
    header.set_num_samples(10);
    return header;
  }
  // The first `bytes` of `payload` as a stream would have written them into the target's spool file.
  static void Receive(const UploadTarget& target, const std::string& payload, size_t bytes) {
    ASSERT_TRUE(io::WriteFileAtomically(target.spool_path, payload.substr(0, bytes)).ok());
  }
  size_t SpoolFileCount(const std::string& run) {
    size_t n = 0;
    std::error_code ec;
    for (auto it = std::filesystem::directory_iterator(tmp_.Join("spool/" + run), ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
      ++n;
    }
    return n;
  }
  std::string SpoolFile(const std::string& run, const std::string& site, const std::string& payload) {
    return tmp_.Join(absl::StrCat("spool/", run, "/r1-a1-", site, "-", io::Sha256Hex(payload), ".upload"));
  }
  size_t Refused(const std::string& run, const std::string& site) {
    auto refused = store_->ListUpdates(run, std::nullopt, std::nullopt, site, federation::UploadStatus::kRefused);
    EXPECT_TRUE(refused.ok());
    return refused.ok() ? refused->size() : 0;
  }

  RunRecord Run(const std::string& id) {
    absl::StatusOr<RunRecord> run = store_->GetRun(id);
    EXPECT_TRUE(run.ok()) << run.status();
    return run.ok() ? *run : RunRecord{};
  }

  fedtune::testing::TempDir tmp_;
  FakeClock clock_;
  RoundManagerOptions options_;  // Limits for Open(); state_dir and clock are set there.
  fl::TensorMap global_;
  std::string initial_digest_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<BlobStore> blobs_;
  std::unique_ptr<RoundManager> manager_;
};

TEST_F(RoundManagerTest, RoundClosesWhenEverySiteReportedWithSampleWeightedMean) {
  auto run = manager_->StartRun(Config(2, 2, {"site-a", "site-b"}));
  ASSERT_TRUE(run.ok()) << run.status();
  auto task = manager_->NextTask("site-a");
  ASSERT_TRUE(task.ok());
  EXPECT_EQ(task->kind(), v1::Task::TRAIN);
  EXPECT_EQ(task->round(), 1);
  EXPECT_EQ(task->attempt(), 1);
  EXPECT_EQ(task->model_digest(), initial_digest_);
  EXPECT_EQ(task->base_model_digest(), initial_digest_);
  EXPECT_EQ(task->total_rounds(), 2);
  EXPECT_EQ(task->plan().encoding(), "fp32");  // The text form, for sites of the previous release.
  EXPECT_EQ(task->plan().delta_encoding(), v1::NamedTensor::DENSE_FP32);
  EXPECT_EQ(manager_->NextTask("site-c")->kind(), v1::Task::NONE);  // Not selected.

  ASSERT_TRUE(Upload("site-a", *run, 1, Delta(0.01), 10).ok());
  EXPECT_EQ(manager_->NextTask("site-a")->kind(), v1::Task::NONE);  // Done for this round.
  EXPECT_EQ(Run(*run).current_round, 1);
  ASSERT_TRUE(Upload("site-b", *run, 1, Delta(0.04), 30).ok());

  RunRecord after = Run(*run);
  EXPECT_EQ(after.current_round, 2);
  auto rounds = store_->ListRounds(*run);
  ASSERT_EQ(rounds->size(), 2u);
  EXPECT_EQ((*rounds)[0].state, federation::RoundState::kClosed);
  const std::string global1 = (*rounds)[0].result_digest;
  EXPECT_EQ((*rounds)[1].model_digest, global1);
  auto version = store_->GetModelVersion(global1);
  ASSERT_TRUE(version.ok() && version->has_value());
  EXPECT_EQ((*version)->parent_digest, initial_digest_);
  EXPECT_EQ(io::Sha256File(blobs_->PathOf(global1)).value(), global1);
  // FedAvg weighted by samples: (10 * 0.01 + 30 * 0.04) / 40 = 0.0325 on every weight.
  std::string name;
  const double before = FirstValue(global_, &name);
  fl::TensorMap next = LoadTensors(blobs_->PathOf(global1));
  EXPECT_NEAR(next.at(name).flatten()[0].item<double>() - before, 0.0325, 1e-6);
  // Accepted spool files are gone once their round closed.
  EXPECT_TRUE(std::filesystem::is_empty(tmp_.Join("spool/" + *run)));

  task = manager_->NextTask("site-b");
  EXPECT_EQ(task->round(), 2);
  EXPECT_EQ(task->model_digest(), global1);
  ASSERT_TRUE(Upload("site-a", *run, 2, Delta(0.01)).ok());
  ASSERT_TRUE(Upload("site-b", *run, 2, Delta(0.01)).ok());
  after = Run(*run);
  EXPECT_EQ(after.state, federation::RunState::kCompleted);
  EXPECT_FALSE(after.final_model_digest.empty());
  EXPECT_EQ(manager_->ActiveRunId(), "");
  EXPECT_EQ(manager_->NextTask("site-a")->kind(), v1::Task::NONE);
}

TEST_F(RoundManagerTest, DeadlineClosesWithMinSitesAndRefusesLateUploads) {
  auto run = manager_->StartRun(Config(1, 2, {"site-a", "site-b", "site-c"}));
  ASSERT_TRUE(run.ok()) << run.status();
  ASSERT_TRUE(Upload("site-a", *run, 1, Delta(0.01)).ok());
  ASSERT_TRUE(Upload("site-b", *run, 1, Delta(0.02)).ok());
  clock_.Advance(absl::Seconds(59));
  ASSERT_TRUE(manager_->Tick().ok());
  EXPECT_EQ(Run(*run).state, federation::RunState::kRunning);
  clock_.Advance(absl::Seconds(1));
  ASSERT_TRUE(manager_->Tick().ok());
  EXPECT_EQ(Run(*run).state, federation::RunState::kCompleted);
  auto late = Upload("site-c", *run, 1, Delta(0.03));
  EXPECT_EQ(late.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(late.status().message(), HasSubstr(*run + " round 1 is not open"));
  // site-c was still training for the closed round: its heartbeat tells it to stop; site-a's update counted.
  v1::HeartbeatRequest beat;
  beat.set_run_id(*run);
  beat.set_round(1);
  EXPECT_TRUE(manager_->Heartbeat("site-c", beat)->cancel());
  EXPECT_TRUE(manager_->Heartbeat("site-c", beat)->run_ended());
  EXPECT_FALSE(manager_->Heartbeat("site-a", beat)->cancel());
}

TEST_F(RoundManagerTest, LongPollIsWokenByANewRun) {
  absl::StatusOr<v1::Task> polled;
  const absl::Time start = absl::Now();
  std::thread waiter([&] { polled = manager_->WaitForTask("site-a", absl::Seconds(30), nullptr); });
  auto run = manager_->StartRun(Config(1, 1, {"site-a"}));
  ASSERT_TRUE(run.ok());
  waiter.join();
  ASSERT_TRUE(polled.ok());
  EXPECT_EQ(polled->kind(), v1::Task::TRAIN);
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
  // Shutdown ends a poll at once.
  manager_->Shutdown();
  ASSERT_TRUE(Upload("site-a", *run, 1, Delta(0.01)).ok());
  auto none = manager_->WaitForTask("site-a", absl::Seconds(30), nullptr);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->kind(), v1::Task::NONE);
}

TEST_F(RoundManagerTest, TooFewUpdatesRetryTheRoundThenFailTheRun) {
  v1::RunConfig config = Config(2, 2, {"site-a", "site-b"});
  config.set_max_round_attempts(2);
  auto run = manager_->StartRun(config);
  ASSERT_TRUE(run.ok());
  ASSERT_TRUE(Upload("site-a", *run, 1, Delta(0.01)).ok());
  clock_.Advance(absl::Seconds(60));
  ASSERT_TRUE(manager_->Tick().ok());
  auto rounds = store_->ListRounds(*run);
  ASSERT_EQ(rounds->size(), 2u);
  EXPECT_EQ((*rounds)[0].state, federation::RoundState::kFailed);
  EXPECT_THAT((*rounds)[0].message, HasSubstr("1 accepted update(s), min_sites is 2"));
  EXPECT_EQ((*rounds)[1].attempt, 2);
  EXPECT_EQ((*rounds)[1].state, federation::RoundState::kOpen);
  // Attempt 2 starts over: site-a trains again on the same model.
  auto task = manager_->NextTask("site-a");
  EXPECT_EQ(task->kind(), v1::Task::TRAIN);
  EXPECT_EQ(task->attempt(), 2);
  EXPECT_EQ(task->model_digest(), initial_digest_);
  clock_.Advance(absl::Seconds(60));
  ASSERT_TRUE(manager_->Tick().ok());
  RunRecord failed = Run(*run);
  EXPECT_EQ(failed.state, federation::RunState::kFailed);
  EXPECT_THAT(failed.message, HasSubstr("round 1 failed 2 time(s)"));
  EXPECT_EQ(manager_->ActiveRunId(), "");
}

TEST_F(RoundManagerTest, FinalEvaluationThenCompletedByReportsOrDeadline) {
  v1::RunConfig config = Config(1, 2, {"site-a", "site-b"});
  config.set_final_evaluation(true);
  auto run = manager_->StartRun(config);
  ASSERT_TRUE(run.ok());
  ASSERT_TRUE(Upload("site-a", *run, 1, Delta(0.01)).ok());
  ASSERT_TRUE(Upload("site-b", *run, 1, Delta(0.01)).ok());
  RunRecord evaluating = Run(*run);
  EXPECT_EQ(evaluating.state, federation::RunState::kEvaluating);
  auto task = manager_->NextTask("site-a");
  EXPECT_EQ(task->kind(), v1::Task::EVALUATE);
  EXPECT_EQ(task->model_digest(), evaluating.final_model_digest);
  EXPECT_EQ(task->base_model_digest(), initial_digest_);

  v1::MetricsReport report;
  report.set_run_id(*run);
  report.set_kind("final");
  ASSERT_TRUE(manager_->ReportMetrics("site-a", report).ok());
  EXPECT_EQ(manager_->NextTask("site-a")->kind(), v1::Task::NONE);
  EXPECT_EQ(Run(*run).state, federation::RunState::kEvaluating);
  EXPECT_EQ(manager_->ReportMetrics("site-c", report).code(), absl::StatusCode::kPermissionDenied);
  report.set_kind("weekly");
  EXPECT_EQ(manager_->ReportMetrics("site-b", report).code(), absl::StatusCode::kInvalidArgument);
  report.set_kind("final");
  ASSERT_TRUE(manager_->ReportMetrics("site-b", report).ok());
  EXPECT_EQ(Run(*run).state, federation::RunState::kCompleted);
  auto full = manager_->GetRunReport(*run);
  ASSERT_TRUE(full.ok());
  ASSERT_EQ(full->sites_size(), 2);
  EXPECT_EQ(full->sites(0).metrics_size(), 1);

  // Second run: the evaluation ends at its deadline with one report missing.
  auto second = manager_->StartRun(config);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(Run(*second).base_model_digest, evaluating.final_model_digest);  // Latest global by default.
  ASSERT_TRUE(Upload("site-a", *second, 1, Delta(0.01)).ok());
  ASSERT_TRUE(Upload("site-b", *second, 1, Delta(0.01)).ok());
  clock_.Advance(absl::Seconds(61));
  ASSERT_TRUE(manager_->Tick().ok());
  EXPECT_EQ(Run(*second).state, federation::RunState::kCompleted);
  EXPECT_THAT(Run(*second).message, HasSubstr("deadline passed"));
}

TEST_F(RoundManagerTest, AbortStopsTasksAndUploads) {
  auto run = manager_->StartRun(Config(3, 1, {"site-a"}));
  ASSERT_TRUE(run.ok());
  v1::HeartbeatRequest beat;
  beat.set_run_id(*run);
  beat.set_round(1);
  beat.set_state("training");
  EXPECT_FALSE(manager_->Heartbeat("site-a", beat)->cancel());
  auto status = manager_->AbortRun("", "operator test");
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->state(), "aborted");
  EXPECT_EQ(status->rounds(0).state(), "aborted");
  EXPECT_EQ(status->run_state(), v1::RUN_STATE_ABORTED);
  EXPECT_EQ(status->rounds(0).round_state(), v1::ROUND_STATE_ABORTED);
  EXPECT_EQ(manager_->NextTask("site-a")->kind(), v1::Task::NONE);
  auto hb = manager_->Heartbeat("site-a", beat);
  EXPECT_TRUE(hb->cancel());
  EXPECT_TRUE(hb->run_ended());
  auto after = manager_->NextTask("site-a");
  ASSERT_EQ(after->ended_runs_size(), 1);
  EXPECT_EQ(after->ended_runs(0), *run);
  EXPECT_EQ(manager_->NextTask("site-c")->ended_runs_size(), 0);  // Not selected for it.
  EXPECT_THAT(hb->reason(), HasSubstr("aborted"));
  EXPECT_EQ(Upload("site-a", *run, 1, Delta(0.01)).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(manager_->AbortRun(*run, "").status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(RoundManagerTest, StartRunValidates) {
  v1::RunConfig config = Config(0, 1, {"site-a"});
  auto bad = manager_->StartRun(config);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("rounds"));
  config = Config(1, 1, {"site-a"});
  config.set_aggregation("fedmagic");
  EXPECT_THAT(manager_->StartRun(config).status().message(), HasSubstr("aggregation"));
  auto unknown = manager_->StartRun(Config(1, 1, {"site-x"}));
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(unknown.status().message(), HasSubstr("unknown site 'site-x'"));
  ASSERT_TRUE(store_->SetSiteStatus("site-c", federation::SiteStatus::kPending, false, 0).ok());
  auto pending = manager_->StartRun(Config(1, 1, {"site-c"}));
  EXPECT_EQ(pending.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(pending.status().message(), HasSubstr("fedtune sites approve site-c"));
  config = Config(1, 1, {});
  config.set_base_model("0123");
  EXPECT_THAT(manager_->StartRun(config).status().message(), HasSubstr("base_model"));
  config.set_base_model(initial_digest_.substr(0, 10));
  auto first = manager_->StartRun(config);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(Run(*first).sites, (std::vector<std::string>{"site-a", "site-b"}));  // Every approved site.
  auto second = manager_->StartRun(Config(1, 1, {"site-a"}));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().message(), HasSubstr("only one run at a time"));
}

TEST_F(RoundManagerTest, UploadRefusalsAndIdempotency) {
  v1::RunConfig config = Config(2, 2, {"site-a", "site-b"});
  config.set_max_update_norm(1.0);
  auto run = manager_->StartRun(config);
  ASSERT_TRUE(run.ok());
  const std::string payload = Delta(0.0001);
  ASSERT_TRUE(Upload("site-a", *run, 1, payload).ok());
  auto again = Upload("site-a", *run, 1, payload);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->status(), "accepted");
  EXPECT_EQ(again->upload_status(), v1::UPLOAD_STATUS_ACCEPTED);
  EXPECT_EQ(Upload("site-a", *run, 1, Delta(0.0002)).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(Upload("site-c", *run, 1, payload).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(Upload("site-b", *run, 2, payload).status().code(), absl::StatusCode::kFailedPrecondition);
  auto nan = Upload("site-b", *run, 1, testing::NanPayload(global_));
  EXPECT_EQ(nan.status().code(), absl::StatusCode::kInvalidArgument) << nan.status();
  auto shape = Upload("site-b", *run, 1, testing::WrongShapePayload(global_));
  EXPECT_EQ(shape.status().code(), absl::StatusCode::kInvalidArgument) << shape.status();
  auto big = Upload("site-b", *run, 1, Delta(0.5));
  EXPECT_EQ(big.status().code(), absl::StatusCode::kFailedPrecondition) << big.status();
  EXPECT_THAT(big.status().message(), HasSubstr("norm"));
  auto zero = Upload("site-b", *run, 1, payload, 0);
  EXPECT_EQ(zero.status().code(), absl::StatusCode::kInvalidArgument);
  auto refused = store_->ListUpdates(*run, 1, 1, "site-b", federation::UploadStatus::kRefused);
  ASSERT_TRUE(refused.ok());
  EXPECT_EQ(refused->size(), 4u);
  EXPECT_EQ(Run(*run).current_round, 1);  // Refused updates do not count.
}

TEST_F(RoundManagerTest, PartialUploadsAreLimitedPerSiteAndRoundAndSuperseded) {
  const std::string a1 = Delta(0.01), a2 = Delta(0.02), a3 = Delta(0.03), b1 = Delta(0.04), b2 = Delta(0.05);
  const int64_t size = static_cast<int64_t>(a1.size());
  options_.max_upload_bytes = size;
  options_.max_open_uploads_per_site = 2;
  options_.max_spool_bytes_per_site = 2 * size;
  options_.max_spool_bytes_per_round = 2 * size + size / 2;
  Restart();
  auto run = manager_->StartRun(Config(1, 2, {"site-a", "site-b"}));
  ASSERT_TRUE(run.ok());
  auto first = manager_->BeginUpload("site-a", Header(*run, 1, a1));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->claimed);
  Receive(*first, a1, 100);
  // The same payload while its stream is still receiving: ABORTED, nothing counted or removed.
  EXPECT_EQ(manager_->BeginUpload("site-a", Header(*run, 1, a1, 100)).status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(std::filesystem::file_size(first->spool_path), 100u);
  // A second payload supersedes the first, which goes when its stream ends.
  auto second = manager_->BeginUpload("site-a", Header(*run, 1, a2));
  ASSERT_TRUE(second.ok()) << second.status();
  Receive(*second, a2, 100);
  // A third while both streams receive: over max_open_uploads_per_site; refused and recorded.
  auto third = manager_->BeginUpload("site-a", Header(*run, 1, a3));
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.status().message(), HasSubstr("max_open_uploads_per_site 2"));
  EXPECT_THAT(third.status().message(), HasSubstr("site site-a run " + *run + " round 1"));
  EXPECT_EQ(Refused(*run, "site-a"), 1u);
  EXPECT_EQ(manager_->EndUpload("site-a", Header(*run, 1, a1), *first, absl::CancelledError("gone")).code(),
            absl::StatusCode::kCancelled);
  EXPECT_FALSE(std::filesystem::exists(first->spool_path));  // Superseded.
  // The second stream breaks: its bytes stay, and it resumes.
  EXPECT_EQ(manager_->EndUpload("site-a", Header(*run, 1, a2), *second, absl::CancelledError("gone")).code(),
            absl::StatusCode::kCancelled);
  EXPECT_EQ(std::filesystem::file_size(second->spool_path), 100u);
  auto resumed = manager_->BeginUpload("site-a", Header(*run, 1, a2, 100));
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->spool_path, second->spool_path);
  // site-b: one payload fits (2 x size of 2.5 x size), a second would exceed the round's bytes.
  auto other = manager_->BeginUpload("site-b", Header(*run, 1, b1));
  ASSERT_TRUE(other.ok()) << other.status();
  auto over = manager_->BeginUpload("site-b", Header(*run, 1, b2));
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(over.status().message(), HasSubstr("max_spool_bytes_per_round"));
  EXPECT_FALSE(std::filesystem::exists(SpoolFile(*run, "site-b", b2)));
  // A stream that ends holding nothing leaves no file.
  EXPECT_EQ(manager_->EndUpload("site-b", Header(*run, 1, b1), *other, absl::CancelledError("nothing sent")).code(),
            absl::StatusCode::kCancelled);
  EXPECT_FALSE(std::filesystem::exists(other->spool_path));
  // Accepting site-a's payload frees its bytes: site-b's second payload fits now.
  Receive(*resumed, a2, a2.size());
  ASSERT_TRUE(manager_->AcceptUpload("site-a", Header(*run, 1, a2, 100), *resumed, io::Sha256Hex(a2)).ok());
  auto later = manager_->BeginUpload("site-b", Header(*run, 1, b2));
  EXPECT_TRUE(later.ok()) << later.status();
}

TEST_F(RoundManagerTest, PerSiteSpoolBytesAreLimitedAndAResumeCountsOnce) {
  const std::string a1 = Delta(0.01), a2 = Delta(0.02);
  const int64_t size = static_cast<int64_t>(a1.size());
  options_.max_upload_bytes = size;
  options_.max_open_uploads_per_site = 5;
  options_.max_spool_bytes_per_site = size + size / 2;
  Restart();
  auto run = manager_->StartRun(Config(1, 1, {"site-a"}));
  ASSERT_TRUE(run.ok());
  auto first = manager_->BeginUpload("site-a", Header(*run, 1, a1));
  ASSERT_TRUE(first.ok());
  Receive(*first, a1, 100);
  EXPECT_EQ(manager_->EndUpload("site-a", Header(*run, 1, a1), *first, absl::CancelledError("gone")).code(),
            absl::StatusCode::kCancelled);
  // Resumed: its earlier bytes are not counted besides the new claim (2 x size would exceed 1.5 x size).
  auto resumed = manager_->BeginUpload("site-a", Header(*run, 1, a1, 100));
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  auto second = manager_->BeginUpload("site-a", Header(*run, 1, a2));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(second.status().message(), HasSubstr("max_spool_bytes_per_site"));
  // Header checks come first and name the field.
  v1::UploadHeader big = Header(*run, 1, a2);
  big.set_total_bytes(size + 1);
  EXPECT_THAT(manager_->BeginUpload("site-a", big).status().message(), HasSubstr("max_upload_bytes"));
  v1::UploadHeader nan = Header(*run, 1, a2);
  nan.set_validation_loss(std::nan(""));
  EXPECT_EQ(manager_->BeginUpload("site-a", nan).status().code(), absl::StatusCode::kInvalidArgument);
  v1::UploadHeader offset = Header(*run, 1, a2, size + 1);
  EXPECT_THAT(manager_->BeginUpload("site-a", offset).status().message(), HasSubstr("offset"));
  v1::UploadHeader newer = Header(*run, 1, a2);  // An encoding this build does not know.
  newer.set_delta_encoding(static_cast<v1::NamedTensor::Encoding>(42));
  absl::Status unknown_encoding = manager_->BeginUpload("site-a", newer).status();
  EXPECT_EQ(unknown_encoding.code(), absl::StatusCode::kInvalidArgument) << unknown_encoding;
  EXPECT_THAT(unknown_encoding.message(), HasSubstr("UploadHeader.delta_encoding"));
  Receive(*resumed, a1, a1.size());
  ASSERT_TRUE(manager_->AcceptUpload("site-a", Header(*run, 1, a1, 100), *resumed, io::Sha256Hex(a1)).ok());
}

TEST_F(RoundManagerTest, ProtocolBreachesAreRefusedAndRecorded) {
  auto run = manager_->StartRun(Config(1, 2, {"site-a", "site-b"}));
  ASSERT_TRUE(run.ok());
  const std::string payload = Delta(0.01);
  auto target = manager_->BeginUpload("site-a", Header(*run, 1, payload));
  ASSERT_TRUE(target.ok());
  Receive(*target, payload, 500);
  absl::Status why = absl::InvalidArgumentError("upload: more than the announced total_bytes were sent");
  EXPECT_EQ(manager_->EndUpload("site-a", Header(*run, 1, payload), *target, why), why);
  EXPECT_FALSE(std::filesystem::exists(target->spool_path));
  EXPECT_EQ(Refused(*run, "site-a"), 1u);
}

TEST_F(RoundManagerTest, AnUploadWhoseRoundClosedMeanwhileIsRefusedAndRecorded) {
  auto run = manager_->StartRun(Config(2, 2, {"site-a", "site-b", "site-c"}));
  ASSERT_TRUE(run.ok());
  const std::string payload = Delta(0.01);
  auto target = manager_->BeginUpload("site-a", Header(*run, 1, payload));
  ASSERT_TRUE(target.ok());
  ASSERT_TRUE(Upload("site-b", *run, 1, Delta(0.02)).ok());
  ASSERT_TRUE(Upload("site-c", *run, 1, Delta(0.03)).ok());
  clock_.Advance(absl::Seconds(60));
  ASSERT_TRUE(manager_->Tick().ok());
  ASSERT_EQ(Run(*run).current_round, 2);
  Receive(*target, payload, payload.size());  // The stream still wrote the whole payload (a new file here).
  auto late = manager_->AcceptUpload("site-a", Header(*run, 1, payload), *target, io::Sha256Hex(payload));
  EXPECT_EQ(late.status().code(), absl::StatusCode::kFailedPrecondition) << late.status();
  EXPECT_THAT(late.status().message(), HasSubstr("round 1 is not open"));
  EXPECT_FALSE(std::filesystem::exists(target->spool_path));
  EXPECT_EQ(Refused(*run, "site-a"), 1u);
  // The claim ended with it: the next try is told the round is closed, not that a stream holds it.
  EXPECT_EQ(manager_->BeginUpload("site-a", Header(*run, 1, payload)).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(RoundManagerTest, DecodeRefusalsNameTheUploadNotTheSpoolFile) {
  auto run = manager_->StartRun(Config(1, 2, {"site-a", "site-b"}));
  ASSERT_TRUE(run.ok());
  auto shape = Upload("site-a", *run, 1, testing::WrongShapePayload(global_));
  EXPECT_EQ(shape.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(shape.status().message(), HasSubstr("update from site-a for run " + *run + " round 1"));
  EXPECT_THAT(shape.status().message(), ::testing::Not(HasSubstr(tmp_.path())));
  auto garbage = Upload("site-a", *run, 1, "not a tensor bundle at all");
  EXPECT_EQ(garbage.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(garbage.status().message(), ::testing::Not(HasSubstr(tmp_.path())));
}

TEST_F(RoundManagerTest, RestartRebuildsThePartialUploadsSoLimitsStillHold) {
  const std::string a1 = Delta(0.01), a2 = Delta(0.02);
  options_.max_open_uploads_per_site = 1;
  Restart();
  auto run = manager_->StartRun(Config(1, 2, {"site-a", "site-b"}));
  ASSERT_TRUE(run.ok());
  ASSERT_TRUE(Upload("site-b", *run, 1, Delta(0.05)).ok());  // An accepted update is never a partial upload.
  auto first = manager_->BeginUpload("site-a", Header(*run, 1, a1));
  ASSERT_TRUE(first.ok());
  Receive(*first, a1, 700);
  EXPECT_EQ(manager_->EndUpload("site-a", Header(*run, 1, a1), *first, absl::CancelledError("gone")).code(),
            absl::StatusCode::kCancelled);
  Restart();
  EXPECT_EQ(std::filesystem::file_size(first->spool_path), 700u);  // Still resumable.
  EXPECT_EQ(SpoolFileCount(*run), 2u);
  // Another payload of site-a supersedes it (max_open_uploads_per_site 1 holds); site-b's accepted file stays.
  auto second = manager_->BeginUpload("site-a", Header(*run, 1, a2));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_FALSE(std::filesystem::exists(first->spool_path));
  Receive(*second, a2, a2.size());
  ASSERT_TRUE(manager_->AcceptUpload("site-a", Header(*run, 1, a2), *second, io::Sha256Hex(a2)).ok());
  EXPECT_EQ(Run(*run).state, federation::RunState::kCompleted);
}

TEST_F(RoundManagerTest, RoundsFromSitesAreRangeChecked) {
  auto run = manager_->StartRun(Config(2, 2, {"site-a", "site-b"}));
  ASSERT_TRUE(run.ok());
  const std::string payload = Delta(0.01);
  ASSERT_TRUE(Upload("site-a", *run, 1, payload).ok());
  for (int round : {-1, 0}) {
    auto target = manager_->PrepareUpload("site-a", *run, round, io::Sha256Hex(payload));
    EXPECT_EQ(target.status().code(), absl::StatusCode::kInvalidArgument) << round;
    EXPECT_THAT(target.status().message(), HasSubstr("round"));
  }
  EXPECT_EQ(manager_->PrepareUpload("site-a", *run, 3, io::Sha256Hex(payload)).status().code(),
            absl::StatusCode::kOutOfRange);
  v1::HeartbeatRequest beat;
  beat.set_run_id(*run);
  beat.set_round(-1);
  EXPECT_EQ(manager_->Heartbeat("site-a", beat).status().code(), absl::StatusCode::kInvalidArgument);
  beat.set_round(3);
  EXPECT_EQ(manager_->Heartbeat("site-a", beat).status().code(), absl::StatusCode::kOutOfRange);
  v1::MetricsReport report;
  report.set_run_id(*run);
  report.set_kind("round");
  report.set_round(0);
  EXPECT_EQ(manager_->ReportMetrics("site-a", report).code(), absl::StatusCode::kInvalidArgument);
  report.set_round(3);
  EXPECT_EQ(manager_->ReportMetrics("site-a", report).code(), absl::StatusCode::kOutOfRange);
  report.set_round(1);
  EXPECT_TRUE(manager_->ReportMetrics("site-a", report).ok());
}

TEST_F(RoundManagerTest, ModelAccessIsScopedToTheRunsOfASite) {
  auto run = manager_->StartRun(Config(1, 2, {"site-a", "site-b"}));
  ASSERT_TRUE(run.ok());
  EXPECT_TRUE(manager_->CheckModelAccess("site-a", initial_digest_).ok());
  EXPECT_EQ(manager_->CheckModelAccess("site-c", initial_digest_).code(), absl::StatusCode::kPermissionDenied);
  ASSERT_TRUE(Upload("site-a", *run, 1, Delta(0.01)).ok());
  ASSERT_TRUE(Upload("site-b", *run, 1, Delta(0.02)).ok());
  const std::string result = Run(*run).final_model_digest;
  ASSERT_FALSE(result.empty());
  EXPECT_TRUE(manager_->CheckModelAccess("site-b", result).ok());
  absl::Status denied = manager_->CheckModelAccess("site-c", result);
  EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(denied.message(), HasSubstr("site-c"));
  EXPECT_EQ(manager_->CheckModelAccess("site-a", std::string(64, 'e')).code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(RoundManagerTest, RestartKeepsAcceptedUpdatesAndFedAdamState) {
  // The same two-round FedAdam run twice: straight through, and with a restart after each accepted update. The
  // final model must be bit-identical.
  auto run_once = [&](bool restart) -> std::string {
    v1::RunConfig config = Config(2, 2, {"site-a", "site-b"});
    config.set_aggregation("fedadam");
    config.set_server_learning_rate(0.1);
    config.set_base_model(initial_digest_);
    auto run = manager_->StartRun(config);
    EXPECT_TRUE(run.ok()) << run.status();
    for (int round = 1; round <= 2; ++round) {
      EXPECT_TRUE(Upload("site-a", *run, round, Delta(0.01 * round), 10).ok());
      if (restart) Restart();
      EXPECT_EQ(manager_->NextTask("site-a")->kind(), v1::Task::NONE);  // Its update survived.
      EXPECT_EQ(manager_->NextTask("site-b")->kind(), v1::Task::TRAIN);
      EXPECT_TRUE(Upload("site-b", *run, round, Delta(-0.02), 30).ok());
      if (restart) Restart();
    }
    RunRecord done = Run(*run);
    EXPECT_EQ(done.state, federation::RunState::kCompleted);
    EXPECT_EQ(done.fedadam_rounds, 2);
    return done.final_model_digest;
  };
  const std::string straight = run_once(false);
  const fl::TensorMap straight_model = LoadTensors(blobs_->PathOf(straight));
  const std::string restarted = run_once(true);
  const fl::TensorMap restarted_model = LoadTensors(blobs_->PathOf(restarted));
  ASSERT_EQ(straight_model.size(), restarted_model.size());
  for (const auto& [name, t] : straight_model) {
    EXPECT_TRUE(at::equal(t, restarted_model.at(name))) << name;
  }
}

TEST_F(RoundManagerTest, AFailedCloseRestoresFedAdamsStateFromItsFile) {
  // A two-round FedAdam run, straight through and with round 2's close failing once (its state file cannot be
  // written) and retried at the next tick: the same final model, so the server step was not applied twice.
  auto run_once = [&](bool fail) -> fl::TensorMap {
    v1::RunConfig config = Config(2, 2, {"site-a", "site-b"});
    config.set_aggregation("fedadam");
    config.set_server_learning_rate(0.1);
    config.set_base_model(initial_digest_);
    auto run = manager_->StartRun(config);
    EXPECT_TRUE(run.ok()) << run.status();
    for (int round = 1; round <= 2; ++round) {
      EXPECT_TRUE(Upload("site-a", *run, round, Delta(0.01 * round), 10).ok());
      const std::string adam_dir = tmp_.Join("fedadam");
      if (fail && round == 2) {
        std::filesystem::rename(adam_dir, adam_dir + ".away");
        EXPECT_TRUE(io::WriteFileAtomically(adam_dir, "not a directory").ok());
      }
      EXPECT_TRUE(Upload("site-b", *run, round, Delta(-0.02), 30).ok());
      if (fail && round == 2) {
        EXPECT_EQ(Run(*run).current_round, 2);  // The close failed: still open.
        std::filesystem::remove(adam_dir);
        std::filesystem::rename(adam_dir + ".away", adam_dir);
        EXPECT_TRUE(manager_->Tick().ok());
      }
    }
    RunRecord done = Run(*run);
    EXPECT_EQ(done.state, federation::RunState::kCompleted);
    EXPECT_EQ(done.fedadam_rounds, 2);
    return LoadTensors(blobs_->PathOf(done.final_model_digest));
  };
  const fl::TensorMap straight = run_once(false);
  const fl::TensorMap retried = run_once(true);
  ASSERT_EQ(straight.size(), retried.size());
  for (const auto& [name, t] : straight) EXPECT_TRUE(at::equal(t, retried.at(name))) << name;
}

TEST_F(RoundManagerTest, RestartKeepsPartialUploadsOfTheOpenRoundOnly) {
  auto run = manager_->StartRun(Config(2, 1, {"site-a", "site-b"}));
  ASSERT_TRUE(run.ok());
  const std::string payload = Delta(0.01);
  auto target = manager_->PrepareUpload("site-a", *run, 1, io::Sha256Hex(payload));
  ASSERT_TRUE(target.ok());
  ASSERT_TRUE(io::WriteFileAtomically(target->spool_path, payload.substr(0, 1000)).ok());
  const std::string stale = tmp_.Join("spool/" + *run + "/r0-a1-site-a-x.upload");
  ASSERT_TRUE(io::WriteFileAtomically(stale, "left by a crash").ok());
  Restart();
  EXPECT_FALSE(std::filesystem::exists(stale));
  EXPECT_EQ(std::filesystem::file_size(target->spool_path), 1000u);
}

TEST_F(RoundManagerTest, RestartFailsLoudlyWhenAnAcceptedUpdateIsMissing) {
  auto run = manager_->StartRun(Config(1, 2, {"site-a", "site-b"}));
  ASSERT_TRUE(run.ok());
  ASSERT_TRUE(Upload("site-a", *run, 1, Delta(0.01)).ok());
  manager_.reset();
  std::filesystem::remove_all(tmp_.Join("spool/" + *run));
  RoundManagerOptions options;
  options.state_dir = tmp_.path();
  options.clock = clock_.AsFunction();
  auto manager = RoundManager::Create(store_.get(), blobs_.get(), options);
  EXPECT_EQ(manager.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(manager.status().message(), HasSubstr("site-a"));
}

TEST_F(RoundManagerTest, StatusShowsLostSitesAndUpdates) {
  auto run = manager_->StartRun(Config(1, 1, {"site-a", "site-b"}));
  ASSERT_TRUE(run.ok());
  v1::HeartbeatRequest beat;
  beat.set_run_id(*run);
  beat.set_round(1);
  beat.set_state("training epoch 1/1");
  beat.set_progress(0.5);
  ASSERT_TRUE(manager_->Heartbeat("site-a", beat).ok());
  ASSERT_TRUE(manager_->Heartbeat("site-b", beat).ok());
  clock_.Advance(absl::Seconds(61));
  ASSERT_TRUE(manager_->Heartbeat("site-a", beat).ok());
  auto status = manager_->GetRunStatus("");
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->run_id(), *run);
  ASSERT_EQ(status->sites_size(), 2);
  EXPECT_EQ(status->sites(0).state(), "training epoch 1/1");
  EXPECT_DOUBLE_EQ(status->sites(0).progress(), 0.5);
  EXPECT_EQ(status->sites(1).state(), "lost");
  ASSERT_TRUE(Upload("site-a", *run, 1, Delta(0.01)).ok());
  status = manager_->GetRunStatus(*run);
  ASSERT_EQ(status->rounds_size(), 1);
  ASSERT_EQ(status->rounds(0).updates_size(), 1);
  EXPECT_EQ(status->rounds(0).updates(0).site_id(), "site-a");
  EXPECT_EQ(status->rounds(0).updates(0).status(), "accepted");
  EXPECT_EQ(status->rounds(0).updates(0).upload_status(), v1::UPLOAD_STATUS_ACCEPTED);
}

// ---- Memory: deltas validated and added tensor by tensor, robust aggregators spilled to disk.

// A delta of small normal values (integer tensors 0), from `seed`.
fl::TensorMap RandomDelta(const fl::TensorMap& global, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  fl::TensorMap delta;
  for (const auto& [name, t] : global) {
    delta[name] = fl::IsFloating(t) ? at::randn(t.sizes(), gen, t.options()).mul(0.01) : at::zeros_like(t);
  }
  return delta;
}

// The name of a floating tensor in the middle of the bundle (by name order, as EncodeTensors writes them).
std::string MiddleTensor(const fl::TensorMap& global) {
  std::vector<std::string> names;
  for (const auto& [name, t] : global) {
    if (fl::IsFloating(t) && t.dim() > 1) names.push_back(name);
  }
  return names.at(names.size() / 2);
}

// `delta`'s payload with the tensor `name` edited by `edit` after encoding (EncodeTensors refuses NaN).
std::string EditedPayload(const fl::TensorMap& delta, const std::string& name,
                          const std::function<void(v1::NamedTensor&)>& edit) {
  absl::StatusOr<fl::EncodedBundle> encoded = fl::EncodeTensors(delta);
  EXPECT_TRUE(encoded.ok());
  for (v1::NamedTensor& t : *encoded->bundle.mutable_tensors()) {
    if (t.name() == name) edit(t);
  }
  return encoded->bundle.SerializeAsString();
}

// The model a one-round run must end with: the in-memory aggregator (no spill) over `deltas`, applied to `global`.
fl::TensorMap Expected(const fl::TensorMap& global, const fl::AggregatorOptions& options,
                       const std::vector<std::pair<fl::TensorMap, int64_t>>& deltas) {
  std::unique_ptr<fl::Aggregator> agg = *fl::MakeAggregator(options);
  for (const auto& [d, samples] : deltas) EXPECT_TRUE(agg->Add(d, samples).ok());
  absl::StatusOr<fl::TensorMap> result = agg->Result();
  EXPECT_TRUE(result.ok()) << result.status();
  return *fl::ApplyDelta(global, *result);
}

void ExpectSameModel(const fl::TensorMap& expected, const fl::TensorMap& actual, const std::string& what) {
  ASSERT_EQ(expected.size(), actual.size()) << what;
  for (const auto& [name, t] : expected) EXPECT_TRUE(at::equal(t, actual.at(name))) << what << " " << name;
}

size_t FilesIn(const std::string& dir) {
  size_t n = 0;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator(dir, ec); !ec && it != std::filesystem::directory_iterator();
       it.increment(ec)) {
    ++n;
  }
  return n;
}

TEST_F(RoundManagerTest, ABadTensorInTheMiddleIsRefusedAndLeavesTheRoundAsBefore) {
  const std::string middle = MiddleTensor(global_);
  const fl::TensorMap da = RandomDelta(global_, 1), db = RandomDelta(global_, 2), dc = RandomDelta(global_, 3);
  const double bound = 1.5 * std::max({fl::L2Norm(da), fl::L2Norm(db), fl::L2Norm(dc)});
  fl::TensorMap huge = db;
  huge[middle] = huge[middle].mul(1000.0);  // Finite, but over the bound.
  const std::string nan_payload = EditedPayload(db, middle, [](v1::NamedTensor& t) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    std::memcpy(t.mutable_data()->data() + 4 * (t.data().size() / 8), &nan, 4);
  });
  const std::string shape_payload = EditedPayload(db, middle, [](v1::NamedTensor& t) {
    const int64_t first = t.shape(0);
    t.set_shape(0, t.shape(1));
    t.set_shape(1, first);
    if (t.shape(0) == t.shape(1)) t.set_shape(0, t.shape(0) + 1);
  });

  for (const std::string method : {"fedavg", "trimmed_mean", "median"}) {
    v1::RunConfig config = Config(1, 3, {"site-a", "site-b", "site-c"});
    config.set_aggregation(method);
    config.set_trim_fraction(0.34);
    config.set_clip_norm(fl::L2Norm(db) * 0.9);  // Clips db: the norm from validation must be the right one.
    config.set_max_update_norm(bound);
    config.set_base_model(initial_digest_);
    auto run = manager_->StartRun(config);
    ASSERT_TRUE(run.ok()) << run.status();
    ASSERT_TRUE(Upload("site-a", *run, 1, EncodeDelta(da), 10).ok());
    auto refused = Upload("site-b", *run, 1, nan_payload, 20);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << method;
    EXPECT_THAT(refused.status().message(), HasSubstr(middle));
    EXPECT_THAT(refused.status().message(), HasSubstr("non-finite"));
    refused = Upload("site-b", *run, 1, shape_payload, 20);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << method;
    EXPECT_THAT(refused.status().message(), HasSubstr(middle));
    refused = Upload("site-b", *run, 1, EncodeDelta(huge), 20);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << method;
    EXPECT_THAT(refused.status().message(), HasSubstr("exceeds the bound"));
    EXPECT_EQ(Refused(*run, "site-b"), 3u);
    ASSERT_TRUE(Upload("site-b", *run, 1, EncodeDelta(db), 20).ok());
    ASSERT_TRUE(Upload("site-c", *run, 1, EncodeDelta(dc), 30).ok());
    RunRecord done = Run(*run);
    ASSERT_EQ(done.state, federation::RunState::kCompleted) << method;

    // Exactly the model of the three good updates, aggregated in memory.
    fl::AggregatorOptions options;
    options.method = *fl::ParseAggregationMethod(method);
    options.trim_fraction = config.trim_fraction();
    options.clip_norm = config.clip_norm();
    ExpectSameModel(Expected(global_, options, {{da, 10}, {db, 20}, {dc, 30}}),
                    LoadTensors(blobs_->PathOf(done.final_model_digest)), method);
  }
}

TEST_F(RoundManagerTest, RobustAggregatorsSpillToDiskRebuildItOnRestartAndRemoveItWhenTheRoundEnds) {
  const std::string spill = tmp_.Join("spill");
  int64_t floating_bytes = 0;
  for (const auto& [name, t] : global_) {
    if (fl::IsFloating(t)) floating_bytes += t.numel() * 4;
  }
  const fl::TensorMap da = RandomDelta(global_, 11), db = RandomDelta(global_, 12), dc = RandomDelta(global_, 13);
  for (const std::string method : {"trimmed_mean", "median"}) {
    v1::RunConfig config = Config(1, 3, {"site-a", "site-b", "site-c"});
    config.set_aggregation(method);
    config.set_trim_fraction(0.34);
    config.set_base_model(initial_digest_);
    auto run = manager_->StartRun(config);
    ASSERT_TRUE(run.ok()) << run.status();
    EXPECT_EQ(FilesIn(spill), 1u);
    ASSERT_TRUE(Upload("site-a", *run, 1, EncodeDelta(da)).ok());
    ASSERT_TRUE(Upload("site-b", *run, 1, EncodeDelta(db)).ok());
    ASSERT_EQ(FilesIn(spill), 1u);
    const std::string file = std::filesystem::directory_iterator(spill)->path().string();
    EXPECT_EQ(std::filesystem::file_size(file), static_cast<uintmax_t>(2 * floating_bytes));
    // A stale file of a crash goes at start-up; the open attempt's is rebuilt from the spool files.
    ASSERT_TRUE(io::WriteFileAtomically(tmp_.Join("spill/run-0000-r1-a1-0.spill"), "left by a crash").ok());
    Restart();
    ASSERT_EQ(FilesIn(spill), 1u);
    const std::string rebuilt = std::filesystem::directory_iterator(spill)->path().string();
    EXPECT_EQ(std::filesystem::file_size(rebuilt), static_cast<uintmax_t>(2 * floating_bytes));
    ASSERT_TRUE(Upload("site-c", *run, 1, EncodeDelta(dc)).ok());
    RunRecord done = Run(*run);
    ASSERT_EQ(done.state, federation::RunState::kCompleted) << method;
    EXPECT_EQ(FilesIn(spill), 0u) << method;  // Removed with the round's aggregator.

    fl::AggregatorOptions options;
    options.method = *fl::ParseAggregationMethod(method);
    options.trim_fraction = config.trim_fraction();
    ExpectSameModel(Expected(global_, options, {{da, 10}, {db, 10}, {dc, 10}}),
                    LoadTensors(blobs_->PathOf(done.final_model_digest)), method);
  }
  // A failed attempt and an abort remove it too.
  v1::RunConfig config = Config(1, 2, {"site-a", "site-b"});
  config.set_aggregation("median");
  config.set_max_round_attempts(2);
  auto run = manager_->StartRun(config);
  ASSERT_TRUE(run.ok());
  ASSERT_TRUE(Upload("site-a", *run, 1, EncodeDelta(da)).ok());
  clock_.Advance(absl::Seconds(61));
  ASSERT_TRUE(manager_->Tick().ok());
  ASSERT_EQ(FilesIn(spill), 1u);  // Attempt 2's, empty.
  EXPECT_EQ(std::filesystem::file_size(std::filesystem::directory_iterator(spill)->path()), 0u);
  ASSERT_TRUE(manager_->AbortRun(*run, "test").ok());
  EXPECT_EQ(FilesIn(spill), 0u);
}

}  // namespace
}  // namespace fedtune::coordinator
