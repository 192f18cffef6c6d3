// fedtune-coordinator --config coordinator.textproto [--log-format text|json]: the federation's coordinator daemon.
// Parses the config, starts the Coordinator (coordinator_server.h) and waits for SIGTERM/SIGINT, then shuts down
// cleanly (exit 0).
#include <signal.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/net/grpc_logging.h"
#include "coordinator/coordinator_config.h"
#include "coordinator/coordinator_server.h"

namespace {

constexpr char kUsage[] = "usage: fedtune-coordinator --config coordinator.textproto [--log-format text|json]";

void Help() {
  std::printf("%s\n\nflags:\n  %-28s%s\n  %-28s%s\n", kUsage, "--config FILE",
              "the coordinator's configuration (docs/config-reference.md)", "--log-format text|json",
              fedtune::kLogFormatFlagHelp);
}

// A bad command line: one line naming the problem (a JSON object in JSON format) and the usage.
int Usage(const std::string& problem) {
  fedtune::PrintErrorLine(absl::StrCat("fedtune-coordinator: error: ", problem, "; ", kUsage));
  return 2;
}

int ExitCode(const absl::Status& status) {
  fedtune::PrintErrorLine(absl::StrCat("fedtune-coordinator: ", status.ToString()));
  return status.code() == absl::StatusCode::kInvalidArgument || status.code() == absl::StatusCode::kNotFound ? 2 : 1;
}

int Run(int argc, char** argv) {
  std::string config_path;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--config" && i + 1 < argc) {
      config_path = argv[++i];
    } else if (absl::StartsWith(arg, "--config=")) {
      config_path = arg.substr(std::strlen("--config="));
    } else if (arg == "--help" || arg == "-h") {
      Help();
      return 0;
    } else {
      return Usage(arg == "--config" ? "--config needs a value" : absl::StrCat("unknown argument '", arg, "'"));
    }
  }
  if (config_path.empty()) return Usage("--config is required");

  // Signals are taken synchronously by this thread: block them before any other thread exists.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<fedtune::v1::CoordinatorConfig> config = fedtune::coordinator::LoadCoordinatorConfig(config_path);
  if (!config.ok()) return ExitCode(config.status());
  absl::Status valid = fedtune::coordinator::ValidateCoordinatorConfig(*config);
  if (!valid.ok()) return ExitCode(absl::InvalidArgumentError(absl::StrCat(config_path, ": ", valid.message())));
  absl::StatusOr<std::unique_ptr<fedtune::coordinator::Coordinator>> coordinator =
      fedtune::coordinator::Coordinator::Start(*config);
  if (!coordinator.ok()) return ExitCode(coordinator.status());

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  LOG(INFO) << "signal " << signal_number << " received: shutting down";
  (*coordinator)->Shutdown();
  coordinator->reset();
  LOG(INFO) << "fedtune-coordinator stopped";
  return 0;
}

}  // namespace

// glibc's malloc serves a large block from mmap and gives it back when freed, but only above a threshold that it
// raises, up to 32 MiB, each time such a block is freed: after the first model-sized buffers, tensors of a few MiB
// come from the heaps of the gRPC threads' arenas and stay there when freed. A fixed threshold keeps every tensor of
// 1 MiB or more in its own mapping, returned at once (with a 92 MB model: -56 MB at start, -100 MB at the peak of 8
// uploads, -94 MB resident after the round; docs/architecture.md, Memory). MALLOC_MMAP_THRESHOLD_ in the
// environment still wins.
void TuneAllocator() {
#ifdef __GLIBC__
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") == nullptr) mallopt(M_MMAP_THRESHOLD, 1 << 20);
#endif
}

int main(int argc, char** argv) {
  TuneAllocator();
  fedtune::InitLogging(argv[0]);  // Also the terminate handler: an exception on a server thread exits 1, readably.
  if (absl::Status format = fedtune::ConfigureLogFormat(&argc, argv); !format.ok()) {
    fedtune::PrintErrorLine(absl::StrCat("fedtune-coordinator: error: ", format.message()));
    return 2;
  }
  fedtune::net::RouteGrpcLogsForLogFormat();
  try {
    return Run(argc, argv);
  } catch (...) {
    fedtune::PrintErrorLine(absl::StrCat("fedtune-coordinator: error: ", fedtune::DescribeCurrentException()));
    return 1;
  }
}
