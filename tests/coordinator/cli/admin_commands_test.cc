// The operator commands end to end against a FAKE AdminService (a test seam: the real coordinator is tested in
// tests/integration/) over REAL mutual TLS: the CA, the coordinator's server certificate and the operator's and a
// site's client certificates are made by common/pki, the server uses net::MakeServerCredentials and authorizes every
// call with pki::CertificateVerifier as the coordinator does.
#include "coordinator/cli/admin_commands.h"

#include <grpcpp/grpcpp.h>

#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/federation/states.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "common/net/grpc_status.h"
#include "common/net/tls.h"
#include "common/pki/certificate_authority.h"
#include "common/pki/verifier.h"
#include "fedtune/v1/federation.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/common/pki/pki_test_util.h"
#include "tests/coordinator/cli/run_report_fixture.h"
#include "tests/coordinator/cli/terminal_check.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::admin {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// What the fake coordinator knows and records. Guarded by its mutex.
class FakeAdminService final : public v1::AdminService::Service {
 public:
  explicit FakeAdminService(pki::CertificateVerifier* verifier) : verifier_(verifier) {
    v1::SiteInfo a;
    a.set_site_id("site-a");
    a.set_status("approved");
    a.set_last_seen_ms(1'700'000'000'000 - 5'000);
    a.set_certificate_serial("2");
    a.set_state("training epoch 1/2");
    a.mutable_dataset()->set_images(640);
    a.mutable_dataset()->set_train_images(450);
    a.mutable_dataset()->set_validation_images(90);
    a.mutable_dataset()->set_test_images(100);
    sites_["site-a"] = a;
    v1::SiteInfo b;
    b.set_site_id("site-b");
    b.set_status("pending");
    b.set_key_sha256(std::string(64, 'b'));
    b.set_offered_key_sha256("c0ffee" + std::string(58, 'c'));
    b.set_offered_serial("9");
    sites_["site-b"] = b;
  }

  // Export payload and behaviour.
  void SetModel(std::string bytes, int64_t chunk, int64_t break_after_bytes, bool corrupt) {
    absl::MutexLock lock(&mu_);
    model_ = std::move(bytes);
    chunk_ = chunk;
    break_after_ = break_after_bytes;
    corrupt_ = corrupt;
  }
  // GetRunStatus answers these states one after the other (the last one repeats).
  void SetRunStates(std::vector<std::string> states) {
    absl::MutexLock lock(&mu_);
    run_states_ = std::move(states);
  }

  std::vector<int64_t> export_offsets() {
    absl::MutexLock lock(&mu_);
    return export_offsets_;
  }
  int calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }
  std::vector<v1::RunConfig> started() {
    absl::MutexLock lock(&mu_);
    return started_;
  }
  v1::SiteInfo site(const std::string& id) {
    absl::MutexLock lock(&mu_);
    return sites_[id];
  }
  std::string last_reason() {
    absl::MutexLock lock(&mu_);
    return last_reason_;
  }
  std::string last_run_requested() {
    absl::MutexLock lock(&mu_);
    return last_run_requested_;
  }
  int status_calls() {
    absl::MutexLock lock(&mu_);
    return status_calls_;
  }

  grpc::Status ListSites(grpc::ServerContext* ctx, const v1::ListSitesRequest*, v1::ListSitesResponse* out) override {
    if (grpc::Status s = Authorize(ctx); !s.ok()) return s;
    absl::MutexLock lock(&mu_);
    for (const auto& [id, site] : sites_) *out->add_sites() = site;
    return grpc::Status::OK;
  }
  grpc::Status ApproveSite(grpc::ServerContext* ctx, const v1::SiteRequest* req, v1::SiteResponse* out) override {
    if (req->replace_key()) {
      absl::MutexLock lock(&mu_);
      auto it = sites_.find(req->site_id());
      if (it == sites_.end() || it->second.offered_key_sha256().empty() ||
          it->second.offered_key_sha256().rfind(req->expected_key_sha256(), 0) != 0) {
        return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "no such offered key");
      }
      it->second.set_key_sha256(it->second.offered_key_sha256());
      it->second.clear_offered_key_sha256();
      it->second.clear_offered_serial();
    }
    return SetSiteStatus(ctx, *req, "approved", out);
  }
  grpc::Status RevokeSite(grpc::ServerContext* ctx, const v1::SiteRequest* req, v1::SiteResponse* out) override {
    return SetSiteStatus(ctx, *req, "revoked", out);
  }
  grpc::Status StartRun(grpc::ServerContext* ctx, const v1::StartRunRequest* req, v1::StartRunResponse* out) override {
    if (grpc::Status s = Authorize(ctx); !s.ok()) return s;
    absl::MutexLock lock(&mu_);
    started_.push_back(req->config());
    out->set_run_id(absl::StrCat("run-", started_.size()));
    return grpc::Status::OK;
  }
  grpc::Status GetRunStatus(grpc::ServerContext* ctx, const v1::RunStatusRequest* req, v1::RunStatus* out) override {
    if (grpc::Status s = Authorize(ctx); !s.ok()) return s;
    absl::MutexLock lock(&mu_);
    last_run_requested_ = req->run_id();
    *out = admin::testing::MakeRunReport().status();
    const size_t i = std::min<size_t>(status_calls_, run_states_.size() - 1);
    ++status_calls_;
    if (run_states_[i] == "unavailable") return grpc::Status(grpc::StatusCode::UNAVAILABLE, "restarting (test)");
    out->set_state(run_states_[i]);
    if (run_states_[i] == "newer") {  // A state of a newer coordinator: an enum value this build does not know.
      out->clear_state();
      out->set_run_state(static_cast<v1::RunState>(99));
    }
    if (run_states_[i] == "failed") out->set_message("round 2 failed 3 times");
    return grpc::Status::OK;
  }
  grpc::Status ListRuns(grpc::ServerContext* ctx, const v1::ListRunsRequest* req, v1::ListRunsResponse* out) override {
    if (grpc::Status s = Authorize(ctx); !s.ok()) return s;
    absl::MutexLock lock(&mu_);
    last_list_limit_ = req->limit();
    v1::RunStatus* newest = out->add_runs();
    *newest = admin::testing::MakeRunReport().status();
    newest->clear_rounds();
    newest->clear_sites();
    v1::RunStatus* older = out->add_runs();
    older->set_run_id("run-6");
    older->set_state("aborted");
    older->mutable_config()->set_rounds(5);
    older->set_current_round(3);
    return grpc::Status::OK;
  }
  int last_list_limit() {
    absl::MutexLock lock(&mu_);
    return last_list_limit_;
  }
  grpc::Status AbortRun(grpc::ServerContext* ctx, const v1::AbortRunRequest* req, v1::RunStatus* out) override {
    if (grpc::Status s = Authorize(ctx); !s.ok()) return s;
    absl::MutexLock lock(&mu_);
    if (!req->run_id().empty() && req->run_id() != "run-7") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no run " + req->run_id());
    }
    last_reason_ = req->reason();
    out->set_run_id("run-7");
    out->set_state("aborted");
    out->set_message("aborted by alice: " + req->reason());
    return grpc::Status::OK;
  }
  grpc::Status ExportModel(grpc::ServerContext* ctx, const v1::ExportModelRequest* req,
                           grpc::ServerWriter<v1::Chunk>* writer) override {
    if (grpc::Status s = Authorize(ctx); !s.ok()) return s;
    std::string model, sha;
    int64_t chunk_size, break_after;
    bool corrupt;
    {
      absl::MutexLock lock(&mu_);
      export_offsets_.push_back(req->offset());
      model = model_;
      chunk_size = chunk_;
      corrupt = corrupt_;
      break_after = break_after_;
      break_after_ = -1;  // Breaks once.
    }
    sha = io::Sha256Hex(model);
    if (req->digest().size() < 8 || sha.rfind(req->digest(), 0) != 0) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no model version " + req->digest());
    }
    if (req->offset() < 0 || req->offset() > static_cast<int64_t>(model.size())) {
      return grpc::Status(grpc::StatusCode::OUT_OF_RANGE, "offset beyond the model");
    }
    if (corrupt) model[model.size() / 2] ^= 0x5a;  // A tampered byte; the announced digest is of the original.
    int64_t sent = 0;
    for (int64_t pos = req->offset(); pos < static_cast<int64_t>(model.size()); pos += chunk_size) {
      if (break_after >= 0 && sent >= break_after) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection reset (test)");
      }
      v1::Chunk chunk;
      chunk.set_offset(pos);
      chunk.set_data(model.substr(pos, chunk_size));
      chunk.set_total_bytes(model.size());
      chunk.set_sha256(sha);
      if (!writer->Write(chunk)) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
      sent += static_cast<int64_t>(chunk.data().size());
    }
    return grpc::Status::OK;
  }
  grpc::Status GetRunReport(grpc::ServerContext* ctx, const v1::RunReportRequest* req, v1::RunReport* out) override {
    if (grpc::Status s = Authorize(ctx); !s.ok()) return s;
    if (!req->run_id().empty() && req->run_id() != "run-7") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no run " + req->run_id());
    }
    *out = admin::testing::MakeRunReport();
    return grpc::Status::OK;
  }

 private:
  grpc::Status Authorize(grpc::ServerContext* ctx) {
    {
      absl::MutexLock lock(&mu_);
      ++calls_;
    }
    absl::StatusOr<pki::PeerIdentity> id = verifier_->Verify(net::PeerCertificatePem(*ctx), pki::Role::kOperator);
    if (!id.ok()) return net::ToGrpcStatus(id.status());
    return grpc::Status::OK;
  }
  grpc::Status SetSiteStatus(grpc::ServerContext* ctx, const v1::SiteRequest& req, const std::string& status,
                             v1::SiteResponse* out) {
    if (grpc::Status s = Authorize(ctx); !s.ok()) return s;
    absl::MutexLock lock(&mu_);
    auto it = sites_.find(req.site_id());
    if (it == sites_.end()) return grpc::Status(grpc::StatusCode::NOT_FOUND, "no site " + req.site_id());
    it->second.set_status(status);
    last_reason_ = req.reason();
    *out->mutable_site() = it->second;
    return grpc::Status::OK;
  }

  pki::CertificateVerifier* const verifier_;
  absl::Mutex mu_;
  std::map<std::string, v1::SiteInfo> sites_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::RunConfig> started_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> run_states_ ABSL_GUARDED_BY(mu_) = {"running"};
  int last_list_limit_ ABSL_GUARDED_BY(mu_) = -1;
  int status_calls_ ABSL_GUARDED_BY(mu_) = 0;
  std::string last_run_requested_ ABSL_GUARDED_BY(mu_);
  std::string last_reason_ ABSL_GUARDED_BY(mu_);
  std::string model_ ABSL_GUARDED_BY(mu_);
  int64_t chunk_ ABSL_GUARDED_BY(mu_) = 1;
  int64_t break_after_ ABSL_GUARDED_BY(mu_) = -1;
  bool corrupt_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<int64_t> export_offsets_ ABSL_GUARDED_BY(mu_);
  int calls_ ABSL_GUARDED_BY(mu_) = 0;
};

struct Result {
  absl::Status status;
  std::string out;
  int exit_code() const { return cli::ExitCodeFor(status); }
};

class AdminCommandsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ca_dir_ = tmp_.Join("ca");
    ca_ = pki::testing::MakeCa(ca_dir_, "Consortium");
    ASSERT_NE(ca_, nullptr);
    absl::StatusOr<pki::KeyPair> server_key = pki::KeyPair::Generate();
    ASSERT_TRUE(server_key.ok());
    pki::ServerCertificateSpec spec;
    spec.dns_names = {"localhost"};
    spec.ip_addresses = {"127.0.0.1"};
    absl::StatusOr<pki::IssuedCertificate> server_cert = ca_->IssueServerCertificate(*server_key, spec);
    ASSERT_TRUE(server_cert.ok()) << server_cert.status();
    net::TlsFiles server_files{tmp_.WriteFile("server.pem", server_cert->pem),
                               tmp_.WriteFile("server.key", *server_key->PrivateKeyPem()),
                               tmp_.WriteFile("ca.pem", ca_->ca_pem())};
    pki::testing::Credentials op = pki::testing::Enroll(*ca_, "alice", pki::Role::kOperator);
    op_cert_ = tmp_.WriteFile("alice.pem", op.cert_pem);
    op_key_ = tmp_.WriteFile("alice.key", op.key_pem);
    site_ = pki::testing::Enroll(*ca_, "site-a", pki::Role::kSite);
    site_cert_ = tmp_.WriteFile("site-a.pem", site_.cert_pem);
    site_key_ = tmp_.WriteFile("site-a.key", site_.key_pem);
    ca_pem_ = server_files.ca;

    auto verifier = pki::CertificateVerifier::Create(pki::VerifierOptions::ForCaDir(ca_dir_));
    ASSERT_TRUE(verifier.ok()) << verifier.status();
    verifier_ = *std::move(verifier);
    service_ = std::make_unique<FakeAdminService>(verifier_.get());
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds = net::MakeServerCredentials(server_files);
    ASSERT_TRUE(creds.ok()) << creds.status();
    grpc::ServerBuilder builder;
    net::ConfigureServerBuilder(&builder);
    builder.AddListeningPort("127.0.0.1:0", *creds, &port_);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
    env_ = {{"FEDTUNE_COORDINATOR", absl::StrCat("127.0.0.1:", port_)},
            {"FEDTUNE_CERT", op_cert_},
            {"FEDTUNE_KEY", op_key_},
            {"FEDTUNE_CA", ca_pem_},
            {"FEDTUNE_TIMEOUT", "20"}};
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }

  CommandEnvironment Environment(std::ostringstream* out) {
    CommandEnvironment e;
    e.out = out;
    e.env = [this](const std::string& name) -> std::optional<std::string> {
      auto it = env_.find(name);
      if (it == env_.end()) return std::nullopt;
      return it->second;
    };
    e.sleep = [this](absl::Duration d) { sleeps_.push_back(d); };
    e.now = [] { return absl::FromUnixMillis(1'700'000'000'000); };
    e.export_options.retry_backoff = absl::ZeroDuration();
    return e;
  }

  // Runs the command that `make` builds with `args`, as `fedtune` would after dispatching.
  Result Run(cli::Command (*make)(CommandEnvironment), const std::vector<std::string>& args) {
    std::ostringstream out;
    cli::Command command = make(Environment(&out));
    absl::StatusOr<cli::ParsedFlags> flags = cli::ParseFlags(args, command.flags, command.max_positional);
    if (!flags.ok()) return {flags.status(), ""};
    absl::Status status = command.run(*flags);
    return {status, out.str()};
  }

  fedtune::testing::TempDir tmp_;
  std::string ca_dir_, op_cert_, op_key_, site_cert_, site_key_, ca_pem_;
  pki::testing::Credentials site_;
  std::unique_ptr<pki::CertificateAuthority> ca_;
  std::unique_ptr<pki::CertificateVerifier> verifier_;
  std::unique_ptr<FakeAdminService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::map<std::string, std::string> env_;
  std::vector<absl::Duration> sleeps_;
};

TEST_F(AdminCommandsTest, SitesList) {
  Result r = Run(MakeSitesListCommand, {});
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_THAT(r.out, HasSubstr("site    status    last seen  images  dataset"));
  EXPECT_THAT(r.out, HasSubstr("site-a  approved  5s ago"));
  EXPECT_THAT(r.out, HasSubstr("640  train 450, val 90, test 100"));
  EXPECT_THAT(r.out, HasSubstr("training epoch 1/2"));
  EXPECT_THAT(r.out, HasSubstr("site-b  pending   never"));
}

TEST_F(AdminCommandsTest, SitesApprove) {
  Result r = Run(MakeSitesApproveCommand, {"site-b"});
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_THAT(r.out, ::testing::StartsWith("site site-b: approved\n  pinned key sha256 bbbb"));
  // A plain approval leaves the key alone and says how to accept the refused one.
  EXPECT_THAT(r.out, HasSubstr("refused new key sha256 c0ffee"));
  EXPECT_THAT(r.out, HasSubstr("(certificate serial 9): accept it with `fedtune sites approve site-b --replace-key`"));
  EXPECT_EQ(service_->site("site-b").status(), "approved");
  r = Run(MakeSitesApproveCommand, {"site-z"});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(r.status.message(), HasSubstr("ApproveSite"));
  EXPECT_THAT(r.status.message(), HasSubstr("no site site-z"));
  EXPECT_EQ(r.exit_code(), cli::kExitBadInput);
  r = Run(MakeSitesApproveCommand, {});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(AdminCommandsTest, SitesApproveReplaceKeyAcceptsTheOfferedKey) {
  Result r = Run(MakeSitesListCommand, {});
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_THAT(r.out, HasSubstr("key sha256"));
  EXPECT_THAT(r.out, HasSubstr("bbbbbbbbbbbbbbbb (refused new key c0ffeecccccccccc)"));
  r = Run(MakeSitesApproveCommand, {"site-b", "--key-sha256", "c0ffee"});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument) << r.status;  // Needs --replace-key.
  r = Run(MakeSitesApproveCommand, {"site-b", "--replace-key", "--key-sha256", "deadbeef"});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kFailedPrecondition) << r.status;
  EXPECT_EQ(service_->site("site-b").status(), "pending");
  r = Run(MakeSitesApproveCommand, {"site-b", "--replace-key", "--key-sha256", "c0ffeecc"});
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.out, "site site-b: approved\n  pinned key sha256 c0ffee" + std::string(58, 'c') + "\n");
  EXPECT_EQ(service_->site("site-b").key_sha256(), "c0ffee" + std::string(58, 'c'));
}

TEST_F(AdminCommandsTest, SitesRevokeAtCoordinatorOnly) {
  Result r = Run(MakeSitesRevokeCommand, {"site-a", "--reason", "left the consortium"});
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.out, "site site-a: revoked (certificate serial 2)\n");
  EXPECT_EQ(service_->site("site-a").status(), "revoked");
  EXPECT_EQ(service_->last_reason(), "left the consortium");
  // The certificate itself is untouched.
  EXPECT_TRUE(verifier_->Verify(site_.cert_pem, pki::Role::kSite).ok());
}

TEST_F(AdminCommandsTest, SitesRevokeWithCaDirRevokesTheCertificateEverywhere) {
  ASSERT_TRUE(verifier_->Verify(site_.cert_pem, pki::Role::kSite).ok());
  Result r = Run(MakeSitesRevokeCommand, {"site-a", "--reason", "stolen laptop", "--ca-dir", ca_dir_});
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("revoked certificate serial(s) ", site_.serial, " of site site-a")));
  EXPECT_THAT(r.out, HasSubstr("CRL re-issued"));
  EXPECT_EQ(service_->site("site-a").status(), "revoked");
  absl::StatusOr<pki::CaIndex> index = ca_->ReadIndex();
  ASSERT_TRUE(index.ok());
  const pki::IndexEntry* entry = index->FindBySerial(site_.serial);
  ASSERT_NE(entry, nullptr);
  EXPECT_EQ(entry->status, pki::CertificateStatus::kRevoked);
  EXPECT_EQ(entry->reason, "stolen laptop");
  // Every verifier reading the CA refuses the certificate now (the verifier re-reads changed files).
  absl::StatusOr<pki::PeerIdentity> id = verifier_->Verify(site_.cert_pem, pki::Role::kSite);
  EXPECT_EQ(id.status().code(), absl::StatusCode::kPermissionDenied) << id.status();
  // Again: nothing left to revoke in the CA, the CRL is re-issued, the coordinator still answers.
  r = Run(MakeSitesRevokeCommand, {"site-a", "--ca-dir", ca_dir_});
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_THAT(r.out, HasSubstr("site site-a has no valid certificate in"));
}

TEST_F(AdminCommandsTest, RunStartPrintsRunId) {
  const std::string config =
      tmp_.WriteFile("run.textproto",
                     "name: \"demo\"\nrounds: 2\nmin_sites: 2\nsites: \"site-a\"\nsites: \"site-b\"\n"
                     "compression: \"int8\"\n");
  Result r = Run(MakeRunStartCommand, {"--config", config});
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.out, "run-1\n");
  ASSERT_EQ(service_->started().size(), 1u);
  const v1::RunConfig sent = service_->started()[0];
  EXPECT_EQ(sent.name(), "demo");
  EXPECT_EQ(sent.rounds(), 2);
  EXPECT_EQ(sent.sites_size(), 2);
  EXPECT_EQ(sent.compression(), "int8");
}

TEST_F(AdminCommandsTest, RunStartRefusesInvalidConfigLocally) {
  const std::string config = tmp_.WriteFile("bad.textproto", "rounds: 2\ncompression: \"zip\"\n");
  Result r = Run(MakeRunStartCommand, {"--config", config});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status.message(), HasSubstr("bad.textproto"));
  EXPECT_THAT(r.status.message(), HasSubstr("'compression'"));
  EXPECT_EQ(r.exit_code(), cli::kExitBadInput);
  const std::string typo = tmp_.WriteFile("typo.textproto", "rounds: 2\nlocal_epoch: 3\n");
  r = Run(MakeRunStartCommand, {"--config", typo});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status.message(), HasSubstr("typo.textproto:2:"));
  EXPECT_EQ(service_->calls(), 0);  // Nothing reached the coordinator.
  EXPECT_TRUE(service_->started().empty());
}

TEST_F(AdminCommandsTest, RunStatusOnce) {
  Result r = Run(MakeRunStatusCommand, {"--run", "run-7"});
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(service_->last_run_requested(), "run-7");
  EXPECT_THAT(r.out, HasSubstr("Run run-7 \"demo <b>\": running, round 2 of 2, 100% of the rounds done"));
  EXPECT_THAT(r.out, HasSubstr("traffic 5.0 MiB down, 3.0 MiB up"));
  EXPECT_THAT(r.out, HasSubstr("round  attempt  state   updates  refused  samples  mean loss  bytes up"));
  EXPECT_THAT(r.out, HasSubstr("1 of 2 min_sites at the deadline"));
  EXPECT_THAT(r.out, HasSubstr("2.9 KiB"));  // Round 1, attempt 2: 1000 + 2000 bytes.
  EXPECT_THAT(r.out, HasSubstr("site-b  done       100%"));
  EXPECT_THAT(r.out, HasSubstr("2.0 MiB  1.0 MiB"));
  EXPECT_TRUE(sleeps_.empty());
}

TEST_F(AdminCommandsTest, RunListNewestFirst) {
  Result r = Run(MakeRunListCommand, {"--limit", "5"});
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(service_->last_list_limit(), 5);
  EXPECT_THAT(r.out, HasSubstr("run    name      state"));
  EXPECT_THAT(r.out, HasSubstr("run-7  demo <b>  completed"));
  EXPECT_THAT(r.out, HasSubstr("run-6  -         aborted"));
  EXPECT_THAT(r.out, HasSubstr("3/5"));
  EXPECT_LT(r.out.find("run-7"), r.out.find("run-6"));
  EXPECT_TRUE(absl::IsInvalidArgument(Run(MakeRunListCommand, {"--limit", "0"}).status));
  EXPECT_TRUE(absl::IsInvalidArgument(Run(MakeRunListCommand, {"--limit", "1001"}).status));
}

TEST_F(AdminCommandsTest, RunStatusWatchUntilCompleted) {
  service_->SetRunStates({"running", "running", "evaluating", "completed"});
  Result r = Run(MakeRunStatusCommand, {"--watch", "--interval", "0.5"});
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(service_->status_calls(), 4);
  EXPECT_EQ(service_->last_run_requested(), "run-7");  // Follows the run the first answer named.
  ASSERT_EQ(sleeps_.size(), 3u);
  EXPECT_EQ(sleeps_[0], absl::Milliseconds(500));
  EXPECT_THAT(r.out, HasSubstr(": evaluating,"));
  EXPECT_THAT(r.out, HasSubstr(": completed,"));
}

TEST_F(AdminCommandsTest, RunStatusWatchRidesOutACoordinatorRestart) {
  service_->SetRunStates({"running", "unavailable", "unavailable", "completed"});
  Result r = Run(MakeRunStatusCommand, {"--watch", "--interval", "1"});
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_THAT(r.out, HasSubstr("restarting (test); retrying"));
  EXPECT_EQ(sleeps_.size(), 3u);
  // Without --watch the error is returned at once.
  service_->SetRunStates({"unavailable"});
  r = Run(MakeRunStatusCommand, {});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kUnavailable);
}

TEST_F(AdminCommandsTest, RunStatusWatchFailedRunExitsNonZero) {
  service_->SetRunStates({"running", "failed"});
  Result r = Run(MakeRunStatusCommand, {"--watch", "--interval", "0"});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kAborted);
  EXPECT_THAT(r.status.message(), HasSubstr("run run-7 failed: round 2 failed 3 times"));
  EXPECT_NE(r.exit_code(), 0);
  service_->SetRunStates({"aborted"});
  r = Run(MakeRunStatusCommand, {"--watch", "--interval", "0"});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kAborted);
}

TEST_F(AdminCommandsTest, RunStatusWatchRefusesAStateItDoesNotKnow) {
  service_->SetRunStates({"running", "newer"});
  Result r = Run(MakeRunStatusCommand, {"--watch", "--interval", "0"});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument) << r.status;
  EXPECT_THAT(r.status.message(), HasSubstr("RunStatus.run_state"));
  EXPECT_THAT(r.out, HasSubstr("Run run-7 \"demo <b>\": unknown (99), round 2"));
}

// The states print the same whether a coordinator sends them as enums (this release and later), as text (the
// previous release) or both (this release).
// A site that declined a round (DeclineTask) is listed in the round's note, not counted as a refused upload.
TEST(StateTextTest, DeclinedSitesAreNotedNotRefused) {
  v1::RunStatus status = admin::testing::MakeRunReport().status();
  ASSERT_GT(status.rounds_size(), 0);
  v1::RoundInfo* round = status.mutable_rounds(0);
  round->clear_updates();
  round->set_message("1 update(s), 10 samples: fedavg");
  v1::UpdateInfo* accepted = round->add_updates();
  accepted->set_site_id("site-a");
  accepted->set_num_samples(10);
  federation::SetStatus(federation::UploadStatus::kAccepted, accepted);
  v1::UpdateInfo* declined = round->add_updates();
  declined->set_site_id("site-c");
  declined->set_message("declined: privacy budget");
  federation::SetStatus(federation::UploadStatus::kDeclined, declined);
  const std::string text = RunStatusText(status, 1'700'000'000'000);
  EXPECT_THAT(text, HasSubstr("1 update(s), 10 samples: fedavg; declined: site-c"));
  // Columns: round, attempt, state, updates 1, refused 0.
  EXPECT_THAT(text, ::testing::ContainsRegex(
                        absl::StrCat(" +", round->round(), " +", round->attempt(), " +[a-z]+ +1 +0 +10 ")));
}

TEST(StateTextTest, EnumAndTextStatesPrintTheSame) {
  const v1::RunStatus text_only = admin::testing::MakeRunReport().status();
  v1::RunStatus both = text_only;
  v1::RunStatus enum_only = text_only;
  federation::SetState(federation::GetState(text_only).value(), &both);
  federation::SetState(federation::GetState(text_only).value(), &enum_only);
  enum_only.clear_state();
  for (int i = 0; i < text_only.rounds_size(); ++i) {
    const federation::RoundState round = federation::GetState(text_only.rounds(i)).value();
    federation::SetState(round, both.mutable_rounds(i));
    federation::SetState(round, enum_only.mutable_rounds(i));
    enum_only.mutable_rounds(i)->clear_state();
    for (int j = 0; j < text_only.rounds(i).updates_size(); ++j) {
      const federation::UploadStatus update = federation::GetStatus(text_only.rounds(i).updates(j)).value();
      federation::SetStatus(update, both.mutable_rounds(i)->mutable_updates(j));
      federation::SetStatus(update, enum_only.mutable_rounds(i)->mutable_updates(j));
      enum_only.mutable_rounds(i)->mutable_updates(j)->clear_status();
    }
  }
  const std::string expected = RunStatusText(text_only, 1'700'000'000'000);
  EXPECT_THAT(expected, HasSubstr(": completed, round 2 of 2"));
  EXPECT_THAT(expected, HasSubstr("failed"));
  EXPECT_EQ(RunStatusText(both, 1'700'000'000'000), expected);
  EXPECT_EQ(RunStatusText(enum_only, 1'700'000'000'000), expected);

  v1::ListSitesResponse text_sites, enum_sites;
  for (const char* status : {"pending", "approved", "revoked"}) {
    v1::SiteInfo* t = text_sites.add_sites();
    t->set_site_id(absl::StrCat("site-", status));
    t->set_status(status);
    v1::SiteInfo* e = enum_sites.add_sites();
    e->set_site_id(t->site_id());
    e->set_site_status(federation::ToProto(federation::ParseSiteStatus(status).value()));
  }
  EXPECT_THAT(SitesTableText(text_sites, 0), HasSubstr("approved"));
  EXPECT_EQ(SitesTableText(enum_sites, 0), SitesTableText(text_sites, 0));
}

TEST_F(AdminCommandsTest, RunAbort) {
  Result r = Run(MakeRunAbortCommand, {"--reason", "wrong data"});
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.out, "run run-7: aborted (aborted by alice: wrong data)\n");
  EXPECT_EQ(service_->last_reason(), "wrong data");
  r = Run(MakeRunAbortCommand, {"--run", "run-9"});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kNotFound);
}

std::string RandomBytes(size_t n) {
  std::mt19937 rng(42);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

TEST_F(AdminCommandsTest, ModelExportResumesAfterABrokenStream) {
  const std::string model = RandomBytes(300'000);
  const std::string digest = io::Sha256Hex(model);
  service_->SetModel(model, 64 * 1024, /*break_after_bytes=*/2 * 64 * 1024, /*corrupt=*/false);
  const std::string out = tmp_.Join("global.ckpt");
  Result r = Run(MakeModelExportCommand, {"--version", digest.substr(0, 12), "--out", out});
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("wrote ", out)));
  EXPECT_THAT(r.out, HasSubstr(digest));
  EXPECT_THAT(r.out, HasSubstr("2 streams"));
  EXPECT_THAT(service_->export_offsets(), ::testing::ElementsAre(0, 2 * 64 * 1024));
  absl::StatusOr<std::string> written = io::ReadFile(out);
  ASSERT_TRUE(written.ok());
  EXPECT_TRUE(*written == model);
  EXPECT_EQ(io::ReadFile(out + ".part").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(AdminCommandsTest, ModelExportResumesAPartLeftByAnEarlierRun) {
  const std::string model = RandomBytes(100'000);
  service_->SetModel(model, 32 * 1024, -1, false);
  const std::string out = tmp_.Join("m.ckpt");
  tmp_.WriteFile("m.ckpt.part", model.substr(0, 1000));
  Result r = Run(MakeModelExportCommand, {"--version", io::Sha256Hex(model), "--out", out});
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_THAT(service_->export_offsets(), ::testing::ElementsAre(1000));
  EXPECT_TRUE(*io::ReadFile(out) == model);
}

TEST_F(AdminCommandsTest, ModelExportStartsOverWhenAnEarlierPartBelongsToAnotherModel) {
  const std::string model = RandomBytes(100'000);
  service_->SetModel(model, 32 * 1024, -1, false);
  const std::string out = tmp_.Join("m.ckpt");
  tmp_.WriteFile("m.ckpt.part", std::string(1000, 'x'));  // Not a prefix of this model.
  Result r = Run(MakeModelExportCommand, {"--version", io::Sha256Hex(model).substr(0, 8), "--out", out});
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_THAT(service_->export_offsets(), ::testing::ElementsAre(1000, 0));
  EXPECT_TRUE(*io::ReadFile(out) == model);
  // A part longer than the model: the coordinator answers OUT_OF_RANGE, the export starts over.
  tmp_.WriteFile("m.ckpt.part", std::string(200'000, 'y'));
  r = Run(MakeModelExportCommand, {"--version", io::Sha256Hex(model), "--out", out});
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_THAT(service_->export_offsets(), ::testing::ElementsAre(1000, 0, 200'000, 0));
  EXPECT_TRUE(*io::ReadFile(out) == model);
}

TEST_F(AdminCommandsTest, ModelExportRefusesACorruptedFile) {
  const std::string model = RandomBytes(200'000);
  service_->SetModel(model, 64 * 1024, -1, /*corrupt=*/true);
  const std::string out = tmp_.Join("bad.ckpt");
  Result r = Run(MakeModelExportCommand, {"--version", io::Sha256Hex(model), "--out", out});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(r.status.message(), HasSubstr("SHA-256"));
  EXPECT_EQ(io::ReadFile(out).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(io::ReadFile(out + ".part").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(AdminCommandsTest, ModelExportUnknownVersion) {
  service_->SetModel(RandomBytes(1000), 512, -1, false);
  Result r = Run(MakeModelExportCommand, {"--version", "deadbeefdeadbeef", "--out", tmp_.Join("x.ckpt")});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(service_->export_offsets().size(), 1u);  // Not retried.
  r = Run(MakeModelExportCommand, {"--version", "XYZ", "--out", tmp_.Join("x.ckpt")});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(AdminCommandsTest, Report) {
  const std::string dir = tmp_.Join("report");
  Result r = Run(MakeReportCommand, {"--run", "run-7", "--out", dir});
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_THAT(r.out, HasSubstr("0.650 -> 0.700 -> 0.750"));
  EXPECT_THAT(r.out, HasSubstr(dir + "/report.html"));
  absl::StatusOr<std::string> json = io::ReadFile(dir + "/report.json");
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_EQ(nlohmann::json::parse(*json)["run"]["id"], "run-7");
  absl::StatusOr<std::string> html = io::ReadFile(dir + "/report.html");
  ASSERT_TRUE(html.ok());
  EXPECT_THAT(*html, HasSubstr("Site site-a"));
  r = Run(MakeReportCommand, {"--run", "run-8", "--out", dir});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kNotFound);
}

TEST_F(AdminCommandsTest, MissingConnectionSettingsNameFlagAndVariable) {
  env_.clear();
  Result r = Run(MakeSitesListCommand, {});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status.message(), HasSubstr("--coordinator"));
  EXPECT_THAT(r.status.message(), HasSubstr("FEDTUNE_COORDINATOR"));
  EXPECT_EQ(r.exit_code(), cli::kExitBadInput);
  r = Run(MakeSitesListCommand,
          {"--coordinator", absl::StrCat("127.0.0.1:", port_), "--cert", op_cert_, "--ca", ca_pem_});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status.message(), HasSubstr("--key"));
  EXPECT_THAT(r.status.message(), HasSubstr("FEDTUNE_KEY"));
  // All as flags, no environment.
  r = Run(MakeSitesListCommand, {"--coordinator", absl::StrCat("127.0.0.1:", port_), "--cert", op_cert_, "--key",
                                 op_key_, "--ca", ca_pem_, "--server-name", "localhost", "--timeout", "15"});
  EXPECT_TRUE(r.status.ok()) << r.status;
  r = Run(MakeSitesListCommand,
          {"--coordinator", "127.0.0.1:1", "--cert", op_cert_, "--key", op_key_, "--ca", ca_pem_, "--timeout", "zero"});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status.message(), HasSubstr("--timeout"));
  r = Run(MakeSitesListCommand,
          {"--coordinator", "127.0.0.1:1", "--cert", tmp_.Join("nope.pem"), "--key", op_key_, "--ca", ca_pem_});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(r.status.message(), HasSubstr("nope.pem"));
}

TEST_F(AdminCommandsTest, FlagsWinOverEnvironment) {
  env_["FEDTUNE_COORDINATOR"] = "127.0.0.1:1";  // Nothing listens there.
  Result r = Run(MakeSitesListCommand, {"--coordinator", absl::StrCat("127.0.0.1:", port_)});
  EXPECT_TRUE(r.status.ok()) << r.status;
}

TEST_F(AdminCommandsTest, SiteCertificateIsRefused) {
  env_["FEDTUNE_CERT"] = site_cert_;
  env_["FEDTUNE_KEY"] = site_key_;
  Result r = Run(MakeSitesListCommand, {});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kPermissionDenied) << r.status;
  EXPECT_EQ(r.exit_code(), cli::kExitDenied);
  EXPECT_THAT(r.status.message(), HasSubstr("ListSites"));
}

TEST_F(AdminCommandsTest, UnreachableCoordinatorIsUnavailable) {
  env_["FEDTUNE_COORDINATOR"] = "127.0.0.1:1";
  env_["FEDTUNE_TIMEOUT"] = "5";
  Result r = Run(MakeRunStatusCommand, {});
  EXPECT_EQ(r.status.code(), absl::StatusCode::kUnavailable) << r.status;
  EXPECT_THAT(r.status.message(), HasSubstr("coordinator 127.0.0.1:1: GetRunStatus"));
  EXPECT_EQ(r.exit_code(), cli::kExitFailure);
}

// The real `fedtune` binary (main.cc's wiring, exit codes, stderr) against the fake coordinator.
TEST_F(AdminCommandsTest, RealBinary) {
  const std::string bin = fedtune::testing::BinPath("fedtune");
  const std::string unset =
      "env -u FEDTUNE_COORDINATOR -u FEDTUNE_CERT -u FEDTUNE_KEY -u FEDTUNE_CA -u FEDTUNE_SERVER_NAME "
      "-u FEDTUNE_TIMEOUT ";
  std::string out;
  int rc = fedtune::testing::RunCommand(unset + bin + " sites list", &out);
  EXPECT_EQ(rc, cli::kExitBadInput) << out;
  EXPECT_THAT(out, HasSubstr("FEDTUNE_COORDINATOR"));
  const std::string env = absl::StrCat(unset, "FEDTUNE_COORDINATOR=127.0.0.1:", port_, " FEDTUNE_CERT=", op_cert_,
                                       " FEDTUNE_KEY=", op_key_, " FEDTUNE_CA=", ca_pem_, " ");
  rc = fedtune::testing::RunCommand(env + bin + " sites list", &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("site-a  approved"));
  service_->SetRunStates({"running", "completed"});
  rc = fedtune::testing::RunCommand(env + bin + " run status --watch --interval 0", &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr(": completed,"));
  service_->SetRunStates({"aborted"});
  rc = fedtune::testing::RunCommand(env + bin + " run status --watch --interval 0", &out);
  EXPECT_EQ(rc, cli::kExitFailure) << out;
  rc = fedtune::testing::RunCommand(
      absl::StrCat(unset, "FEDTUNE_COORDINATOR=127.0.0.1:", port_, " FEDTUNE_CERT=", site_cert_,
                   " FEDTUNE_KEY=", site_key_, " FEDTUNE_CA=", ca_pem_, " ", bin, " run abort"),
      &out);
  EXPECT_EQ(rc, cli::kExitDenied) << out;
  rc = fedtune::testing::RunCommand(bin + " help", &out);
  for (const char* command : {"sites list", "sites show", "sites approve", "sites revoke", "run start", "run status",
                              "run abort", "model export", "report"}) {
    EXPECT_THAT(out, HasSubstr(command));
  }
}

TEST(AdminCommandSetTest, PathsAndConnectionFlags) {
  std::vector<cli::Command> commands = MakeAdminCommands();
  std::vector<std::string> paths;
  for (const cli::Command& c : commands) {
    std::string path;
    for (const std::string& word : c.path) path += (path.empty() ? "" : " ") + word;
    paths.push_back(path);
    int connection = 0;
    for (const cli::FlagSpec& f : c.flags) {
      if (f.name == "coordinator" || f.name == "cert" || f.name == "key" || f.name == "ca" || f.name == "server-name" ||
          f.name == "timeout") {
        ++connection;
      }
    }
    EXPECT_EQ(connection, 6) << path;
  }
  EXPECT_THAT(paths, ::testing::ElementsAre("sites list", "sites show", "sites approve", "sites revoke", "run start",
                                            "run status", "run abort", "run list", "model export", "report"));
}

// Text a site controls (heartbeat state, dataset-free fields, round notes) never reaches the terminal with control
// characters, C1 codes, bidi overrides or invalid UTF-8, and a very long value cannot flood the screen.
TEST(TerminalSafetyTest, SitesTableAndRunStatusEscapeSiteText) {
  for (const std::string& hostile : testing::HostileTexts()) {
    v1::ListSitesResponse sites;
    v1::SiteInfo* site = sites.add_sites();
    site->set_site_id("site-a");
    site->set_status(hostile);
    site->set_state(hostile);
    site->set_certificate_serial(hostile);
    site->mutable_capabilities()->set_device(hostile);
    const std::string table = SitesTableText(sites, 1'700'000'000'000);
    EXPECT_EQ(testing::TerminalUnsafety(table), "") << absl::CEscape(hostile) << "\n" << absl::CEscape(table);
    EXPECT_LT(table.size(), 2000u) << absl::CEscape(hostile);

    v1::RunStatus status;
    status.set_run_id("run-0001");
    status.set_name(hostile);
    status.set_state(hostile);
    status.set_message(hostile);
    status.mutable_config()->set_rounds(2);
    status.mutable_config()->set_aggregation(hostile);
    v1::RoundInfo* round = status.add_rounds();
    round->set_round(1);
    round->set_state(hostile);
    round->set_message(hostile);
    v1::UpdateInfo* update = round->add_updates();
    update->set_site_id(hostile);
    update->set_status(hostile);
    update->set_message(hostile);
    v1::SiteRunState* run_site = status.add_sites();
    run_site->set_site_id(hostile);
    run_site->set_state(hostile);
    const std::string text = RunStatusText(status, 1'700'000'000'000);
    EXPECT_EQ(testing::TerminalUnsafety(text), "") << absl::CEscape(hostile) << "\n" << absl::CEscape(text);
    EXPECT_LT(text.size(), 8000u) << absl::CEscape(hostile);
  }
  // The escapes are visible: an operator sees that the site sent an ESC.
  v1::ListSitesResponse sites;
  v1::SiteInfo* site = sites.add_sites();
  site->set_site_id("site-a");
  site->set_state("\x1b[2Jhidden");
  EXPECT_THAT(SitesTableText(sites, 0), HasSubstr("\\x1b[2Jhidden"));
}

}  // namespace
}  // namespace fedtune::admin
