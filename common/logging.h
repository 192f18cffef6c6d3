// The one logging facade of fedtune: glog (already a LibTorch dependency). Include this header, never
// <glog/logging.h> directly, and call InitLogging() once at the start of main().
#ifndef FEDTUNE_COMMON_LOGGING_H_
#define FEDTUNE_COMMON_LOGGING_H_

#include <glog/logging.h>

namespace fedtune {

// Initializes glog for a command-line program: logs go to stderr (never to files in /tmp), INFO and above.
// Environment variable FEDTUNE_LOG_LEVEL (0 = INFO, 1 = WARNING, 2 = ERROR) raises the threshold.
// Thread safety: call once, before any other thread starts.
void InitLogging(const char* argv0);

}  // namespace fedtune

#endif  // FEDTUNE_COMMON_LOGGING_H_
