// common/net over a real TLS connection: the server credentials ask for a client certificate without requiring
// one, so the application sees both calls with the peer's certificate and calls without any (and refuses them
// itself, auditing the refusal), and clients verify the server's name.
#include "common/net/tls.h"

#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/net/grpc_status.h"
#include "common/pki/certificate_authority.h"
#include "fedtune/v1/federation.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/common/pki/pki_test_util.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::net {
namespace {

using ::fedtune::pki::Role;
using ::fedtune::pki::testing::Credentials;
using ::fedtune::pki::testing::Enroll;
using ::fedtune::pki::testing::MakeCa;

// Answers Hello with the peer certificate's PEM (empty when the peer sent none) in site_id.
class EchoPeerService final : public v1::SiteService::Service {
  grpc::Status Hello(grpc::ServerContext* context, const v1::HelloRequest*, v1::HelloResponse* response) override {
    response->set_site_id(PeerCertificatePem(*context));
    return grpc::Status::OK;
  }
};

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ca_ = MakeCa(dir_.path() + "/ca", "test consortium");
    ASSERT_NE(ca_, nullptr);
    pki::ServerCertificateSpec spec;
    spec.common_name = "coordinator";
    spec.dns_names = {"coordinator.test"};
    spec.ip_addresses = {"127.0.0.1"};
    absl::StatusOr<pki::KeyPair> key = pki::KeyPair::Generate();
    ASSERT_TRUE(key.ok()) << key.status();
    auto server = ca_->IssueServerCertificate(*key, spec);
    ASSERT_TRUE(server.ok()) << server.status();
    ASSERT_TRUE(io::WriteFileAtomically(Path("server.pem"), server->pem).ok());
    ASSERT_TRUE(io::WriteFileAtomically(Path("server.key"), *key->PrivateKeyPem()).ok());
    Credentials site = Enroll(*ca_, "site-a", Role::kSite);
    site_pem_ = site.cert_pem;
    ASSERT_TRUE(io::WriteFileAtomically(Path("site.pem"), site.cert_pem).ok());
    ASSERT_TRUE(io::WriteFileAtomically(Path("site.key"), site.key_pem).ok());

    auto creds = MakeServerCredentials({Path("server.pem"), Path("server.key"), dir_.path() + "/ca/ca.pem"});
    ASSERT_TRUE(creds.ok()) << creds.status();
    grpc::ServerBuilder builder;
    ConfigureServerBuilder(&builder);
    builder.AddListeningPort("127.0.0.1:0", *creds, &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }
  std::string Path(const std::string& name) const { return dir_.path() + "/" + name; }
  std::string Address() const { return "127.0.0.1:" + std::to_string(port_); }

  absl::StatusOr<std::string> CallHello(std::shared_ptr<grpc::Channel> channel) {
    auto stub = v1::SiteService::NewStub(channel);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    v1::HelloResponse response;
    grpc::Status status = stub->Hello(&context, v1::HelloRequest(), &response);
    if (!status.ok()) return FromGrpcStatus(status, "Hello");
    return response.site_id();
  }

  fedtune::testing::TempDir dir_;
  std::unique_ptr<pki::CertificateAuthority> ca_;
  std::string site_pem_;
  EchoPeerService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST_F(TlsTest, ServerSeesTheClientCertificate) {
  auto channel = MakeClientChannel(Address(), {Path("site.pem"), Path("site.key"), dir_.path() + "/ca/ca.pem"});
  ASSERT_TRUE(channel.ok()) << channel.status();
  absl::StatusOr<std::string> pem = CallHello(*channel);
  ASSERT_TRUE(pem.ok()) << pem.status();
  EXPECT_EQ(*pem, site_pem_);
}

TEST_F(TlsTest, CallWithoutClientCertificateReachesTheApplicationWithNoPeerCertificate) {
  auto ca_pem = io::ReadFile(dir_.path() + "/ca/ca.pem");
  ASSERT_TRUE(ca_pem.ok());
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = *ca_pem;
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("127.0.0.1");
  absl::StatusOr<std::string> pem = CallHello(grpc::CreateCustomChannel(Address(), grpc::SslCredentials(ssl), args));
  ASSERT_TRUE(pem.ok()) << pem.status();
  EXPECT_EQ(*pem, "");
}

TEST_F(TlsTest, ClientRefusesAServerNameTheCertificateLacks) {
  ChannelOptions options;
  options.server_name = "elsewhere.test";
  auto channel =
      MakeClientChannel(Address(), {Path("site.pem"), Path("site.key"), dir_.path() + "/ca/ca.pem"}, options);
  ASSERT_TRUE(channel.ok());
  EXPECT_EQ(CallHello(*channel).status().code(), absl::StatusCode::kUnavailable);
  options.server_name = "coordinator.test";
  channel = MakeClientChannel(Address(), {Path("site.pem"), Path("site.key"), dir_.path() + "/ca/ca.pem"}, options);
  EXPECT_TRUE(CallHello(*channel).ok());
}

// A port on 127.0.0.1 where nothing listens (bound, then closed): a proxy there refuses every connection.
int DeadPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  EXPECT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  close(fd);
  return ntohs(addr.sin_port);
}

// Sets an environment variable for the scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) { setenv(name, value.c_str(), 1); }
  ~ScopedEnv() { unsetenv(name_); }

 private:
  const char* name_;
};

// gRPC reads the proxy environment when a channel connects: these show which proxy a channel used by pointing it
// at a dead one (the call fails) or not (it succeeds). The real proxy, end to end: tests/integration/proxy_test.sh.
TEST_F(TlsTest, ProxyOptionTakesPrecedenceOverTheEnvironmentAndNoProxyBypassesIt) {
  const TlsFiles files{Path("site.pem"), Path("site.key"), dir_.path() + "/ca/ca.pem"};
  const std::string dead = "http://127.0.0.1:" + std::to_string(DeadPort());
  {
    ScopedEnv env("grpc_proxy", dead);
    auto through_env = MakeClientChannel(Address(), files);
    ASSERT_TRUE(through_env.ok());
    EXPECT_EQ(CallHello(*through_env).status().code(), absl::StatusCode::kUnavailable);
    ChannelOptions direct;
    direct.proxy = "";  // Set but empty: no proxy, whatever the environment says.
    auto channel = MakeClientChannel(Address(), files, direct);
    ASSERT_TRUE(channel.ok());
    EXPECT_TRUE(CallHello(*channel).ok());
  }
  ChannelOptions via_dead;
  via_dead.proxy = dead;
  auto channel = MakeClientChannel(Address(), files, via_dead);
  ASSERT_TRUE(channel.ok());
  EXPECT_EQ(CallHello(*channel).status().code(), absl::StatusCode::kUnavailable);
  ScopedEnv no_proxy("no_proxy", "example.org,127.0.0.1");
  channel = MakeClientChannel(Address(), files, via_dead);
  ASSERT_TRUE(channel.ok());
  EXPECT_TRUE(CallHello(*channel).ok());
}

TEST(TlsFilesTest, ProxyUrls) {
  for (const char* good : {"http://proxy:3128", "http://proxy.example.org:3128/", "HTTP://10.0.0.1:8080",
                           "http://user:secret@proxy:3128", "http://[::1]:3128"}) {
    EXPECT_TRUE(ValidateProxyUrl(good).ok()) << good;
  }
  for (const char* bad :
       {"", "proxy:3128", "https://proxy:3128", "socks5://proxy:1080", "http://proxy", "http://proxy:0",
        "http://proxy:65536", "http://proxy:x", "http://:3128", "http://proxy:3128/path", "http://[::1]"}) {
    absl::Status status = ValidateProxyUrl(bad);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(status.message().find(absl::StrCat("\"", bad, "\"")), absl::string_view::npos) << status;
  }
  EXPECT_NE(ValidateProxyUrl("https://p:1").message().find("http://host:port"), absl::string_view::npos);
  // A password is not repeated in messages.
  const absl::Status secret = ValidateProxyUrl("http://user:s3cret@proxy:99999");
  EXPECT_EQ(secret.message().find("s3cret"), absl::string_view::npos) << secret;
  EXPECT_NE(secret.message().find("http://user:***@proxy:99999"), absl::string_view::npos) << secret;
  fedtune::testing::TempDir dir;
  ChannelOptions options;
  options.proxy = "https://p:1";
  auto channel =
      MakeClientChannel("localhost:1", {dir.path() + "/x.pem", dir.path() + "/x.pem", dir.path() + "/x.pem"}, options);
  EXPECT_EQ(channel.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TlsFilesTest, BadInputsAreNamed) {
  fedtune::testing::TempDir dir;
  ASSERT_TRUE(io::WriteFileAtomically(dir.path() + "/x.pem", "not pem").ok());
  auto missing = MakeServerCredentials({dir.path() + "/none.pem", dir.path() + "/x.pem", dir.path() + "/x.pem"});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("none.pem"), absl::string_view::npos);
  auto not_pem = MakeServerCredentials({dir.path() + "/x.pem", dir.path() + "/x.pem", dir.path() + "/x.pem"});
  EXPECT_EQ(not_pem.status().code(), absl::StatusCode::kInvalidArgument);
  auto no_port = MakeClientChannel("localhost", {dir.path() + "/x.pem", dir.path() + "/x.pem", dir.path() + "/x.pem"});
  EXPECT_EQ(no_port.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(no_port.status().message().find("localhost"), absl::string_view::npos);
}

TEST(TlsFilesTest, HostOf) {
  EXPECT_EQ(HostOf("coordinator.example.org:7443"), "coordinator.example.org");
  EXPECT_EQ(HostOf("[::1]:7443"), "::1");
  EXPECT_EQ(HostOf("10.0.0.1:1"), "10.0.0.1");
  EXPECT_EQ(HostOf("name"), "name");
}

TEST(GrpcStatusTest, RoundTripKeepsCodeAndNamesTheCall) {
  absl::Status s = absl::PermissionDeniedError("site-b is revoked");
  grpc::Status g = ToGrpcStatus(s);
  EXPECT_EQ(g.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  absl::Status back = FromGrpcStatus(g, "coordinator 127.0.0.1:1: Hello");
  EXPECT_EQ(back.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(back.message(), "coordinator 127.0.0.1:1: Hello: site-b is revoked");
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK, "x").ok());
}

}  // namespace
}  // namespace fedtune::net
