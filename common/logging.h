// The one logging facade of fedtune: glog (already a LibTorch dependency). Include this header, never
// <glog/logging.h> directly, and call InitLogging() once at the start of main().
#ifndef FEDTUNE_COMMON_LOGGING_H_
#define FEDTUNE_COMMON_LOGGING_H_

#include <glog/logging.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace fedtune {

// ---- Log format and context (docs/operator-guide.md, "Structured logs").
// Text (default): glog's lines. JSON: one JSON object per line on stderr with the keys "time" (RFC 3339, UTC,
// microseconds), "level" ("INFO", "WARNING", "ERROR", "FATAL"), "program", "site", "run", "round" (a number; 0 when
// none), "message", plus "file" and "line" of the LOG statement (file "" and line 0 for a program's own top-level
// lines, PrintErrorLine), and on a FATAL line "stack" (an array of frames). Strings are escaped per RFC 8259, so a
// message with newlines or quotes stays one line; bytes that are not UTF-8 become U+FFFD, so every line parses. In
// JSON mode glog writes nothing itself (no text lines, no files): a FATAL line is written, then the process aborts.
enum class LogFormat { kText, kJson };

// Takes "--log-format text|json" (or "--log-format=...") out of argv (argc and argv are rewritten, the remaining
// arguments keep their order; arguments after a bare "--" are left alone) and applies it; FEDTUNE_LOG_FORMAT in the
// environment is the default, the flag wins. InvalidArgument naming the flag or variable and the value for anything
// else (the format then stays text). Call once in main(), after InitLogging() and before any other thread starts.
absl::Status ConfigureLogFormat(int* argc, char** argv);
LogFormat CurrentLogFormat();

// The help of the global flag "--log-format text|json", for the programs' usage texts.
inline constexpr char kLogFormatFlagHelp[] =
    "log lines as text (default) or as one JSON object per line on stderr; default from FEDTUNE_LOG_FORMAT";

// Prints a program's own top-level message (the error it exits with, a usage error) as one line on stderr: `text`
// and a newline in text format; in JSON format one JSON object with level ERROR, `text` as its message and the
// calling thread's context (a multi-line text stays one line). One write(2), so lines of threads never interleave.
// Thread-safe.
void PrintErrorLine(absl::string_view text);

// The context every JSON line carries. The site is process-wide (the site agent's id; the coordinator leaves it
// empty). The run and round are process-wide too (the site agent works one task at a time) unless the calling thread
// has a ScopedLogContext (the coordinator's RPC handlers: the peer's site and the run and round of the call).
// Thread-safe.
void SetLogSite(const std::string& site);
void SetLogRun(const std::string& run_id, int round);  // "" and 0: no run.

// Overrides the context of the current thread's log lines while it lives (fields left empty / 0 keep the value of
// the enclosing ScopedLogContext of this thread, else the process-wide one). Nests; destroy in reverse order of
// construction, on the constructing thread (a local variable does both).
class ScopedLogContext {
 public:
  ScopedLogContext(const std::string& site, const std::string& run_id, int round);
  ~ScopedLogContext();
  ScopedLogContext(const ScopedLogContext&) = delete;
  ScopedLogContext& operator=(const ScopedLogContext&) = delete;

 private:
  struct Saved;
  Saved* saved_;
};

struct LogContext {
  std::string site;
  std::string run_id;
  int round = 0;
};
// The context a log line of the calling thread gets now.
LogContext CurrentLogContext();

// ---- The recent log lines of this process (site agent failure reports, FailureReport.log_lines). Every line glog
// takes (at the configured threshold) is kept, formatted as "LEVEL message", in a ring of `lines` lines (at most
// 10000; <= 0 keeps nothing) of at most 64 KiB each (the Scrubber's input bound: longer lines are cut at their last
// whitespace, never inside an identifier; bytes that are not UTF-8 become U+FFFD, so they fit a proto string field).
// Call once after InitLogging(); later calls do nothing. Thread-safe.
void KeepRecentLogLines(int lines);
// The kept lines, oldest first; empty when KeepRecentLogLines was not called.
std::vector<std::string> RecentLogLines();

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
