// fedtune-loadgen: N simulated site agents against a real fedtune-coordinator (load_generator.h). A thin wrapper
// over RunLoadgenCommand (loadgen_command.h).
#include <signal.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "common/logging.h"
#include "site_agent/loadgen/loadgen_command.h"

int main(int argc, char** argv) {
  fedtune::InitLogging(argv[0]);
  // Signals are taken synchronously by one thread: block them before any other thread exists.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  try {
    return fedtune::loadgen::RunLoadgenCommand(std::vector<std::string>(argv + 1, argv + argc), std::cout, std::cerr,
                                               /*install_signal_handler=*/true);
  } catch (...) {
    std::fprintf(stderr, "fedtune-loadgen: error: %s\n", fedtune::DescribeCurrentException().c_str());
    return 1;
  }
}
