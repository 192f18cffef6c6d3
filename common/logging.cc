#include "common/logging.h"

#include <execinfo.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"

namespace fedtune {
namespace {

// Set once before threads start; read by the terminate handler.
const char* g_program = "fedtune";

// The program's name for JSON lines (set by InitLogging).
std::string* g_program_name = nullptr;

std::atomic<LogFormat> g_format{LogFormat::kText};

// The process-wide context (SetLogSite, SetLogRun).
absl::Mutex g_context_mutex(absl::kConstInit);
LogContext* g_context ABSL_GUARDED_BY(g_context_mutex) = nullptr;  // Lives until exit once set.
thread_local const LogContext* t_context = nullptr;                // The innermost ScopedLogContext's of this thread.

// The context of a line; `may_block` false (the terminate handler) gives up on the process-wide part rather than
// wait for a lock that the failing thread may hold.
LogContext ContextOfThisThread(bool may_block) {
  LogContext context;
  if (may_block) {
    g_context_mutex.Lock();
  } else if (!g_context_mutex.TryLock()) {
    return t_context != nullptr ? *t_context : context;
  }
  if (g_context != nullptr) context = *g_context;
  g_context_mutex.Unlock();
  if (t_context != nullptr) {
    if (!t_context->site.empty()) context.site = t_context->site;
    if (!t_context->run_id.empty()) context.run_id = t_context->run_id;
    if (t_context->round != 0) context.round = t_context->round;
  }
  return context;
}

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

// ---- UTF-8 and JSON strings.

constexpr char kReplacementCharacter[] = "\xEF\xBF\xBD";  // U+FFFD in UTF-8.

// The length of the well-formed UTF-8 sequence at text[i] (RFC 3629: no overlong forms, no surrogates, at most
// U+10FFFF), or 0 when text[i] does not start one.
size_t Utf8SequenceLength(absl::string_view text, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char lead = byte(i);
  if (lead < 0x80) return 1;
  size_t length;
  uint32_t code_point;
  uint32_t smallest;
  if ((lead & 0xE0) == 0xC0) {
    length = 2, code_point = lead & 0x1F, smallest = 0x80;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3, code_point = lead & 0x0F, smallest = 0x800;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4, code_point = lead & 0x07, smallest = 0x10000;
  } else {
    return 0;  // A continuation byte, or 0xF8..0xFF.
  }
  if (text.size() - i < length) return 0;
  for (size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    code_point = (code_point << 6) | (byte(i + k) & 0x3F);
  }
  if (code_point < smallest || code_point > 0x10FFFF || (code_point >= 0xD800 && code_point <= 0xDFFF)) return 0;
  return length;
}

// `text` with every byte that is not part of a well-formed UTF-8 sequence replaced by U+FFFD, cut to at most
// `max_bytes` at a character boundary.
std::string ValidUtf8(absl::string_view text, size_t max_bytes) {
  std::string out;
  out.reserve(std::min(text.size(), max_bytes));
  for (size_t i = 0; i < text.size();) {
    const size_t length = Utf8SequenceLength(text, i);
    const absl::string_view piece = length == 0 ? absl::string_view(kReplacementCharacter) : text.substr(i, length);
    if (out.size() + piece.size() > max_bytes) break;
    out.append(piece.data(), piece.size());
    i += length == 0 ? 1 : length;
  }
  return out;
}

// A JSON string (RFC 8259): quotes, backslashes and control characters escaped, bytes that are not UTF-8 replaced by
// U+FFFD (a JSON text must be UTF-8; parsers refuse the line otherwise).
void AppendJsonString(absl::string_view text, std::string* out) {
  out->push_back('"');
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x80) {
      const size_t length = Utf8SequenceLength(text, i);
      if (length == 0) {
        out->append(kReplacementCharacter);
        ++i;
      } else {
        out->append(text.data() + i, length);
        i += length;
      }
      continue;
    }
    ++i;
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
        if (c < 0x20 || c == 0x7F) {
          absl::StrAppendFormat(out, "\\u%04x", c);
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
  }
  out->push_back('"');
}

// One JSON line (with its newline) in the format of logging.h.
std::string JsonLine(std::time_t seconds, int microseconds, const char* level, const LogContext& context,
                     absl::string_view message, absl::string_view file, int line,
                     const std::vector<std::string>* stack = nullptr) {
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  std::string out =
      absl::StrFormat("{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%06dZ\",\"level\":\"%s\",", tm.tm_year + 1900,
                      tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, microseconds, level);
  out.append("\"program\":");
  AppendJsonString(g_program_name == nullptr ? "fedtune" : *g_program_name, &out);
  out.append(",\"site\":");
  AppendJsonString(context.site, &out);
  out.append(",\"run\":");
  AppendJsonString(context.run_id, &out);
  absl::StrAppend(&out, ",\"round\":", context.round, ",\"message\":");
  AppendJsonString(message, &out);
  out.append(",\"file\":");
  AppendJsonString(file, &out);
  absl::StrAppend(&out, ",\"line\":", line);
  if (stack != nullptr) {
    out.append(",\"stack\":[");
    for (size_t i = 0; i < stack->size(); ++i) {
      if (i > 0) out.push_back(',');
      AppendJsonString((*stack)[i], &out);
    }
    out.push_back(']');
  }
  out.append("}\n");
  return out;
}

std::string JsonLineNow(const char* level, const LogContext& context, absl::string_view message) {
  struct timeval now {};
  gettimeofday(&now, nullptr);
  return JsonLine(now.tv_sec, static_cast<int>(now.tv_usec), level, context, message, "", 0);
}

// One write(2) per line (repeated only if the kernel takes part of it): lines of concurrent threads never
// interleave, and no stdio or glog lock is taken.
void WriteToStderr(absl::string_view line) {
  size_t written = 0;
  while (written < line.size()) {
    const ssize_t n = ::write(STDERR_FILENO, line.data() + written, line.size() - written);
    if (n <= 0) break;
    written += static_cast<size_t>(n);
  }
}

// The frames of the calling thread's stack (a FATAL line's "stack"), as glibc's backtrace_symbols writes them.
std::vector<std::string> StackFrames() {
  void* frames[64];
  const int count = backtrace(frames, 64);
  std::vector<std::string> out;
  char** symbols = backtrace_symbols(frames, count);
  if (symbols == nullptr) return out;
  for (int i = 0; i < count; ++i) out.emplace_back(symbols[i]);
  std::free(symbols);
  return out;
}

[[noreturn]] void OnTerminate() {
  std::string message = "fatal: std::terminate called without an active exception";
  if (std::current_exception()) {
    try {
      std::rethrow_exception(std::current_exception());
    } catch (...) {
      message = "fatal: " + DescribeCurrentException();
    }
  }
  // write(2) rather than stdio or glog: they may hold locks of the thread that failed.
  if (g_format.load() == LogFormat::kJson) {
    WriteToStderr(JsonLineNow("FATAL", ContextOfThisThread(/*may_block=*/false), message));
  } else {
    WriteToStderr(std::string(g_program) + ": " + message + "\n");
  }
  std::_Exit(1);
}

// glog sink writing one JSON object per line to stderr (JSON format).
class JsonSink : public google::LogSink {
 public:
  void send(google::LogSeverity severity, const char* /*full_filename*/, const char* base_filename, int line,
            const google::LogMessageTime& time, const char* message, size_t message_len) override {
    std::vector<std::string> stack;
    if (severity >= google::GLOG_FATAL) stack = StackFrames();
    WriteToStderr(JsonLine(time.timestamp(), static_cast<int>(time.usec()), SeverityName(severity),
                           ContextOfThisThread(/*may_block=*/true), absl::string_view(message, message_len),
                           base_filename == nullptr ? "" : base_filename, line,
                           severity >= google::GLOG_FATAL ? &stack : nullptr));
    if (severity >= google::GLOG_FATAL) {
      // glog would go on to write "*** Check failure stack trace: ***" and its own trace as text lines: the JSON line
      // above (with "stack") is the last line, and the process aborts as glog's FATAL does.
      std::abort();
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
    text = ValidUtf8(text, kMaxLineBytes);
    absl::MutexLock lock(&mutex_);
    lines_.push_back(std::move(text));
    while (static_cast<int>(lines_.size()) > capacity_) lines_.pop_front();
  }

  std::vector<std::string> Lines() {
    absl::MutexLock lock(&mutex_);
    return {lines_.begin(), lines_.end()};
  }

 private:
  static constexpr size_t kMaxLineBytes = 64 * 1024;  // diagnostics::kMaxInputBytes.
  const int capacity_;
  absl::Mutex mutex_;
  std::deque<std::string> lines_ ABSL_GUARDED_BY(mutex_);
};

std::atomic<RecentLinesSink*> g_recent{nullptr};
constexpr int kMaxRecentLines = 10000;

void ApplyFormat(LogFormat format) {
  static JsonSink* const sink = new JsonSink();  // Lives until exit.
  static bool added = false;                     // ConfigureLogFormat runs before other threads.
  if (format == LogFormat::kJson) {
    // glog writes nothing itself: no text on stderr (logtostderr off, no severity reaches stderrthreshold) and no
    // files (an empty destination name disables a severity's log file); the sink writes every line.
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
  g_format.store(format);
}

}  // namespace

absl::Status ConfigureLogFormat(int* argc, char** argv) {
  std::string value;
  if (const char* env = std::getenv("FEDTUNE_LOG_FORMAT"); env != nullptr && *env != '\0') value = env;
  std::string source = "FEDTUNE_LOG_FORMAT";
  absl::Status status;
  int out = 1;
  bool only_positional = false;
  for (int i = 1; i < *argc; ++i) {
    const absl::string_view arg = argv[i];
    if (only_positional || arg == "--") {
      only_positional = true;
    } else if (arg == "--log-format") {
      if (i + 1 >= *argc) {
        status = absl::InvalidArgumentError("--log-format needs a value: text or json");
        continue;
      }
      value = argv[++i];
      source = "--log-format";
      continue;
    } else if (absl::StartsWith(arg, "--log-format=")) {
      value = std::string(arg.substr(std::strlen("--log-format=")));
      source = "--log-format";
      continue;
    }
    argv[out++] = argv[i];
  }
  for (int i = out; i < *argc; ++i) argv[i] = nullptr;
  *argc = out;
  if (!status.ok()) return status;
  if (value.empty() || value == "text") {
    ApplyFormat(LogFormat::kText);
  } else if (value == "json") {
    ApplyFormat(LogFormat::kJson);
  } else {
    ApplyFormat(LogFormat::kText);
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": unknown log format \"", ValidUtf8(value, 64), "\" (text or json)"));
  }
  return absl::OkStatus();
}

LogFormat CurrentLogFormat() { return g_format.load(); }

void PrintErrorLine(absl::string_view text) {
  if (g_format.load() == LogFormat::kJson) {
    WriteToStderr(JsonLineNow("ERROR", ContextOfThisThread(/*may_block=*/true), text));
  } else {
    WriteToStderr(absl::StrCat(text, "\n"));
  }
}

void SetLogSite(const std::string& site) {
  absl::MutexLock lock(&g_context_mutex);
  if (g_context == nullptr) g_context = new LogContext();  // Lives until exit.
  g_context->site = site;
}

void SetLogRun(const std::string& run_id, int round) {
  absl::MutexLock lock(&g_context_mutex);
  if (g_context == nullptr) g_context = new LogContext();
  g_context->run_id = run_id;
  g_context->round = round;
}

struct ScopedLogContext::Saved {
  LogContext context;
  const LogContext* previous;
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

LogContext CurrentLogContext() { return ContextOfThisThread(/*may_block=*/true); }

void KeepRecentLogLines(int lines) {
  if (lines <= 0 || g_recent.load() != nullptr) return;
  auto* sink = new RecentLinesSink(std::min(lines, kMaxRecentLines));  // Lives until exit.
  RecentLinesSink* expected = nullptr;
  if (!g_recent.compare_exchange_strong(expected, sink)) {
    delete sink;
    return;
  }
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
    FLAGS_minloglevel = std::clamp(std::atoi(level), 0, google::GLOG_FATAL);
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
