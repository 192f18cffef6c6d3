// Load generator for tests/benchmarks/net/coordinator_memory.sh: N sites talking to a real fedtune-coordinator
// process at once, each through site_agent's CoordinatorClient (mutual TLS, the site's own certificate).
//
//   upload_load delta --model M.ckpt --out F
//       Writes an fp32-encoded delta for checkpoint M (1e-4 in every floating tensor, 0 in integer ones) to F and
//       prints "<sha256> <bytes> <float parameters>".
//   upload_load hello --address HOST:PORT --ca CA.pem --sites-dir DIR --sites ID[,ID...]
//       Every site says Hello (so the operator sees it in `fedtune sites list`).
//   upload_load upload --address HOST:PORT --ca CA.pem --sites-dir DIR --sites ID[,ID...] --run R --round K
//                      --payload F --sha256 S
//       Every site uploads F for (R, K) at the same time (one thread each, released together); prints one line per
//       site and the aggregate goodput. Site ID's certificate and key are DIR/ID/ID.pem and DIR/ID/ID.key (as
//       `fedtune-site pki request --out DIR/ID` and `fedtune pki sign --out DIR/ID/ID.pem` write them).
// Exit status: 0 when every call succeeded, 1 otherwise (each failure printed), 2 for bad arguments.
#include <ATen/ATen.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "common/fl/codec.h"
#include "common/fl/model_tensors.h"
#include "common/fl/tensor_map.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "common/logging.h"
#include "common/model/checkpoint.h"
#include "site_agent/coordinator_client.h"

namespace fedtune {
namespace {

using Flags = std::map<std::string, std::string>;

int Delta(const Flags& flags) {
  absl::StatusOr<model::Checkpoint> checkpoint = model::LoadCheckpoint(flags.at("model"));
  if (!checkpoint.ok()) {
    std::cerr << checkpoint.status() << "\n";
    return 1;
  }
  fl::TensorMap delta;
  int64_t parameters = 0;
  for (const auto& [name, t] : fl::CheckpointTensors(*checkpoint)) {
    delta[name] = fl::IsFloating(t) ? at::full_like(t, 1e-4) : at::zeros_like(t);
    if (fl::IsFloating(t)) parameters += t.numel();
  }
  absl::StatusOr<fl::EncodedBundle> encoded = fl::EncodeTensors(delta);
  if (!encoded.ok()) {
    std::cerr << encoded.status() << "\n";
    return 1;
  }
  absl::Status written = io::WriteFileAtomically(flags.at("out"), encoded->bundle.SerializeAsString());
  absl::StatusOr<std::string> sha = io::Sha256File(flags.at("out"));
  if (!written.ok() || !sha.ok()) {
    std::cerr << written << " " << sha.status() << "\n";
    return 1;
  }
  std::cout << *sha << " " << encoded->encoded_bytes << " " << parameters << "\n";
  return 0;
}

absl::StatusOr<std::unique_ptr<agent::CoordinatorClient>> Client(const Flags& flags, const std::string& site) {
  agent::ClientOptions options;
  options.address = flags.at("address");
  const std::string dir = flags.at("sites-dir") + "/" + site + "/" + site;
  options.tls = {dir + ".pem", dir + ".key", flags.at("ca")};
  options.rpc_timeout = absl::Seconds(120);
  options.retry.max_attempts = 3;
  return agent::CoordinatorClient::Create(options);
}

int Sites(const std::string& mode, const Flags& flags) {
  const std::vector<std::string> sites = absl::StrSplit(flags.at("sites"), ',', absl::SkipEmpty());
  std::vector<std::unique_ptr<agent::CoordinatorClient>> clients;
  for (const std::string& site : sites) {
    absl::StatusOr<std::unique_ptr<agent::CoordinatorClient>> client = Client(flags, site);
    if (!client.ok()) {
      std::cerr << site << ": " << client.status() << "\n";
      return 1;
    }
    clients.push_back(*std::move(client));
  }
  if (mode == "hello") {
    int failed = 0;
    for (size_t i = 0; i < sites.size(); ++i) {
      v1::HelloRequest hello;
      hello.mutable_dataset()->set_images(1000);
      absl::StatusOr<v1::HelloResponse> response = clients[i]->Hello(hello);
      if (!response.ok()) {
        std::cerr << sites[i] << ": " << response.status() << "\n";
        ++failed;
      }
    }
    return failed == 0 ? 0 : 1;
  }
  // Connect every channel first (Hello), so that the uploads start together with their TLS sessions established.
  for (auto& client : clients) {
    v1::HelloRequest hello;
    hello.mutable_dataset()->set_images(1000);
    if (!client->Hello(hello).ok()) std::cerr << "hello failed before upload\n";
  }
  agent::UploadRequest request;
  request.run_id = flags.at("run");
  request.round = std::stoi(flags.at("round"));
  request.path = flags.at("payload");
  request.sha256 = flags.at("sha256");
  request.num_samples = 1000;
  request.encoding = fl::Encoding::kDenseFp32;
  absl::Notification go;
  std::vector<absl::Status> results(sites.size());
  std::vector<double> seconds(sites.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < sites.size(); ++i) {
    threads.emplace_back([&, i] {
      go.WaitForNotification();
      auto start = std::chrono::steady_clock::now();
      absl::StatusOr<v1::UploadResponse> response = clients[i]->UploadUpdate(request);
      seconds[i] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      results[i] = response.ok() && response->status() != "accepted"
                       ? absl::InternalError("status " + response->status() + ": " + response->message())
                       : response.status();
    });
  }
  auto start = std::chrono::steady_clock::now();
  go.Notify();
  for (std::thread& t : threads) t.join();
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  int failed = 0;
  for (size_t i = 0; i < sites.size(); ++i) {
    std::cout << sites[i] << " " << (results[i].ok() ? "accepted" : results[i].ToString()) << " " << seconds[i]
              << " s\n";
    if (!results[i].ok()) ++failed;
  }
  const int64_t bytes =
      static_cast<int64_t>(clients.size()) * static_cast<int64_t>(std::filesystem::file_size(request.path));
  std::cout << "total " << sites.size() << " uploads, " << bytes << " bytes in " << total
            << " s: " << bytes / total / 1e6 << " MB/s\n";
  return failed == 0 ? 0 : 1;
}

int Main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: upload_load delta|hello|upload --flag value ... (see upload_load.cc)\n";
    return 2;
  }
  const std::string mode = argv[1];
  Flags flags;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string name = argv[i];
    if (name.rfind("--", 0) != 0) {
      std::cerr << "upload_load: expected a --flag, got '" << name << "'\n";
      return 2;
    }
    flags[name.substr(2)] = argv[i + 1];
  }
  try {
    if (mode == "delta") return Delta(flags);
    if (mode == "hello" || mode == "upload") return Sites(mode, flags);
  } catch (const std::out_of_range&) {
    std::cerr << "upload_load " << mode << ": a required flag is missing (see upload_load.cc)\n";
    return 2;
  }
  std::cerr << "upload_load: unknown mode '" << mode << "'\n";
  return 2;
}

}  // namespace
}  // namespace fedtune

int main(int argc, char** argv) {
  fedtune::InitLogging(argv[0]);
  return fedtune::Main(argc, argv);
}
