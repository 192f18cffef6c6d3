#include "common/logging.h"

#include <cstdlib>
#include <string>

namespace fedtune {

void InitLogging(const char* argv0) {
  FLAGS_logtostderr = true;
  FLAGS_minloglevel = 0;
  if (const char* level = std::getenv("FEDTUNE_LOG_LEVEL"); level != nullptr) {
    FLAGS_minloglevel = std::atoi(level);
  }
  google::InitGoogleLogging(argv0);
}

}  // namespace fedtune
