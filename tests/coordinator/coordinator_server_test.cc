// The coordinator over real gRPC with mutual TLS: certificates from the project's PKI (common/pki), the generated
// stubs as clients, a tiny model. Every refusal is checked for its code AND its audit_log row.
#include "coordinator/coordinator_server.h"

#include <httplib.h>
#include <openssl/crypto.h>
#include <openssl/x509.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "common/net/tls.h"
#include "common/pki/certificate.h"
#include "common/pki/csr.h"
#include "common/pki/key_pair.h"
#include "common/secagg/key_agreement.h"
#include "common/secagg/session.h"
#include "fedtune/v1/federation.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/pki/pki_test_util.h"
#include "tests/coordinator/coordinator_test_util.h"
#include "tests/coordinator/server_certificate.h"
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
using ::testing::Not;

std::chrono::system_clock::time_point Deadline() { return std::chrono::system_clock::now() + std::chrono::seconds(20); }

// Polls `done` until it holds or 20 s passed (the server works on its own threads; nothing here waits blindly).
bool Eventually(const std::function<bool()>& done) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!done()) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

// Threads of this process (client and server together), from /proc/self/status.
int ProcessThreads() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    int n = 0;
    if (absl::StartsWith(line, "Threads:") && absl::SimpleAtoi(absl::StripAsciiWhitespace(line.substr(8)), &n)) {
      return n;
    }
  }
  ADD_FAILURE() << "no Threads: line in /proc/self/status";
  return -1;
}

// An upload stream left open after its header and the payload's first `sent` bytes: the server's handler is still
// receiving it until Finish (the rest, then half-close) or Cancel.
class OpenUpload {
 public:
  OpenUpload(v1::SiteService::Stub& stub, const std::string& run, int round, std::string payload, size_t sent)
      : payload_(std::move(payload)), sent_(sent) {
    ctx_.set_deadline(Deadline());
    writer_ = stub.UploadUpdate(&ctx_, &response_);
    v1::UploadChunk chunk;
    v1::UploadHeader* header = chunk.mutable_header();
    header->set_run_id(run);
    header->set_round(round);
    header->set_total_bytes(static_cast<int64_t>(payload_.size()));
    header->set_sha256(io::Sha256Hex(payload_));
    header->set_num_samples(25);
    open_ = writer_->Write(chunk);
    if (open_ && sent_ > 0) {
      v1::UploadChunk data;
      data.set_data(payload_.substr(0, sent_));
      open_ = writer_->Write(data);
    }
  }
  grpc::Status Finish(v1::UploadResponse* out = nullptr) {
    for (size_t at = sent_; open_ && at < payload_.size(); at += 65536) {
      v1::UploadChunk data;
      data.set_data(payload_.substr(at, 65536));
      open_ = writer_->Write(data);
    }
    writer_->WritesDone();
    grpc::Status status = writer_->Finish();
    if (out != nullptr) *out = response_;
    return status;
  }
  grpc::Status Cancel() {
    ctx_.TryCancel();
    return writer_->Finish();
  }
  std::string sha() const { return io::Sha256Hex(payload_); }

 private:
  std::string payload_;
  size_t sent_;
  grpc::ClientContext ctx_;
  v1::UploadResponse response_;
  std::unique_ptr<grpc::ClientWriter<v1::UploadChunk>> writer_;
  bool open_ = false;
};

// Many GetTask long-polls in flight at once over one channel (the asynchronous client API).
class LongPolls {
 public:
  LongPolls(v1::SiteService::Stub& stub, int n, int wait_seconds) : calls_(n) {
    for (int i = 0; i < n; ++i) {
      Call& c = calls_[i];
      c.ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
      v1::GetTaskRequest request;
      request.set_wait_seconds(wait_seconds);
      c.rpc = stub.AsyncGetTask(&c.ctx, request, &cq_);
      c.rpc->Finish(&c.task, &c.status, reinterpret_cast<void*>(static_cast<intptr_t>(i)));
    }
  }
  ~LongPolls() {
    for (Call& c : calls_) c.ctx.TryCancel();
    while (finished_.size() < calls_.size() && Next(std::chrono::seconds(30))) {
    }
    cq_.Shutdown();
    void* tag;
    bool ok;
    while (cq_.Next(&tag, &ok)) {
    }
  }
  // Collects finished calls until `want` of them ended with `code` (true) or 20 s passed (false).
  bool WaitForFinished(grpc::StatusCode code, int want) {
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (Count(code) < want) {
      if (std::chrono::steady_clock::now() > give_up) return false;
      Next(std::chrono::seconds(1));
    }
    return true;
  }
  int Count(grpc::StatusCode code) const {
    int n = 0;
    for (int i : finished_) n += calls_[i].status.error_code() == code ? 1 : 0;
    return n;
  }
  int finished() const { return static_cast<int>(finished_.size()); }
  // Finished calls whose task is of `kind`.
  int CountTasks(v1::Task::Kind kind) const {
    int n = 0;
    for (int i : finished_) n += calls_[i].status.ok() && calls_[i].task.kind() == kind ? 1 : 0;
    return n;
  }
  // A message of a call that ended with `code` ("" when none did).
  std::string MessageOf(grpc::StatusCode code) const {
    for (int i : finished_) {
      if (calls_[i].status.error_code() == code) return calls_[i].status.error_message();
    }
    return "";
  }

 private:
  struct Call {
    grpc::ClientContext ctx;
    v1::Task task;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::Task>> rpc;
  };
  // One completion, waiting at most `wait`; false when none came.
  bool Next(std::chrono::seconds wait) {
    void* tag;
    bool ok;
    if (cq_.AsyncNext(&tag, &ok, std::chrono::system_clock::now() + wait) != grpc::CompletionQueue::GOT_EVENT) {
      return false;
    }
    finished_.push_back(static_cast<int>(reinterpret_cast<intptr_t>(tag)));
    return true;
  }
  grpc::CompletionQueue cq_;
  std::vector<Call> calls_;
  std::vector<int> finished_;
};

class CoordinatorServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ca_ = MakeCa(tmp_.Join("ca"), "Consortium");
    ASSERT_NE(ca_, nullptr);
    ASSERT_TRUE(testing::WriteLocalhostServerCertificate(*ca_, tmp_));
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

  // The spool files of `site` in `run` (state_dir/spool/<run>/r<round>-a<attempt>-<site>-<sha256>.upload).
  std::vector<std::string> SpoolFiles(const std::string& run, const std::string& site) {
    std::vector<std::string> files;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(tmp_.Join("state/spool/" + run), ec)) {
      const std::string name = entry.path().filename().string();
      if (absl::StrContains(name, "-" + site + "-")) files.push_back(entry.path().string());
    }
    return files;
  }
  std::string SpoolFile(const std::string& run, const std::string& site, const std::string& sha, int round = 1) {
    return tmp_.Join(absl::StrCat("state/spool/", run, "/r", round, "-a1-", site, "-", sha, ".upload"));
  }
  // True once the server's handler of an OpenUpload holds `bytes` of it in its spool file.
  bool Receiving(const std::string& run, const std::string& site, const OpenUpload& upload, size_t bytes) {
    const std::string path = SpoolFile(run, site, upload.sha());
    return Eventually([&] {
      std::error_code ec;
      return std::filesystem::file_size(path, ec) >= bytes && !ec;
    });
  }
  // The refused updates of `site` in the run's first round, with their messages.
  std::vector<std::string> Refusals(const std::string& run, const std::string& site) {
    std::vector<std::string> out;
    v1::RunStatus status = Status(run);
    for (const v1::RoundInfo& r : status.rounds()) {
      for (const v1::UpdateInfo& u : r.updates()) {
        if (u.site_id() == site && u.status() == "refused") out.push_back(u.message());
      }
    }
    return out;
  }
  void Restart(const std::function<void(v1::CoordinatorConfig*)>& edit) {
    coordinator_.reset();
    edit(&config_);
    StartCoordinator();
  }

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
  EXPECT_EQ(hello.site_status(), v1::SITE_STATUS_PENDING);
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
    EXPECT_EQ(response.site().site_status(), v1::SITE_STATUS_REVOKED);
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
  EXPECT_EQ(status.run_state(), v1::RUN_STATE_EVALUATING);
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

// The value of the exposition's sample line `series` ("name{labels}" as prometheus-cpp writes it); -1 when absent.
double MetricSample(const std::string& body, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    double value = -1;
    if (absl::ConsumePrefix(&line, series + " ") && absl::SimpleAtod(line, &value)) return value;
  }
  return -1;
}

TEST_F(CoordinatorServerTest, MetricsEndpointCountsCallsByMethodAndCode) {
  coordinator_.reset();
  config_.set_auto_approve(true);
  config_.set_metrics_listen_address("127.0.0.1:0");
  config_.set_metrics_port_file(tmp_.Join("metrics.port"));
  StartCoordinator();
  const int port = coordinator_->metrics_port();
  ASSERT_GT(port, 0);
  absl::StatusOr<std::string> port_file = io::ReadFile(tmp_.Join("metrics.port"));
  ASSERT_TRUE(port_file.ok()) << port_file.status();
  EXPECT_EQ(*port_file, absl::StrCat(port, "\n"));

  auto site_a = Site(site_a_);
  ASSERT_TRUE(Hello(*site_a).ok());
  v1::Task task;
  ASSERT_TRUE(GetTask(*site_a, &task).ok());
  EXPECT_EQ(Hello(*Site(operator_)).error_code(), grpc::StatusCode::PERMISSION_DENIED);

  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(10);
  httplib::Result scraped = client.Get("/metrics");
  ASSERT_TRUE(scraped) << httplib::to_string(scraped.error());
  ASSERT_EQ(scraped->status, 200);
  const std::string& body = scraped->body;
  // The interceptor counted each call by method and code (before its status reached the client).
  EXPECT_EQ(MetricSample(body, "fedtune_coordinator_rpcs_total{code=\"OK\",method=\"SiteService/Hello\"}"), 1);
  EXPECT_EQ(
      MetricSample(body, "fedtune_coordinator_rpcs_total{code=\"PERMISSION_DENIED\",method=\"SiteService/Hello\"}"), 1);
  EXPECT_EQ(MetricSample(body, "fedtune_coordinator_rpcs_total{code=\"OK\",method=\"SiteService/GetTask\"}"), 1);
  EXPECT_EQ(MetricSample(body, "fedtune_coordinator_rpc_duration_seconds_count{method=\"SiteService/Hello\"}"), 2);
  // Read at scrape time from the database, and from the site's last call (GetTask: idle).
  EXPECT_EQ(MetricSample(body, "fedtune_coordinator_runs{state=\"running\"}"), 0);
  EXPECT_EQ(MetricSample(body, "fedtune_coordinator_site_state{site=\"site-a\",state=\"idle\"}"), 1);
  EXPECT_EQ(MetricSample(body, "fedtune_coordinator_site_state{site=\"site-a\",state=\"lost\"}"), 0);
  EXPECT_GT(MetricSample(body, "fedtune_coordinator_site_last_seen_timestamp_seconds{site=\"site-a\"}"), 0);
  EXPECT_EQ(MetricSample(body, "fedtune_coordinator_spool_bytes"), 0);
  EXPECT_GT(MetricSample(body, "fedtune_process_resident_memory_bytes"), 0);

  // A second coordinator cannot take the same metrics port: Unavailable naming the address, nothing started.
  v1::CoordinatorConfig second = config_;
  second.set_state_dir(tmp_.Join("state2"));
  second.set_port_file(tmp_.Join("port2"));
  second.set_metrics_port_file(tmp_.Join("metrics2.port"));
  second.set_metrics_listen_address(absl::StrCat("127.0.0.1:", port));
  absl::StatusOr<std::unique_ptr<Coordinator>> taken = Coordinator::Start(second);
  ASSERT_FALSE(taken.ok());
  EXPECT_EQ(taken.status().code(), absl::StatusCode::kUnavailable) << taken.status();
  EXPECT_THAT(taken.status().message(), HasSubstr(absl::StrCat("127.0.0.1:", port)));
  EXPECT_FALSE(std::filesystem::exists(tmp_.Join("port2")));
}

// Finding 1: an approved site opening uploads of many distinct payloads and abandoning them must not leave a spool
// file for each until the round closes; the last one still resumes.
TEST_F(CoordinatorServerTest, AbandonedPartialUploadsAreRemovedAndDoNotAccumulate) {
  Enrol({&site_a_, &site_b_});
  const std::string run = StartRun({"site-a", "site-b"});
  auto site_a = Site(site_a_);
  std::string last;
  for (int i = 1; i <= 6; ++i) {
    last = Delta(0.001 * i);
    // Half the payload, then the stream ends (half-closed, or cancelled as a broken connection would be).
    if (i % 2 == 0) {
      OpenUpload upload(*site_a, run, 1, last, last.size() / 2);
      ASSERT_TRUE(Receiving(run, "site-a", upload, last.size() / 2));
      EXPECT_FALSE(upload.Cancel().ok());
    } else {
      EXPECT_EQ(Upload(*site_a, run, 1, last, 0, last.size() / 2).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    }
    // Each new payload supersedes the abandoned ones (the cancelled stream's handler may still be finishing).
    EXPECT_TRUE(Eventually([&] { return SpoolFiles(run, "site-a").size() <= 1; }))
        << SpoolFiles(run, "site-a").size() << " spool files after " << i << " abandoned uploads";
  }
  // A stream that ends before any data leaves nothing behind.
  {
    OpenUpload empty(*site_a, run, 1, Delta(0.5), 0);
    EXPECT_FALSE(empty.Cancel().ok());
  }
  EXPECT_TRUE(Eventually([&] { return SpoolFiles(run, "site-a").size() <= 1; }));
  // The latest partial upload still resumes, unless the empty stream above superseded it: then from 0. The
  // cancelled stream's handler may supersede it between the offset query and the upload (seen under ASan); the
  // coordinator then refuses the resume with FAILED_PRECONDITION "ask GetUploadOffset", and a client asks again, as
  // the site agent does. The cancelled stream may also still hold the spool file (its reactor ends after the client
  // saw the cancellation): ABORTED "another upload of this payload is in progress", which the agent retries too.
  const std::string sha = io::Sha256Hex(last);
  v1::UploadResponse response;
  grpc::Status status;
  for (int attempt = 0; attempt < 50; ++attempt) {
    v1::UploadOffsetResponse held = Offset(*site_a, run, 1, sha);
    ASSERT_LE(held.offset(), static_cast<int64_t>(last.size() / 2));
    status = Upload(*site_a, run, 1, last, static_cast<size_t>(held.offset()), last.size(), "", &response);
    const bool ask_again = status.error_code() == grpc::StatusCode::FAILED_PRECONDITION &&
                           status.error_message().find("GetUploadOffset") != std::string::npos;
    if (!ask_again && status.error_code() != grpc::StatusCode::ABORTED) break;
    absl::SleepFor(absl::Milliseconds(20));  // Poll: the other stream's end is not observable from here.
  }
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.status(), "accepted");
  // Only the accepted update's file remains (it is kept for recovery until the round closes).
  EXPECT_TRUE(Eventually([&] { return SpoolFiles(run, "site-a").size() == 1; }));
  EXPECT_EQ(SpoolFiles(run, "site-a"), std::vector<std::string>{SpoolFile(run, "site-a", sha)});
}

// Finding 1: the caps on open uploads and spool bytes, per site and per round.
TEST_F(CoordinatorServerTest, SpoolLimitsRefuseWithResourceExhaustedNamingTheLimit) {
  const std::string payload = Delta(0.01);
  Restart([&](v1::CoordinatorConfig* c) {
    c->set_max_upload_bytes(static_cast<int64_t>(payload.size()) + 1000);
    c->set_max_open_uploads_per_site(1);
    c->set_max_spool_bytes_per_round(static_cast<int64_t>(payload.size()) * 3 / 2);
  });
  Enrol({&site_a_, &site_b_});
  const std::string run = StartRun({"site-a", "site-b"});
  auto site_a = Site(site_a_);
  auto site_b = Site(site_b_);
  OpenUpload first(*site_a, run, 1, payload, 1000);
  ASSERT_TRUE(Receiving(run, "site-a", first, 1000));
  // A second payload of site-a while the first is still being received: over max_open_uploads_per_site.
  const std::string other = Delta(0.02);
  grpc::Status status = UploadAll(*site_a, run, 1, other);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("max_open_uploads_per_site"));
  EXPECT_THAT(status.error_message(), HasSubstr("site-a"));
  EXPECT_EQ(AuditCount("SiteService/UploadUpdate", "site-a", "RESOURCE_EXHAUSTED"), 1);
  EXPECT_FALSE(std::filesystem::exists(SpoolFile(run, "site-a", io::Sha256Hex(other))));
  // site-b's upload would bring the round's partial uploads over max_spool_bytes_per_round.
  status = UploadAll(*site_b, run, 1, Delta(0.03));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("max_spool_bytes_per_round"));
  EXPECT_EQ(AuditCount("SiteService/UploadUpdate", "site-b", "RESOURCE_EXHAUSTED"), 1);
  EXPECT_EQ(Refusals(run, "site-b").size(), 1u);
  // Once site-a's upload is accepted, its bytes no longer count: site-b gets through.
  ASSERT_TRUE(first.Finish().ok());
  status = UploadAll(*site_b, run, 1, Delta(0.03));
  EXPECT_TRUE(status.ok()) << status.error_message();
}

// Finding 2: a site may not hold more than max_streams_per_site streams (nor max_calls_per_site calls) at once.
TEST_F(CoordinatorServerTest, TheNPlusFirstConcurrentStreamOfASiteIsRefused) {
  Enrol({&site_a_, &site_b_});
  const std::string run = StartRun({"site-a", "site-b"});
  auto site_a = Site(site_a_);
  v1::Task task;
  ASSERT_TRUE(GetTask(*site_a, &task).ok());
  const std::string one = Delta(0.01), two = Delta(0.02);
  auto first = std::make_unique<OpenUpload>(*site_a, run, 1, one, 1000);
  auto second = std::make_unique<OpenUpload>(*site_a, run, 1, two, 1000);
  ASSERT_TRUE(Receiving(run, "site-a", *first, 1000));
  ASSERT_TRUE(Receiving(run, "site-a", *second, 1000));
  // A third stream of site-a (max_streams_per_site is 2 by default).
  grpc::Status status;
  Download(*site_a, task.model_digest(), 0, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("site-a"));
  EXPECT_THAT(status.error_message(), HasSubstr("max_streams_per_site 2"));
  EXPECT_EQ(AuditCount("SiteService/DownloadModel", "site-a", "RESOURCE_EXHAUSTED"), 1);
  // Another site is not affected, nor are site-a's unary calls.
  Download(*Site(site_b_), task.model_digest(), 0, &status);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(GetTask(*site_a, &task).ok());
  // When a stream ends, its slot is free again.
  EXPECT_FALSE(first->Cancel().ok());
  first.reset();
  EXPECT_TRUE(Eventually([&] {
    Download(*site_a, task.model_digest(), 0, &status);
    return status.ok();
  })) << status.error_message();
  EXPECT_FALSE(second->Cancel().ok());
}

// Issue 12: with the callback API a call's place among its site's calls is freed before the site sees the answer,
// so a site that makes one call after the other is never refused for the call it just finished.
TEST_F(CoordinatorServerTest, SequentialCallsAreNeverRefusedForTheCallBefore) {
  Restart([](v1::CoordinatorConfig* c) {
    c->set_max_calls_per_site(1);
    c->set_max_streams_per_site(1);
  });
  Enrol({&site_a_, &site_b_});
  const std::string run = StartRun({"site-a", "site-b"});
  auto site_a = Site(site_a_);
  v1::Task task;
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(GetTask(*site_a, &task).ok()) << i;
    ASSERT_EQ(task.kind(), v1::Task::TRAIN);
    grpc::Status status;
    Download(*site_a, task.model_digest(), 0, &status);
    ASSERT_TRUE(status.ok()) << i << ": " << status.error_message();
  }
  // Refused uploads (a round out of range) end as early as possible: the next stream is still admitted.
  const std::string payload = Delta(0.01);
  for (int i = 0; i < 20; ++i) {
    grpc::Status status = UploadAll(*site_a, run, 0, payload);
    ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << i << ": " << status.error_message();
  }
  ASSERT_TRUE(UploadAll(*site_a, run, 1, payload).ok());
}

// Finding 2: long-polls of one site count among its max_calls_per_site calls; the others are refused at once.
TEST_F(CoordinatorServerTest, ManyLongPollsOfOneSiteKeepTheThreadCountBounded) {
  Restart([](v1::CoordinatorConfig* c) { c->set_task_wait_seconds(60); });
  Enrol({&site_a_});
  auto site_a = Site(site_a_);
  v1::Task task;
  ASSERT_TRUE(GetTask(*site_a, &task).ok());  // The channel and the server's threads are up.
  const int before = ProcessThreads();
  constexpr int kPolls = 100;
  LongPolls polls(*site_a, kPolls, 60);
  const int limit = config_.max_calls_per_site();  // 8 by default.
  ASSERT_TRUE(polls.WaitForFinished(grpc::StatusCode::RESOURCE_EXHAUSTED, kPolls - limit))
      << polls.Count(grpc::StatusCode::RESOURCE_EXHAUSTED) << " of " << kPolls << " refused";
  EXPECT_EQ(polls.finished(), kPolls - limit);  // The others still wait for a task.
  EXPECT_THAT(polls.MessageOf(grpc::StatusCode::RESOURCE_EXHAUSTED), HasSubstr("site-a"));
  EXPECT_THAT(polls.MessageOf(grpc::StatusCode::RESOURCE_EXHAUSTED), HasSubstr("max_calls_per_site 8"));
  // The refused calls' handler threads end on their own; the held ones stay for the long-polls' 60 s.
  int during = 0;
  EXPECT_TRUE(Eventually([&] { return (during = ProcessThreads()) <= before + limit + 16; }))
      << "threads before " << before << ", with " << kPolls << " long-polls " << during;
}

// Issue 12: a long-poll holds no server thread (gRPC's callback API, TaskWaiters): 300 waiting calls cost no more
// threads than a few, and starting a run answers every one of them with its task.
TEST_F(CoordinatorServerTest, LongPollsHoldNoThreadEach) {
  Restart([](v1::CoordinatorConfig* c) {
    c->set_task_wait_seconds(60);
    c->set_max_calls_per_site(1000);
  });
  Enrol({&site_a_, &site_b_});
  auto site_a = Site(site_a_);
  v1::Task task;
  ASSERT_TRUE(GetTask(*site_a, &task).ok());  // The channel and the server's threads are up.
  const int before = ProcessThreads();
  constexpr int kPolls = 300;
  LongPolls polls(*site_a, kPolls, 60);
  ASSERT_TRUE(Eventually([&] { return coordinator_->site_service()->waiting_long_polls() == kPolls; }))
      << coordinator_->site_service()->waiting_long_polls() << " of " << kPolls << " waiting";
  const int during = ProcessThreads();
  // The synchronous server took one thread per call here (300+); gRPC's client side of the test counts too.
  EXPECT_LE(during, before + 16) << "threads before " << before << ", with " << kPolls << " long-polls " << during;
  EXPECT_EQ(polls.finished(), 0);
  StartRun({"site-a", "site-b"});
  ASSERT_TRUE(polls.WaitForFinished(grpc::StatusCode::OK, kPolls)) << polls.Count(grpc::StatusCode::OK);
  EXPECT_EQ(polls.CountTasks(v1::Task::TRAIN), kPolls);
  EXPECT_TRUE(Eventually([&] { return coordinator_->site_service()->waiting_long_polls() == 0; }));
}

// Finding 3: a round, offset or (through the round) attempt a peer supplies is range-checked; round -1 is no
// wildcard.
TEST_F(CoordinatorServerTest, RoundsAndOffsetsFromPeersAreRangeChecked) {
  Enrol({&site_a_, &site_b_});
  const std::string run = StartRun({"site-a", "site-b"});
  auto site_a = Site(site_a_);
  const std::string payload = Delta(0.01);
  const std::string sha = io::Sha256Hex(payload);
  ASSERT_TRUE(UploadAll(*site_a, run, 1, payload).ok());
  for (int round : {-1, 0, std::numeric_limits<int32_t>::min()}) {
    grpc::Status status = UploadAll(*site_a, run, round, payload);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << round << ": " << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr("round"));
    Offset(*site_a, run, round, sha, &status);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << round << ": " << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr("round"));
  }
  // Beyond the run's rounds.
  grpc::Status status = UploadAll(*site_a, run, 3, payload);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::OUT_OF_RANGE) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("round 3"));
  // Offsets.
  status = Upload(*site_a, run, 1, Delta(0.02), 0, 0);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::ALREADY_EXISTS);  // Range-valid, but site-a is done.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::UploadResponse response;
    auto writer = Site(site_b_)->UploadUpdate(&ctx, &response);
    v1::UploadChunk chunk;
    chunk.mutable_header()->set_run_id(run);
    chunk.mutable_header()->set_round(1);
    chunk.mutable_header()->set_total_bytes(100);
    chunk.mutable_header()->set_sha256(sha);
    chunk.mutable_header()->set_offset(-5);
    chunk.mutable_header()->set_num_samples(1);
    writer->Write(chunk);
    writer->WritesDone();
    status = writer->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("offset"));
  }
  v1::Task task;
  ASSERT_TRUE(GetTask(*Site(site_b_), &task).ok());
  Download(*site_a, task.model_digest(), -1, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::OUT_OF_RANGE);
  EXPECT_THAT(status.error_message(), HasSubstr("offset"));
  // Heartbeats and metrics.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::HeartbeatRequest beat;
    beat.set_run_id(run);
    beat.set_round(-1);
    v1::HeartbeatResponse answer;
    status = site_a->Heartbeat(&ctx, beat, &answer);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("round"));
  }
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::MetricsReport report;
    report.set_run_id(run);
    report.set_round(-2);
    report.set_kind("round");
    v1::ReportMetricsResponse answer;
    status = site_a->ReportMetrics(&ctx, report, &answer);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("round"));
  }
}

// Finding 4: a site downloads only the models of runs it takes part in.
TEST_F(CoordinatorServerTest, DownloadsAreScopedToTheRunsOfTheSite) {
  Enrol({&site_a_, &site_b_, &site_c_});
  const std::string run = StartRun({"site-a", "site-b"}, 1);
  ASSERT_TRUE(UploadAll(*Site(site_a_), run, 1, Delta(0.01)).ok());
  ASSERT_TRUE(UploadAll(*Site(site_b_), run, 1, Delta(0.02)).ok());
  const v1::RunStatus status = Status(run);
  ASSERT_EQ(status.rounds_size(), 1);
  const std::string result = status.rounds(0).result_digest();
  ASSERT_FALSE(result.empty());
  grpc::Status call;
  for (const std::string& digest : {result, status.base_model_digest()}) {
    Download(*Site(site_a_), digest, 0, &call);
    EXPECT_TRUE(call.ok()) << call.error_message();
    Download(*Site(site_c_), digest, 0, &call);
    EXPECT_EQ(call.error_code(), grpc::StatusCode::PERMISSION_DENIED) << call.error_message();
    EXPECT_THAT(call.error_message(), HasSubstr("site-c"));
  }
  EXPECT_EQ(AuditCount("SiteService/DownloadModel", "site-c", "PERMISSION_DENIED"), 2);
}

// Finding 5: what a site is told names the run, round, site or field, never a path on the coordinator.
TEST_F(CoordinatorServerTest, MessagesToSitesCarryNoServerPaths) {
  Enrol({&site_a_, &site_b_});
  const std::string run = StartRun({"site-a", "site-b"});
  auto site_a = Site(site_a_);
  grpc::Status status = UploadAll(*site_a, run, 1, testing::WrongShapePayload(global_));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("shape"));
  EXPECT_THAT(status.error_message(), HasSubstr("run " + run + " round 1"));
  EXPECT_THAT(status.error_message(), Not(HasSubstr(tmp_.path())));
  EXPECT_THAT(status.error_message(), Not(HasSubstr("spool")));
  // The operator's view (refused update) keeps the detail.
  ASSERT_EQ(Refusals(run, "site-a").size(), 1u);
  // A model blob gone missing on the coordinator.
  v1::Task task;
  ASSERT_TRUE(GetTask(*site_a, &task).ok());
  ASSERT_TRUE(std::filesystem::remove(coordinator_->blobs()->PathOf(task.model_digest())));
  Download(*site_a, task.model_digest(), 0, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_THAT(status.error_message(), HasSubstr(task.model_digest()));
  EXPECT_THAT(status.error_message(), Not(HasSubstr(tmp_.path())));
}

// Finding 6: an upload whose round closed while it was received is refused like any other: its spool file is
// removed and a refused update recorded.
TEST_F(CoordinatorServerTest, AnUploadOverlappingTheRoundsCloseIsRefusedAndRecorded) {
  Enrol({&site_a_, &site_b_, &site_c_});
  const std::string run = StartRun({"site-a", "site-b", "site-c"});
  auto site_a = Site(site_a_);
  const std::string payload = Delta(0.01);
  OpenUpload late(*site_a, run, 1, payload, 1000);
  ASSERT_TRUE(Receiving(run, "site-a", late, 1000));
  ASSERT_TRUE(UploadAll(*Site(site_b_), run, 1, Delta(0.02)).ok());
  ASSERT_TRUE(UploadAll(*Site(site_c_), run, 1, Delta(0.03)).ok());
  clock_.Advance(absl::Seconds(3601));
  ASSERT_TRUE(coordinator_->rounds()->Tick().ok());  // Closes round 1 with site-b and site-c (min_sites 2).
  ASSERT_EQ(Status(run).current_round(), 2);
  grpc::Status status = late.Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("round 1 is not open"));
  EXPECT_EQ(AuditCount("SiteService/UploadUpdate", "site-a", "FAILED_PRECONDITION"), 1);
  const std::vector<std::string> refused = Refusals(run, "site-a");
  ASSERT_EQ(refused.size(), 1u);
  EXPECT_THAT(refused[0], HasSubstr("not open"));
  EXPECT_TRUE(SpoolFiles(run, "site-a").empty());
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
  EXPECT_EQ((*c)->status, federation::SiteStatus::kApproved);
}

// DeclineTask and the secure aggregation calls over gRPC with mutual TLS: the caller is the certificate's CN, the
// keys' signature is checked against the certificate the site called with (the AuthContext's PEM), a phase long-poll
// is answered once the phase ended, and refusals are audited.
TEST_F(CoordinatorServerTest, DeclineAndSecureAggregationCallsOverGrpc) {
  Enrol({&site_a_, &site_b_, &site_c_});
  v1::StartRunRequest start;
  start.mutable_config()->set_rounds(1);
  start.mutable_config()->set_min_sites(2);
  start.mutable_config()->set_secure_aggregation(true);
  for (const char* s : {"site-a", "site-b", "site-c"}) start.mutable_config()->add_sites(s);
  v1::StartRunResponse started;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    ASSERT_TRUE(Admin()->StartRun(&ctx, start, &started).ok());
  }
  const std::string run = started.run_id();
  auto a = Site(site_a_);
  auto c = Site(site_c_);
  auto decline = [&](v1::SiteService::Stub& stub, const std::string& reason) {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::DeclineRequest request;
    request.set_run_id(run);
    request.set_round(1);
    request.set_attempt(1);
    request.set_reason(reason);
    request.mutable_privacy()->set_epsilon(3.5);
    v1::DeclineResponse response;
    return stub.DeclineTask(&ctx, request, &response);
  };
  ASSERT_TRUE(decline(*c, "privacy budget").ok());
  ASSERT_TRUE(decline(*c, "privacy budget").ok());  // Idempotent.
  grpc::Status too_long = decline(*a, std::string(2000, 'r'));
  EXPECT_EQ(too_long.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(AuditCount("SiteService/DeclineTask", "site-a", "INVALID_ARGUMENT"), 1);
  v1::Task task;
  ASSERT_TRUE(GetTask(*c, &task).ok());
  EXPECT_EQ(task.kind(), v1::Task::NONE);
  const v1::RunStatus status = Status(run);
  ASSERT_EQ(status.rounds_size(), 1);
  ASSERT_EQ(status.rounds(0).updates_size(), 1);
  EXPECT_EQ(status.rounds(0).updates(0).upload_status(), v1::UPLOAD_STATUS_DECLINED);
  EXPECT_THAT(status.rounds(0).updates(0).message(), HasSubstr("privacy budget"));

  auto advertise = [&](const Credentials& creds) {
    auto stub = Site(creds);
    auto cipher = secagg::KeyPair::Generate();
    auto mask = secagg::KeyPair::Generate();
    auto cert_key = pki::KeyPair::FromPrivateKeyPem(creds.key_pem);
    EXPECT_TRUE(cipher.ok() && mask.ok() && cert_key.ok());
    v1::SecAggKeys keys;
    keys.set_run_id(run);
    keys.set_round(1);
    keys.set_attempt(1);
    keys.set_cipher_public_key(std::string(cipher->public_key().begin(), cipher->public_key().end()));
    keys.set_mask_public_key(std::string(mask->public_key().begin(), mask->public_key().end()));
    keys.set_num_samples(10);
    const std::string cn = &creds == &site_a_ ? "site-a" : "site-b";
    EXPECT_TRUE(secagg::SignKeys(cert_key->get(), secagg::SessionId{run, 1, 1}, cn, &keys).ok());
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::SecAggAck ack;
    return stub->SecAggAdvertiseKeys(&ctx, keys, &ack);
  };
  v1::SecAggPhaseRequest phase;
  phase.set_run_id(run);
  phase.set_round(1);
  phase.set_attempt(1);
  phase.set_wait_seconds(1);
  // The declined site takes no part.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::SecAggRoster roster;
    EXPECT_EQ(c->SecAggGetRoster(&ctx, phase, &roster).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_EQ(AuditCount("SiteService/SecAggGetRoster", "site-c", "FAILED_PRECONDITION"), 1);
  }
  ASSERT_TRUE(advertise(site_a_).ok());
  // site-a's long-poll for the roster: answered when site-b's keys complete the phase (or not ready after 1 s).
  v1::SecAggRoster roster;
  grpc::Status polled;
  std::thread poll([&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    polled = a->SecAggGetRoster(&ctx, phase, &roster);
  });
  grpc::Status b_keys = advertise(site_b_);
  poll.join();
  ASSERT_TRUE(b_keys.ok()) << b_keys.error_message();
  ASSERT_TRUE(polled.ok()) << polled.error_message();
  if (!roster.ready()) {  // The poll ended before site-b's keys: ask again, at once ready.
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    ASSERT_TRUE(a->SecAggGetRoster(&ctx, phase, &roster).ok());
  }
  ASSERT_TRUE(roster.ready());
  ASSERT_EQ(roster.peers_size(), 2);
  for (const v1::SecAggPeer& p : roster.peers()) {
    EXPECT_THAT(p.certificate_pem(), HasSubstr("BEGIN CERTIFICATE"));  // Relayed from the AuthContext.
  }
  // Allowed calls are audited like every call.
  EXPECT_GE(AuditCount("SiteService/SecAggAdvertiseKeys", "site-a", "OK"), 1);
}

// Issue 15: ListRuns, the dashboard's run history: newest first, each run without rounds and sites, bounded.
TEST_F(CoordinatorServerTest, ListRunsIsNewestFirstWithoutRoundsAndSites) {
  Enrol({&site_a_, &site_b_});
  const std::string first = StartRun({"site-a", "site-b"}, 3);
  ASSERT_FALSE(first.empty());
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::AbortRunRequest request;
    request.set_run_id(first);
    v1::RunStatus aborted;
    ASSERT_TRUE(Admin()->AbortRun(&ctx, request, &aborted).ok());
  }
  const std::string second = StartRun({"site-a", "site-b"}, 2);
  ASSERT_FALSE(second.empty());
  auto list = [&](int limit, v1::ListRunsResponse* out) {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::ListRunsRequest request;
    request.set_limit(limit);
    return Admin()->ListRuns(&ctx, request, out);
  };
  v1::ListRunsResponse runs;
  grpc::Status status = list(0, &runs);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(runs.runs_size(), 2);
  EXPECT_EQ(runs.runs(0).run_id(), second);
  EXPECT_EQ(runs.runs(1).run_id(), first);
  EXPECT_EQ(runs.runs(0).run_state(), v1::RUN_STATE_RUNNING);
  EXPECT_EQ(runs.runs(1).run_state(), v1::RUN_STATE_ABORTED);
  EXPECT_EQ(runs.runs(1).config().rounds(), 3);
  EXPECT_GT(runs.runs(0).started_ms(), 0);
  EXPECT_FALSE(runs.runs(0).base_model_digest().empty());
  for (const v1::RunStatus& run : runs.runs()) {
    EXPECT_EQ(run.rounds_size(), 0) << run.run_id();
    EXPECT_EQ(run.sites_size(), 0) << run.run_id();
  }
  v1::ListRunsResponse one;
  ASSERT_TRUE(list(1, &one).ok());
  ASSERT_EQ(one.runs_size(), 1);
  EXPECT_EQ(one.runs(0).run_id(), second);
  v1::ListRunsResponse capped;
  EXPECT_TRUE(list(1000000, &capped).ok());
  EXPECT_EQ(capped.runs_size(), 2);
  v1::ListRunsResponse negative;
  status = list(-1, &negative);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("limit"));
  // Operators only.
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline());
  v1::ListRunsResponse refused;
  EXPECT_EQ(v1::AdminService::NewStub(Channel(site_a_))->ListRuns(&ctx, v1::ListRunsRequest(), &refused).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
}

}  // namespace
}  // namespace fedtune::coordinator
