// Upload goodput on loopback, side by side in one process (issue 5's benchmark): a 128 MiB payload sent
//   1. over raw TCP (BM_RawTcp, the ceiling: kernel copies only),
//   2. as a plain gRPC client stream over mutual TLS (BM_GrpcMtlsStream: 1 MiB chunks into a server that only counts
//      bytes),
//   3. into fedtune's real upload path (BM_CoordinatorUpload): an in-process coordinator::Coordinator with certificates
//      from the project's PKI, a global model of the full SoloNet preset (DenseNet-121 + ResNeXt50-32x4d +
//      MobileNetV2, ~32 M float32 parameters, ~128 MB), and site_agent's CoordinatorClient::UploadUpdate sending an
//      fp32-encoded delta file of that model. Timed from the first byte to "accepted": GetUploadOffset, the stream,
//      spooling to disk, SHA-256 of the spool file, decoding against the global model, validation and FedAvg
//      aggregation. Arg 0: the run selects two sites, so the round stays open after the upload; every iteration
//      starts a fresh run (untimed). Arg 1: the run selects one site (min_sites 1), so each accepted upload also
//      closes the round (aggregate result, ApplyDelta, the new 128 MB checkpoint written and hashed into the blob
//      store, one SQLite transaction) and opens the next; every iteration uploads into the next round. Arg 2: the
//      transfer alone (first byte to durably spooled and hashed): the header announces a wrong SHA-256, so the
//      coordinator takes every byte through the same path and then refuses the payload without decoding it.
// Downloads, side by side (issue 12):
//   4. a plain gRPC mTLS server stream of the same 128 MiB (BM_GrpcMtlsDownload: 1 MiB chunks from memory into a
//      client that only counts bytes);
//   5. the real coordinator's DownloadModel of the SoloNet checkpoint (BM_CoordinatorDownload: read from the blob
//      store by a ModelWriteReactor, received by site_agent's CoordinatorClient::DownloadModel into a .part file,
//      hashed as it arrives, checked against the digest and renamed). FEDTUNE_BENCH_CHUNK_BYTES sets the coordinator's
//      chunk_bytes (default 1 MiB).
// Bytes per second are reported by Google Benchmark (bytes_per_second) over the payload's bytes.
// Environment: FEDTUNE_UPLOAD_BENCH_BYTES sets the payload of BM_RawTcp, BM_GrpcMtlsStream and BM_GrpcMtlsDownload
// (default 128 MiB; 1 KiB to 16 GiB), e.g. the size of a fedtune-loadgen delta, so that a rate measured elsewhere
// compares with the plain gRPC stream of the same bytes (tests/benchmarks/net/consortium_scale.sh).
#include <ATen/ATen.h>
#include <arpa/inet.h>
#include <benchmark/benchmark.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/federation/states.h"
#include "common/fl/codec.h"
#include "common/fl/model_tensors.h"
#include "common/fl/tensor_map.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "common/logging.h"
#include "common/model/checkpoint.h"
#include "common/net/tls.h"
#include "common/pki/certificate_authority.h"
#include "common/pki/csr.h"
#include "common/pki/key_pair.h"
#include "coordinator/coordinator_server.h"
#include "fedtune/v1/federation.grpc.pb.h"
#include "fedtune/v1/federation_config.pb.h"
#include "site_agent/agent/coordinator_client.h"
#include "site_agent/commands/model_init.h"

namespace fedtune {
namespace {

constexpr int kChunkBytes = 1 << 20;

// The payload size of the transport benchmarks: FEDTUNE_UPLOAD_BENCH_BYTES, default 128 MiB.
int64_t PayloadBytes() {
  static const int64_t bytes = [] {
    const char* env = std::getenv("FEDTUNE_UPLOAD_BENCH_BYTES");
    if (env == nullptr || *env == '\0') return int64_t{128} << 20;
    char* end = nullptr;
    const long long value = std::strtoll(env, &end, 10);
    CHECK(end != env && *end == '\0' && value >= 1024 && value <= (int64_t{16} << 30))
        << "FEDTUNE_UPLOAD_BENCH_BYTES='" << env << "' is not a byte count in [1024, 16 GiB]";
    return static_cast<int64_t>(value);
  }();
  return bytes;
}

std::string Payload() {
  std::string p(kChunkBytes, '\0');
  for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<char>((i * 2654435761u) >> 24);
  return p;  // One chunk, sent PayloadBytes() / kChunkBytes times (the last one cut to what is left).
}

void BM_RawTcp(benchmark::State& state) {
  const int64_t payload_bytes = PayloadBytes();
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
      CHECK_EQ(total, payload_bytes);
      ::close(fd);
    });
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    CHECK_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    for (int64_t sent = 0; sent < payload_bytes; sent += kChunkBytes) {
      const size_t size = static_cast<size_t>(std::min<int64_t>(kChunkBytes, payload_bytes - sent));
      size_t off = 0;
      while (off < size) {
        ssize_t n = ::write(fd, chunk.data() + off, size - off);
        CHECK_GT(n, 0);
        off += static_cast<size_t>(n);
      }
    }
    ::close(fd);
    receiver.join();
  }
  ::close(listener);
  state.SetBytesProcessed(state.iterations() * payload_bytes);
}
BENCHMARK(BM_RawTcp)->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();

// Counts the bytes of an upload stream and answers "accepted", and streams PayloadBytes() from memory as a download:
// gRPC + TLS cost without fedtune's processing.
class CountingService final : public v1::SiteService::Service {
  grpc::Status DownloadModel(grpc::ServerContext*, const v1::DownloadRequest*,
                             grpc::ServerWriter<v1::Chunk>* writer) override {
    v1::Chunk chunk;
    const std::string payload = Payload();
    const int64_t payload_bytes = PayloadBytes();
    for (int64_t sent = 0; sent < payload_bytes; sent += kChunkBytes) {
      chunk.set_offset(sent);
      chunk.set_data(payload.data(), static_cast<size_t>(std::min<int64_t>(kChunkBytes, payload_bytes - sent)));
      chunk.set_total_bytes(payload_bytes);
      if (!writer->Write(chunk)) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "broken");
    }
    return grpc::Status::OK;
  }

  grpc::Status UploadUpdate(grpc::ServerContext*, grpc::ServerReader<v1::UploadChunk>* reader,
                            v1::UploadResponse* response) override {
    v1::UploadChunk chunk;
    int64_t total = 0;
    while (reader->Read(&chunk)) total += static_cast<int64_t>(chunk.data().size());
    federation::SetStatus(federation::UploadStatus::kAccepted, response);
    response->set_received_bytes(total);
    return grpc::Status::OK;
  }
};

struct TestPki {
  std::string dir;
  net::TlsFiles server, client;  // client: the certificate of site "site-a".
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

// A CountingService behind fedtune's server settings and mTLS, and a site's stub connected to it.
struct CountingServer {
  explicit CountingServer(const TestPki& pki) {
    auto creds = net::MakeServerCredentials(pki.server);
    CHECK(creds.ok()) << creds.status();
    grpc::ServerBuilder builder;
    net::ConfigureServerBuilder(&builder);
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", *creds, &port);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
    auto channel = net::MakeClientChannel("127.0.0.1:" + std::to_string(port), pki.client);
    CHECK(channel.ok()) << channel.status();
    stub = v1::SiteService::NewStub(*channel);
  }
  CountingService service;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<v1::SiteService::Stub> stub;
};

void BM_GrpcMtlsStream(benchmark::State& state) {
  const int64_t payload_bytes = PayloadBytes();
  const std::string payload = Payload();
  TestPki pki = MakePki();
  CountingServer counting(pki);
  v1::SiteService::Stub* stub = counting.stub.get();
  for (auto _ : state) {
    grpc::ClientContext context;
    v1::UploadResponse response;
    auto writer = stub->UploadUpdate(&context, &response);
    v1::UploadChunk chunk;
    chunk.mutable_header()->set_total_bytes(payload_bytes);
    CHECK(writer->Write(chunk));
    for (int64_t sent = 0; sent < payload_bytes; sent += kChunkBytes) {
      chunk.set_data(payload.data(), static_cast<size_t>(std::min<int64_t>(kChunkBytes, payload_bytes - sent)));
      CHECK(writer->Write(chunk));
    }
    writer->WritesDone();
    grpc::Status status = writer->Finish();
    CHECK(status.ok()) << status.error_message();
    CHECK_EQ(response.received_bytes(), payload_bytes);
  }
  counting.server->Shutdown();
  state.SetBytesProcessed(state.iterations() * payload_bytes);
  std::filesystem::remove_all(pki.dir);
}
BENCHMARK(BM_GrpcMtlsStream)->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();

void BM_GrpcMtlsDownload(benchmark::State& state) {
  TestPki pki = MakePki();
  CountingServer counting(pki);
  v1::SiteService::Stub* stub = counting.stub.get();
  for (auto _ : state) {
    grpc::ClientContext context;
    auto reader = stub->DownloadModel(&context, v1::DownloadRequest());
    v1::Chunk chunk;
    int64_t received = 0;
    while (reader->Read(&chunk)) received += static_cast<int64_t>(chunk.data().size());
    grpc::Status status = reader->Finish();
    CHECK(status.ok()) << status.error_message();
    CHECK_EQ(received, PayloadBytes());
  }
  counting.server->Shutdown();
  state.SetBytesProcessed(state.iterations() * PayloadBytes());
  std::filesystem::remove_all(pki.dir);
}
BENCHMARK(BM_GrpcMtlsDownload)->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();

// The real coordinator's upload path (see the header). Setup (untimed, once): PKI, the SoloNet checkpoint as the
// coordinator's initial model, and the delta payload file (global-shaped, 1e-4 in every floating tensor, fp32).
void BM_CoordinatorUpload(benchmark::State& state) {
  const bool close_round = state.range(0) == 1;
  // Arg 2: the transfer alone, through the same path: the header announces a wrong SHA-256, so the coordinator
  // receives, spools, hashes and fsyncs every byte, then refuses the payload (DATA_LOSS) without decoding it.
  const bool transfer_only = state.range(0) == 2;
  TestPki pki = MakePki();
  absl::StatusOr<model::Checkpoint> checkpoint = agent::InitCheckpoint({"solonet"}, 224, 0.8, 0);
  CHECK(checkpoint.ok()) << checkpoint.status();
  const std::string model_path = pki.dir + "/solonet.ckpt";
  CHECK(model::SaveCheckpoint(&*checkpoint, model_path).ok());
  const std::string payload_path = pki.dir + "/delta.fp32";
  int64_t payload_bytes = 0;
  int64_t parameters = 0;
  {
    fl::TensorMap delta;
    for (const auto& [name, t] : fl::CheckpointTensors(*checkpoint)) {
      delta[name] = fl::IsFloating(t) ? at::full_like(t, 1e-4) : at::zeros_like(t);
      if (fl::IsFloating(t)) parameters += t.numel();
    }
    absl::StatusOr<fl::EncodedBundle> encoded = fl::EncodeTensors(delta);  // fp32
    CHECK(encoded.ok()) << encoded.status();
    CHECK(io::WriteFileAtomically(payload_path, encoded->bundle.SerializeAsString()).ok());
    payload_bytes = encoded->encoded_bytes;
  }
  checkpoint = absl::InternalError("released");  // Only the coordinator holds the model from here on.
  absl::StatusOr<std::string> sha = io::Sha256File(payload_path);
  CHECK(sha.ok()) << sha.status();

  v1::CoordinatorConfig config;
  config.set_listen_address("127.0.0.1:0");
  config.set_port_file(pki.dir + "/port");
  config.set_server_cert(pki.server.cert);
  config.set_server_key(pki.server.key);
  config.set_ca_dir(pki.dir + "/ca");
  config.set_state_dir(pki.dir + "/state");
  config.set_initial_model(model_path);
  config.set_task_wait_seconds(1);
  absl::StatusOr<std::unique_ptr<coordinator::Coordinator>> coordinator = coordinator::Coordinator::Start(config);
  CHECK(coordinator.ok()) << coordinator.status();
  coordinator::Coordinator& c = **coordinator;
  // The operator's approval, as AdminService.ApproveSite records it. site-b never uploads: it keeps the round open.
  for (const char* site : {"site-a", "site-b"})
    CHECK(c.store()->SetSiteStatus(site, federation::SiteStatus::kApproved, true, 0).ok());

  v1::RunConfig run;
  run.set_name("upload benchmark");
  run.set_rounds(close_round ? 1000 : 1);
  run.set_min_sites(1);
  run.set_round_deadline_seconds(86400);
  run.add_sites("site-a");
  if (!close_round) run.add_sites("site-b");
  run.set_final_evaluation(false);

  agent::ClientOptions client_options;
  client_options.address = "127.0.0.1:" + std::to_string(c.port());
  client_options.tls = pki.client;
  client_options.rpc_timeout = absl::Seconds(60);
  client_options.retry.max_attempts = 1;  // A benchmark reports failures; it does not hide them behind retries.
  absl::StatusOr<std::unique_ptr<agent::CoordinatorClient>> client = agent::CoordinatorClient::Create(client_options);
  CHECK(client.ok()) << client.status();
  v1::HelloRequest hello;
  hello.mutable_dataset()->set_images(1000);
  CHECK((*client)->Hello(hello).ok());  // Connects (TLS handshake) outside the timed region.

  absl::StatusOr<std::string> run_id = c.rounds()->StartRun(run);
  CHECK(run_id.ok()) << run_id.status();
  int round = 1;
  for (auto _ : state) {
    if (!close_round && !transfer_only && round > 1) {
      state.PauseTiming();
      CHECK(c.rounds()->AbortRun(*run_id, "next benchmark iteration").ok());
      run_id = c.rounds()->StartRun(run);
      CHECK(run_id.ok()) << run_id.status();
      state.ResumeTiming();
    }
    agent::UploadRequest request;
    request.run_id = *run_id;
    request.round = close_round ? round : 1;
    request.path = payload_path;
    request.sha256 = transfer_only ? std::string(64, '0') : *sha;
    request.num_samples = 1000;
    request.encoding = fl::Encoding::kDenseFp32;
    absl::StatusOr<v1::UploadResponse> response = (*client)->UploadUpdate(request);
    if (transfer_only) {
      CHECK_EQ(response.status().code(), absl::StatusCode::kDataLoss) << response.status();
      continue;
    }
    CHECK(response.ok()) << response.status();
    CHECK_EQ(response->status(), "accepted") << response->message();
    ++round;
  }
  if (!close_round) CHECK(c.rounds()->AbortRun(*run_id, "benchmark done").ok());
  c.Shutdown();
  state.SetBytesProcessed(state.iterations() * payload_bytes);
  state.counters["payload_MB"] = static_cast<double>(payload_bytes) / 1e6;
  state.counters["params_M"] = static_cast<double>(parameters) / 1e6;
  coordinator->reset();
  std::filesystem::remove_all(pki.dir);
}
BENCHMARK(BM_CoordinatorUpload)
    ->ArgName("closes_round")
    ->Arg(0)
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->Iterations(3)
    ->UseRealTime();

// The real coordinator's download path (see the header): the SoloNet checkpoint as the initial model, downloaded by
// an approved site of a run (the file removed between iterations, untimed, so each one transfers everything).
void BM_CoordinatorDownload(benchmark::State& state) {
  TestPki pki = MakePki();
  absl::StatusOr<model::Checkpoint> checkpoint = agent::InitCheckpoint({"solonet"}, 224, 0.8, 0);
  CHECK(checkpoint.ok()) << checkpoint.status();
  const std::string model_path = pki.dir + "/solonet.ckpt";
  CHECK(model::SaveCheckpoint(&*checkpoint, model_path).ok());
  checkpoint = absl::InternalError("released");
  absl::StatusOr<std::string> sha = io::Sha256File(model_path);
  CHECK(sha.ok()) << sha.status();
  const int64_t model_bytes = static_cast<int64_t>(std::filesystem::file_size(model_path));

  v1::CoordinatorConfig config;
  config.set_listen_address("127.0.0.1:0");
  config.set_server_cert(pki.server.cert);
  config.set_server_key(pki.server.key);
  config.set_ca_dir(pki.dir + "/ca");
  config.set_state_dir(pki.dir + "/state");
  config.set_initial_model(model_path);
  config.set_task_wait_seconds(1);
  if (const char* c = std::getenv("FEDTUNE_BENCH_CHUNK_BYTES")) config.set_chunk_bytes(std::atoi(c));
  absl::StatusOr<std::unique_ptr<coordinator::Coordinator>> coordinator = coordinator::Coordinator::Start(config);
  CHECK(coordinator.ok()) << coordinator.status();
  coordinator::Coordinator& c = **coordinator;
  CHECK(c.store()->SetSiteStatus("site-a", federation::SiteStatus::kApproved, true, 0).ok());
  v1::RunConfig run;
  run.set_name("download benchmark");
  run.set_rounds(1);
  run.set_min_sites(1);
  run.set_round_deadline_seconds(86400);
  run.add_sites("site-a");
  run.set_final_evaluation(false);
  absl::StatusOr<std::string> run_id = c.rounds()->StartRun(run);
  CHECK(run_id.ok()) << run_id.status();

  agent::ClientOptions client_options;
  client_options.address = "127.0.0.1:" + std::to_string(c.port());
  client_options.tls = pki.client;
  client_options.rpc_timeout = absl::Seconds(60);
  client_options.retry.max_attempts = 1;
  absl::StatusOr<std::unique_ptr<agent::CoordinatorClient>> client = agent::CoordinatorClient::Create(client_options);
  CHECK(client.ok()) << client.status();
  v1::HelloRequest hello;
  hello.mutable_dataset()->set_images(1000);
  CHECK((*client)->Hello(hello).ok());
  const std::string dir = pki.dir + "/models";
  for (auto _ : state) {
    state.PauseTiming();
    std::filesystem::remove_all(dir);
    state.ResumeTiming();
    absl::StatusOr<std::string> path = (*client)->DownloadModel(*sha, model_bytes, dir, nullptr);
    CHECK(path.ok()) << path.status();
  }
  CHECK(c.rounds()->AbortRun(*run_id, "benchmark done").ok());
  c.Shutdown();
  state.SetBytesProcessed(state.iterations() * model_bytes);
  state.counters["payload_MB"] = static_cast<double>(model_bytes) / 1e6;
  coordinator->reset();
  std::filesystem::remove_all(pki.dir);
}
BENCHMARK(BM_CoordinatorDownload)->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();

}  // namespace
}  // namespace fedtune

BENCHMARK_MAIN();
