#include "common/logging.h"

#include <unistd.h>

#include <cstdlib>
#include <exception>
#include <new>
#include <string>

namespace fedtune {
namespace {

// Set once before threads start; read by the terminate handler.
const char* g_program = "fedtune";

[[noreturn]] void OnTerminate() {
  std::string message = "fatal: std::terminate called without an active exception";
  if (std::current_exception()) {
    try {
      std::rethrow_exception(std::current_exception());
    } catch (...) {
      message = "fatal: " + DescribeCurrentException();
    }
  }
  const std::string line = std::string(g_program) + ": " + message + "\n";
  // write(2) rather than stdio or glog: they may hold locks of the thread that failed.
  [[maybe_unused]] ssize_t ignored = ::write(STDERR_FILENO, line.data(), line.size());
  std::_Exit(1);
}

}  // namespace

void InitLogging(const char* argv0) {
  FLAGS_logtostderr = true;
  FLAGS_minloglevel = 0;
  if (const char* level = std::getenv("FEDTUNE_LOG_LEVEL"); level != nullptr) {
    FLAGS_minloglevel = std::atoi(level);
  }
  google::InitGoogleLogging(argv0);
  std::string program = argv0 == nullptr ? "fedtune" : argv0;
  if (size_t slash = program.rfind('/'); slash != std::string::npos) program = program.substr(slash + 1);
  static std::string* const kProgram = new std::string(program);  // Lives until exit.
  InstallTerminateHandler(kProgram->c_str());
}

void InstallTerminateHandler(const char* program) {
  g_program = program;
  std::set_terminate(OnTerminate);
}

std::string DescribeCurrentException() {
  try {
    throw;
  } catch (const std::bad_alloc& e) {
    return std::string("out of memory (") + e.what() +
           "): the input needs more memory than this machine gives; check the file's size and the limits in "
           "docs/config-reference.md";
  } catch (const std::exception& e) {
    return std::string("uncaught exception: ") + e.what();
  } catch (...) {
    return "uncaught exception of an unknown type";
  }
}

}  // namespace fedtune
