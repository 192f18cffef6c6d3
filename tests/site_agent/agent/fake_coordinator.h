// A test seam for the site agent: a small in-test SiteService (not the real coordinator) on 127.0.0.1:0 over real
// mTLS with certificates from the project's PKI (a CA, a server certificate with SAN 127.0.0.1, a site certificate),
// whose answers the test scripts: models to serve, tasks to hand out, and faults (a download or upload cut after N
// bytes, a corrupted download, UNAVAILABLE for the first K calls of an RPC, "pending" Hellos). DeclineTask requests
// are recorded (declines()), ReportFailure requests too (failures()).
// Every call is authorized from the peer certificate with pki::CertificateVerifier, as the real coordinator does.
#ifndef FEDTUNE_TESTS_SITE_AGENT_AGENT_FAKE_COORDINATOR_H_
#define FEDTUNE_TESTS_SITE_AGENT_AGENT_FAKE_COORDINATOR_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/federation/states.h"
#include "common/io/sha256.h"
#include "common/net/grpc_status.h"
#include "common/net/tls.h"
#include "common/pki/certificate_authority.h"
#include "common/pki/verifier.h"
#include "fedtune/v1/federation.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/common/pki/pki_test_util.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::agent::testing {

// Plays the coordinator's side of secure aggregation for FakeSiteService (a test implements it). `caller` is the
// authenticated site id, `certificate_pem` the certificate it called with. Called without the fake's lock held.
class SecAggPlayer {
 public:
  virtual ~SecAggPlayer() = default;
  virtual grpc::Status AdvertiseKeys(const std::string& caller, const std::string& certificate_pem,
                                     const v1::SecAggKeys& keys) = 0;
  virtual grpc::Status GetRoster(const std::string& caller, const v1::SecAggPhaseRequest& request,
                                 v1::SecAggRoster* roster) = 0;
  virtual grpc::Status ShareKeys(const std::string& caller, const v1::SecAggShareUpload& upload) = 0;
  virtual grpc::Status GetInbox(const std::string& caller, const v1::SecAggPhaseRequest& request,
                                v1::SecAggInbox* inbox) = 0;
  virtual grpc::Status GetUnmaskRequest(const std::string& caller, const v1::SecAggPhaseRequest& request,
                                        v1::SecAggUnmaskRequest* unmask) = 0;
  virtual grpc::Status RevealShares(const std::string& caller, const v1::SecAggReveal& reveal) = 0;
};

class FakeSiteService final : public v1::SiteService::Service {
 public:
  explicit FakeSiteService(pki::CertificateVerifier* verifier) : verifier_(verifier) {}

  // --- Scripting (thread-safe) ---
  void AddModel(const std::string& bytes) {
    absl::MutexLock lock(&mu_);
    models_[io::Sha256Hex(bytes)] = bytes;
  }
  void AddTask(const v1::Task& task) {
    absl::MutexLock lock(&mu_);
    tasks_.push_back(task);
  }
  void CutNextDownloadAfter(int64_t bytes) {
    absl::MutexLock lock(&mu_);
    download_cut_ = bytes;
  }
  void CorruptDownloads(bool corrupt) {
    absl::MutexLock lock(&mu_);
    corrupt_ = corrupt;
  }
  void CutNextUploadAfter(int64_t bytes) {
    absl::MutexLock lock(&mu_);
    upload_cut_ = bytes;
  }
  // The next `count` calls of `rpc` ("Hello", "GetUploadOffset", "DownloadModel", ...) fail with `code`.
  void FailNext(const std::string& rpc, int count, grpc::StatusCode code = grpc::StatusCode::UNAVAILABLE) {
    absl::MutexLock lock(&mu_);
    fail_next_[rpc] = count;
    fail_code_[rpc] = code;
  }
  void PendingHellos(int count) {
    absl::MutexLock lock(&mu_);
    pending_hellos_ = count;
  }
  void CancelHeartbeats(bool cancel) {
    absl::MutexLock lock(&mu_);
    cancel_heartbeats_ = cancel;
  }
  // The secure aggregation calls go to `player` (not owned; outlives the service); without one they are UNIMPLEMENTED.
  void SetSecAggPlayer(SecAggPlayer* player) {
    absl::MutexLock lock(&mu_);
    secagg_ = player;
  }

  // --- Observations (thread-safe) ---
  int calls(const std::string& rpc) const {
    absl::MutexLock lock(&mu_);
    auto it = calls_.find(rpc);
    return it == calls_.end() ? 0 : it->second;
  }
  std::vector<int64_t> download_offsets() const {
    absl::MutexLock lock(&mu_);
    return download_offsets_;
  }
  std::vector<int64_t> upload_offsets() const {
    absl::MutexLock lock(&mu_);
    return upload_offsets_;
  }
  // The accepted payload of (run, round), or "" when none.
  std::string accepted_upload(const std::string& run, int round) const {
    absl::MutexLock lock(&mu_);
    auto it = accepted_.find(absl::StrCat(run, "/", round));
    return it == accepted_.end() ? "" : it->second;
  }
  v1::UploadHeader last_upload_header() const {
    absl::MutexLock lock(&mu_);
    return last_header_;
  }
  std::vector<v1::MetricsReport> reports() const {
    absl::MutexLock lock(&mu_);
    return reports_;
  }
  std::vector<v1::HeartbeatRequest> heartbeats() const {
    absl::MutexLock lock(&mu_);
    return heartbeats_;
  }
  std::vector<v1::HelloRequest> hellos() const {
    absl::MutexLock lock(&mu_);
    return hellos_;
  }
  // DeclineTask requests received, in order.
  std::vector<v1::DeclineRequest> declines() const {
    absl::MutexLock lock(&mu_);
    return declines_;
  }
  // ReportFailure requests received, in order.
  std::vector<v1::FailureReport> failures() const {
    absl::MutexLock lock(&mu_);
    return failures_;
  }
  std::set<std::string> callers() const {
    absl::MutexLock lock(&mu_);
    return callers_;
  }

  // --- SiteService ---
  grpc::Status Hello(grpc::ServerContext* context, const v1::HelloRequest* request,
                     v1::HelloResponse* response) override {
    grpc::Status status = Enter(context, "Hello");
    if (!status.ok()) return status;
    absl::MutexLock lock(&mu_);
    hellos_.push_back(*request);
    response->set_site_id(last_caller_);
    response->set_status(pending_hellos_ > 0 ? "pending" : "approved");
    if (pending_hellos_ > 0) --pending_hellos_;
    response->set_heartbeat_seconds(1);
    response->set_chunk_bytes(4096);
    response->set_coordinator_version("fake");
    return grpc::Status::OK;
  }

  grpc::Status GetTask(grpc::ServerContext* context, const v1::GetTaskRequest* request, v1::Task* task) override {
    grpc::Status status = Enter(context, "GetTask");
    if (!status.ok()) return status;
    absl::MutexLock lock(&mu_);
    auto has_task = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !tasks_.empty(); };
    mu_.AwaitWithTimeout(absl::Condition(&has_task), absl::Seconds(std::min(2, request->wait_seconds())));
    if (tasks_.empty()) {
      task->set_kind(v1::Task::NONE);
      return grpc::Status::OK;
    }
    *task = tasks_.front();
    tasks_.pop_front();
    return grpc::Status::OK;
  }

  grpc::Status Heartbeat(grpc::ServerContext* context, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override {
    grpc::Status status = Enter(context, "Heartbeat");
    if (!status.ok()) return status;
    absl::MutexLock lock(&mu_);
    heartbeats_.push_back(*request);
    if (cancel_heartbeats_) {
      response->set_cancel(true);
      response->set_reason("run aborted by the test");
      response->set_run_ended(true);
    }
    return grpc::Status::OK;
  }

  grpc::Status DownloadModel(grpc::ServerContext* context, const v1::DownloadRequest* request,
                             grpc::ServerWriter<v1::Chunk>* writer) override {
    grpc::Status status = Enter(context, "DownloadModel");
    if (!status.ok()) return status;
    std::string bytes;
    int64_t cut = 0;
    bool corrupt = false;
    {
      absl::MutexLock lock(&mu_);
      // With CancelHeartbeats, the first heartbeat (and its cancel) comes before the model.
      auto heartbeat_seen = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !heartbeats_.empty(); };
      if (cancel_heartbeats_) mu_.AwaitWithTimeout(absl::Condition(&heartbeat_seen), absl::Seconds(10));
      download_offsets_.push_back(request->offset());
      auto it = models_.find(request->digest());
      if (it == models_.end()) return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown model " + request->digest());
      bytes = it->second;
      cut = std::exchange(download_cut_, 0);
      corrupt = corrupt_;
    }
    if (corrupt) bytes[bytes.size() / 2] ^= 0x5a;
    int64_t sent = 0;
    for (int64_t offset = request->offset(); offset < static_cast<int64_t>(bytes.size()); offset += kChunk) {
      if (cut > 0 && sent >= cut) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection cut by the test");
      v1::Chunk chunk;
      chunk.set_offset(offset);
      chunk.set_data(bytes.substr(static_cast<size_t>(offset), kChunk));
      chunk.set_total_bytes(static_cast<int64_t>(bytes.size()));
      chunk.set_sha256(request->digest());
      if (!writer->Write(chunk)) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
      sent += static_cast<int64_t>(chunk.data().size());
    }
    return grpc::Status::OK;
  }

  grpc::Status GetUploadOffset(grpc::ServerContext* context, const v1::UploadOffsetRequest* request,
                               v1::UploadOffsetResponse* response) override {
    grpc::Status status = Enter(context, "GetUploadOffset");
    if (!status.ok()) return status;
    absl::MutexLock lock(&mu_);
    const std::string key = absl::StrCat(request->run_id(), "/", request->round());
    auto accepted = accepted_.find(key);
    if (accepted != accepted_.end() && io::Sha256Hex(accepted->second) == request->sha256()) {
      response->set_accepted(true);
      response->set_offset(static_cast<int64_t>(accepted->second.size()));
      return grpc::Status::OK;
    }
    auto spool = spool_.find(key + "/" + request->sha256());
    response->set_offset(spool == spool_.end() ? 0 : static_cast<int64_t>(spool->second.size()));
    return grpc::Status::OK;
  }

  grpc::Status UploadUpdate(grpc::ServerContext* context, grpc::ServerReader<v1::UploadChunk>* reader,
                            v1::UploadResponse* response) override {
    grpc::Status status = Enter(context, "UploadUpdate");
    if (!status.ok()) return status;
    v1::UploadChunk chunk;
    if (!reader->Read(&chunk) || !chunk.has_header()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the first message must be the header");
    }
    const v1::UploadHeader header = chunk.header();
    const std::string key = absl::StrCat(header.run_id(), "/", header.round());
    const std::string spool_key = key + "/" + header.sha256();
    int64_t cut = 0;
    {
      absl::MutexLock lock(&mu_);
      last_header_ = header;
      upload_offsets_.push_back(header.offset());
      if (static_cast<int64_t>(spool_[spool_key].size()) != header.offset()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            absl::StrCat("offset ", header.offset(), " but ", spool_[spool_key].size(), " held"));
      }
      cut = std::exchange(upload_cut_, 0);
    }
    int64_t received = 0;
    while (reader->Read(&chunk)) {
      absl::MutexLock lock(&mu_);
      spool_[spool_key] += chunk.data();
      received += static_cast<int64_t>(chunk.data().size());
      if (cut > 0 && received >= cut) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection cut by the test");
    }
    absl::MutexLock lock(&mu_);
    std::string payload = spool_[spool_key];
    if (static_cast<int64_t>(payload.size()) != header.total_bytes()) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "stream ended early");
    }
    spool_.erase(spool_key);
    if (io::Sha256Hex(payload) != header.sha256()) {
      return grpc::Status(grpc::StatusCode::DATA_LOSS, "tampered chunk: sha256 mismatch");
    }
    accepted_[key] = payload;
    federation::SetStatus(federation::UploadStatus::kAccepted, response);
    response->set_received_bytes(static_cast<int64_t>(payload.size()));
    return grpc::Status::OK;
  }

  grpc::Status ReportMetrics(grpc::ServerContext* context, const v1::MetricsReport* request,
                             v1::ReportMetricsResponse*) override {
    grpc::Status status = Enter(context, "ReportMetrics");
    if (!status.ok()) return status;
    absl::MutexLock lock(&mu_);
    reports_.push_back(*request);
    return grpc::Status::OK;
  }

  // Records the decline (as the coordinator records UPLOAD_STATUS_DECLINED); FAILED_PRECONDITION once an update of
  // that round was accepted, as the real coordinator answers.
  grpc::Status DeclineTask(grpc::ServerContext* context, const v1::DeclineRequest* request,
                           v1::DeclineResponse*) override {
    grpc::Status status = Enter(context, "DeclineTask");
    if (!status.ok()) return status;
    absl::MutexLock lock(&mu_);
    if (accepted_.count(absl::StrCat(request->run_id(), "/", request->round())) > 0) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "the site's update of this round was accepted");
    }
    declines_.push_back(*request);
    return grpc::Status::OK;
  }

  grpc::Status ReportFailure(grpc::ServerContext* context, const v1::FailureReport* request,
                             v1::ReportFailureResponse*) override {
    grpc::Status status = Enter(context, "ReportFailure");
    if (!status.ok()) return status;
    absl::MutexLock lock(&mu_);
    failures_.push_back(*request);
    return grpc::Status::OK;
  }

  // --- Secure aggregation: delegated to the SecAggPlayer.
  grpc::Status SecAggAdvertiseKeys(grpc::ServerContext* context, const v1::SecAggKeys* keys, v1::SecAggAck*) override {
    SecAggPlayer* player = nullptr;
    std::string caller;
    grpc::Status status = EnterSecAgg(context, "SecAggAdvertiseKeys", &player, &caller);
    if (!status.ok()) return status;
    return player->AdvertiseKeys(caller, net::PeerCertificatePem(*context), *keys);
  }
  grpc::Status SecAggGetRoster(grpc::ServerContext* context, const v1::SecAggPhaseRequest* request,
                               v1::SecAggRoster* roster) override {
    SecAggPlayer* player = nullptr;
    std::string caller;
    grpc::Status status = EnterSecAgg(context, "SecAggGetRoster", &player, &caller);
    if (!status.ok()) return status;
    return player->GetRoster(caller, *request, roster);
  }
  grpc::Status SecAggShareKeys(grpc::ServerContext* context, const v1::SecAggShareUpload* upload,
                               v1::SecAggAck*) override {
    SecAggPlayer* player = nullptr;
    std::string caller;
    grpc::Status status = EnterSecAgg(context, "SecAggShareKeys", &player, &caller);
    if (!status.ok()) return status;
    return player->ShareKeys(caller, *upload);
  }
  grpc::Status SecAggGetInbox(grpc::ServerContext* context, const v1::SecAggPhaseRequest* request,
                              v1::SecAggInbox* inbox) override {
    SecAggPlayer* player = nullptr;
    std::string caller;
    grpc::Status status = EnterSecAgg(context, "SecAggGetInbox", &player, &caller);
    if (!status.ok()) return status;
    return player->GetInbox(caller, *request, inbox);
  }
  grpc::Status SecAggGetUnmaskRequest(grpc::ServerContext* context, const v1::SecAggPhaseRequest* request,
                                      v1::SecAggUnmaskRequest* unmask) override {
    SecAggPlayer* player = nullptr;
    std::string caller;
    grpc::Status status = EnterSecAgg(context, "SecAggGetUnmaskRequest", &player, &caller);
    if (!status.ok()) return status;
    return player->GetUnmaskRequest(caller, *request, unmask);
  }
  grpc::Status SecAggRevealShares(grpc::ServerContext* context, const v1::SecAggReveal* reveal,
                                  v1::SecAggAck*) override {
    SecAggPlayer* player = nullptr;
    std::string caller;
    grpc::Status status = EnterSecAgg(context, "SecAggRevealShares", &player, &caller);
    if (!status.ok()) return status;
    return player->RevealShares(caller, *reveal);
  }

  static constexpr int64_t kChunk = 1000;  // Download chunk size (small, so a cut lands mid-file).

 private:
  // Authorizes the caller (site role), counts the call and applies FailNext.
  grpc::Status Enter(grpc::ServerContext* context, const std::string& rpc) {
    absl::StatusOr<pki::PeerIdentity> id = verifier_->Verify(net::PeerCertificatePem(*context), pki::Role::kSite);
    if (!id.ok()) return net::ToGrpcStatus(id.status());
    absl::MutexLock lock(&mu_);
    ++calls_[rpc];
    callers_.insert(id->common_name);
    last_caller_ = id->common_name;
    int& fail = fail_next_[rpc];
    if (fail > 0) {
      --fail;
      return grpc::Status(fail_code_[rpc], rpc + " failed by the test");
    }
    return grpc::Status::OK;
  }

  grpc::Status EnterSecAgg(grpc::ServerContext* context, const std::string& rpc, SecAggPlayer** player,
                           std::string* caller) {
    grpc::Status status = Enter(context, rpc);
    if (!status.ok()) return status;
    absl::MutexLock lock(&mu_);
    if (secagg_ == nullptr) return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, rpc + ": no secure aggregation");
    *player = secagg_;
    *caller = last_caller_;
    return grpc::Status::OK;
  }

  pki::CertificateVerifier* verifier_;
  mutable absl::Mutex mu_;
  SecAggPlayer* secagg_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::map<std::string, std::string> models_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::Task> tasks_ ABSL_GUARDED_BY(mu_);
  int64_t download_cut_ ABSL_GUARDED_BY(mu_) = 0;
  bool corrupt_ ABSL_GUARDED_BY(mu_) = false;
  int64_t upload_cut_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int> fail_next_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, grpc::StatusCode> fail_code_ ABSL_GUARDED_BY(mu_);
  int pending_hellos_ ABSL_GUARDED_BY(mu_) = 0;
  bool cancel_heartbeats_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::string, int> calls_ ABSL_GUARDED_BY(mu_);
  std::vector<int64_t> download_offsets_ ABSL_GUARDED_BY(mu_);
  std::vector<int64_t> upload_offsets_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> spool_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> accepted_ ABSL_GUARDED_BY(mu_);
  v1::UploadHeader last_header_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::MetricsReport> reports_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::HeartbeatRequest> heartbeats_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::HelloRequest> hellos_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::DeclineRequest> declines_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::FailureReport> failures_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> callers_ ABSL_GUARDED_BY(mu_);
  std::string last_caller_ ABSL_GUARDED_BY(mu_);
};

// A CA, the fake coordinator serving over mTLS on 127.0.0.1:0, and a site's credential files.
class FakeCoordinator {
 public:
  // Creates everything under `dir`; gtest-fails on errors.
  FakeCoordinator(const fedtune::testing::TempDir& dir, const std::string& site_id) {
    const std::string ca_dir = dir.Join("ca");
    ca_ = pki::testing::MakeCa(ca_dir, "Consortium");
    if (ca_ == nullptr) return;
    absl::StatusOr<pki::KeyPair> server_key = pki::KeyPair::Generate();
    EXPECT_TRUE(server_key.ok());
    pki::ServerCertificateSpec spec;
    spec.dns_names = {"localhost"};
    spec.ip_addresses = {"127.0.0.1"};
    absl::StatusOr<pki::IssuedCertificate> server_cert = ca_->IssueServerCertificate(*server_key, spec);
    EXPECT_TRUE(server_cert.ok()) << server_cert.status();
    auto verifier = pki::CertificateVerifier::Create(pki::VerifierOptions::ForCaDir(ca_dir));
    EXPECT_TRUE(verifier.ok()) << verifier.status();
    verifier_ = *std::move(verifier);
    service_ = std::make_unique<FakeSiteService>(verifier_.get());
    ca_pem_ = dir.WriteFile("ca.pem", ca_->ca_pem());
    net::TlsFiles server{dir.WriteFile("server.pem", server_cert->pem),
                         dir.WriteFile("server.key", *server_key->PrivateKeyPem()), ca_pem_};
    auto credentials = net::MakeServerCredentials(server);
    EXPECT_TRUE(credentials.ok()) << credentials.status();
    grpc::ServerBuilder builder;
    net::ConfigureServerBuilder(&builder);
    builder.AddListeningPort("127.0.0.1:0", *credentials, &port_);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    EXPECT_NE(server_, nullptr);
    pki::testing::Credentials site = pki::testing::Enroll(*ca_, site_id, pki::Role::kSite);
    site_cert_ = dir.WriteFile(site_id + ".pem", site.cert_pem);
    site_key_ = dir.WriteFile(site_id + ".key", site.key_pem);
  }
  ~FakeCoordinator() {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }

  FakeSiteService& service() { return *service_; }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  net::TlsFiles site_tls() const { return {site_cert_, site_key_, ca_pem_}; }
  pki::CertificateAuthority& ca() { return *ca_; }

 private:
  std::unique_ptr<pki::CertificateAuthority> ca_;
  std::unique_ptr<pki::CertificateVerifier> verifier_;
  std::unique_ptr<FakeSiteService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::string ca_pem_;
  std::string site_cert_;
  std::string site_key_;
};

}  // namespace fedtune::agent::testing

#endif  // FEDTUNE_TESTS_SITE_AGENT_AGENT_FAKE_COORDINATOR_H_
