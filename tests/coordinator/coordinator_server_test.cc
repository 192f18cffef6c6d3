// The coordinator over real gRPC with mutual TLS: certificates from the project's PKI (common/pki), the generated
// stubs as clients, a tiny model. Every refusal is checked for its code AND its audit_log row.
#include "coordinator/coordinator_server.h"

#include <openssl/crypto.h>
#include <openssl/x509.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "common/net/tls.h"
#include "common/pki/certificate.h"
#include "common/pki/csr.h"
#include "common/pki/key_pair.h"
#include "fedtune/v1/federation.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/pki/pki_test_util.h"
#include "tests/coordinator/coordinator_test_util.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::coordinator {
namespace {

using ::fedtune::coordinator::testing::ConstantDelta;
using ::fedtune::coordinator::testing::EncodeDelta;
using ::fedtune::coordinator::testing::FakeClock;
using ::fedtune::pki::testing::Credentials;
using ::fedtune::pki::testing::Enroll;
using ::fedtune::pki::testing::MakeCa;
using ::testing::HasSubstr;

std::chrono::system_clock::time_point Deadline() { return std::chrono::system_clock::now() + std::chrono::seconds(20); }

class CoordinatorServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ca_ = MakeCa(tmp_.Join("ca"), "Consortium");
    ASSERT_NE(ca_, nullptr);
    absl::StatusOr<pki::KeyPair> key = pki::KeyPair::Generate();
    ASSERT_TRUE(key.ok());
    pki::ServerCertificateSpec spec;
    spec.dns_names = {"localhost"};
    spec.ip_addresses = {"127.0.0.1"};
    absl::StatusOr<pki::IssuedCertificate> cert = ca_->IssueServerCertificate(*key, spec);
    ASSERT_TRUE(cert.ok()) << cert.status();
    tmp_.WriteFile("server.pem", cert->pem);
    tmp_.WriteFile("server.key", *key->PrivateKeyPem());
    global_ = testing::WriteTinyModel(tmp_.Join("initial.ckpt"));
    config_.set_listen_address("127.0.0.1:0");
    config_.set_port_file(tmp_.Join("port"));
    config_.set_server_cert(tmp_.Join("server.pem"));
    config_.set_server_key(tmp_.Join("server.key"));
    config_.set_ca_dir(tmp_.Join("ca"));
    config_.set_state_dir(tmp_.Join("state"));
    config_.set_initial_model(tmp_.Join("initial.ckpt"));
    config_.set_task_wait_seconds(1);
    site_a_ = Enroll(*ca_, "site-a", pki::Role::kSite);
    site_b_ = Enroll(*ca_, "site-b", pki::Role::kSite);
    site_c_ = Enroll(*ca_, "site-c", pki::Role::kSite);
    operator_ = Enroll(*ca_, "alice", pki::Role::kOperator);
    StartCoordinator();
  }

  void StartCoordinator() {
    CoordinatorOptions options;
    options.clock = clock_.AsFunction();
    options.tick_period = absl::ZeroDuration();  // The test applies deadlines with rounds()->Tick().
    auto coordinator = Coordinator::Start(config_, options);
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = *std::move(coordinator);
  }

  std::shared_ptr<grpc::Channel> Channel(const Credentials& creds, const std::string& ca_pem = "") {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = ca_pem.empty() ? ca_->ca_pem() : ca_pem;
    options.pem_private_key = creds.key_pem;
    options.pem_cert_chain = creds.cert_pem;
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(net::kMaxMessageBytes);
    args.SetMaxSendMessageSize(net::kMaxMessageBytes);
    return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", coordinator_->port()), grpc::SslCredentials(options),
                                     args);
  }
  std::unique_ptr<v1::SiteService::Stub> Site(const Credentials& creds) {
    return v1::SiteService::NewStub(Channel(creds));
  }
  std::unique_ptr<v1::AdminService::Stub> Admin() { return v1::AdminService::NewStub(Channel(operator_)); }

  static grpc::Status Hello(v1::SiteService::Stub& stub, v1::HelloResponse* out = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::HelloRequest request;
    request.mutable_dataset()->set_images(100);
    v1::HelloResponse response;
    grpc::Status status = stub.Hello(&ctx, request, &response);
    if (out != nullptr) *out = response;
    return status;
  }
  static grpc::Status GetTask(v1::SiteService::Stub& stub, v1::Task* task) {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::GetTaskRequest request;
    request.set_wait_seconds(0);
    return stub.GetTask(&ctx, request, task);
  }
  grpc::Status Approve(const std::string& site) {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::SiteRequest request;
    request.set_site_id(site);
    v1::SiteResponse response;
    return Admin()->ApproveSite(&ctx, request, &response);
  }
  std::string StartRun(const std::vector<std::string>& sites, int rounds = 2) {
    v1::StartRunRequest request;
    request.mutable_config()->set_rounds(rounds);
    request.mutable_config()->set_min_sites(2);
    for (const std::string& s : sites) request.mutable_config()->add_sites(s);
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::StartRunResponse response;
    grpc::Status status = Admin()->StartRun(&ctx, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.run_id();
  }
  v1::RunStatus Status(const std::string& run) {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::RunStatusRequest request;
    request.set_run_id(run);
    v1::RunStatus status;
    grpc::Status s = Admin()->GetRunStatus(&ctx, request, &status);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return status;
  }
  // Sends header (offset `from`) and payload bytes [from, to), then half-closes. `sha` defaults to the payload's.
  static grpc::Status Upload(v1::SiteService::Stub& stub, const std::string& run, int round, const std::string& payload,
                             size_t from, size_t to, const std::string& sha = "", v1::UploadResponse* out = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::UploadResponse response;
    std::unique_ptr<grpc::ClientWriter<v1::UploadChunk>> writer = stub.UploadUpdate(&ctx, &response);
    v1::UploadChunk chunk;
    v1::UploadHeader* header = chunk.mutable_header();
    header->set_run_id(run);
    header->set_round(round);
    header->set_total_bytes(static_cast<int64_t>(payload.size()));
    header->set_sha256(sha.empty() ? io::Sha256Hex(payload) : sha);
    header->set_offset(static_cast<int64_t>(from));
    header->set_num_samples(25);
    header->set_encoding("fp32");
    bool open = writer->Write(chunk);
    for (size_t at = from; open && at < to; at += 65536) {
      v1::UploadChunk data;
      data.set_data(payload.substr(at, std::min<size_t>(65536, to - at)));
      open = writer->Write(data);
    }
    writer->WritesDone();
    grpc::Status status = writer->Finish();
    if (out != nullptr) *out = response;
    return status;
  }
  static grpc::Status UploadAll(v1::SiteService::Stub& stub, const std::string& run, int round,
                                const std::string& payload, v1::UploadResponse* out = nullptr) {
    return Upload(stub, run, round, payload, 0, payload.size(), "", out);
  }
  static v1::UploadOffsetResponse Offset(v1::SiteService::Stub& stub, const std::string& run, int round,
                                         const std::string& sha, grpc::Status* status_out = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::UploadOffsetRequest request;
    request.set_run_id(run);
    request.set_round(round);
    request.set_sha256(sha);
    v1::UploadOffsetResponse response;
    grpc::Status status = stub.GetUploadOffset(&ctx, request, &response);
    if (status_out != nullptr) *status_out = status;
    return response;
  }
  static std::string Download(v1::SiteService::Stub& stub, const std::string& digest, int64_t offset,
                              grpc::Status* status_out) {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::DownloadRequest request;
    request.set_digest(digest);
    request.set_offset(offset);
    auto reader = stub.DownloadModel(&ctx, request);
    v1::Chunk chunk;
    std::string data;
    while (reader->Read(&chunk)) {
      EXPECT_EQ(chunk.offset(), offset + static_cast<int64_t>(data.size()));
      EXPECT_EQ(chunk.sha256(), digest);
      data += chunk.data();
    }
    *status_out = reader->Finish();
    return data;
  }
  // Hello + approval for each site.
  void Enrol(std::initializer_list<const Credentials*> sites) {
    for (const Credentials* creds : sites) {
      auto stub = Site(*creds);
      ASSERT_TRUE(Hello(*stub).ok());
    }
    for (const char* id : {"site-a", "site-b", "site-c"}) ASSERT_TRUE(Approve(id).ok());
  }
  // Audit rows matching rpc, cn and code.
  int AuditCount(const std::string& rpc, const std::string& cn, const std::string& code) {
    auto rows = coordinator_->store()->ListAudit();
    EXPECT_TRUE(rows.ok());
    int n = 0;
    for (const AuditRecord& r : *rows) {
      if (r.rpc == rpc && r.peer_cn == cn && r.code == code) {
        EXPECT_EQ(r.decision, code == "OK" ? "allow" : "deny");
        EXPECT_FALSE(r.peer_address.empty());
        ++n;
      }
    }
    return n;
  }
  std::string Delta(double value) { return EncodeDelta(ConstantDelta(global_, value)); }

  fedtune::testing::TempDir tmp_;
  FakeClock clock_;
  std::unique_ptr<pki::CertificateAuthority> ca_;
  v1::CoordinatorConfig config_;
  fl::TensorMap global_;
  Credentials site_a_, site_b_, site_c_, operator_;
  std::unique_ptr<Coordinator> coordinator_;
};

TEST_F(CoordinatorServerTest, RefusalsAreAuditedAndRevocationAppliesToTheNextCall) {
  // No client certificate at all.
  Credentials none;
  auto anonymous = v1::SiteService::NewStub(Channel(none));
  EXPECT_EQ(Hello(*anonymous).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(AuditCount("SiteService/Hello", "", "UNAUTHENTICATED"), 1);
  // A certificate from another CA (same consortium name, same CN).
  auto other_ca = MakeCa(tmp_.Join("other-ca"), "Consortium");
  Credentials foreign = Enroll(*other_ca, "site-a", pki::Role::kSite);
  auto foreign_stub = v1::SiteService::NewStub(Channel(foreign));
  grpc::Status foreign_status = Hello(*foreign_stub);
  EXPECT_EQ(foreign_status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << foreign_status.error_message();
  // An expired certificate.
  pki::IssueOptions past;
  past.not_before = absl::Now() - absl::Hours(48);
  past.not_after = absl::Now() - absl::Hours(24);
  Credentials expired = Enroll(*ca_, "site-old", pki::Role::kSite, past);
  EXPECT_EQ(Hello(*Site(expired)).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // Refused certificates are audited under the CN they claim (unverified), the anonymous call under "".
  EXPECT_EQ(AuditCount("SiteService/Hello", "", "UNAUTHENTICATED"), 1);
  EXPECT_EQ(AuditCount("SiteService/Hello", "site-a", "UNAUTHENTICATED"), 1);
  EXPECT_EQ(AuditCount("SiteService/Hello", "site-old", "UNAUTHENTICATED"), 1);

  // A site calling an operator RPC, and an operator calling a site RPC.
  auto site_a = Site(site_a_);
  v1::HelloResponse hello;
  ASSERT_TRUE(Hello(*site_a, &hello).ok());
  EXPECT_EQ(hello.site_id(), "site-a");
  EXPECT_EQ(hello.status(), "pending");
  {
    auto as_admin = v1::AdminService::NewStub(Channel(site_a_));
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::ListSitesResponse sites;
    grpc::Status status = as_admin->ListSites(&ctx, v1::ListSitesRequest(), &sites);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_EQ(AuditCount("AdminService/ListSites", "site-a", "PERMISSION_DENIED"), 1);
  }
  EXPECT_EQ(Hello(*Site(operator_)).error_code(), grpc::StatusCode::PERMISSION_DENIED);

  // Pending: Hello yes, tasks no.
  v1::Task task;
  grpc::Status pending = GetTask(*site_a, &task);
  EXPECT_EQ(pending.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(pending.error_message(), HasSubstr("run `fedtune sites approve site-a`"));
  EXPECT_EQ(AuditCount("SiteService/GetTask", "site-a", "PERMISSION_DENIED"), 1);
  ASSERT_TRUE(Approve("site-a").ok());
  ASSERT_TRUE(GetTask(*site_a, &task).ok());
  EXPECT_EQ(task.kind(), v1::Task::NONE);
  EXPECT_EQ(AuditCount("SiteService/GetTask", "site-a", "OK"), 1);

  // The certificate revoked at the CA while the channel is open: the same channel's next call is refused.
  ASSERT_TRUE(ca_->RevokeSerial(site_a_.serial).ok());
  grpc::Status revoked = GetTask(*site_a, &task);
  EXPECT_EQ(revoked.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(revoked.error_message(), HasSubstr("revoked"));
  EXPECT_EQ(AuditCount("SiteService/GetTask", "site-a", "PERMISSION_DENIED"), 2);

  // The site revoked in the registry (`fedtune sites revoke`): refused from its next call, Hello included.
  auto site_b = Site(site_b_);
  ASSERT_TRUE(Hello(*site_b).ok());
  ASSERT_TRUE(Approve("site-b").ok());
  ASSERT_TRUE(GetTask(*site_b, &task).ok());
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::SiteRequest request;
    request.set_site_id("site-b");
    v1::SiteResponse response;
    ASSERT_TRUE(Admin()->RevokeSite(&ctx, request, &response).ok());
    EXPECT_EQ(response.site().status(), "revoked");
  }
  EXPECT_EQ(GetTask(*site_b, &task).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Hello(*site_b).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(AuditCount("SiteService/Hello", "site-b", "PERMISSION_DENIED"), 1);
}

TEST_F(CoordinatorServerTest, RoundOverGrpcWithRefusalsResumeAndIdempotency) {
  Enrol({&site_a_, &site_b_, &site_c_});
  const std::string run = StartRun({"site-a", "site-b"});
  ASSERT_FALSE(run.empty());
  auto site_a = Site(site_a_);
  auto site_b = Site(site_b_);
  auto site_c = Site(site_c_);

  v1::Task task;
  ASSERT_TRUE(GetTask(*site_a, &task).ok());
  ASSERT_EQ(task.kind(), v1::Task::TRAIN);
  EXPECT_EQ(task.run_id(), run);
  EXPECT_EQ(task.round(), 1);
  // Download, and resume from an offset.
  grpc::Status status;
  const std::string model = Download(*site_a, task.model_digest(), 0, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(static_cast<int64_t>(model.size()), task.model_bytes());
  EXPECT_EQ(io::Sha256Hex(model), task.model_digest());
  const std::string tail = Download(*site_a, task.model_digest(), 1000, &status);
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(tail, model.substr(1000));
  Download(*site_a, std::string(64, 'f'), 0, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);

  const std::string payload = Delta(0.01);
  const std::string sha = io::Sha256Hex(payload);
  // A site that is not selected for the run.
  Offset(*site_c, run, 1, sha, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  status = UploadAll(*site_c, run, 1, payload);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(status.error_message(), HasSubstr("site-c is not selected for run " + run));
  EXPECT_EQ(AuditCount("SiteService/UploadUpdate", "site-c", "PERMISSION_DENIED"), 1);

  // A tampered chunk: the data differs from what the header's SHA-256 promises.
  std::string tampered = payload;
  tampered[tampered.size() / 2] ^= 0x01;
  status = Upload(*site_a, run, 1, tampered, 0, tampered.size(), sha);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DATA_LOSS) << status.error_message();
  EXPECT_EQ(AuditCount("SiteService/UploadUpdate", "site-a", "DATA_LOSS"), 1);
  EXPECT_EQ(Offset(*site_a, run, 1, sha).offset(), 0);  // Discarded.
  // NaN and wrong shape.
  status = UploadAll(*site_b, run, 1, testing::NanPayload(global_));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("non-finite"));
  status = UploadAll(*site_b, run, 1, testing::WrongShapePayload(global_));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("shape"));
  EXPECT_EQ(AuditCount("SiteService/UploadUpdate", "site-b", "INVALID_ARGUMENT"), 2);

  // Cut mid-stream, then resumed from GetUploadOffset.
  const size_t half = payload.size() / 2;
  status = Upload(*site_a, run, 1, payload, 0, half);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  v1::UploadOffsetResponse offset = Offset(*site_a, run, 1, sha);
  EXPECT_FALSE(offset.accepted());
  ASSERT_EQ(offset.offset(), static_cast<int64_t>(half));
  v1::UploadResponse response;
  status = Upload(*site_a, run, 1, payload, offset.offset(), payload.size(), "", &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.status(), "accepted");
  EXPECT_GT(response.l2_norm(), 0);
  // Duplicate: idempotent.
  EXPECT_TRUE(Offset(*site_a, run, 1, sha).accepted());
  status = UploadAll(*site_a, run, 1, payload, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.status(), "accepted");
  // A different payload for the same round: refused.
  EXPECT_EQ(UploadAll(*site_a, run, 1, Delta(0.02)).error_code(), grpc::StatusCode::ALREADY_EXISTS);

  // The update is recorded under the certificate's CN: nothing in the request names a site.
  v1::RunStatus run_status = Status(run);
  ASSERT_EQ(run_status.rounds_size(), 1);
  int accepted = 0;
  for (const v1::UpdateInfo& u : run_status.rounds(0).updates()) {
    if (u.status() == "accepted") {
      ++accepted;
      EXPECT_EQ(u.site_id(), "site-a");
      EXPECT_EQ(u.num_samples(), 25);
    }
  }
  EXPECT_EQ(accepted, 1);

  ASSERT_TRUE(UploadAll(*site_b, run, 1, Delta(0.03)).ok());
  run_status = Status(run);
  EXPECT_EQ(run_status.current_round(), 2);
  EXPECT_EQ(run_status.rounds(0).state(), "closed");
  ASSERT_EQ(run_status.sites_size(), 2);
  EXPECT_EQ(run_status.sites(0).site_id(), "site-a");
  EXPECT_EQ(run_status.sites(0).bytes_down(), static_cast<int64_t>(model.size() + tail.size()));
  EXPECT_GE(run_status.sites(0).bytes_up(), static_cast<int64_t>(payload.size()));
  EXPECT_GT(run_status.bytes_up(), 0);

  // Late: round 1 is closed.
  status = UploadAll(*site_a, run, 1, Delta(0.05));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), HasSubstr("run " + run + " round 1 is not open"));
  // A heartbeat for the closed round: the site's update counted, so its metrics are still wanted.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::HeartbeatRequest beat;
    beat.set_run_id(run);
    beat.set_round(1);
    v1::HeartbeatResponse answer;
    ASSERT_TRUE(site_a->Heartbeat(&ctx, beat, &answer).ok());
    EXPECT_FALSE(answer.cancel());
  }

  // The operator exports the new global model by an 8-digit prefix.
  const std::string global1 = run_status.rounds(0).result_digest();
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline());
  v1::ExportModelRequest request;
  request.set_digest(global1.substr(0, 8));
  auto reader = Admin()->ExportModel(&ctx, request);
  v1::Chunk chunk;
  std::string exported;
  while (reader->Read(&chunk)) exported += chunk.data();
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(io::Sha256Hex(exported), global1);
}

TEST_F(CoordinatorServerTest, RestartMidRoundKeepsTheAcceptedUpdate) {
  Enrol({&site_a_, &site_b_});
  const std::string run = StartRun({"site-a", "site-b"}, 1);
  ASSERT_TRUE(UploadAll(*Site(site_a_), run, 1, Delta(0.01)).ok());
  // Killed and restarted from the same state_dir (the port changes).
  coordinator_.reset();
  StartCoordinator();
  auto site_a = Site(site_a_);
  v1::Task task;
  ASSERT_TRUE(GetTask(*site_a, &task).ok());
  EXPECT_EQ(task.kind(), v1::Task::NONE);  // Its update is still counted.
  ASSERT_TRUE(UploadAll(*Site(site_b_), run, 1, Delta(0.03)).ok());
  v1::RunStatus status = Status(run);
  ASSERT_EQ(status.rounds_size(), 1);
  EXPECT_EQ(status.rounds(0).state(), "closed");
  EXPECT_THAT(status.rounds(0).message(), HasSubstr("2 update(s)"));
  EXPECT_EQ(status.state(), "evaluating");
  ASSERT_TRUE(GetTask(*site_a, &task).ok());
  EXPECT_EQ(task.kind(), v1::Task::EVALUATE);
  EXPECT_EQ(task.model_digest(), status.final_model_digest());
}

TEST_F(CoordinatorServerTest, BrokenUploadStreamResumesFromTheDurableOffset) {
  Enrol({&site_a_, &site_b_});
  const std::string run = StartRun({"site-a", "site-b"});
  auto site_a = Site(site_a_);
  const std::string payload = Delta(0.01);
  const std::string sha = io::Sha256Hex(payload);
  {
    // The connection breaks (the call is cancelled) after half the payload was written.
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::UploadResponse response;
    auto writer = site_a->UploadUpdate(&ctx, &response);
    v1::UploadChunk chunk;
    chunk.mutable_header()->set_run_id(run);
    chunk.mutable_header()->set_round(1);
    chunk.mutable_header()->set_total_bytes(static_cast<int64_t>(payload.size()));
    chunk.mutable_header()->set_sha256(sha);
    chunk.mutable_header()->set_num_samples(25);
    ASSERT_TRUE(writer->Write(chunk));
    for (size_t at = 0; at < payload.size() / 2; at += 65536) {
      v1::UploadChunk data;
      data.set_data(payload.substr(at, std::min<size_t>(65536, payload.size() / 2 - at)));
      if (!writer->Write(data)) break;
    }
    ctx.TryCancel();
    EXPECT_FALSE(writer->Finish().ok());
  }
  // As an agent does: ask for the offset and resume; ABORTED while the server still finishes the broken stream.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  grpc::Status status;
  int64_t resumed_from = -1;
  while (std::chrono::steady_clock::now() < give_up) {
    v1::UploadOffsetResponse offset = Offset(*site_a, run, 1, sha, &status);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_LE(offset.offset(), static_cast<int64_t>(payload.size() / 2));
    resumed_from = offset.offset();
    status = Upload(*site_a, run, 1, payload, static_cast<size_t>(offset.offset()), payload.size());
    if (status.error_code() != grpc::StatusCode::ABORTED) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  EXPECT_GE(resumed_from, 0);
  EXPECT_TRUE(Offset(*site_a, run, 1, sha).accepted());
}

TEST_F(CoordinatorServerTest, AutoApproveApprovesOnFirstHello) {
  coordinator_.reset();
  config_.set_auto_approve(true);
  StartCoordinator();
  auto site_a = Site(site_a_);
  v1::HelloResponse hello;
  ASSERT_TRUE(Hello(*site_a, &hello).ok());
  EXPECT_EQ(hello.status(), "approved");
  v1::Task task;
  EXPECT_TRUE(GetTask(*site_a, &task).ok());
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline());
  v1::ListSitesResponse sites;
  ASSERT_TRUE(Admin()->ListSites(&ctx, v1::ListSitesRequest(), &sites).ok());
  ASSERT_EQ(sites.sites_size(), 1);
  EXPECT_EQ(sites.sites(0).site_id(), "site-a");
  EXPECT_EQ(sites.sites(0).dataset().images(), 100);
  EXPECT_EQ(sites.sites(0).certificate_serial(), site_a_.serial);
}

TEST(CoordinatorBinaryTest, WritesThePortFileAndExitsZeroOnSigterm) {
  fedtune::testing::TempDir tmp;
  auto ca = MakeCa(tmp.Join("ca"), "Consortium");
  ASSERT_NE(ca, nullptr);
  absl::StatusOr<pki::KeyPair> key = pki::KeyPair::Generate();
  ASSERT_TRUE(key.ok());
  pki::ServerCertificateSpec spec;
  spec.ip_addresses = {"127.0.0.1"};
  auto cert = ca->IssueServerCertificate(*key, spec);
  ASSERT_TRUE(cert.ok());
  tmp.WriteFile("server.pem", cert->pem);
  tmp.WriteFile("server.key", *key->PrivateKeyPem());
  // Paths relative to the config file's directory.
  const std::string config = tmp.WriteFile("coordinator.textproto",
                                           "listen_address: \"127.0.0.1:0\"\n"
                                           "port_file: \"run/port\"\n"
                                           "server_cert: \"server.pem\"\n"
                                           "server_key: \"server.key\"\n"
                                           "ca_dir: \"ca\"\n"
                                           "state_dir: \"state\"\n");
  ASSERT_TRUE(io::MakeDirectories(tmp.Join("run")).ok());
  const std::string binary = fedtune::testing::BinPath("fedtune-coordinator");
  ASSERT_TRUE(std::filesystem::exists(binary)) << binary;
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl(binary.c_str(), binary.c_str(), "--config", config.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  std::string port;
  while (std::chrono::steady_clock::now() < give_up) {
    absl::StatusOr<std::string> text = io::ReadFile(tmp.Join("run/port"));
    if (text.ok()) {
      port = std::string(absl::StripAsciiWhitespace(*text));
      break;
    }
    int wstatus = 0;
    ASSERT_EQ(waitpid(pid, &wstatus, WNOHANG), 0) << "fedtune-coordinator exited early";
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_FALSE(port.empty()) << "no port file";
  EXPECT_GT(std::stoi(port), 0);
  EXPECT_TRUE(std::filesystem::exists(tmp.Join("state/coordinator.db")));
  // It answers: an unauthenticated call is refused by the application (not by the handshake).
  {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = ca->ca_pem();
    auto stub = v1::SiteService::NewStub(grpc::CreateChannel("127.0.0.1:" + port, grpc::SslCredentials(options)));
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::HelloResponse hello;
    EXPECT_EQ(stub->Hello(&ctx, v1::HelloRequest(), &hello).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }

  ASSERT_EQ(kill(pid, SIGTERM), 0);
  int wstatus = 0;
  ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
  ASSERT_TRUE(WIFEXITED(wstatus));
  EXPECT_EQ(WEXITSTATUS(wstatus), 0);
}

TEST(CoordinatorBinaryTest, RefusesAnInvalidConfigNamingTheField) {
  fedtune::testing::TempDir tmp;
  const std::string config = tmp.WriteFile("bad.textproto",
                                           "listen_address: \"127.0.0.1:0\"\n"
                                           "server_cert: \"s.pem\"\nserver_key: \"s.key\"\nca_dir: \"ca\"\n");
  std::string output;
  const int code =
      fedtune::testing::RunCommand(fedtune::testing::BinPath("fedtune-coordinator") + " --config " + config, &output);
  EXPECT_EQ(code, 2) << output;
  EXPECT_THAT(output, HasSubstr("state_dir"));
  EXPECT_THAT(output, HasSubstr("bad.textproto"));
}

// SHA-256 of a certificate's SubjectPublicKeyInfo (DER), computed here independently of common/pki.
std::string KeySha256(const std::string& cert_pem) {
  absl::StatusOr<pki::X509Ptr> cert = pki::ParseCertificatePem(cert_pem);
  EXPECT_TRUE(cert.ok()) << cert.status();
  unsigned char* der = nullptr;
  const int len = i2d_PUBKEY(X509_get0_pubkey(cert->get()), &der);
  EXPECT_GT(len, 0);
  std::string hex = io::Sha256Hex(absl::string_view(reinterpret_cast<const char*>(der), static_cast<size_t>(len)));
  OPENSSL_free(der);
  return hex;
}

// The registry pins an approved site to its certificate's key: another certificate for the same site id (another
// key, validly issued by the CA, e.g. mis-issued or after the site re-keyed) is refused on every call, audited with
// both fingerprints, until the operator accepts it.
TEST_F(CoordinatorServerTest, RegistryPinsTheSiteKey) {
  auto site_a = Site(site_a_);
  ASSERT_TRUE(Hello(*site_a).ok());
  ASSERT_TRUE(Approve("site-a").ok());
  v1::Task task;
  ASSERT_TRUE(GetTask(*site_a, &task).ok());

  // A second certificate for site-a with another key, valid at the CA (the first one revoked there).
  ASSERT_TRUE(ca_->RevokeSerial(site_a_.serial, "re-keyed").ok());
  Credentials rekeyed = Enroll(*ca_, "site-a", pki::Role::kSite);
  ASSERT_FALSE(rekeyed.cert_pem.empty());
  const std::string old_key = KeySha256(site_a_.cert_pem), new_key = KeySha256(rekeyed.cert_pem);
  ASSERT_NE(old_key, new_key);
  auto impostor = Site(rekeyed);
  grpc::Status hello = Hello(*impostor);
  EXPECT_EQ(hello.error_code(), grpc::StatusCode::PERMISSION_DENIED) << hello.error_message();
  EXPECT_THAT(hello.error_message(), HasSubstr(old_key));
  EXPECT_THAT(hello.error_message(), HasSubstr(new_key));
  grpc::Status get_task = GetTask(*impostor, &task);
  EXPECT_EQ(get_task.error_code(), grpc::StatusCode::PERMISSION_DENIED) << get_task.error_message();
  EXPECT_EQ(AuditCount("SiteService/Hello", "site-a", "PERMISSION_DENIED"), 1);
  EXPECT_EQ(AuditCount("SiteService/GetTask", "site-a", "PERMISSION_DENIED"), 1);
  auto rows = coordinator_->store()->ListAudit();
  ASSERT_TRUE(rows.ok());
  EXPECT_THAT(rows->back().message, HasSubstr(old_key));
  EXPECT_THAT(rows->back().message, HasSubstr(new_key));
  EXPECT_EQ(rows->back().serial, rekeyed.serial);

  // The operator sees the pinned key and the refused one.
  auto approve = [&](const std::string& site, bool replace_key, const std::string& expected, v1::SiteInfo* out) {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::SiteRequest request;
    request.set_site_id(site);
    request.set_replace_key(replace_key);
    request.set_expected_key_sha256(expected);
    v1::SiteResponse response;
    grpc::Status status = Admin()->ApproveSite(&ctx, request, &response);
    if (out != nullptr) *out = response.site();
    return status;
  };
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::ListSitesResponse sites;
    ASSERT_TRUE(Admin()->ListSites(&ctx, v1::ListSitesRequest(), &sites).ok());
    ASSERT_EQ(sites.sites_size(), 1);
    EXPECT_EQ(sites.sites(0).key_sha256(), old_key);
    EXPECT_EQ(sites.sites(0).offered_key_sha256(), new_key);
    EXPECT_EQ(sites.sites(0).offered_serial(), rekeyed.serial);
  }
  // A plain approval does not change the key; a wrong expected key is refused; the right one is accepted.
  ASSERT_TRUE(Approve("site-a").ok());
  EXPECT_EQ(GetTask(*impostor, &task).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(approve("site-a", true, old_key.substr(0, 16), nullptr).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(approve("site-a", true, "not-hex", nullptr).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::SiteInfo accepted;
  grpc::Status replaced = approve("site-a", true, new_key.substr(0, 16), &accepted);
  ASSERT_TRUE(replaced.ok()) << replaced.error_message();
  EXPECT_EQ(accepted.key_sha256(), new_key);
  EXPECT_EQ(accepted.offered_key_sha256(), "");
  EXPECT_EQ(accepted.status(), "approved");
  EXPECT_TRUE(Hello(*impostor).ok());
  EXPECT_TRUE(GetTask(*impostor, &task).ok());
  // Nothing left to accept.
  EXPECT_EQ(approve("site-a", true, "", nullptr).error_code(), grpc::StatusCode::FAILED_PRECONDITION);

  // A renewed certificate for the pinned key (same key, new serial) is accepted without the operator.
  absl::StatusOr<pki::KeyPair> key = pki::KeyPair::FromPrivateKeyPem(rekeyed.key_pem);
  ASSERT_TRUE(key.ok());
  pki::IssueOptions replace;
  replace.replace = true;
  absl::StatusOr<pki::IssuedCertificate> renewed =
      ca_->SignCsr(*pki::CreateCsrPem(*key, "site-a"), pki::Role::kSite, replace);
  ASSERT_TRUE(renewed.ok()) << renewed.status();
  Credentials renewed_creds{rekeyed.key_pem, renewed->pem, renewed->info.serial};
  EXPECT_TRUE(GetTask(*Site(renewed_creds), &task).ok());

  // A site approved before its first call is pinned at that call.
  ASSERT_TRUE(Approve("site-c").ok());
  ASSERT_TRUE(Hello(*Site(site_c_)).ok());
  absl::StatusOr<std::optional<SiteRecord>> c = coordinator_->store()->GetSite("site-c");
  ASSERT_TRUE(c.ok() && c->has_value());
  EXPECT_EQ((*c)->key_sha256, KeySha256(site_c_.cert_pem));
  EXPECT_EQ((*c)->status, "approved");
}

}  // namespace
}  // namespace fedtune::coordinator
