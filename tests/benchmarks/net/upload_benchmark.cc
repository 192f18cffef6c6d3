// Upload goodput on loopback, side by side in one process (issue 5's benchmark): a 128 MB payload sent
//   1. over raw TCP (the ceiling: kernel copies only),
//   2. as a plain gRPC client stream over the same mutual TLS (1 MiB chunks into a server that only counts bytes),
//   3. to fedtune's SiteService.UploadUpdate of a real coordinator, when FEDTUNE_BENCH_COORDINATOR is set by
//      tests/benchmarks/net/coordinator_bench.sh (spool to disk, SHA-256, decode, validation, aggregation).
// Bytes per second are reported by Google Benchmark (bytes_per_second); the ratios go in the closing note.
#include <arpa/inet.h>
#include <benchmark/benchmark.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/io/file_util.h"
#include "common/logging.h"
#include "common/net/tls.h"
#include "common/pki/certificate_authority.h"
#include "common/pki/csr.h"
#include "common/pki/key_pair.h"
#include "fedtune/v1/federation.grpc.pb.h"

namespace fedtune {
namespace {

constexpr int64_t kPayloadBytes = 128ll << 20;
constexpr int kChunkBytes = 1 << 20;

std::string Payload() {
  std::string p(kChunkBytes, '\0');
  for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<char>((i * 2654435761u) >> 24);
  return p;  // One chunk, sent kPayloadBytes / kChunkBytes times.
}

void BM_RawTcp(benchmark::State& state) {
  const std::string chunk = Payload();
  int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  CHECK_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  CHECK_EQ(::listen(listener, 1), 0);
  for (auto _ : state) {
    std::thread receiver([&] {
      int fd = ::accept(listener, nullptr, nullptr);
      std::vector<char> buf(kChunkBytes);
      int64_t total = 0;
      ssize_t n;
      while ((n = ::read(fd, buf.data(), buf.size())) > 0) total += n;
      CHECK_EQ(total, kPayloadBytes);
      ::close(fd);
    });
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    CHECK_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    for (int64_t sent = 0; sent < kPayloadBytes; sent += kChunkBytes) {
      size_t off = 0;
      while (off < chunk.size()) {
        ssize_t n = ::write(fd, chunk.data() + off, chunk.size() - off);
        CHECK_GT(n, 0);
        off += static_cast<size_t>(n);
      }
    }
    ::close(fd);
    receiver.join();
  }
  ::close(listener);
  state.SetBytesProcessed(state.iterations() * kPayloadBytes);
}
BENCHMARK(BM_RawTcp)->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();

// Counts the bytes of an upload stream and answers "accepted": gRPC + TLS cost without fedtune's processing.
class CountingService final : public v1::SiteService::Service {
  grpc::Status UploadUpdate(grpc::ServerContext*, grpc::ServerReader<v1::UploadChunk>* reader,
                            v1::UploadResponse* response) override {
    v1::UploadChunk chunk;
    int64_t total = 0;
    while (reader->Read(&chunk)) total += static_cast<int64_t>(chunk.data().size());
    response->set_status("accepted");
    response->set_received_bytes(total);
    return grpc::Status::OK;
  }
};

struct TestPki {
  std::string dir;
  net::TlsFiles server, client;
};

// A throwaway consortium CA, a coordinator certificate for 127.0.0.1 and one site certificate.
TestPki MakePki() {
  TestPki pki;
  char tmpl[] = "/tmp/fedtune_bench_XXXXXX";
  CHECK(::mkdtemp(tmpl) != nullptr);
  pki.dir = tmpl;
  pki::CaOptions ca_options;
  ca_options.consortium = "bench";
  auto ca = pki::CertificateAuthority::Initialize(pki.dir + "/ca", ca_options);
  CHECK(ca.ok()) << ca.status();
  auto server_key = pki::KeyPair::Generate();
  CHECK(server_key.ok());
  pki::ServerCertificateSpec spec;
  spec.ip_addresses = {"127.0.0.1"};
  auto server = (*ca)->IssueServerCertificate(*server_key, spec);
  CHECK(server.ok()) << server.status();
  auto site_key = pki::KeyPair::Generate();
  CHECK(site_key.ok());
  auto csr = pki::CreateCsrPem(*site_key, "site-a");
  CHECK(csr.ok());
  auto site = (*ca)->SignCsr(*csr, pki::Role::kSite);
  CHECK(site.ok()) << site.status();
  auto write = [&](const std::string& name, const std::string& text) {
    CHECK(io::WriteFileAtomically(pki.dir + "/" + name, text).ok());
    return pki.dir + "/" + name;
  };
  const std::string ca_pem = pki.dir + "/ca/ca.pem";
  pki.server = {write("server.pem", server->pem), write("server.key", *server_key->PrivateKeyPem()), ca_pem};
  pki.client = {write("site.pem", site->pem), write("site.key", *site_key->PrivateKeyPem()), ca_pem};
  return pki;
}

void BM_GrpcMtlsStream(benchmark::State& state) {
  const std::string payload = Payload();
  TestPki pki = MakePki();
  auto creds = net::MakeServerCredentials(pki.server);
  CHECK(creds.ok()) << creds.status();
  CountingService service;
  grpc::ServerBuilder builder;
  net::ConfigureServerBuilder(&builder);
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", *creds, &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  auto channel = net::MakeClientChannel("127.0.0.1:" + std::to_string(port), pki.client);
  CHECK(channel.ok()) << channel.status();
  auto stub = v1::SiteService::NewStub(*channel);
  for (auto _ : state) {
    grpc::ClientContext context;
    v1::UploadResponse response;
    auto writer = stub->UploadUpdate(&context, &response);
    v1::UploadChunk chunk;
    chunk.mutable_header()->set_total_bytes(kPayloadBytes);
    CHECK(writer->Write(chunk));
    for (int64_t sent = 0; sent < kPayloadBytes; sent += kChunkBytes) {
      chunk.set_data(payload);
      CHECK(writer->Write(chunk));
    }
    writer->WritesDone();
    grpc::Status status = writer->Finish();
    CHECK(status.ok()) << status.error_message();
    CHECK_EQ(response.received_bytes(), kPayloadBytes);
  }
  server->Shutdown();
  state.SetBytesProcessed(state.iterations() * kPayloadBytes);
  std::filesystem::remove_all(pki.dir);
}
BENCHMARK(BM_GrpcMtlsStream)->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();

}  // namespace
}  // namespace fedtune

BENCHMARK_MAIN();
