// Failure reports through the real coordinator over gRPC with mutual TLS (certificates from common/pki):
// SiteService.ReportFailure (the site is the certificate's CN; the report's bounds; the runs a site may report on;
// refusals audited), and what the operator sees: AdminService.GetSite, ListSites' last_failure, GetRunStatus'
// per-site last_failure, and `fedtune sites show` / `sites list` / `run status` printed from those answers.
#include <chrono>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/net/tls.h"
#include "coordinator/cli/admin_commands.h"
#include "coordinator/coordinator_server.h"
#include "fedtune/v1/federation.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/pki/pki_test_util.h"
#include "tests/coordinator/coordinator_test_util.h"
#include "tests/coordinator/server_certificate.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::coordinator {
namespace {

using ::fedtune::coordinator::testing::FakeClock;
using ::fedtune::pki::testing::Credentials;
using ::fedtune::pki::testing::Enroll;
using ::fedtune::pki::testing::MakeCa;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

std::chrono::system_clock::time_point Deadline() { return std::chrono::system_clock::now() + std::chrono::seconds(20); }

// A report within every bound.
v1::FailureReport Report(const std::string& run, int round, const std::string& message) {
  v1::FailureReport r;
  r.set_run_id(run);
  r.set_round(round);
  r.set_attempt(1);
  r.set_task_kind(v1::Task::TRAIN);
  r.set_stage(v1::FAILURE_STAGE_TRAINING);
  r.set_error_class("INVALID_ARGUMENT");
  r.set_status_code(3);
  r.set_message(message);
  r.add_log_lines("I1208 01:52:01 training member 1/1, epoch 1/1");
  r.add_log_lines("E1208 01:52:02 [path]: not a decodable image");
  r.set_failed_ms(1'699'999'999'000);
  return r;
}

class ReportFailureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ca_ = MakeCa(tmp_.Join("ca"), "Consortium");
    ASSERT_NE(ca_, nullptr);
    ASSERT_TRUE(testing::WriteLocalhostServerCertificate(*ca_, tmp_));
    testing::WriteTinyModel(tmp_.Join("initial.ckpt"));
    v1::CoordinatorConfig config;
    config.set_listen_address("127.0.0.1:0");
    config.set_port_file(tmp_.Join("port"));
    config.set_server_cert(tmp_.Join("server.pem"));
    config.set_server_key(tmp_.Join("server.key"));
    config.set_ca_dir(tmp_.Join("ca"));
    config.set_state_dir(tmp_.Join("state"));
    config.set_initial_model(tmp_.Join("initial.ckpt"));
    config.set_task_wait_seconds(1);
    site_a_ = Enroll(*ca_, "site-a", pki::Role::kSite);
    site_b_ = Enroll(*ca_, "site-b", pki::Role::kSite);
    site_c_ = Enroll(*ca_, "site-c", pki::Role::kSite);
    operator_ = Enroll(*ca_, "alice", pki::Role::kOperator);
    CoordinatorOptions options;
    options.clock = clock_.AsFunction();
    options.tick_period = absl::ZeroDuration();
    auto coordinator = Coordinator::Start(config, options);
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = *std::move(coordinator);
    // site-a and site-b approved; site-c said Hello but is left pending.
    for (const Credentials* site : {&site_a_, &site_b_, &site_c_}) {
      grpc::ClientContext ctx;
      ctx.set_deadline(Deadline());
      v1::HelloRequest hello;
      hello.mutable_dataset()->set_images(80);
      hello.mutable_capabilities()->set_agent_version("fedtune-site/1");
      hello.mutable_capabilities()->set_device("cpu");
      v1::HelloResponse response;
      ASSERT_TRUE(Site(*site)->Hello(&ctx, hello, &response).ok());
    }
    for (const char* id : {"site-a", "site-b"}) {
      grpc::ClientContext ctx;
      ctx.set_deadline(Deadline());
      v1::SiteRequest request;
      request.set_site_id(id);
      v1::SiteResponse response;
      ASSERT_TRUE(Admin()->ApproveSite(&ctx, request, &response).ok());
    }
  }

  std::shared_ptr<grpc::Channel> Channel(const Credentials& creds) {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = ca_->ca_pem();
    options.pem_private_key = creds.key_pem;
    options.pem_cert_chain = creds.cert_pem;
    return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", coordinator_->port()), grpc::SslCredentials(options),
                                     grpc::ChannelArguments());
  }
  std::unique_ptr<v1::SiteService::Stub> Site(const Credentials& creds) {
    return v1::SiteService::NewStub(Channel(creds));
  }
  std::unique_ptr<v1::AdminService::Stub> Admin() { return v1::AdminService::NewStub(Channel(operator_)); }

  grpc::Status Send(const Credentials& site, const v1::FailureReport& report) {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::ReportFailureResponse response;
    return Site(site)->ReportFailure(&ctx, report, &response);
  }
  std::string StartRun(const std::vector<std::string>& sites) {
    v1::StartRunRequest request;
    request.mutable_config()->set_rounds(2);
    request.mutable_config()->set_min_sites(1);
    for (const std::string& s : sites) request.mutable_config()->add_sites(s);
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::StartRunResponse response;
    grpc::Status status = Admin()->StartRun(&ctx, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.run_id();
  }
  grpc::Status GetSite(const std::string& id, v1::SiteResponse* out) {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::SiteRequest request;
    request.set_site_id(id);
    return Admin()->GetSite(&ctx, request, out);
  }
  v1::SiteResponse SiteOf(const std::string& id) {
    v1::SiteResponse out;
    grpc::Status status = GetSite(id, &out);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return out;
  }
  v1::ListSitesResponse Sites() {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::ListSitesResponse out;
    grpc::Status status = Admin()->ListSites(&ctx, v1::ListSitesRequest(), &out);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return out;
  }
  v1::RunStatus RunStatus(const std::string& run) {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::RunStatusRequest request;
    request.set_run_id(run);
    v1::RunStatus out;
    grpc::Status status = Admin()->GetRunStatus(&ctx, request, &out);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return out;
  }
  int AuditCount(const std::string& rpc, const std::string& cn, const std::string& code) {
    auto rows = coordinator_->store()->ListAudit();
    EXPECT_TRUE(rows.ok());
    int n = 0;
    for (const AuditRecord& r : *rows) n += r.rpc == rpc && r.peer_cn == cn && r.code == code ? 1 : 0;
    return n;
  }
  // Runs an operator command of `fedtune` (admin_commands.h) against this coordinator; its output.
  std::string Command(cli::Command (*make)(admin::CommandEnvironment), const std::vector<std::string>& args,
                      absl::Status* status_out = nullptr) {
    const std::string cert = tmp_.WriteFile("alice.pem", operator_.cert_pem);
    const std::string key = tmp_.WriteFile("alice.key", operator_.key_pem);
    const std::string ca = tmp_.WriteFile("ca.pem", ca_->ca_pem());
    std::ostringstream out;
    admin::CommandEnvironment env;
    env.out = &out;
    env.env = [&](const std::string& name) -> std::optional<std::string> {
      if (name == "FEDTUNE_COORDINATOR") return absl::StrCat("localhost:", coordinator_->port());
      if (name == "FEDTUNE_CERT") return cert;
      if (name == "FEDTUNE_KEY") return key;
      if (name == "FEDTUNE_CA") return ca;
      return std::nullopt;
    };
    env.now = [this] { return clock_.Now(); };
    cli::Command command = make(env);
    absl::StatusOr<cli::ParsedFlags> flags = cli::ParseFlags(args, command.flags, command.max_positional);
    EXPECT_TRUE(flags.ok()) << flags.status();
    absl::Status status = command.run(*flags);
    if (status_out != nullptr) {
      *status_out = status;
    } else {
      EXPECT_TRUE(status.ok()) << status;
    }
    return out.str();
  }

  fedtune::testing::TempDir tmp_;
  FakeClock clock_;
  std::unique_ptr<pki::CertificateAuthority> ca_;
  Credentials site_a_, site_b_, site_c_, operator_;
  std::unique_ptr<Coordinator> coordinator_;
};

// The stored report is the certificate's site's: the report names no site, and another site's certificate files its
// report under that other site, never under site-a.
TEST_F(ReportFailureTest, StoredUnderTheCertificatesSiteAndShownToTheOperator) {
  const std::string run = StartRun({"site-a", "site-b"});
  ASSERT_FALSE(run.empty());
  v1::FailureReport first = Report(run, 1, "[path]: not a decodable image (format by content: text)");
  first.set_will_retry(true);
  ASSERT_TRUE(Send(site_a_, first).ok());
  clock_.Advance(absl::Seconds(30));
  ASSERT_TRUE(Send(site_a_, Report(run, 1, "second try failed too")).ok());
  clock_.Advance(absl::Seconds(5));
  ASSERT_TRUE(Send(site_b_, Report(run, 1, "site-b's own failure")).ok());
  EXPECT_EQ(AuditCount("SiteService/ReportFailure", "site-a", "OK"), 2);

  v1::SiteResponse a = SiteOf("site-a");
  EXPECT_EQ(a.site().site_id(), "site-a");
  ASSERT_EQ(a.failures_size(), 2);
  EXPECT_EQ(a.failures(0).report().message(), "second try failed too");  // Most recent first.
  EXPECT_EQ(a.failures(1).report().SerializeAsString(), first.SerializeAsString());
  for (const v1::SiteFailure& f : a.failures()) EXPECT_EQ(f.site_id(), "site-a");
  EXPECT_EQ(a.failures(1).received_ms(), absl::ToUnixMillis(clock_.Now()) - 35'000) << "the coordinator's clock";
  EXPECT_EQ(a.site().last_failure().report().message(), "second try failed too");
  EXPECT_EQ(a.site().dataset().images(), 80);
  v1::SiteResponse b = SiteOf("site-b");
  ASSERT_EQ(b.failures_size(), 1);
  EXPECT_EQ(b.failures(0).site_id(), "site-b");
  EXPECT_EQ(b.failures(0).report().message(), "site-b's own failure");
  v1::SiteResponse c = SiteOf("site-c");
  EXPECT_EQ(c.failures_size(), 0);
  EXPECT_FALSE(c.site().has_last_failure());

  // ListSites: each site's latest report.
  v1::ListSitesResponse sites = Sites();
  ASSERT_EQ(sites.sites_size(), 3);
  EXPECT_EQ(sites.sites(0).last_failure().report().message(), "second try failed too");
  EXPECT_EQ(sites.sites(1).last_failure().site_id(), "site-b");
  EXPECT_FALSE(sites.sites(2).has_last_failure());

  // The run's status: each site's latest report of this run.
  v1::RunStatus status = RunStatus(run);
  ASSERT_EQ(status.sites_size(), 2);
  EXPECT_EQ(status.sites(0).site_id(), "site-a");
  EXPECT_EQ(status.sites(0).last_failure().report().message(), "second try failed too");
  EXPECT_EQ(status.sites(1).last_failure().report().message(), "site-b's own failure");
  // A later report tied to no run is the site's latest, but not the run's.
  ASSERT_TRUE(Send(site_a_, Report("", 0, "cannot read the manifest")).ok());
  EXPECT_EQ(RunStatus(run).sites(0).last_failure().report().message(), "second try failed too");
  EXPECT_EQ(SiteOf("site-a").site().last_failure().report().message(), "cannot read the manifest");
  EXPECT_EQ(SiteOf("site-a").failures_size(), 3);
}

TEST_F(ReportFailureTest, BoundsAreRefusedNamingTheField) {
  const std::string run = StartRun({"site-a", "site-b"});
  struct Case {
    const char* field;
    std::function<void(v1::FailureReport*)> edit;
  };
  const std::vector<Case> over = {
      {"run_id", [](v1::FailureReport* r) { r->set_run_id(std::string(129, 'r')); }},
      {"round", [](v1::FailureReport* r) { r->set_round(-1); }},
      {"attempt", [](v1::FailureReport* r) { r->set_attempt(-2); }},
      {"task_kind", [](v1::FailureReport* r) { r->set_task_kind(static_cast<v1::Task::Kind>(42)); }},
      {"stage", [](v1::FailureReport* r) { r->set_stage(v1::FAILURE_STAGE_UNSPECIFIED); }},
      {"stage", [](v1::FailureReport* r) { r->set_stage(static_cast<v1::FailureStage>(9)); }},
      {"error_class", [](v1::FailureReport* r) { r->set_error_class(std::string(65, 'E')); }},
      {"status_code", [](v1::FailureReport* r) { r->set_status_code(0); }},
      {"status_code", [](v1::FailureReport* r) { r->set_status_code(17); }},
      {"message", [](v1::FailureReport* r) { r->set_message(std::string(2049, 'm')); }},
      {"log_lines",
       [](v1::FailureReport* r) {
         r->clear_log_lines();
         for (int i = 0; i < 21; ++i) r->add_log_lines("line");
       }},
      {"log_lines[1]", [](v1::FailureReport* r) { r->set_log_lines(1, std::string(513, 'l')); }},
  };
  for (const Case& c : over) {
    v1::FailureReport r = Report(run, 1, "m");
    c.edit(&r);
    grpc::Status status = Send(site_a_, r);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.field << ": " << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr(absl::StrCat(c.field, ": "))) << c.field;
  }
  EXPECT_EQ(AuditCount("SiteService/ReportFailure", "site-a", "INVALID_ARGUMENT"), static_cast<int>(over.size()));
  EXPECT_EQ(SiteOf("site-a").failures_size(), 0) << "nothing refused was stored";

  // At every bound: accepted, stored whole.
  v1::FailureReport full = Report(run, 1, std::string(2048, 'm'));
  full.set_error_class(std::string(64, 'E'));
  full.set_status_code(16);
  full.set_stage(v1::FAILURE_STAGE_OTHER);
  full.set_task_kind(v1::Task::CROSS_EVALUATE);
  full.clear_log_lines();
  for (int i = 0; i < 20; ++i) full.add_log_lines(std::string(512, 'a' + i));
  grpc::Status status = Send(site_a_, full);
  ASSERT_TRUE(status.ok()) << status.error_message();
  v1::SiteResponse a = SiteOf("site-a");
  ASSERT_EQ(a.failures_size(), 1);
  EXPECT_EQ(a.failures(0).report().SerializeAsString(), full.SerializeAsString());
}

TEST_F(ReportFailureTest, OnlyRunsTheSiteTakesPartIn) {
  const std::string run = StartRun({"site-a"});
  grpc::Status status = Send(site_b_, Report(run, 1, "not my run"));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  EXPECT_THAT(status.error_message(), AllOf(HasSubstr("site-b"), HasSubstr(run)));
  status = Send(site_a_, Report("run-0999", 1, "no such run"));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("run-0999"));
  EXPECT_EQ(AuditCount("SiteService/ReportFailure", "site-b", "PERMISSION_DENIED"), 1);
  EXPECT_EQ(AuditCount("SiteService/ReportFailure", "site-a", "NOT_FOUND"), 1);
  // Not tied to a run: any approved site may report.
  EXPECT_TRUE(Send(site_b_, Report("", 0, "the manifest cannot be read")).ok());
  EXPECT_EQ(SiteOf("site-b").failures_size(), 1);
  EXPECT_EQ(SiteOf("site-a").failures_size(), 0);
}

TEST_F(ReportFailureTest, PendingSitesAndOperatorsCannotReport) {
  grpc::Status status = Send(site_c_, Report("", 0, "pending"));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  status = Send(operator_, Report("", 0, "operator"));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  EXPECT_EQ(SiteOf("site-c").failures_size(), 0);
  EXPECT_EQ(SiteOf("site-a").failures_size(), 0);
  EXPECT_EQ(AuditCount("SiteService/ReportFailure", "site-c", "PERMISSION_DENIED"), 1);
}

TEST_F(ReportFailureTest, GetSiteIsForOperatorsAndNamesAnUnknownSite) {
  v1::SiteResponse out;
  grpc::Status status = GetSite("site-z", &out);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("site-z"));
  status = GetSite("", &out);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline());
  v1::SiteRequest request;
  request.set_site_id("site-a");
  status = v1::AdminService::NewStub(Channel(site_a_))->GetSite(&ctx, request, &out);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
}

// The CLI over the real coordinator: `sites show` prints the reports with their log lines indented, `sites list`
// marks the site whose latest failure is newer than its last success, `run status` lists the run's failures.
TEST_F(ReportFailureTest, OperatorCommandsShowTheReports) {
  const std::string run = StartRun({"site-a", "site-b"});
  ASSERT_TRUE(Send(site_a_, Report(run, 1, "[path]: not a decodable image")).ok());
  clock_.Advance(absl::Seconds(90));

  const std::string show = Command(admin::MakeSitesShowCommand, {"site-a"});
  EXPECT_THAT(show, HasSubstr("site site-a: approved"));
  EXPECT_THAT(show, HasSubstr("fedtune-site/1 on cpu"));
  EXPECT_THAT(show, HasSubstr("80 images"));
  EXPECT_THAT(show, HasSubstr("Failure reports (1, most recent first"));
  EXPECT_THAT(show, HasSubstr(absl::StrCat("(90s ago)  ", run, " round 1 attempt 1 (TRAIN)\n")));
  EXPECT_THAT(show, HasSubstr("  stage    training\n"));
  EXPECT_THAT(show, HasSubstr("  error    INVALID_ARGUMENT (code 3)\n"));
  EXPECT_THAT(show, HasSubstr("  message  [path]: not a decodable image\n"));
  EXPECT_THAT(show, HasSubstr("    | E1208 01:52:02 [path]: not a decodable image\n"));
  EXPECT_THAT(Command(admin::MakeSitesShowCommand, {"site-b"}), HasSubstr("No failure reports."));
  absl::Status unknown;
  Command(admin::MakeSitesShowCommand, {"site-z"}, &unknown);
  EXPECT_TRUE(absl::IsNotFound(unknown)) << unknown;

  const std::string list = Command(admin::MakeSitesListCommand, {});
  EXPECT_THAT(list, HasSubstr("last failure"));
  EXPECT_THAT(list, HasSubstr("! training INVALID_ARGUMENT 90s ago"));
  EXPECT_THAT(list, HasSubstr("! the site's latest failure is newer than its last accepted update"));

  const std::string status = Command(admin::MakeRunStatusCommand, {"--run", run});
  EXPECT_THAT(status, HasSubstr("Latest failure per site in this run"));
  EXPECT_THAT(status, HasSubstr("  site-a: round 1 attempt 1, training, INVALID_ARGUMENT, 90s ago: [path]: not a "
                                "decodable image\n"));
  EXPECT_THAT(status, Not(HasSubstr("  site-b: round")));

  // Once the site succeeds (an accepted update in the latest run, here written to the store as the round's intake
  // would), its failure is no longer marked.
  clock_.Advance(absl::Seconds(1));
  UpdateRecord u;
  u.run_id = run;
  u.round = 1;
  u.attempt = 1;
  u.site_id = "site-a";
  u.sha256 = std::string(64, 'a');
  u.status = federation::UploadStatus::kAccepted;
  u.received_ms = absl::ToUnixMillis(clock_.Now());
  ASSERT_TRUE(coordinator_->store()->InsertUpdate(u).ok());
  const std::string later = Command(admin::MakeSitesListCommand, {});
  EXPECT_THAT(later, HasSubstr(" training INVALID_ARGUMENT 91s ago"));
  EXPECT_THAT(later, Not(HasSubstr("!")));
}

}  // namespace
}  // namespace fedtune::coordinator
