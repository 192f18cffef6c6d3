#include "common/logging.h"

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <exception>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

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

// The program's name for JSON lines (set by InitLogging).
std::string* g_program_name = nullptr;

std::mutex g_context_mutex;
LogContext* g_context = nullptr;               // Process-wide context; guarded by g_context_mutex.
thread_local LogContext* t_context = nullptr;  // The innermost ScopedLogContext's of this thread.

std::atomic<LogFormat> g_format{LogFormat::kText};

const char* SeverityName(google::LogSeverity severity) {
  switch (severity) {
    case google::GLOG_INFO:
      return "INFO";
    case google::GLOG_WARNING:
      return "WARNING";
    case google::GLOG_ERROR:
      return "ERROR";
    default:
      return "FATAL";
  }
}

// RFC 8259 string escaping; bytes that are not valid UTF-8 are not checked (messages are ours).
void AppendJsonString(absl::string_view text, std::string* out) {
  out->push_back('"');
  for (unsigned char c : text) {
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        if (c < 0x20) {
          absl::StrAppendFormat(out, "\\u%04x", c);
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
  }
  out->push_back('"');
}

// glog sink writing one JSON object per line to stderr.
class JsonSink : public google::LogSink {
 public:
  void send(google::LogSeverity severity, const char* /*full_filename*/, const char* base_filename, int line,
            const google::LogMessageTime& time, const char* message, size_t message_len) override {
    const LogContext context = CurrentLogContext();
    std::tm tm{};
    const std::time_t seconds = time.timestamp();
    gmtime_r(&seconds, &tm);  // glog's own tm is local time.
    std::string out = absl::StrFormat("{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%06dZ\",\"level\":\"%s\",",
                                      tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                                      static_cast<int>(time.usec()), SeverityName(severity));
    out.append("\"program\":");
    AppendJsonString(g_program_name == nullptr ? "fedtune" : *g_program_name, &out);
    out.append(",\"site\":");
    AppendJsonString(context.site, &out);
    out.append(",\"run\":");
    AppendJsonString(context.run_id, &out);
    absl::StrAppend(&out, ",\"round\":", context.round, ",\"message\":");
    AppendJsonString(absl::string_view(message, message_len), &out);
    out.append(",\"file\":");
    AppendJsonString(base_filename == nullptr ? "" : base_filename, &out);
    absl::StrAppend(&out, ",\"line\":", line, "}\n");
    // One write(2) per line: lines of concurrent threads never interleave (below PIPE_BUF, and in practice above).
    size_t written = 0;
    while (written < out.size()) {
      const ssize_t n = ::write(STDERR_FILENO, out.data() + written, out.size() - written);
      if (n <= 0) break;
      written += static_cast<size_t>(n);
    }
  }
};

// glog sink keeping the last lines in memory (RecentLogLines).
class RecentLinesSink : public google::LogSink {
 public:
  explicit RecentLinesSink(int capacity) : capacity_(capacity) {}

  void send(google::LogSeverity severity, const char* /*full_filename*/, const char* /*base_filename*/, int /*line*/,
            const google::LogMessageTime& /*time*/, const char* message, size_t message_len) override {
    std::string text = absl::StrCat(SeverityName(severity), " ", absl::string_view(message, message_len));
    if (text.size() > kMaxLineBytes) {
      // Never inside a word: half an identifier would not be scrubbed (the report cuts lines after scrubbing).
      size_t at = kMaxLineBytes;
      while (at > 0 && !absl::ascii_isspace(static_cast<unsigned char>(text[at]))) --at;
      text.resize(at);
    }
    std::lock_guard<std::mutex> lock(mutex_);
    lines_.push_back(std::move(text));
    while (static_cast<int>(lines_.size()) > capacity_) lines_.pop_front();
  }

  std::vector<std::string> Lines() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {lines_.begin(), lines_.end()};
  }

 private:
  static constexpr size_t kMaxLineBytes = 64 * 1024;  // diagnostics::kMaxInputBytes.
  const int capacity_;
  std::mutex mutex_;
  std::deque<std::string> lines_;
};

std::atomic<RecentLinesSink*> g_recent{nullptr};

void ApplyFormat(LogFormat format) {
  static JsonSink* const sink = new JsonSink();  // Lives until exit.
  static bool added = false;
  g_format.store(format);
  if (format == LogFormat::kJson) {
    // glog writes nothing itself (no stderr, no files); the sink writes every line.
    FLAGS_logtostderr = false;
    FLAGS_alsologtostderr = false;
    FLAGS_stderrthreshold = google::NUM_SEVERITIES;
    for (int severity = 0; severity < google::NUM_SEVERITIES; ++severity) google::SetLogDestination(severity, "");
    if (!added) google::AddLogSink(sink);
    added = true;
  } else {
    if (added) google::RemoveLogSink(sink);
    added = false;
    FLAGS_logtostderr = true;
  }
}

}  // namespace

absl::Status ConfigureLogFormat(int* argc, char** argv) {
  std::string value;
  if (const char* env = std::getenv("FEDTUNE_LOG_FORMAT"); env != nullptr && *env != '\0') value = env;
  std::string source = "FEDTUNE_LOG_FORMAT";
  int out = 1;
  for (int i = 1; i < *argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--log-format") {
      if (i + 1 >= *argc) return absl::InvalidArgumentError("--log-format needs a value: text or json");
      value = argv[++i];
      source = "--log-format";
      continue;
    }
    if (absl::StartsWith(arg, "--log-format=")) {
      value = std::string(arg.substr(std::strlen("--log-format=")));
      source = "--log-format";
      continue;
    }
    argv[out++] = argv[i];
  }
  for (int i = out; i < *argc; ++i) argv[i] = nullptr;
  *argc = out;
  if (value.empty() || value == "text") {
    ApplyFormat(LogFormat::kText);
  } else if (value == "json") {
    ApplyFormat(LogFormat::kJson);
  } else {
    return absl::InvalidArgumentError(absl::StrCat(source, ": unknown log format \"", value, "\" (text or json)"));
  }
  return absl::OkStatus();
}

LogFormat CurrentLogFormat() { return g_format.load(); }

void SetLogSite(const std::string& site) {
  std::lock_guard<std::mutex> lock(g_context_mutex);
  if (g_context == nullptr) g_context = new LogContext();  // Lives until exit.
  g_context->site = site;
}

void SetLogRun(const std::string& run_id, int round) {
  std::lock_guard<std::mutex> lock(g_context_mutex);
  if (g_context == nullptr) g_context = new LogContext();
  g_context->run_id = run_id;
  g_context->round = round;
}

struct ScopedLogContext::Saved {
  LogContext context;
  LogContext* previous;
};

ScopedLogContext::ScopedLogContext(const std::string& site, const std::string& run_id, int round)
    : saved_(new Saved{LogContext{site, run_id, round}, t_context}) {
  if (t_context != nullptr) {
    if (saved_->context.site.empty()) saved_->context.site = t_context->site;
    if (saved_->context.run_id.empty()) saved_->context.run_id = t_context->run_id;
    if (saved_->context.round == 0) saved_->context.round = t_context->round;
  }
  t_context = &saved_->context;
}

ScopedLogContext::~ScopedLogContext() {
  t_context = saved_->previous;
  delete saved_;
}

LogContext CurrentLogContext() {
  LogContext context;
  {
    std::lock_guard<std::mutex> lock(g_context_mutex);
    if (g_context != nullptr) context = *g_context;
  }
  if (t_context != nullptr) {
    if (!t_context->site.empty()) context.site = t_context->site;
    if (!t_context->run_id.empty()) context.run_id = t_context->run_id;
    if (t_context->round != 0) context.round = t_context->round;
  }
  return context;
}

void KeepRecentLogLines(int lines) {
  if (lines <= 0 || g_recent.load() != nullptr) return;
  auto* sink = new RecentLinesSink(lines);  // Lives until exit.
  g_recent.store(sink);
  google::AddLogSink(sink);
}

std::vector<std::string> RecentLogLines() {
  RecentLinesSink* sink = g_recent.load();
  return sink == nullptr ? std::vector<std::string>{} : sink->Lines();
}

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
  g_program_name = kProgram;
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
