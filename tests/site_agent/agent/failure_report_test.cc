// What a site says about its failures (site_agent/agent/failure_report.h) against the fake coordinator
// (fake_coordinator.h) over real mTLS: the report of a TRAIN task whose images are unreadable (stage, class, a
// scrubbed message and log lines: no path and no patient or study id of the site reaches the coordinator), the
// heartbeat's "retrying: REASON" while a call is retried (in a task and outside one), share_diagnostics: false, and a
// manifest that cannot be read at start-up.
#include "site_agent/agent/failure_report.h"

#include <filesystem>
#include <memory>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "common/logging.h"
#include "common/model/checkpoint.h"
#include "common/synth/generator.h"
#include "common/synth/profile.h"
#include "common/train/threads.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "site_agent/agent/agent_config.h"
#include "site_agent/agent/coordinator_client.h"
#include "site_agent/agent/federated_agent.h"
#include "site_agent/agent/heartbeater.h"
#include "site_agent/commands/model_init.h"
#include "tests/site_agent/agent/fake_coordinator.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::agent {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// ---- Pieces without a coordinator.

TEST(FailureReportTest, StageFromTheHeartbeatStateAndTheFailedCall) {
  const absl::Status local = absl::DataLossError("cannot decode image");
  EXPECT_EQ(StageOf("downloading", local), v1::FAILURE_STAGE_DOWNLOAD);
  EXPECT_EQ(StageOf("training", local), v1::FAILURE_STAGE_TRAINING);
  EXPECT_EQ(StageOf("training the local-only baseline", local), v1::FAILURE_STAGE_TRAINING);
  EXPECT_EQ(StageOf("evaluating", local), v1::FAILURE_STAGE_EVALUATION);
  EXPECT_EQ(StageOf("cross-site evaluation 1/2", local), v1::FAILURE_STAGE_EVALUATION);
  for (const char* state : {"encoding", "uploading", "sharing", "reporting"}) {
    EXPECT_EQ(StageOf(state, local), v1::FAILURE_STAGE_UPLOAD) << state;
  }
  EXPECT_EQ(StageOf("secure aggregation: keys", local), v1::FAILURE_STAGE_OTHER);
  // A transfer's error is the transfer's stage, whatever the state says.
  EXPECT_EQ(StageOf("cross-site evaluation 1/2", absl::NotFoundError("coordinator h:1: DownloadModel: unknown model")),
            v1::FAILURE_STAGE_DOWNLOAD);
  EXPECT_EQ(StageOf("evaluating", absl::UnavailableError("coordinator h:1: ReportMetrics: down")),
            v1::FAILURE_STAGE_UPLOAD);
  EXPECT_EQ(StageName(v1::FAILURE_STAGE_TRAINING), "TRAINING");
}

TEST(FailureReportTest, ReportIsScrubbedAndBounded) {
  diagnostics::SiteIdentifiers ids;
  ids.patients = {"MRN-A7"};
  const diagnostics::Scrubber scrubber(ids);
  v1::Task task;
  task.set_kind(v1::Task::EVALUATE);
  task.set_run_id("run-9");
  task.set_round(4);
  task.set_attempt(2);
  const absl::Status error = absl::DataLossError(
      absl::StrCat("image 'MRN-A7_exam1.png': /srv/data/MRN-A7_exam1.png: not a PNG ", std::string(5000, 'x')));
  std::vector<std::string> lines;
  for (int i = 0; i < 30; ++i) lines.push_back(absl::StrCat("INFO line ", i, " of MRN-A7 in /srv/data/a.png"));
  lines.push_back(std::string(2000, 'y'));
  const absl::Time now = absl::FromUnixMillis(1700000000123);
  const v1::FailureReport report =
      MakeFailureReport(task, v1::FAILURE_STAGE_EVALUATION, error, scrubber, true, lines, now);
  EXPECT_EQ(report.run_id(), "run-9");
  EXPECT_EQ(report.round(), 0);  // Not a TRAIN task.
  EXPECT_EQ(report.attempt(), 2);
  EXPECT_EQ(report.task_kind(), v1::Task::EVALUATE);
  EXPECT_EQ(report.stage(), v1::FAILURE_STAGE_EVALUATION);
  EXPECT_EQ(report.error_class(), "DATA_LOSS");
  EXPECT_EQ(report.status_code(), static_cast<int>(absl::StatusCode::kDataLoss));
  EXPECT_THAT(report.message(), StartsWith("image '<patient>_exam1.png': <path>: not a PNG xxx"));
  EXPECT_LE(report.message().size(), kMaxFailureMessageBytes);
  EXPECT_TRUE(absl::EndsWith(report.message(), diagnostics::kCutMarker));
  ASSERT_EQ(report.log_lines_size(), kMaxFailureLogLines);  // The last 20.
  EXPECT_EQ(report.log_lines(0), "INFO line 11 of <patient> in <path>");
  EXPECT_LE(report.log_lines(kMaxFailureLogLines - 1).size(), kMaxFailureLogLineBytes);
  EXPECT_EQ(report.failed_ms(), 1700000000123);
  EXPECT_FALSE(report.will_retry());

  const v1::FailureReport quiet = MakeFailureReport(task, v1::FAILURE_STAGE_EVALUATION, absl::UnavailableError("down"),
                                                    scrubber, false, lines, now);
  EXPECT_EQ(quiet.log_lines_size(), 0);
  EXPECT_TRUE(quiet.will_retry());
  EXPECT_EQ(quiet.error_class(), "UNAVAILABLE");
}

TEST(FailureReportTest, TheSameFailureWhateverTheRetriesTook) {
  v1::FailureReport a;
  a.set_run_id("run-1");
  a.set_stage(v1::FAILURE_STAGE_UPLOAD);
  a.set_message("coordinator h:1: UploadUpdate: down (gave up after 5 attempts in 1m2.3s)");
  v1::FailureReport b = a;
  b.set_message("coordinator h:1: UploadUpdate: down (gave up after 7 attempts in 2m0.5s)");
  EXPECT_EQ(FailureReportKey(a), FailureReportKey(b));
  v1::FailureReport c = a;
  c.set_message("coordinator h:1: UploadUpdate: refused (gave up after 5 attempts in 1m2.3s)");
  EXPECT_NE(FailureReportKey(a), FailureReportKey(c));
  v1::FailureReport d = a;
  d.set_attempt(2);
  EXPECT_NE(FailureReportKey(a), FailureReportKey(d));
}

// A log line longer than a report's line: scrubbed whole, then cut (an id across byte 512 is never cut in half first).
TEST(FailureReportTest, ALongLogLineIsScrubbedBeforeItIsCut) {
  KeepRecentLogLines(kMaxFailureLogLines);
  const std::string filler(500, 'q');
  LOG(INFO) << filler << " MRN-4711 " << std::string(100, 'y');
  diagnostics::SiteIdentifiers ids;
  ids.patients = {"MRN-4711"};
  const diagnostics::Scrubber scrubber(ids);
  const v1::FailureReport report = MakeFailureReport(v1::Task(), v1::FAILURE_STAGE_TRAINING, absl::DataLossError("x"),
                                                     scrubber, true, RecentLogLines(), absl::Now());
  bool found = false;
  for (const std::string& line : report.log_lines()) {
    if (!absl::StartsWith(line, absl::StrCat("INFO ", filler.substr(0, 100)))) continue;
    found = true;
    EXPECT_EQ(line,
              absl::StrCat("INFO ", std::string(kMaxFailureLogLineBytes - 5 - diagnostics::kCutMarker.size(), 'q'),
                           diagnostics::kCutMarker));
  }
  EXPECT_TRUE(found);
}

TEST(FailureReportTest, AnImageThatCannotBeReadIsDataLoss) {
  for (const absl::Status& error : {absl::PermissionDeniedError("image 'a.png': /d/a.png: Permission denied"),
                                    absl::NotFoundError("image 'a.png': /d/a.png: No such file or directory"),
                                    absl::InvalidArgumentError("image 'a.png': /d/a.png: not an image")}) {
    const absl::Status data = SiteDataError(error);
    EXPECT_EQ(data.code(), absl::StatusCode::kDataLoss) << error;
    EXPECT_EQ(data.message(), absl::StrCat("the site's images cannot be read: ", error.message()));
  }
  // The coordinator refusing the site, out of memory and everything else: unchanged.
  for (const absl::Status& error :
       {absl::PermissionDeniedError("coordinator h:1: UploadUpdate: site revoked"),
        absl::ResourceExhaustedError("image 'a.png': out of memory"), absl::InvalidArgumentError("batch_size 0"),
        absl::CancelledError("image 'a.png': cancelled"), absl::OkStatus()}) {
    EXPECT_EQ(SiteDataError(error), error);
  }
}

TEST(FailureReportTest, RetryReasonNamesTheCallAndTheCode) {
  const diagnostics::Scrubber scrubber;
  EXPECT_EQ(RetryReason("UploadUpdate", absl::ResourceExhaustedError("spool full at /var/spool/x"), scrubber),
            "upload: RESOURCE_EXHAUSTED: spool full at <path>");
  EXPECT_EQ(RetryReason("GetTask", absl::UnavailableError("down"), scrubber), "task poll: UNAVAILABLE: down");
  EXPECT_EQ(RetryReason("SecAggGetRoster", absl::DeadlineExceededError("late"), scrubber),
            "secure aggregation: DEADLINE_EXCEEDED: late");
  EXPECT_LE(RetryReason("DownloadModel", absl::UnavailableError(std::string(1000, 'z')), scrubber).size(),
            kMaxStateReasonBytes);
}

// ---- Against the fake coordinator.

class FailureReportClientTest : public ::testing::Test {
 protected:
  FailureReportClientTest() : coordinator_(tmp_, "site-a") {}

  std::unique_ptr<CoordinatorClient> NewClient() {
    ClientOptions options;
    options.address = coordinator_.address();
    options.tls = coordinator_.site_tls();
    options.rpc_timeout = absl::Seconds(10);
    options.retry.min_backoff = absl::Milliseconds(100);
    options.retry.max_backoff = absl::Milliseconds(400);
    options.retry.max_attempts = 6;
    options.seed = 7;
    options.sleep = [](absl::Duration) {};  // Backoffs are not slept: the test stays fast.
    auto client = CoordinatorClient::Create(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  std::vector<std::string> HeartbeatStates() {
    std::vector<std::string> states;
    for (const v1::HeartbeatRequest& h : coordinator_.service().heartbeats()) states.push_back(h.state());
    return states;
  }

  fedtune::testing::TempDir tmp_;
  testing::FakeCoordinator coordinator_;
};

TEST_F(FailureReportClientTest, ReportFailureIsSentAndGivesUpSoon) {
  auto client = NewClient();
  ASSERT_NE(client, nullptr);
  v1::FailureReport report;
  report.set_run_id("run-1");
  report.set_stage(v1::FAILURE_STAGE_TRAINING);
  report.set_error_class("DATA_LOSS");
  coordinator_.service().FailNext("ReportFailure", 1);
  ASSERT_TRUE(client->ReportFailure(report, absl::Seconds(30)).ok());
  ASSERT_EQ(coordinator_.service().failures().size(), 1u);
  EXPECT_EQ(coordinator_.service().failures()[0].error_class(), "DATA_LOSS");

  // A coordinator that keeps failing: the call gives up once the next backoff would end past give_up.
  coordinator_.service().FailNext("ReportFailure", 1000);
  const absl::Time start = absl::Now();
  const absl::Status given_up = client->ReportFailure(report, absl::Milliseconds(300));
  const absl::Duration elapsed = absl::Now() - start;
  EXPECT_EQ(given_up.code(), absl::StatusCode::kUnavailable);
  // ReportFailure's own give-up (not Backoff's "attempts in ..."), within its bound: give_up plus one call's deadline
  // at most (the backoffs are not slept here; the bound is the contract, not a timing).
  EXPECT_THAT(given_up.message(), HasSubstr(" attempts: a failure report waits at most 300ms)"));
  EXPECT_THAT(given_up.message(), Not(HasSubstr(" attempts in ")));
  EXPECT_LT(elapsed, absl::Milliseconds(300) + absl::Seconds(10));
  EXPECT_LT(coordinator_.service().calls("ReportFailure"), 10);
  // A coordinator without the call (older): an error, at once.
  coordinator_.service().FailNext("ReportFailure", 1, grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(client->ReportFailure(report, absl::Seconds(30)).code(), absl::StatusCode::kUnimplemented);
}

TEST_F(FailureReportClientTest, ARetriedCallOfATaskSaysRetryingInItsHeartbeatsUntilItSucceeds) {
  auto client = NewClient();
  ASSERT_NE(client, nullptr);
  const diagnostics::Scrubber scrubber;
  RetryReporter reporter(client.get(), &scrubber, absl::Seconds(5));
  client->set_retry_observer(&reporter);
  coordinator_.service().FailNext("ReportMetrics", 2, grpc::StatusCode::RESOURCE_EXHAUSTED);
  {
    Heartbeater heartbeat(client.get(), "run-1", 1, absl::Hours(1), "reporting");
    reporter.Attach(&heartbeat);
    v1::MetricsReport report;
    report.set_run_id("run-1");
    report.set_round(1);
    report.set_kind("round");
    ASSERT_TRUE(client->ReportMetrics(report).ok());
    EXPECT_FALSE(heartbeat.retrying());  // The call ended: the task's state again.
    reporter.Attach(nullptr);
  }
  // What the coordinator received: the task's state, "retrying: ..." while the call was retried, then the task's
  // state again.
  const std::vector<std::string> states = HeartbeatStates();
  ASSERT_GE(states.size(), 3u);
  size_t first_retrying = states.size();
  size_t last_retrying = 0;
  for (size_t i = 0; i < states.size(); ++i) {
    if (absl::StartsWith(states[i], "retrying: ")) {
      first_retrying = std::min(first_retrying, i);
      last_retrying = i;
      EXPECT_THAT(states[i], StartsWith("retrying: metrics report: RESOURCE_EXHAUSTED: coordinator "));
      EXPECT_THAT(states[i], HasSubstr("ReportMetrics"));
    } else {
      EXPECT_EQ(states[i], "reporting");
    }
  }
  ASSERT_LT(first_retrying, states.size());
  EXPECT_LT(last_retrying + 1, states.size());  // The task's state after the retries.
  for (const v1::HeartbeatRequest& h : coordinator_.service().heartbeats()) EXPECT_EQ(h.run_id(), "run-1");
}

TEST_F(FailureReportClientTest, OutsideATaskARetriedCallSendsHeartbeatsWithoutARun) {
  auto client = NewClient();
  ASSERT_NE(client, nullptr);
  const diagnostics::Scrubber scrubber;
  RetryReporter reporter(client.get(), &scrubber, absl::Seconds(5));
  client->set_retry_observer(&reporter);
  coordinator_.service().FailNext("Hello", 2, grpc::StatusCode::RESOURCE_EXHAUSTED);
  ASSERT_TRUE(client->Hello(v1::HelloRequest()).ok());
  const std::vector<std::string> states = HeartbeatStates();
  ASSERT_EQ(states.size(), 3u);
  EXPECT_THAT(states[0], StartsWith("retrying: hello: RESOURCE_EXHAUSTED: "));
  EXPECT_THAT(states[1], StartsWith("retrying: hello: RESOURCE_EXHAUSTED: "));
  EXPECT_EQ(states[2], "idle");
  for (const v1::HeartbeatRequest& h : coordinator_.service().heartbeats()) EXPECT_EQ(h.run_id(), "");

  // A coordinator that refuses those heartbeats too: the retried call goes on, and no "idle" follows. Once a
  // heartbeat found the coordinator unavailable, the other retries send none (each would wait out its deadline on
  // the retried call's thread).
  const int heartbeat_calls = coordinator_.service().calls("Heartbeat");
  coordinator_.service().FailNext("Hello", 3, grpc::StatusCode::UNAVAILABLE);
  coordinator_.service().FailNext("Heartbeat", 1, grpc::StatusCode::UNAVAILABLE);
  ASSERT_TRUE(client->Hello(v1::HelloRequest()).ok());
  EXPECT_EQ(HeartbeatStates().size(), 3u);
  EXPECT_EQ(coordinator_.service().calls("Heartbeat"), heartbeat_calls + 1);

  // The call that ended took the "unreachable" with it: the next retried call says "retrying" again.
  coordinator_.service().FailNext("Hello", 1, grpc::StatusCode::UNAVAILABLE);
  ASSERT_TRUE(client->Hello(v1::HelloRequest()).ok());
  const std::vector<std::string> after = HeartbeatStates();
  ASSERT_EQ(after.size(), 5u);
  EXPECT_THAT(after[3], StartsWith("retrying: hello: UNAVAILABLE: "));
  EXPECT_EQ(after[4], "idle");
}

// Two calls retried at once (on two threads): "retrying" until both ended, not until the first did.
TEST_F(FailureReportClientTest, RetryingLastsUntilTheLastRetriedCallEnds) {
  auto client = NewClient();
  ASSERT_NE(client, nullptr);
  const diagnostics::Scrubber scrubber;
  RetryReporter reporter(client.get(), &scrubber, absl::Seconds(5));
  Heartbeater heartbeat(client.get(), "run-1", 1, absl::Hours(1), "uploading");
  reporter.Attach(&heartbeat);
  const absl::Status busy = absl::ResourceExhaustedError("busy");
  std::thread upload([&] { reporter.OnRetry("UploadUpdate", busy, absl::Milliseconds(1)); });
  upload.join();
  reporter.OnRetry("SecAggGetRoster", busy, absl::Milliseconds(1));
  EXPECT_TRUE(heartbeat.retrying());
  reporter.OnRetryEnd("SecAggGetRoster");
  EXPECT_TRUE(heartbeat.retrying());  // The upload is still retried.
  // The same call name on another thread is another call.
  std::thread other([&] { reporter.OnRetryEnd("SecAggGetRoster"); });
  other.join();
  EXPECT_TRUE(heartbeat.retrying());
  std::thread upload_end([&] { reporter.OnRetryEnd("UploadUpdate"); });
  upload_end.join();
  EXPECT_FALSE(heartbeat.retrying());
  reporter.Attach(nullptr);
}

// ---- The agent: a site whose images are unreadable.

// 60 synthetic 32-px images renamed so that the site's own ids are not CheXpert-style: "MRN-A<n>_exam<m>_view1_
// frontal.png" in the data folder (no sub-folder: the file name is not a path) or in `folder` (ending with '/') in it,
// with Patient and Study columns, then every image overwritten with bytes that are not an image. A tiny DenseNet
// served by the fake coordinator.
struct UnreadableSite {
  UnreadableSite(const fedtune::testing::TempDir& tmp, testing::FakeCoordinator& coordinator,
                 const std::string& folder = "") {
    synth::SynthOptions data;
    auto profile = synth::LoadProfile("site-a");
    EXPECT_TRUE(profile.ok()) << profile.status();
    data.profile = *profile;
    data.count = 60;
    data.size = 32;
    data.seed = 2;
    data.out_dir = tmp.Join("data");
    EXPECT_TRUE(synth::GenerateDataset(data).ok());
    auto manifest = io::ReadFile(tmp.Join("data/manifest.csv"));
    EXPECT_TRUE(manifest.ok()) << manifest.status();
    std::string rewritten;
    const std::regex chexpert("patient0*([0-9]+)/study([0-9]+)/(view[0-9]+_[a-z]+)\\.png");
    for (absl::string_view line : absl::StrSplit(*manifest, '\n', absl::SkipEmpty())) {
      if (rewritten.empty()) {
        absl::StrAppend(&rewritten, "Patient,Study,", line, "\n");
        continue;
      }
      const std::string row(line);
      const std::string path = row.substr(0, row.find(','));
      std::smatch m;
      EXPECT_TRUE(std::regex_match(path, m, chexpert)) << path;
      const std::string patient = absl::StrCat("MRN-A", m[1].str());
      const std::string study = absl::StrCat("exam", m[2].str());
      const std::string file = absl::StrCat(patient, "_", study, "_", m[3].str(), ".png");
      patients.push_back(patient);
      files.push_back(file);
      fs::rename(tmp.Join("data/" + path), tmp.Join("data/" + file));
      EXPECT_TRUE(io::WriteFileAtomically(tmp.Join("data/" + file), "this is not an image").ok());
      absl::StrAppend(&rewritten, patient, ",", study, ",", folder, file, row.substr(path.size()), "\n");
    }
    std::vector<fs::path> folders;  // The emptied patientNNNNN folders.
    for (const fs::directory_entry& entry : fs::directory_iterator(tmp.Join("data"))) {
      if (entry.is_directory()) folders.push_back(entry.path());
    }
    for (const fs::path& emptied : folders) fs::remove_all(emptied);
    if (!folder.empty()) {
      fs::create_directories(tmp.Join("data/" + folder));
      for (const std::string& file : files) fs::rename(tmp.Join("data/" + file), tmp.Join("data/" + folder + file));
    }
    EXPECT_TRUE(io::WriteFileAtomically(tmp.Join("data/manifest.csv"), rewritten).ok());

    auto init = InitCheckpoint({"densenet_tiny"}, 32, 0.2, 0);
    EXPECT_TRUE(init.ok()) << init.status();
    const std::string model_path = tmp.Join("init.ckpt");
    EXPECT_TRUE(model::SaveCheckpoint(&*init, model_path).ok());
    const std::string model_bytes = *io::ReadFile(model_path);
    coordinator.service().AddModel(model_bytes);
    config_text = absl::StrCat(
        "site_id: \"site-a\" coordinator: \"", coordinator.address(), "\" site_cert: \"", coordinator.site_tls().cert,
        "\" site_key: \"", coordinator.site_tls().key, "\" ca_cert: \"", coordinator.site_tls().ca,
        "\" work_dir: \"work\" heartbeat_seconds: 1 rpc_timeout_seconds: 20 min_backoff_ms: 1 max_backoff_ms: 20 "
        "exit_after_runs: 1 gradcam_per_label: 0 "
        "finetune { manifest: \"data/manifest.csv\" device: \"cpu\" threads: 2 loader_threads: 1 batch_size: 16 "
        "patience: 2 augment: false split { train: 0.6 validation: 0.2 test: 0.2 } }");
    train.set_kind(v1::Task::TRAIN);
    train.set_run_id("run-1");
    train.set_round(1);
    train.set_attempt(1);
    train.set_model_digest(io::Sha256Hex(model_bytes));
    train.set_model_bytes(static_cast<int64_t>(model_bytes.size()));
    train.set_base_model_digest(train.model_digest());
    train.set_base_model_bytes(train.model_bytes());
    train.set_total_rounds(1);
    train.mutable_plan()->set_local_epochs(1);
    train.mutable_plan()->set_learning_rate(0.05);
    train.mutable_plan()->set_batch_size(16);
    options.task_wait_seconds = 1;
    options.failure_report_give_up = absl::Seconds(2);
  }

  v1::SiteAgentConfig Config(const fedtune::testing::TempDir& tmp, const std::string& extra) const {
    auto loaded = LoadAgentConfig(tmp.WriteFile("site.textproto", absl::StrCat(config_text, " ", extra)));
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    train::SetIntraOpThreads(2);
    return loaded.ok() ? *loaded : v1::SiteAgentConfig();
  }

  std::string config_text;
  std::vector<std::string> patients;
  std::vector<std::string> files;
  v1::Task train;
  AgentOptions options;
};

// Nothing that leaves the site names a file of the site or one of its patients or studies.
void ExpectNothingIdentifying(const std::string& text, const fedtune::testing::TempDir& tmp) {
  EXPECT_THAT(text, Not(HasSubstr("MRN-A"))) << text;
  EXPECT_THAT(text, Not(HasSubstr("exam1"))) << text;
  EXPECT_THAT(text, Not(HasSubstr(tmp.path()))) << text;
  EXPECT_THAT(text, Not(HasSubstr("/data/"))) << text;
  EXPECT_THAT(text, Not(HasSubstr("John"))) << text;  // The folder of PathsWithSpaces...: "Doe O'Brien (John) Q".
  EXPECT_THAT(text, Not(HasSubstr("Brien"))) << text;
}

TEST(FailureReportAgentTest, UnreadableImagesBecomeOneScrubbedReportOfTheTrainingStage) {
  fedtune::testing::TempDir tmp;
  testing::FakeCoordinator coordinator(tmp, "site-a");
  UnreadableSite site(tmp, coordinator);
  const v1::SiteAgentConfig config = site.Config(tmp, "");
  ASSERT_TRUE(config.share_diagnostics());  // The default.
  // The download is retried first: the heartbeats say so.
  coordinator.service().FailNext("DownloadModel", 2, grpc::StatusCode::RESOURCE_EXHAUSTED);
  auto agent = FederatedAgent::Create(config, site.options);
  ASSERT_TRUE(agent.ok()) << agent.status();
  const absl::Status failed = (*agent)->RunTask(site.train);
  ASSERT_FALSE(failed.ok());
  LOG(INFO) << "the task failed as it should: " << failed;

  const std::vector<v1::FailureReport> reports = coordinator.service().failures();
  ASSERT_EQ(reports.size(), 1u);
  const v1::FailureReport& report = reports[0];
  LOG(INFO) << "what the coordinator got: " << report.DebugString();
  EXPECT_EQ(report.run_id(), "run-1");
  EXPECT_EQ(report.round(), 1);
  EXPECT_EQ(report.attempt(), 1);
  EXPECT_EQ(report.task_kind(), v1::Task::TRAIN);
  EXPECT_EQ(report.stage(), v1::FAILURE_STAGE_TRAINING);
  EXPECT_EQ(failed.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(report.error_class(), "DATA_LOSS");
  EXPECT_THAT(report.message(), StartsWith("the site's images cannot be read: image '"));
  EXPECT_EQ(report.status_code(), static_cast<int>(failed.code()));
  EXPECT_GT(report.failed_ms(), 0);
  // The agent's own message names the image and its file; the report has the placeholders instead.
  EXPECT_THAT(std::string(failed.message()), HasSubstr("MRN-A"));
  // The image's path as the manifest has it is one of the site's paths: replaced as a whole.
  EXPECT_THAT(report.message(), StartsWith("the site's images cannot be read: image '<path>': <path>: "));
  ExpectNothingIdentifying(report.message(), tmp);
  ASSERT_GT(report.log_lines_size(), 0);
  EXPECT_LE(report.log_lines_size(), kMaxFailureLogLines);
  for (const std::string& line : report.log_lines()) {
    EXPECT_LE(line.size(), kMaxFailureLogLineBytes);
    ExpectNothingIdentifying(line, tmp);
  }

  // The heartbeats: "retrying: download: ..." while the download was retried, the training, then "failed: ..."
  // scrubbed like the report.
  const std::vector<v1::HeartbeatRequest> heartbeats = coordinator.service().heartbeats();
  ASSERT_FALSE(heartbeats.empty());
  bool retrying = false;
  for (const v1::HeartbeatRequest& h : heartbeats) {
    ExpectNothingIdentifying(h.state(), tmp);
    retrying = retrying || absl::StartsWith(h.state(), "retrying: download: RESOURCE_EXHAUSTED: ");
  }
  EXPECT_TRUE(retrying);
  EXPECT_THAT(heartbeats.back().state(), StartsWith("failed: "));
  EXPECT_THAT(heartbeats.back().state(), HasSubstr("image '<path>': <path>: "));

  // The coordinator offers the task again and it fails again the same way: not reported twice.
  EXPECT_FALSE((*agent)->RunTask(site.train).ok());
  EXPECT_EQ(coordinator.service().failures().size(), 1u);

  // A coordinator that cannot take the report: logged, and the task's own error is what RunTask returns.
  v1::Task again = site.train;
  again.set_attempt(2);
  coordinator.service().FailNext("ReportFailure", 1000);
  const absl::Status unreported = (*agent)->RunTask(again);
  EXPECT_EQ(unreported.code(), failed.code());
  EXPECT_EQ(coordinator.service().failures().size(), 1u);
}

// The decoders name the file unquoted ("PATH: not a decodable image"): a folder with spaces, an apostrophe and
// parentheses goes as a whole (the scrubber knows the site's paths), in the report, its log lines and the heartbeats.
TEST(FailureReportAgentTest, PathsWithSpacesApostrophesAndParenthesesGoAsAWhole) {
  fedtune::testing::TempDir tmp;
  testing::FakeCoordinator coordinator(tmp, "site-a");
  UnreadableSite site(tmp, coordinator, "Doe O'Brien (John) Q/");
  const v1::SiteAgentConfig config = site.Config(tmp, "");
  auto agent = FederatedAgent::Create(config, site.options);
  ASSERT_TRUE(agent.ok()) << agent.status();
  const absl::Status failed = (*agent)->RunTask(site.train);
  ASSERT_FALSE(failed.ok());
  EXPECT_THAT(std::string(failed.message()), HasSubstr("/data/Doe O'Brien (John) Q/MRN-A"));  // The agent's own.
  const std::vector<v1::FailureReport> reports = coordinator.service().failures();
  ASSERT_EQ(reports.size(), 1u);
  LOG(INFO) << "what the coordinator got: " << reports[0].DebugString();
  EXPECT_THAT(reports[0].message(), StartsWith("the site's images cannot be read: image '<path>': <path>: "));
  ExpectNothingIdentifying(reports[0].message(), tmp);
  ASSERT_GT(reports[0].log_lines_size(), 0);
  for (const std::string& line : reports[0].log_lines()) ExpectNothingIdentifying(line, tmp);
  for (const v1::HeartbeatRequest& h : coordinator.service().heartbeats()) ExpectNothingIdentifying(h.state(), tmp);
}

TEST(FailureReportAgentTest, WithoutShareDiagnosticsNoLogLinesAreSent) {
  fedtune::testing::TempDir tmp;
  testing::FakeCoordinator coordinator(tmp, "site-a");
  UnreadableSite site(tmp, coordinator);
  const v1::SiteAgentConfig config = site.Config(tmp, "share_diagnostics: false");
  ASSERT_FALSE(config.share_diagnostics());
  LOG(INFO) << "a log line a report could carry";
  auto agent = FederatedAgent::Create(config, site.options);
  ASSERT_TRUE(agent.ok()) << agent.status();
  ASSERT_FALSE((*agent)->RunTask(site.train).ok());
  const std::vector<v1::FailureReport> reports = coordinator.service().failures();
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].stage(), v1::FAILURE_STAGE_TRAINING);
  EXPECT_EQ(reports[0].log_lines_size(), 0);
  ExpectNothingIdentifying(reports[0].message(), tmp);
}

TEST(FailureReportAgentTest, AManifestThatCannotBeReadIsReportedAtStartUp) {
  fedtune::testing::TempDir tmp;
  testing::FakeCoordinator coordinator(tmp, "site-a");
  UnreadableSite site(tmp, coordinator);
  const v1::SiteAgentConfig config = site.Config(tmp, "");
  fs::remove(tmp.Join("data/manifest.csv"));
  auto agent = FederatedAgent::Create(config, site.options);
  ASSERT_FALSE(agent.ok());
  EXPECT_THAT(std::string(agent.status().message()), HasSubstr(tmp.path()));
  const std::vector<v1::FailureReport> reports = coordinator.service().failures();
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].run_id(), "");
  EXPECT_EQ(reports[0].stage(), v1::FAILURE_STAGE_TRAINING);
  EXPECT_EQ(reports[0].error_class(), absl::StatusCodeToString(agent.status().code()));
  ExpectNothingIdentifying(reports[0].message(), tmp);
  EXPECT_THAT(reports[0].message(), HasSubstr("<path>"));
}

}  // namespace
}  // namespace fedtune::agent
