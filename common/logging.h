// The one logging facade of fedtune: glog (already a LibTorch dependency). Include this header, never
// <glog/logging.h> directly, and call InitLogging() once at the start of main().
#ifndef FEDTUNE_COMMON_LOGGING_H_
#define FEDTUNE_COMMON_LOGGING_H_

#include <glog/logging.h>

#include <string>

namespace fedtune {

// Initializes glog for a command-line program: logs go to stderr (never to files in /tmp), INFO and above.
// Environment variable FEDTUNE_LOG_LEVEL (0 = INFO, 1 = WARNING, 2 = ERROR) raises the threshold.
// Also installs InstallTerminateHandler(program name).
// Thread safety: call once, before any other thread starts.
void InitLogging(const char* argv0);

// The last line of defence of every fedtune program: an exception that escapes on any thread (std::bad_alloc from a
// hostile input, a library's exception) ends the process with one clear line on stderr,
// "PROGRAM: fatal: out of memory (std::bad_alloc) ..." or "PROGRAM: fatal: uncaught exception: WHAT", and exit
// status 1, instead of std::terminate's abort. Code that can handle an exception still catches it where it is thrown
// and returns a Status; this handler only makes the failure readable. Thread safety: call before threads start.
void InstallTerminateHandler(const char* program);

// The message for an exception caught at a program's top level: "out of memory (std::bad_alloc): ..." for
// std::bad_alloc, "uncaught exception: WHAT" for other std::exception, "uncaught exception of an unknown type".
// Call only inside a catch block (uses std::current_exception()).
std::string DescribeCurrentException();

}  // namespace fedtune

#endif  // FEDTUNE_COMMON_LOGGING_H_
