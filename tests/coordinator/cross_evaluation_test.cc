// RoundManager's cross-site evaluation (round_manager.h): shared adapted models taken in while the run evaluates,
// the cross-evaluation stage after the final evaluation, its deadline and its recovery after a restart. Without
// gRPC, with a fake clock and tiny models.
#include <filesystem>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/federation/states.h"
#include "common/fl/personalization.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "common/model/checkpoint.h"
#include "coordinator/round_manager.h"
#include "coordinator/spool_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "site_agent/commands/model_init.h"
#include "tests/coordinator/coordinator_test_util.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::coordinator {
namespace {

using ::fedtune::coordinator::testing::ConstantDelta;
using ::fedtune::coordinator::testing::EncodeDelta;
using ::fedtune::coordinator::testing::FakeClock;
using ::testing::HasSubstr;

class CrossEvaluationTest : public ::testing::Test {
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
    for (const char* site : {"site-a", "site-b", "site-c", "site-d"}) {
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
    options.max_upload_bytes = 64 << 20;
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

  // A run of one round with final and cross-site evaluation over site-a, site-b and site-c, now evaluating.
  std::string EvaluatingRun(bool cross_site = true,
                            v1::RunConfig::Personalization personalization = v1::RunConfig::NONE) {
    v1::RunConfig config;
    config.set_name("cross");
    config.set_rounds(1);
    config.set_min_sites(3);
    for (const char* s : {"site-a", "site-b", "site-c"}) config.add_sites(s);
    config.set_round_deadline_seconds(60);
    config.set_final_evaluation(true);
    config.set_cross_site_evaluation(cross_site);
    config.set_personalization(personalization);
    absl::StatusOr<std::string> run = manager_->StartRun(config);
    EXPECT_TRUE(run.ok()) << run.status();
    // Under FEDBN/SILOBN a delta carries the shared tensors only.
    fl::TensorMap shared = global_;
    if (personalization != v1::RunConfig::NONE) {
      absl::StatusOr<model::Checkpoint> checkpoint = model::LoadCheckpoint(tmp_.Join("initial.ckpt"));
      EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
      absl::StatusOr<std::set<std::string>> local =
          fl::LocalTensorNames(*checkpoint, federation::ToProto(personalization));
      EXPECT_TRUE(local.ok()) << local.status();
      shared = fl::DropTensors(global_, *local);
    }
    for (const char* s : {"site-a", "site-b", "site-c"}) {
      const absl::StatusOr<v1::UploadResponse> accepted =
          testing::UploadWhole(*manager_, s, *run, 1, EncodeDelta(ConstantDelta(shared, 0.01)));
      EXPECT_TRUE(accepted.ok()) << accepted.status();
    }
    EXPECT_EQ(Run(*run).state, federation::RunState::kEvaluating);
    return *run;
  }

  // An adapted model: the tiny architecture with other weights (seed), as a checkpoint file's bytes.
  std::string AdaptedModel(uint64_t seed) {
    const std::string path = tmp_.Join(absl::StrCat("adapted-", seed, ".ckpt"));
    testing::WriteTinyModel(path, seed);
    return io::ReadFile(path).value();
  }

  // The whole upload of an adapted model as a stream would make it: BeginSharedModelUpload, the bytes into the
  // spool file, AcceptSharedModel.
  absl::StatusOr<v1::UploadResponse> Share(const std::string& site, const std::string& run,
                                           const std::string& payload) {
    v1::UploadHeader header;
    header.set_run_id(run);
    header.set_round(0);
    header.set_kind(v1::UPLOAD_KIND_ADAPTED_MODEL);
    header.set_total_bytes(static_cast<int64_t>(payload.size()));
    header.set_sha256(io::Sha256Hex(payload));
    absl::StatusOr<UploadTarget> target = manager_->BeginSharedModelUpload(site, header);
    if (!target.ok()) return target.status();
    if (target->accepted) {
      v1::UploadResponse response;
      response.set_message("accepted before");
      federation::SetStatus(federation::UploadStatus::kAccepted, &response);
      return response;
    }
    EXPECT_TRUE(io::WriteFileAtomically(target->spool_path, payload).ok());
    return manager_->AcceptSharedModel(site, header, *target, io::Sha256Hex(payload));
  }

  absl::Status Report(const std::string& site, const std::string& run, const std::string& kind, int round = 0) {
    v1::MetricsReport report;
    report.set_run_id(run);
    report.set_round(round);
    report.set_kind(kind);
    return manager_->ReportMetrics(site, report);
  }

  RunRecord Run(const std::string& id) {
    absl::StatusOr<RunRecord> run = store_->GetRun(id);
    EXPECT_TRUE(run.ok()) << run.status();
    return run.ok() ? *run : RunRecord{};
  }

  static std::vector<std::string> Owners(const v1::Task& task) {
    std::vector<std::string> owners;
    for (const v1::SharedModel& m : task.shared_models()) owners.push_back(m.site_id());
    return owners;
  }

  fedtune::testing::TempDir tmp_;
  FakeClock clock_;
  fl::TensorMap global_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<BlobStore> blobs_;
  std::unique_ptr<RoundManager> manager_;
};

TEST_F(CrossEvaluationTest, SharedModelsThenCrossStageThenCompleted) {
  const std::string run = EvaluatingRun();
  absl::StatusOr<v1::Task> evaluate = manager_->NextTask("site-a");
  ASSERT_TRUE(evaluate.ok());
  EXPECT_EQ(evaluate->kind(), v1::Task::EVALUATE);
  EXPECT_TRUE(evaluate->cross_site_evaluation());
  const std::string final_digest = Run(run).final_model_digest;

  // site-a and site-b share (site-a twice: idempotent); site-c declines.
  const std::string a = AdaptedModel(11), b = AdaptedModel(12);
  absl::StatusOr<v1::UploadResponse> shared = Share("site-a", run, a);
  ASSERT_TRUE(shared.ok()) << shared.status();
  EXPECT_EQ(shared->upload_status(), v1::UPLOAD_STATUS_ACCEPTED);
  EXPECT_TRUE(Share("site-a", run, a).ok());
  EXPECT_EQ(Share("site-a", run, b).status().code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(Share("site-b", run, b).ok());
  EXPECT_EQ(Share("site-d", run, AdaptedModel(13)).status().code(), absl::StatusCode::kPermissionDenied);

  // Stored as model versions (never a default base model), readable by the run's sites only.
  const std::string a_digest = io::Sha256Hex(a);
  auto version = store_->GetModelVersion(a_digest);
  ASSERT_TRUE(version.ok() && version->has_value());
  EXPECT_EQ((*version)->run_id, run);
  EXPECT_EQ((*version)->parent_digest, final_digest);
  EXPECT_EQ(io::Sha256File(blobs_->PathOf(a_digest)).value(), a_digest);
  EXPECT_TRUE(manager_->CheckModelAccess("site-c", a_digest).ok());
  EXPECT_EQ(manager_->CheckModelAccess("site-d", a_digest).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(store_->LatestModelVersion().value()->digest, final_digest);
  EXPECT_TRUE(std::filesystem::is_empty(tmp_.Join("spool/" + run)));  // Moved into the blob store.

  // Every final report: the run stays "evaluating", in its cross-evaluation stage.
  for (const char* s : {"site-a", "site-b", "site-c"}) ASSERT_TRUE(Report(s, run, "final").ok()) << s;
  EXPECT_EQ(Run(run).state, federation::RunState::kEvaluating);
  EXPECT_EQ(Share("site-c", run, AdaptedModel(14)).status().code(), absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<v1::Task> task = manager_->NextTask("site-a");
  ASSERT_TRUE(task.ok());
  EXPECT_EQ(task->kind(), v1::Task::CROSS_EVALUATE);
  EXPECT_EQ(task->model_digest(), final_digest);
  EXPECT_EQ(task->round(), 0);
  EXPECT_EQ(Owners(*task), std::vector<std::string>({"site-b"}));
  EXPECT_EQ(task->shared_models(0).digest(), io::Sha256Hex(b));
  EXPECT_EQ(task->shared_models(0).bytes(), static_cast<int64_t>(b.size()));
  EXPECT_EQ(Owners(*manager_->NextTask("site-c")), std::vector<std::string>({"site-a", "site-b"}));
  EXPECT_EQ(manager_->NextTask("site-d")->kind(), v1::Task::NONE);

  // A cross_site report must be round 0; site-a's ends its task.
  EXPECT_EQ(Report("site-a", run, "cross_site", 1).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(Report("site-a", run, "cross_site").ok());
  EXPECT_EQ(manager_->NextTask("site-a")->kind(), v1::Task::NONE);

  // The stage survives a restart.
  Restart();
  EXPECT_EQ(manager_->NextTask("site-a")->kind(), v1::Task::NONE);
  EXPECT_EQ(Owners(*manager_->NextTask("site-b")), std::vector<std::string>({"site-a"}));
  ASSERT_TRUE(Report("site-b", run, "cross_site").ok());
  EXPECT_EQ(Run(run).state, federation::RunState::kEvaluating);
  ASSERT_TRUE(Report("site-c", run, "cross_site").ok());
  const RunRecord done = Run(run);
  EXPECT_EQ(done.state, federation::RunState::kCompleted);
  EXPECT_THAT(done.message, HasSubstr("cross-site evaluation of 2 shared adapted model(s) by 3 site(s)"));

  absl::StatusOr<v1::RunReport> report = manager_->GetRunReport(run);
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->shared_models_size(), 2);
  EXPECT_EQ(report->shared_models(0).site_id(), "site-a");
  EXPECT_EQ(report->shared_models(0).digest(), a_digest);
  ASSERT_EQ(report->sites(0).metrics_size(), 2);  // final, then cross_site.
  EXPECT_EQ(report->sites(0).metrics(0).kind(), "final");
  EXPECT_EQ(report->sites(0).metrics(1).kind(), "cross_site");

  // A shared adapted model is never another run's base model, even when named.
  v1::RunConfig next;
  next.set_base_model(a_digest.substr(0, 12));
  next.set_min_sites(1);
  const absl::StatusOr<std::string> refused = manager_->StartRun(next);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("site-a's adapted model shared"));
}

// Under FEDBN the global model the coordinator aggregates lacks the BatchNorm tensors, but an adapted model is whole
// (the global model with the site's own BatchNorm): it is taken all the same.
TEST_F(CrossEvaluationTest, AFedBnAdaptedModelIsTaken) {
  const std::string run = EvaluatingRun(true, v1::RunConfig::FEDBN);
  absl::StatusOr<v1::UploadResponse> shared = Share("site-a", run, AdaptedModel(21));
  ASSERT_TRUE(shared.ok()) << shared.status();
  EXPECT_EQ(shared->upload_status(), v1::UPLOAD_STATUS_ACCEPTED);
}

// A restart after every final report was stored but before the evaluation ended: the next tick ends it (the stage
// begins) rather than waiting for the evaluation deadline.
TEST_F(CrossEvaluationTest, EveryFinalReportInAtARestartEndsTheEvaluationAtTheNextTick) {
  const std::string run = EvaluatingRun(/*cross_site=*/false);
  for (const char* s : {"site-a", "site-b"}) ASSERT_TRUE(Report(s, run, "final").ok()) << s;
  // site-c's report reaches the database, as if the coordinator stopped before the transition that follows it.
  MetricsRecord record;
  record.run_id = run;
  record.site_id = "site-c";
  record.kind = "final";
  record.report.set_run_id(run);
  record.report.set_kind("final");
  ASSERT_TRUE(store_->InsertMetrics(record).ok());
  Restart();
  EXPECT_EQ(Run(run).state, federation::RunState::kEvaluating);
  ASSERT_TRUE(manager_->Tick().ok());
  EXPECT_EQ(Run(run).state, federation::RunState::kCompleted);
}

TEST_F(CrossEvaluationTest, AnInterruptedUploadResumesAcrossARestart) {
  const std::string run = EvaluatingRun();
  const std::string payload = AdaptedModel(51);
  v1::UploadHeader header;
  header.set_run_id(run);
  header.set_kind(v1::UPLOAD_KIND_ADAPTED_MODEL);
  header.set_total_bytes(static_cast<int64_t>(payload.size()));
  header.set_sha256(io::Sha256Hex(payload));
  absl::StatusOr<UploadTarget> target = manager_->BeginSharedModelUpload("site-a", header);
  ASSERT_TRUE(target.ok()) << target.status();
  ASSERT_TRUE(target->claimed);
  EXPECT_EQ(manager_->BeginSharedModelUpload("site-a", header).status().code(), absl::StatusCode::kAborted);
  const size_t half = payload.size() / 2;
  ASSERT_TRUE(io::WriteFileAtomically(target->spool_path, payload.substr(0, half)).ok());
  const absl::Status broken = absl::FailedPreconditionError("stream ended early");
  EXPECT_EQ(manager_->EndSharedModelUpload("site-a", header, *target, broken).code(), broken.code());

  // The coordinator restarts; GetUploadOffset's target still holds the first half.
  Restart();
  absl::StatusOr<UploadTarget> again = manager_->PrepareSharedModelUpload("site-a", run, 0, header.sha256());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->accepted);
  EXPECT_EQ(again->spool_path, target->spool_path);
  EXPECT_EQ(SpoolDir::SizeOf(again->spool_path), static_cast<int64_t>(half));
  header.set_offset(static_cast<int64_t>(half));
  absl::StatusOr<UploadTarget> resumed = manager_->BeginSharedModelUpload("site-a", header);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  ASSERT_TRUE(io::WriteFileAtomically(resumed->spool_path, payload).ok());
  absl::StatusOr<v1::UploadResponse> accepted =
      manager_->AcceptSharedModel("site-a", header, *resumed, io::Sha256Hex(payload));
  ASSERT_TRUE(accepted.ok()) << accepted.status();
  EXPECT_TRUE(manager_->PrepareSharedModelUpload("site-a", run, 0, header.sha256())->accepted);

  // A tampered payload is refused and its bytes dropped.
  const std::string other = AdaptedModel(52);
  header.set_offset(0);
  header.set_sha256(io::Sha256Hex(other));
  header.set_total_bytes(static_cast<int64_t>(other.size()));
  absl::StatusOr<UploadTarget> b = manager_->BeginSharedModelUpload("site-b", header);
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_TRUE(io::WriteFileAtomically(b->spool_path, other).ok());
  EXPECT_EQ(manager_->AcceptSharedModel("site-b", header, *b, std::string(64, '0')).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_FALSE(std::filesystem::exists(b->spool_path));
}

TEST_F(CrossEvaluationTest, RefusesWhatIsNotTheGlobalModelsArchitecture) {
  const std::string run = EvaluatingRun();
  // Another architecture.
  absl::StatusOr<model::Checkpoint> other = agent::InitCheckpoint({"densenet_tiny"}, 32, 0.0, 3);
  ASSERT_TRUE(other.ok()) << other.status();
  ASSERT_TRUE(model::SaveCheckpoint(&*other, tmp_.Join("other.ckpt")).ok());
  absl::StatusOr<v1::UploadResponse> refused = Share("site-a", run, io::ReadFile(tmp_.Join("other.ckpt")).value());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("adapted model of site site-a"));
  // Not a checkpoint at all; the message names no server path.
  refused = Share("site-a", run, EncodeDelta(ConstantDelta(global_, 0.01)));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("not a fedtune checkpoint"));
  EXPECT_THAT(std::string(refused.status().message()), ::testing::Not(HasSubstr(tmp_.path())));
  EXPECT_TRUE(std::filesystem::is_empty(tmp_.Join("spool/" + run)));
  // Round other than 0; then a good one is still taken.
  v1::UploadHeader header;
  header.set_run_id(run);
  header.set_round(1);
  header.set_total_bytes(10);
  header.set_sha256(std::string(64, 'a'));
  EXPECT_EQ(manager_->BeginSharedModelUpload("site-a", header).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Share("site-a", run, AdaptedModel(21)).ok());
}

TEST_F(CrossEvaluationTest, StageEndsAtItsDeadlineAndWithoutSharedModelsAtOnce) {
  std::string run = EvaluatingRun();
  ASSERT_TRUE(Share("site-a", run, AdaptedModel(31)).ok());
  // The final evaluation's deadline passes with site-c silent: the stage begins; site-c gets no task (no final).
  ASSERT_TRUE(Report("site-a", run, "final").ok());
  ASSERT_TRUE(Report("site-b", run, "final").ok());
  clock_.Advance(absl::Seconds(61));
  ASSERT_TRUE(manager_->Tick().ok());
  EXPECT_EQ(Run(run).state, federation::RunState::kEvaluating);
  EXPECT_EQ(manager_->NextTask("site-a")->kind(), v1::Task::NONE);  // Nothing but its own model shared.
  EXPECT_EQ(manager_->NextTask("site-b")->kind(), v1::Task::CROSS_EVALUATE);
  EXPECT_EQ(manager_->NextTask("site-c")->kind(), v1::Task::NONE);
  clock_.Advance(absl::Seconds(59));
  ASSERT_TRUE(manager_->Tick().ok());
  EXPECT_EQ(Run(run).state, federation::RunState::kEvaluating);
  clock_.Advance(absl::Seconds(2));
  ASSERT_TRUE(manager_->Tick().ok());
  EXPECT_EQ(Run(run).state, federation::RunState::kCompleted);
  EXPECT_THAT(Run(run).message, HasSubstr("cross-site evaluation deadline passed"));

  // No site shares: the run completes with the last final report.
  run = EvaluatingRun();
  for (const char* s : {"site-a", "site-b", "site-c"}) ASSERT_TRUE(Report(s, run, "final").ok());
  EXPECT_EQ(Run(run).state, federation::RunState::kCompleted);
}

TEST_F(CrossEvaluationTest, ARevokedSiteIsNotWaitedFor) {
  const std::string run = EvaluatingRun();
  ASSERT_TRUE(Share("site-a", run, AdaptedModel(61)).ok());
  for (const char* s : {"site-a", "site-b", "site-c"}) ASSERT_TRUE(Report(s, run, "final").ok());
  ASSERT_TRUE(Report("site-b", run, "cross_site").ok());
  EXPECT_EQ(Run(run).state, federation::RunState::kEvaluating);  // site-c has site-a's model to evaluate.
  ASSERT_TRUE(store_->SetSiteStatus("site-c", federation::SiteStatus::kRevoked, false, 0).ok());
  ASSERT_TRUE(manager_->Tick().ok());
  EXPECT_EQ(Run(run).state, federation::RunState::kCompleted);
}

TEST_F(CrossEvaluationTest, RunWithoutCrossSiteEvaluationTakesNone) {
  const std::string run = EvaluatingRun(/*cross_site=*/false);
  EXPECT_FALSE(manager_->NextTask("site-a")->cross_site_evaluation());
  EXPECT_EQ(Share("site-a", run, AdaptedModel(41)).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Report("site-a", run, "cross_site").code(), absl::StatusCode::kInvalidArgument);
  for (const char* s : {"site-a", "site-b", "site-c"}) ASSERT_TRUE(Report(s, run, "final").ok());
  EXPECT_EQ(Run(run).state, federation::RunState::kCompleted);
}

}  // namespace
}  // namespace fedtune::coordinator
