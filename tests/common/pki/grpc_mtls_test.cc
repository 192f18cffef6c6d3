// The PKI in the setting it is built for: a real gRPC server on 127.0.0.1 with mutual TLS from certificates made by
// common/pki, which authorizes every call from the AuthContext's "x509_pem_cert" through CertificateVerifier.
// A generic (proto-less) service stands in for the coordinator: method ".../Site" needs role site,
// ".../Operator" role operator; an accepted call answers with the caller's common name.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "common/pki/certificate_authority.h"
#include "common/pki/verifier.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/pki/pki_test_util.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::pki {
namespace {

using ::fedtune::pki::testing::Credentials;
using ::fedtune::pki::testing::Enroll;
using ::fedtune::pki::testing::MakeCa;
using ::testing::HasSubstr;

grpc::StatusCode ToGrpc(absl::StatusCode code) { return static_cast<grpc::StatusCode>(code); }

class ProbeService : public grpc::CallbackGenericService {
 public:
  explicit ProbeService(CertificateVerifier* verifier) : verifier_(verifier) {}
  int calls() const { return calls_.load(); }

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    ++calls_;
    class Reactor : public grpc::ServerGenericBidiReactor {
     public:
      Reactor(grpc::GenericCallbackServerContext* ctx, CertificateVerifier* verifier) {
        Role role = absl::EndsWith(ctx->method(), "/Operator") ? Role::kOperator : Role::kSite;
        std::string pem;
        std::shared_ptr<const grpc::AuthContext> auth = ctx->auth_context();
        for (const grpc::string_ref& value : auth->FindPropertyValues("x509_pem_cert")) {
          pem.assign(value.data(), value.size());
        }
        absl::StatusOr<PeerIdentity> id = verifier->Verify(pem, role);
        if (!id.ok()) {
          Finish(grpc::Status(ToGrpc(id.status().code()), std::string(id.status().message())));
          return;
        }
        grpc::Slice slice(id->common_name);
        response_ = grpc::ByteBuffer(&slice, 1);
        StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
      }
      void OnDone() override { delete this; }

     private:
      grpc::ByteBuffer response_;
    };
    return new Reactor(ctx, verifier_);
  }

 private:
  CertificateVerifier* verifier_;
  std::atomic<int> calls_{0};
};

class GrpcMtlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = tmp_.Join("ca");
    ca_ = MakeCa(dir_, "Consortium");
    ASSERT_NE(ca_, nullptr);
    absl::StatusOr<KeyPair> server_key = KeyPair::Generate();
    ASSERT_TRUE(server_key.ok());
    ServerCertificateSpec spec;
    spec.dns_names = {"localhost"};
    spec.ip_addresses = {"127.0.0.1"};
    absl::StatusOr<IssuedCertificate> server_cert = ca_->IssueServerCertificate(*server_key, spec);
    ASSERT_TRUE(server_cert.ok()) << server_cert.status();
    auto verifier = CertificateVerifier::Create(VerifierOptions::ForCaDir(dir_));
    ASSERT_TRUE(verifier.ok()) << verifier.status();
    verifier_ = *std::move(verifier);
    service_ = std::make_unique<ProbeService>(verifier_.get());

    grpc::SslServerCredentialsOptions options(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    options.pem_root_certs = ca_->ca_pem();
    options.pem_key_cert_pairs.push_back({*server_key->PrivateKeyPem(), server_cert->pem});
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::SslServerCredentials(options), &port_);
    builder.RegisterCallbackGenericService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }

  std::shared_ptr<grpc::Channel> Connect(const Credentials& creds) {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = ca_->ca_pem();
    options.pem_private_key = creds.key_pem;
    options.pem_cert_chain = creds.cert_pem;
    return grpc::CreateChannel("127.0.0.1:" + std::to_string(port_), grpc::SslCredentials(options));
  }

  // One unary call; returns the status and, on success, the common name the server saw.
  grpc::Status Call(const std::shared_ptr<grpc::Channel>& channel, const std::string& method, std::string* cn) {
    grpc::GenericStub stub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Slice slice(std::string("ping"));
    grpc::ByteBuffer request(&slice, 1), response;
    std::promise<grpc::Status> done;
    stub.UnaryCall(&ctx, "/fedtune.test.Probe/" + method, grpc::StubOptions(), &request, &response,
                   [&done](grpc::Status s) { done.set_value(s); });
    grpc::Status status = done.get_future().get();
    if (status.ok() && cn != nullptr) {
      std::vector<grpc::Slice> slices;
      EXPECT_TRUE(response.Dump(&slices).ok());
      cn->clear();
      for (const grpc::Slice& s : slices) cn->append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
    return status;
  }

  fedtune::testing::TempDir tmp_;
  std::string dir_;
  std::unique_ptr<CertificateAuthority> ca_;
  std::unique_ptr<CertificateVerifier> verifier_;
  std::unique_ptr<ProbeService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST_F(GrpcMtlsTest, AuthorizesEveryCallAndRevocationStopsAnOpenChannel) {
  Credentials site = Enroll(*ca_, "site-a", Role::kSite);
  std::shared_ptr<grpc::Channel> channel = Connect(site);
  std::string cn;
  grpc::Status first = Call(channel, "Site", &cn);
  ASSERT_TRUE(first.ok()) << first.error_code() << " " << first.error_message();
  EXPECT_EQ(cn, "site-a");
  grpc::Status wrong_role = Call(channel, "Operator", nullptr);
  EXPECT_EQ(wrong_role.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(wrong_role.error_message(), HasSubstr("needs role operator"));

  // Revoked while connected: the same channel (same TLS session) is refused on its next call.
  ASSERT_TRUE(ca_->RevokeSerial(site.serial).ok());
  grpc::Status after = Call(channel, "Site", nullptr);
  EXPECT_EQ(after.error_code(), grpc::StatusCode::PERMISSION_DENIED) << after.error_message();
  EXPECT_THAT(after.error_message(), HasSubstr("revoked"));

  Credentials op = Enroll(*ca_, "alice", Role::kOperator);
  std::string op_cn;
  grpc::Status op_call = Call(Connect(op), "Operator", &op_cn);
  ASSERT_TRUE(op_call.ok()) << op_call.error_message();
  EXPECT_EQ(op_cn, "alice");
}

TEST_F(GrpcMtlsTest, ForeignAndExpiredCertificatesNeverReachTheService) {
  auto other_ca = MakeCa(tmp_.Join("other"), "Consortium");
  ASSERT_NE(other_ca, nullptr);
  Credentials foreign = Enroll(*other_ca, "site-a", Role::kSite);
  // Refused in the TLS handshake (gRPC reports UNAVAILABLE to the client).
  EXPECT_EQ(Call(Connect(foreign), "Site", nullptr).error_code(), grpc::StatusCode::UNAVAILABLE);

  IssueOptions past;
  past.not_before = absl::Now() - absl::Hours(48);
  past.not_after = absl::Now() - absl::Hours(24);
  Credentials expired = Enroll(*ca_, "site-old", Role::kSite, past);
  EXPECT_EQ(Call(Connect(expired), "Site", nullptr).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(service_->calls(), 0);
  // The verifier gives the same answer with its own status code when asked directly.
  EXPECT_EQ(verifier_->Verify(expired.cert_pem, Role::kSite).status().code(), absl::StatusCode::kUnauthenticated);
}

}  // namespace
}  // namespace fedtune::pki
