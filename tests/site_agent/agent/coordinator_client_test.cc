// The site agent's transfer logic against a fake SiteService over real mTLS (fake_coordinator.h): resumable,
// verified downloads; resumable uploads; retries with backoff on UNAVAILABLE.
#include "site_agent/agent/coordinator_client.h"

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/site_agent/agent/fake_coordinator.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::agent {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng() & 0xff);
  return out;
}

class CoordinatorClientTest : public ::testing::Test {
 protected:
  CoordinatorClientTest() : coordinator_(tmp_, "site-a") {}

  std::unique_ptr<CoordinatorClient> NewClient(int max_attempts = 6) {
    ClientOptions options;
    options.address = coordinator_.address();
    options.tls = coordinator_.site_tls();
    options.rpc_timeout = absl::Seconds(10);
    options.retry.min_backoff = absl::Milliseconds(100);
    options.retry.max_backoff = absl::Milliseconds(400);
    options.retry.max_attempts = max_attempts;
    options.chunk_bytes = 1024;
    options.seed = 7;
    // Backoffs are recorded, not slept: the test stays fast and checks the schedule.
    options.sleep = [this](absl::Duration d) { sleeps_.push_back(d); };
    auto client = CoordinatorClient::Create(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  fedtune::testing::TempDir tmp_;
  testing::FakeCoordinator coordinator_;
  std::vector<absl::Duration> sleeps_;
};

TEST_F(CoordinatorClientTest, HelloOverMutualTlsIdentifiesTheSiteByItsCertificate) {
  auto client = NewClient();
  v1::HelloRequest request;
  request.mutable_capabilities()->set_device("cpu");
  absl::StatusOr<v1::HelloResponse> hello = client->Hello(request);
  ASSERT_TRUE(hello.ok()) << hello.status();
  EXPECT_EQ(hello->site_id(), "site-a");
  EXPECT_EQ(coordinator_.service().callers(), std::set<std::string>{"site-a"});
}

// What a TLS-inspecting middlebox looks like to the agent: a server certificate from another CA.
TEST_F(CoordinatorClientTest, AServerCertificateFromAnotherCaIsExplained) {
  std::unique_ptr<pki::CertificateAuthority> other = pki::testing::MakeCa(tmp_.Join("inspection-ca"), "inspection");
  ASSERT_NE(other, nullptr);
  ClientOptions options;
  options.address = coordinator_.address();
  options.tls = coordinator_.site_tls();
  options.tls.ca = tmp_.Join("inspection-ca") + "/ca.pem";
  options.retry.max_attempts = 1;
  auto client = CoordinatorClient::Create(options);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<v1::HelloResponse> hello = (*client)->Hello(v1::HelloRequest());
  EXPECT_EQ(hello.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(hello.status().message(), HasSubstr("certificate verify failed"));
  EXPECT_THAT(hello.status().message(), HasSubstr(absl::StrCat("the certificate presented for ", coordinator_.address(),
                                                               " is not signed by ca_cert ", options.tls.ca)));
  EXPECT_THAT(hello.status().message(), HasSubstr("TLS-inspecting"));
}

TEST_F(CoordinatorClientTest, DownloadResumesFromThePartFileAndVerifiesTheDigest) {
  const std::string model = RandomBytes(10500, 1);
  const std::string digest = io::Sha256Hex(model);
  coordinator_.service().AddModel(model);
  coordinator_.service().CutNextDownloadAfter(4000);  // The first stream breaks after 4 chunks.
  auto client = NewClient();
  const std::string dir = tmp_.Join("models");
  absl::StatusOr<std::string> path = client->DownloadModel(digest, static_cast<int64_t>(model.size()), dir);
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, dir + "/" + digest + ".ckpt");
  EXPECT_EQ(*io::ReadFile(*path), model);
  EXPECT_FALSE(std::filesystem::exists(dir + "/" + digest + ".part"));
  // The second request resumed where the first stream broke, after one backoff.
  EXPECT_THAT(coordinator_.service().download_offsets(), ElementsAre(0, 4000));
  EXPECT_EQ(sleeps_.size(), 1u);
  EXPECT_EQ(client->bytes_down(), static_cast<int64_t>(model.size()));

  // A second download of the same digest is served from disk.
  ASSERT_TRUE(client->DownloadModel(digest, 0, dir).ok());
  EXPECT_EQ(coordinator_.service().calls("DownloadModel"), 2);
}

TEST_F(CoordinatorClientTest, DownloadResumesAPartFileLeftByAnEarlierAgent) {
  const std::string model = RandomBytes(5000, 2);
  const std::string digest = io::Sha256Hex(model);
  coordinator_.service().AddModel(model);
  const std::string dir = tmp_.Join("models");
  ASSERT_TRUE(io::MakeDirectories(dir).ok());
  ASSERT_TRUE(io::WriteFileAtomically(dir + "/" + digest + ".part", model.substr(0, 3000)).ok());
  auto client = NewClient();
  absl::StatusOr<std::string> path = client->DownloadModel(digest, 0, dir);
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*io::ReadFile(*path), model);
  EXPECT_THAT(coordinator_.service().download_offsets(), ElementsAre(3000));
}

TEST_F(CoordinatorClientTest, CorruptedDownloadIsRefusedWithDataLossAndThePartFileRemoved) {
  const std::string model = RandomBytes(6000, 3);
  const std::string digest = io::Sha256Hex(model);
  coordinator_.service().AddModel(model);
  coordinator_.service().CorruptDownloads(true);
  auto client = NewClient();
  const std::string dir = tmp_.Join("models");
  absl::StatusOr<std::string> path = client->DownloadModel(digest, 0, dir);
  ASSERT_EQ(path.status().code(), absl::StatusCode::kDataLoss) << path.status();
  EXPECT_THAT(path.status().message(), HasSubstr(digest));
  EXPECT_FALSE(std::filesystem::exists(dir + "/" + digest + ".part"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/" + digest + ".ckpt"));

  // An unknown digest is the coordinator's NOT_FOUND, not retried.
  const std::string unknown(64, 'a');
  EXPECT_EQ(client->DownloadModel(unknown, 0, dir).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client->DownloadModel("not-a-digest", 0, dir).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(sleeps_.empty());
}

TEST_F(CoordinatorClientTest, UploadResumesFromTheCoordinatorsOffsetAndIsIdempotent) {
  const std::string payload = RandomBytes(9000, 4);
  const std::string path = tmp_.WriteFile("update.bin", payload);
  coordinator_.service().CutNextUploadAfter(3 * 1024);  // The coordinator keeps 3 KiB, then the stream breaks.
  auto client = NewClient();
  UploadRequest request;
  request.run_id = "run-1";
  request.round = 2;
  request.path = path;
  request.sha256 = io::Sha256Hex(payload);
  request.num_samples = 42;
  request.encoding = fl::Encoding::kDenseFp32;
  absl::StatusOr<v1::UploadResponse> response = client->UploadUpdate(request);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status(), "accepted");
  EXPECT_EQ(coordinator_.service().accepted_upload("run-1", 2), payload);
  EXPECT_THAT(coordinator_.service().upload_offsets(), ElementsAre(0, 3 * 1024));
  EXPECT_EQ(coordinator_.service().last_upload_header().num_samples(), 42);
  EXPECT_EQ(coordinator_.service().last_upload_header().total_bytes(), 9000);
  EXPECT_EQ(sleeps_.size(), 1u);

  // Uploading again sends nothing: GetUploadOffset says it was accepted.
  const int streams = coordinator_.service().calls("UploadUpdate");
  response = client->UploadUpdate(request);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status(), "accepted");
  EXPECT_EQ(coordinator_.service().calls("UploadUpdate"), streams);
}

TEST_F(CoordinatorClientTest, UploadWithAWrongDigestIsDataLossAndNotRetried) {
  const std::string path = tmp_.WriteFile("update.bin", RandomBytes(2000, 5));
  auto client = NewClient();
  UploadRequest request;
  request.run_id = "run-1";
  request.round = 1;
  request.path = path;
  request.sha256 = io::Sha256Hex("something else");
  absl::StatusOr<v1::UploadResponse> response = client->UploadUpdate(request);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kDataLoss) << response.status();
  EXPECT_THAT(response.status().message(), HasSubstr("coordinator 127.0.0.1:"));
  EXPECT_TRUE(sleeps_.empty());
}

TEST_F(CoordinatorClientTest, RetriesUnavailableWithExponentialBackoffUpToTheBound) {
  auto client = NewClient(/*max_attempts=*/4);
  v1::HelloRequest request;
  coordinator_.service().FailNext("Hello", 2);
  ASSERT_TRUE(client->Hello(request).ok());
  EXPECT_EQ(coordinator_.service().calls("Hello"), 3);
  ASSERT_EQ(sleeps_.size(), 2u);
  // 100 ms then 200 ms, each within +-20% jitter.
  EXPECT_GE(sleeps_[0], absl::Milliseconds(80));
  EXPECT_LE(sleeps_[0], absl::Milliseconds(120));
  EXPECT_GE(sleeps_[1], absl::Milliseconds(160));
  EXPECT_LE(sleeps_[1], absl::Milliseconds(240));

  // Always unavailable: 4 attempts, 3 waits (the last capped at max_backoff 400 ms), then the error.
  sleeps_.clear();
  coordinator_.service().FailNext("ReportMetrics", 100);
  absl::Status status = client->ReportMetrics(v1::MetricsReport());
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(status.message(), HasSubstr("gave up after 4 attempts"));
  EXPECT_THAT(status.message(), HasSubstr("ReportMetrics"));
  EXPECT_EQ(coordinator_.service().calls("ReportMetrics"), 4);
  ASSERT_EQ(sleeps_.size(), 3u);
  EXPECT_GE(sleeps_[2], absl::Milliseconds(320));
  EXPECT_LE(sleeps_[2], absl::Milliseconds(480));

  // The upload's GetUploadOffset is retried the same way.
  sleeps_.clear();
  coordinator_.service().FailNext("GetUploadOffset", 2);
  const std::string payload = RandomBytes(1500, 6);
  UploadRequest request_up;
  request_up.run_id = "run-2";
  request_up.round = 1;
  request_up.path = tmp_.WriteFile("u.bin", payload);
  request_up.sha256 = io::Sha256Hex(payload);
  ASSERT_TRUE(client->UploadUpdate(request_up).ok());
  EXPECT_EQ(sleeps_.size(), 2u);

  // ABORTED on the upload stream (the coordinator still holds a previous stream of the payload) is retried too.
  sleeps_.clear();
  coordinator_.service().FailNext("UploadUpdate", 1, grpc::StatusCode::ABORTED);
  request_up.round = 2;
  ASSERT_TRUE(client->UploadUpdate(request_up).ok());
  EXPECT_EQ(sleeps_.size(), 1u);
  EXPECT_EQ(coordinator_.service().accepted_upload("run-2", 2), payload);
  // Other codes are not retried.
  sleeps_.clear();
  coordinator_.service().FailNext("UploadUpdate", 1, grpc::StatusCode::FAILED_PRECONDITION);
  request_up.round = 3;
  EXPECT_EQ(client->UploadUpdate(request_up).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(sleeps_.empty());
}

TEST_F(CoordinatorClientTest, DeclineTaskIsRetriedAndCarriesTheReasonAndTheAccount) {
  auto client = NewClient(/*max_attempts=*/4);
  coordinator_.service().FailNext("DeclineTask", 2);
  v1::PrivacyAccount account;
  account.set_epsilon(2.5);
  account.set_delta(1e-5);
  account.set_max_epsilon(3);
  account.set_round_epsilon(3.4);
  ASSERT_TRUE(client->DeclineTask("run-4", 2, 1, "over budget", account).ok());
  EXPECT_EQ(coordinator_.service().calls("DeclineTask"), 3);
  EXPECT_EQ(sleeps_.size(), 2u);
  // A reason beyond the protocol's 1024 bytes is cut (on a UTF-8 boundary: "∞" is 3 bytes).
  std::string long_reason(1022, 'x');
  for (int i = 0; i < 10; ++i) long_reason += "∞";
  ASSERT_TRUE(client->DeclineTask("run-4", 3, 1, long_reason, account).ok());
  const std::vector<v1::DeclineRequest> declines = coordinator_.service().declines();
  ASSERT_EQ(declines.size(), 2u);
  EXPECT_EQ(declines[0].run_id(), "run-4");
  EXPECT_EQ(declines[0].round(), 2);
  EXPECT_EQ(declines[0].attempt(), 1);
  EXPECT_EQ(declines[0].reason(), "over budget");
  EXPECT_DOUBLE_EQ(declines[0].privacy().round_epsilon(), 3.4);
  EXPECT_DOUBLE_EQ(declines[0].privacy().max_epsilon(), 3);
  EXPECT_EQ(declines[1].reason(), std::string(1022, 'x'));
  // FAILED_PRECONDITION (the update was accepted already) is returned at once.
  sleeps_.clear();
  coordinator_.service().FailNext("DeclineTask", 1, grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(client->DeclineTask("run-4", 4, 1, "late", account).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(sleeps_.empty());
}

// The coordinator answers RESOURCE_EXHAUSTED when a site has too many calls or streams in progress (a broken one may
// still be finishing there), when its thread quota is used up, or when the round's spool limits are reached: busy
// for now, so the call is retried after a backoff like UNAVAILABLE.
TEST_F(CoordinatorClientTest, RetriesResourceExhaustedWithBackoff) {
  auto client = NewClient(/*max_attempts=*/4);
  coordinator_.service().FailNext("Hello", 2, grpc::StatusCode::RESOURCE_EXHAUSTED);
  ASSERT_TRUE(client->Hello(v1::HelloRequest()).ok());
  EXPECT_EQ(coordinator_.service().calls("Hello"), 3);
  EXPECT_EQ(sleeps_.size(), 2u);

  sleeps_.clear();
  coordinator_.service().FailNext("UploadUpdate", 1, grpc::StatusCode::RESOURCE_EXHAUSTED);
  const std::string payload = RandomBytes(1500, 7);
  UploadRequest request;
  request.run_id = "run-3";
  request.round = 1;
  request.path = tmp_.WriteFile("busy.bin", payload);
  request.sha256 = io::Sha256Hex(payload);
  ASSERT_TRUE(client->UploadUpdate(request).ok());
  EXPECT_EQ(sleeps_.size(), 1u);
  EXPECT_EQ(coordinator_.service().accepted_upload("run-3", 1), payload);
}

TEST(BackoffTest, GivesUpAfterMaxElapsed) {
  RetryPolicy policy;
  policy.min_backoff = absl::Milliseconds(1);
  policy.max_backoff = absl::Milliseconds(2);
  policy.max_attempts = 1000000;
  policy.max_elapsed = absl::ZeroDuration();
  Backoff backoff(
      policy, [](absl::Duration) {}, 1);
  absl::Status status = backoff.Wait(absl::UnavailableError("down"));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(status.message(), HasSubstr("gave up after 1 attempts"));
}

// A minimal coordinator side for the secure aggregation wrappers: ShareKeys says ALREADY_EXISTS (the shares were
// taken before), the long-polls record the wait asked for.
class RecordingSecAgg final : public testing::SecAggPlayer {
 public:
  grpc::Status AdvertiseKeys(const std::string&, const std::string&, const v1::SecAggKeys&) override {
    return grpc::Status::OK;
  }
  grpc::Status GetRoster(const std::string&, const v1::SecAggPhaseRequest& request, v1::SecAggRoster* roster) override {
    Record(request);
    roster->set_ready(true);
    roster->set_threshold(2);
    return grpc::Status::OK;
  }
  grpc::Status ShareKeys(const std::string&, const v1::SecAggShareUpload&) override {
    return grpc::Status(grpc::StatusCode::ALREADY_EXISTS, "shares already taken");
  }
  grpc::Status GetInbox(const std::string&, const v1::SecAggPhaseRequest& request, v1::SecAggInbox*) override {
    Record(request);
    return grpc::Status::OK;  // ready = false
  }
  grpc::Status GetUnmaskRequest(const std::string&, const v1::SecAggPhaseRequest& request,
                                v1::SecAggUnmaskRequest*) override {
    Record(request);
    return grpc::Status::OK;
  }
  grpc::Status RevealShares(const std::string&, const v1::SecAggReveal&) override { return grpc::Status::OK; }
  std::vector<int> waits() const {
    absl::MutexLock lock(&mu_);
    return waits_;
  }

 private:
  void Record(const v1::SecAggPhaseRequest& request) {
    absl::MutexLock lock(&mu_);
    waits_.push_back(request.wait_seconds());
  }
  mutable absl::Mutex mu_;
  std::vector<int> waits_ ABSL_GUARDED_BY(mu_);
};

TEST_F(CoordinatorClientTest, SecureAggregationCallsRetryAndClampTheirLongPolls) {
  RecordingSecAgg player;
  coordinator_.service().SetSecAggPlayer(&player);
  auto client = NewClient();
  // A retried ShareKeys whose first attempt got through: ALREADY_EXISTS after a retry is success...
  coordinator_.service().FailNext("SecAggShareKeys", 1);
  EXPECT_TRUE(client->SecAggShareKeys(v1::SecAggShareUpload()).ok());
  EXPECT_EQ(coordinator_.service().calls("SecAggShareKeys"), 2);
  EXPECT_EQ(sleeps_.size(), 1u);
  // ...but not on a first attempt.
  EXPECT_EQ(client->SecAggShareKeys(v1::SecAggShareUpload()).code(), absl::StatusCode::kAlreadyExists);
  // Long-polls: the wait is clamped to 600 s; a not-ready answer is returned as is.
  v1::SecAggPhaseRequest poll;
  poll.set_wait_seconds(5000);
  auto roster = client->SecAggGetRoster(poll);
  ASSERT_TRUE(roster.ok()) << roster.status();
  EXPECT_TRUE(roster->ready());
  poll.set_wait_seconds(0);
  auto inbox = client->SecAggGetInbox(poll);
  ASSERT_TRUE(inbox.ok()) << inbox.status();
  EXPECT_FALSE(inbox->ready());
  ASSERT_TRUE(client->SecAggGetUnmaskRequest(poll).ok());
  EXPECT_THAT(player.waits(), ElementsAre(600, 0, 0));
  // UNAVAILABLE is retried; PERMISSION_DENIED is returned at once, named.
  coordinator_.service().FailNext("SecAggRevealShares", 2);
  EXPECT_TRUE(client->SecAggRevealShares(v1::SecAggReveal()).ok());
  coordinator_.service().FailNext("SecAggAdvertiseKeys", 1, grpc::StatusCode::PERMISSION_DENIED);
  const absl::Status denied = client->SecAggAdvertiseKeys(v1::SecAggKeys());
  EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(denied.message(), HasSubstr("coordinator " + coordinator_.address() + ": SecAggAdvertiseKeys"));
  EXPECT_EQ(coordinator_.service().calls("SecAggAdvertiseKeys"), 1);
  coordinator_.service().SetSecAggPlayer(nullptr);
}

}  // namespace
}  // namespace fedtune::agent
