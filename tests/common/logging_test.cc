// Tests of common/logging.h: the --log-format flag, the JSON line format (escaping, invalid UTF-8, the keys, the
// context of SetLogSite/SetLogRun/ScopedLogContext on this and other threads, FATAL lines, no log files), the
// program's own error lines, and the ring of recent lines. Lines are read back from stderr, redirected to a file.
#include "common/logging.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace fedtune {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using Json = nlohmann::json;

void InitOnce() {
  static std::once_flag once;
  std::call_once(once, [] { InitLogging("/some/dir/logging_test"); });
}

// Applies `args` (after the program name) with ConfigureLogFormat; returns the arguments it left.
std::vector<std::string> Configure(std::vector<std::string> args, absl::Status* status = nullptr) {
  InitOnce();
  std::vector<std::string> storage = {"logging_test"};
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& s : storage) argv.push_back(s.data());
  argv.push_back(nullptr);
  int argc = static_cast<int>(storage.size());
  absl::Status result = ConfigureLogFormat(&argc, argv.data());
  if (status != nullptr) *status = result;
  std::vector<std::string> left;
  for (int i = 1; i < argc; ++i) left.emplace_back(argv[i]);
  EXPECT_EQ(argv[argc], nullptr);
  return left;
}

void UseJson() {
  absl::Status status;
  Configure({"--log-format", "json"}, &status);
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_EQ(CurrentLogFormat(), LogFormat::kJson);
}

// Redirects fd 2 to a file while it lives; Lines() ends the redirection and returns what was written.
class StderrCapture {
 public:
  StderrCapture() {
    path_ = (std::filesystem::temp_directory_path() /
             ("logging_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++) + ".err"))
                .string();
    const int fd = ::open(path_.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_APPEND, 0600);
    EXPECT_GE(fd, 0);
    saved_ = ::dup(STDERR_FILENO);
    ::dup2(fd, STDERR_FILENO);
    ::close(fd);
  }
  ~StderrCapture() {
    Restore();
    std::filesystem::remove(path_);
  }

  std::string Text() {
    Restore();
    std::ifstream in(path_, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }

  // The non-empty lines.
  std::vector<std::string> Lines() {
    std::vector<std::string> lines;
    std::stringstream text(Text());
    for (std::string line; std::getline(text, line);) {
      if (!line.empty()) lines.push_back(line);
    }
    return lines;
  }

  // Every line parsed as a JSON object (a test failure for any line that is not one).
  std::vector<Json> Objects() {
    std::vector<Json> objects;
    for (const std::string& line : Lines()) {
      try {
        Json j = Json::parse(line);
        EXPECT_TRUE(j.is_object()) << line;
        objects.push_back(std::move(j));
      } catch (const Json::exception& e) {
        ADD_FAILURE() << "not a JSON line (" << e.what() << "): " << line;
      }
    }
    return objects;
  }

 private:
  void Restore() {
    if (saved_ < 0) return;
    ::dup2(saved_, STDERR_FILENO);
    ::close(saved_);
    saved_ = -1;
  }
  static inline int counter_ = 0;
  std::string path_;
  int saved_ = -1;
};

TEST(ConfigureLogFormatTest, TakesTheFlagAnywhereAndLeavesTheRest) {
  absl::Status status;
  EXPECT_THAT(Configure({"run", "--log-format", "json", "--config", "x"}, &status),
              ElementsAre("run", "--config", "x"));
  EXPECT_TRUE(status.ok());
  EXPECT_EQ(CurrentLogFormat(), LogFormat::kJson);
  EXPECT_THAT(Configure({"--log-format=text", "sites", "list"}, &status), ElementsAre("sites", "list"));
  EXPECT_TRUE(status.ok());
  EXPECT_EQ(CurrentLogFormat(), LogFormat::kText);
  EXPECT_THAT(Configure({"a", "--log-format=json"}, &status), ElementsAre("a"));
  EXPECT_EQ(CurrentLogFormat(), LogFormat::kJson);
  // After "--" everything is an operand of the command.
  EXPECT_THAT(Configure({"a", "--", "--log-format", "json"}, &status), ElementsAre("a", "--", "--log-format", "json"));
  EXPECT_EQ(CurrentLogFormat(), LogFormat::kText);
  Configure({}, &status);
  EXPECT_EQ(CurrentLogFormat(), LogFormat::kText);
}

TEST(ConfigureLogFormatTest, BadValuesAreInvalidArgumentNamingTheValue) {
  absl::Status status;
  EXPECT_THAT(Configure({"x", "--log-format", "xml"}, &status), ElementsAre("x"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("--log-format: unknown log format \"xml\" (text or json)"));
  EXPECT_EQ(CurrentLogFormat(), LogFormat::kText);
  Configure({"--log-format"}, &status);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("needs a value"));
}

TEST(ConfigureLogFormatTest, TheEnvironmentIsTheDefaultAndTheFlagWins) {
  ::setenv("FEDTUNE_LOG_FORMAT", "json", 1);
  absl::Status status;
  Configure({}, &status);
  EXPECT_TRUE(status.ok());
  EXPECT_EQ(CurrentLogFormat(), LogFormat::kJson);
  Configure({"--log-format", "text"}, &status);
  EXPECT_EQ(CurrentLogFormat(), LogFormat::kText);
  ::setenv("FEDTUNE_LOG_FORMAT", "yaml", 1);
  Configure({}, &status);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("FEDTUNE_LOG_FORMAT: unknown log format \"yaml\""));
  ::unsetenv("FEDTUNE_LOG_FORMAT");
}

TEST(JsonLogTest, EveryLineHasTheKeysOfTheFormat) {
  UseJson();
  StderrCapture capture;
  const int line = __LINE__ + 1;
  LOG(INFO) << "hello " << 42;
  LOG(WARNING) << "careful";
  LOG(ERROR) << "broken";
  std::vector<Json> objects = capture.Objects();
  ASSERT_EQ(objects.size(), 3u);
  const std::regex time(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)");
  for (const Json& j : objects) {
    for (const char* key : {"time", "level", "program", "site", "run", "round", "message", "file", "line"}) {
      EXPECT_TRUE(j.contains(key)) << key << " missing: " << j.dump();
    }
    EXPECT_TRUE(std::regex_match(j["time"].get<std::string>(), time)) << j["time"];
    EXPECT_EQ(j["program"], "logging_test");  // The base name of argv[0].
    EXPECT_EQ(j["file"], "logging_test.cc");
    EXPECT_TRUE(j["round"].is_number_integer());
    EXPECT_TRUE(j["line"].is_number_integer());
    EXPECT_FALSE(j.contains("stack"));
  }
  EXPECT_EQ(objects[0]["level"], "INFO");
  EXPECT_EQ(objects[0]["message"], "hello 42");
  EXPECT_EQ(objects[0]["line"], line);
  EXPECT_EQ(objects[1]["level"], "WARNING");
  EXPECT_EQ(objects[2]["level"], "ERROR");
  EXPECT_EQ(objects[0]["site"], "");
  EXPECT_EQ(objects[0]["run"], "");
  EXPECT_EQ(objects[0]["round"], 0);
}

TEST(JsonLogTest, QuotesNewlinesAndControlCharactersStayOnOneLine) {
  UseJson();
  StderrCapture capture;
  const std::string message =
      std::string("say \"hi\" \\ back\nslash\r\ttab \x01\x02\x1f del \x7f nul ") + std::string(1, '\0') + " end";
  LOG(INFO) << message;
  const std::vector<std::string> lines = capture.Lines();
  ASSERT_EQ(lines.size(), 1u) << "a message with a newline became several lines";
  EXPECT_THAT(lines[0], HasSubstr(R"(say \"hi\" \\ back\nslash\r\ttab \u0001\u0002\u001f del \u007f nul \u0000 end)"));
  EXPECT_EQ(Json::parse(lines[0])["message"].get<std::string>(), message);
}

TEST(JsonLogTest, InvalidUtf8BecomesTheReplacementCharacter) {
  UseJson();
  StderrCapture capture;
  // A stray byte, a truncated sequence, a surrogate, an overlong '/', a code point above U+10FFFF, a lone
  // continuation byte at the end; then valid 2-, 3- and 4-byte characters that must pass unchanged.
  LOG(INFO) << "a\xff b\xc3 c\xed\xa0\x80 d\xc0\xaf e\xf4\x90\x80\x80 f\x80";
  LOG(INFO) << "caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80";
  std::vector<Json> objects = capture.Objects();  // Json::parse refuses invalid UTF-8.
  ASSERT_EQ(objects.size(), 2u);
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(objects[0]["message"].get<std::string>(),
            "a" + r + " b" + r + " c" + r + r + r + " d" + r + r + " e" + r + r + r + r + " f" + r);
  EXPECT_EQ(objects[1]["message"].get<std::string>(), "caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80");
}

TEST(JsonLogTest, ContextFromSetLogRunAndNestedScopes) {
  UseJson();
  SetLogSite("site-a");
  SetLogRun("run-1", 2);
  StderrCapture capture;
  LOG(INFO) << "process";
  {
    ScopedLogContext outer("site-x", "run-8", 3);
    LOG(INFO) << "outer";
    {
      ScopedLogContext inner("", "run-9", 0);  // Empty fields keep the outer scope's values.
      LOG(INFO) << "inner";
      const LogContext now = CurrentLogContext();
      EXPECT_EQ(now.site, "site-x");
      EXPECT_EQ(now.run_id, "run-9");
      EXPECT_EQ(now.round, 3);
    }
    LOG(INFO) << "outer again";
  }
  LOG(INFO) << "process again";
  SetLogSite("");
  SetLogRun("", 0);
  LOG(INFO) << "none";
  std::vector<Json> o = capture.Objects();
  ASSERT_EQ(o.size(), 6u);
  auto context = [](const Json& j) {
    return j["site"].get<std::string>() + "|" + j["run"].get<std::string>() + "|" +
           std::to_string(j["round"].get<int>());
  };
  EXPECT_EQ(context(o[0]), "site-a|run-1|2");
  EXPECT_EQ(context(o[1]), "site-x|run-8|3");
  EXPECT_EQ(context(o[2]), "site-x|run-9|3");
  EXPECT_EQ(context(o[3]), "site-x|run-8|3");
  EXPECT_EQ(context(o[4]), "site-a|run-1|2");
  EXPECT_EQ(context(o[5]), "||0");
}

TEST(JsonLogTest, ScopesBelongToTheirThreadAndTheProcessContextToAll) {
  UseJson();
  SetLogSite("site-b");
  SetLogRun("run-5", 1);
  StderrCapture capture;
  {
    ScopedLogContext main_scope("", "run-main", 7);
    std::thread([] { LOG(INFO) << "plain thread"; }).join();
    std::thread([] {
      ScopedLogContext scope("site-t", "", 4);
      LOG(INFO) << "scoped thread";
    }).join();
    LOG(INFO) << "main";
  }
  SetLogSite("");
  SetLogRun("", 0);
  std::vector<Json> o = capture.Objects();
  ASSERT_EQ(o.size(), 3u);
  EXPECT_EQ(o[0]["message"], "plain thread");
  EXPECT_EQ(o[0]["site"], "site-b");
  EXPECT_EQ(o[0]["run"], "run-5");
  EXPECT_EQ(o[0]["round"], 1);
  EXPECT_EQ(o[1]["site"], "site-t");
  EXPECT_EQ(o[1]["run"], "run-5");
  EXPECT_EQ(o[1]["round"], 4);
  EXPECT_EQ(o[2]["site"], "site-b");
  EXPECT_EQ(o[2]["run"], "run-main");
  EXPECT_EQ(o[2]["round"], 7);
}

TEST(JsonLogTest, LinesOfConcurrentThreadsNeverInterleave) {
  UseJson();
  StderrCapture capture;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([t] {
      ScopedLogContext scope("site-" + std::to_string(t), "", t + 1);
      // Longer than PIPE_BUF (4096), so that a line written in pieces would show.
      const std::string payload(6000, static_cast<char>('a' + t));
      for (int i = 0; i < 50; ++i) {
        SetLogRun("run-" + std::to_string(i), 0);  // The process-wide context changes under the other threads.
        LOG(INFO) << t << " " << i << " " << payload;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  SetLogRun("", 0);
  std::vector<Json> o = capture.Objects();
  ASSERT_EQ(o.size(), 200u);
  for (const Json& j : o) {
    const std::string message = j["message"];
    const int t = message[0] - '0';
    EXPECT_EQ(j["site"], "site-" + std::to_string(t));
    EXPECT_EQ(j["round"], t + 1);
    EXPECT_EQ(message.substr(message.size() - 6000), std::string(6000, static_cast<char>('a' + t)));
  }
}

TEST(JsonLogTest, ProgramErrorLinesAreJsonObjectsWithLevelError) {
  UseJson();
  StderrCapture capture;
  {
    ScopedLogContext scope("site-e", "run-e", 9);
    PrintErrorLine("fedtune run start: error: two\nlines");
  }
  std::vector<Json> o = capture.Objects();
  ASSERT_EQ(o.size(), 1u);
  EXPECT_EQ(o[0]["level"], "ERROR");
  EXPECT_EQ(o[0]["message"], "fedtune run start: error: two\nlines");
  EXPECT_EQ(o[0]["program"], "logging_test");
  EXPECT_EQ(o[0]["site"], "site-e");
  EXPECT_EQ(o[0]["round"], 9);
  EXPECT_EQ(o[0]["file"], "");
  EXPECT_EQ(o[0]["line"], 0);
}

TEST(TextLogTest, TextFormatKeepsGlogLinesAndPlainErrorLines) {
  absl::Status status;
  Configure({"--log-format", "text"}, &status);
  ASSERT_TRUE(status.ok());
  StderrCapture capture;
  LOG(WARNING) << "plain";
  PrintErrorLine("prog: error: plain error");
  const std::string text = capture.Text();
  EXPECT_THAT(text, HasSubstr("] plain\n"));
  EXPECT_THAT(text, ::testing::ContainsRegex("(^|\n)W[0-9]{4,8} [0-9:.]+ "));
  EXPECT_THAT(text, HasSubstr("\nprog: error: plain error\n"));
  EXPECT_THAT(text, Not(HasSubstr("{\"time\"")));
}

TEST(JsonLogTest, NoLogFilesAreWritten) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("logging_test_dir_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string saved_log_dir = FLAGS_log_dir;
  FLAGS_log_dir = dir.string();
  UseJson();
  {
    StderrCapture capture;
    LOG(INFO) << "info";
    LOG(WARNING) << "warning";
    LOG(ERROR) << "error";
    EXPECT_EQ(capture.Objects().size(), 3u);
  }
  google::FlushLogFiles(google::GLOG_INFO);
  EXPECT_TRUE(std::filesystem::is_empty(dir)) << "glog wrote a file in " << dir;
  FLAGS_log_dir = saved_log_dir;
  std::filesystem::remove_all(dir);
}

// A FATAL line is the last line, a JSON object with the stack; glog's text trace does not follow it.
TEST(JsonLogDeathTest, FatalIsOneJsonLineThenAbort) {
  const std::string path =
      (std::filesystem::temp_directory_path() / ("logging_test_fatal_" + std::to_string(::getpid()) + ".err")).string();
  std::filesystem::remove(path);
  EXPECT_DEATH(
      {
        UseJson();
        const int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_APPEND, 0600);
        ::dup2(fd, STDERR_FILENO);
        LOG(INFO) << "before";
        CHECK_EQ(1 + 1, 3) << "arithmetic";
      },
      "");
  std::ifstream in(path);
  std::vector<Json> objects;
  for (std::string line; std::getline(in, line);) {
    ASSERT_NO_THROW(objects.push_back(Json::parse(line))) << "not a JSON line: " << line;
  }
  std::filesystem::remove(path);
  ASSERT_EQ(objects.size(), 2u);
  EXPECT_EQ(objects[0]["message"], "before");
  EXPECT_EQ(objects[1]["level"], "FATAL");
  EXPECT_THAT(objects[1]["message"].get<std::string>(), HasSubstr("Check failed: 1 + 1 == 3"));
  EXPECT_THAT(objects[1]["message"].get<std::string>(), HasSubstr("arithmetic"));
  ASSERT_TRUE(objects[1]["stack"].is_array());
  EXPECT_FALSE(objects[1]["stack"].empty());
}

TEST(JsonLogDeathTest, AnUncaughtExceptionIsAJsonFatalLineAndExitOne) {
  EXPECT_EXIT(
      {
        UseJson();
        std::thread([] { throw std::logic_error("broken \"invariant\""); }).join();
      },
      ::testing::ExitedWithCode(1),
      R"(\{"time":"[^"]+","level":"FATAL","program":"logging_test",.*"message":"fatal: uncaught exception: broken \\"invariant\\"")");
}

TEST(RecentLogLinesTest, KeepsTheLastLinesWholeUpTo64KiB) {
  InitOnce();
  KeepRecentLogLines(5);
  KeepRecentLogLines(100);  // Later calls change nothing.
  StderrCapture quiet;      // The lines below need not show.
  for (int i = 0; i < 8; ++i) LOG(INFO) << "line " << i;
  EXPECT_THAT(RecentLogLines(), ElementsAre("INFO line 3", "INFO line 4", "INFO line 5", "INFO line 6", "INFO line 7"));
  LOG(WARNING) << std::string(1000, 'x');
  std::string accents;
  for (int i = 0; i < 400; ++i) accents += "\xc3\xa9";
  LOG(INFO) << accents;
  std::string words;  // glog itself cuts a message at 30000 bytes (kMaxLogMessageLen), before any sink sees it.
  while (words.size() < 70000) words += "abcd ";
  LOG(INFO) << words << "MRN12345678";
  LOG(ERROR) << "bad \xff byte";
  const std::vector<std::string> lines = RecentLogLines();
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_EQ(lines[0], "INFO line 7");
  EXPECT_EQ(lines[1], "WARNING " + std::string(1000, 'x'));  // Whole: the scrubber, not the ring, bounds a report.
  EXPECT_EQ(lines[2], "INFO " + accents);
  EXPECT_LE(lines[3].size(), 64u * 1024);
  EXPECT_EQ(lines[3].substr(0, 15), "INFO abcd abcd ");
  EXPECT_EQ(lines[3].find("MRN"), std::string::npos);
  EXPECT_EQ(lines[4], "ERROR bad \xEF\xBF\xBD byte");
  for (const std::string& line : lines) {
    EXPECT_NO_THROW(Json(line).dump()) << "not valid UTF-8: " << line.substr(0, 80);  // dump() refuses invalid UTF-8.
  }
}

}  // namespace
}  // namespace fedtune
