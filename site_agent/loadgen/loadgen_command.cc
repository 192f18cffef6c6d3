#include "site_agent/loadgen/loadgen_command.h"

#include <signal.h>

#include <atomic>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/cli/command.h"
#include "common/logging.h"
#include "site_agent/loadgen/load_generator.h"
#include "site_agent/loadgen/loadgen_options.h"

namespace fedtune::loadgen {

std::string LoadgenUsage() {
  std::string out =
      "usage: fedtune-loadgen --coordinator HOST:PORT --certs DIR [--ca-dir DIR] [flags]\n\n"
      "Simulates N site agents against a real fedtune-coordinator (Hello, GetTask long-polls, heartbeats, model\n"
      "downloads, uploads of valid deltas, metrics), without training. The operator starts the run; the sites take\n"
      "part until it ends (or for --rounds rounds). Prints per-round uploads, bytes and wall time.\n\nflags:\n";
  for (const cli::FlagSpec& f : LoadgenFlags()) {
    std::string left = f.is_bool ? absl::StrCat("--", f.name) : absl::StrCat("--", f.name, " ", f.metavar);
    absl::StrAppend(&out, "  ", left, std::string(left.size() < 28 ? 28 - left.size() : 1, ' '), f.help);
    if (f.required) absl::StrAppend(&out, " (required)");
    if (f.value) absl::StrAppend(&out, " (default: ", f.value->empty() ? "\"\"" : *f.value, ")");
    absl::StrAppend(&out, "\n");
  }
  return out;
}

int RunLoadgenCommand(const std::vector<std::string>& args, std::ostream& out, std::ostream& err,
                      bool install_signal_handler) {
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      out << LoadgenUsage();
      return cli::kExitOk;
    }
  }
  absl::StatusOr<cli::ParsedFlags> flags = cli::ParseFlags(args, LoadgenFlags());
  absl::StatusOr<LoadgenOptions> options =
      flags.ok() ? OptionsFromFlags(*flags) : absl::StatusOr<LoadgenOptions>(flags.status());
  if (!options.ok()) {
    err << "fedtune-loadgen: error: " << options.status().message() << "\n\n" << LoadgenUsage();
    return cli::ExitCodeFor(options.status());
  }
  absl::StatusOr<std::unique_ptr<LoadGenerator>> generator = LoadGenerator::Create(*options);
  if (!generator.ok()) {
    err << "fedtune-loadgen: error: " << generator.status().message() << "\n";
    return cli::ExitCodeFor(generator.status());
  }
  std::thread signals;
  sigset_t set;
  if (install_signal_handler) {
    // SIGINT/SIGTERM were blocked by main before any thread started; one thread takes them and stops the sites.
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGUSR1);  // Sent by this function to end the signal thread.
    LoadGenerator* g = generator->get();
    signals = std::thread([g, set] {
      int number = 0;
      sigwait(&set, &number);
      if (number != SIGUSR1) {
        LOG(WARNING) << "signal " << number << ": stopping the simulated sites";
        g->Stop();
      }
    });
  }
  const LoadReport report = (*generator)->Run();
  if (signals.joinable()) {
    pthread_kill(signals.native_handle(), SIGUSR1);
    signals.join();
  }
  out << FormatReport(report, *options);
  out.flush();
  if (!report.status.ok()) {
    err << "fedtune-loadgen: error: " << report.status.message() << "\n";
    return report.status.code() == absl::StatusCode::kUnauthenticated ||
                   report.status.code() == absl::StatusCode::kPermissionDenied
               ? cli::kExitDenied
               : cli::kExitFailure;
  }
  return cli::kExitOk;
}

}  // namespace fedtune::loadgen
