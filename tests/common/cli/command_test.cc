#include "common/cli/command.h"

#include <new>
#include <stdexcept>
#include <thread>
#include <utility>

#include "common/logging.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fedtune::cli {
namespace {

using ::testing::HasSubstr;

std::vector<FlagSpec> Specs() {
  return {{"in", "input", false, true, std::nullopt, "FILE"},
          {"size", "size", false, false, std::string("512"), "N"},
          {"quiet", "quiet", true}};
}

TEST(ParseFlagsTest, ValuesDefaultsAndBooleans) {
  auto f = ParseFlags({"--in", "a.png", "--quiet"}, Specs());
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->GetOrDie("in"), "a.png");
  EXPECT_EQ(*f->GetInt("size", 0), 512);
  EXPECT_FALSE(f->Has("size"));
  EXPECT_TRUE(f->GetBool("quiet"));
  auto g = ParseFlags({"--in=b.png", "--size=64"}, Specs());
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(*g->GetInt("size", 0), 64);
  EXPECT_FALSE(g->GetBool("quiet"));
}

TEST(ParseFlagsTest, ErrorsNameTheFlag) {
  struct Case {
    std::vector<std::string> args;
    const char* expected;
  } cases[] = {
      {{"--in", "a", "--bogus"}, "unknown flag --bogus"},
      {{"--in"}, "flag --in needs a value"},
      {{"--in", "a", "--quiet=1"}, "flag --quiet takes no value"},
      {{"--in", "a", "--in", "b"}, "flag --in given twice"},
      {{"--size", "3"}, "missing required flag --in"},
      {{"--in", "a", "extra"}, "unexpected argument 'extra'"},
      {{"--in", "a", "-x"}, "unknown option '-x'"},
  };
  for (const Case& c : cases) {
    auto f = ParseFlags(c.args, Specs());
    ASSERT_FALSE(f.ok()) << c.expected;
    EXPECT_THAT(std::string(f.status().message()), HasSubstr(c.expected));
  }
  auto bad_int = ParseFlags({"--in", "a", "--size", "big"}, Specs());
  ASSERT_TRUE(bad_int.ok());
  EXPECT_THAT(std::string(bad_int->GetInt("size", 0).status().message()), HasSubstr("--size: expected an integer"));
}

TEST(ParseFlagsTest, Positionals) {
  auto f = ParseFlags({"model.ckpt"}, {}, 1);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->positional().at(0), "model.ckpt");
}

TEST(ExitCodeTest, Mapping) {
  EXPECT_EQ(ExitCodeFor(absl::OkStatus()), 0);
  EXPECT_EQ(ExitCodeFor(absl::InvalidArgumentError("x")), kExitBadInput);
  EXPECT_EQ(ExitCodeFor(absl::NotFoundError("x")), kExitBadInput);
  EXPECT_EQ(ExitCodeFor(absl::PermissionDeniedError("x")), kExitDenied);
  EXPECT_EQ(ExitCodeFor(absl::InternalError("x")), kExitFailure);
  EXPECT_EQ(ExitCodeFor(absl::UnavailableError("x")), kExitFailure);
}

TEST(CommandSetTest, DispatchesAndMapsStatus) {
  CommandSet set("prog", "test program");
  std::string seen;
  set.Add({{"do", "it"}, "does it", "", 0, Specs(), [&](const ParsedFlags& f) {
             seen = f.GetOrDie("in");
             return f.GetBool("quiet") ? absl::InvalidArgumentError("bad") : absl::OkStatus();
           }});
  auto run = [&](std::vector<std::string> args) {
    std::vector<char*> argv = {const_cast<char*>("prog")};
    for (std::string& a : args) argv.push_back(a.data());
    return set.Main(static_cast<int>(argv.size()), argv.data());
  };
  EXPECT_EQ(run({"do", "it", "--in", "x"}), 0);
  EXPECT_EQ(seen, "x");
  EXPECT_EQ(run({"do", "it", "--in", "x", "--quiet"}), kExitBadInput);
  EXPECT_EQ(run({"do", "nothing"}), kExitBadInput);
  EXPECT_EQ(run({"do", "it", "--help"}), 0);
  EXPECT_EQ(run({}), kExitBadInput);
  EXPECT_EQ(run({"help"}), 0);
}

// Exceptions that escape a command (std::bad_alloc from a hostile input, a library's exception) end in one clear
// line and exit 1, never std::terminate's abort.
TEST(CommandSetTest, ExceptionsBecomeAClearErrorAndExitOne) {
  CommandSet set("prog", "test program");
  set.Add({{"oom"}, "throws bad_alloc", "", 0, {}, [](const ParsedFlags&) -> absl::Status { throw std::bad_alloc(); }});
  set.Add({{"boom"}, "throws", "", 0, {}, [](const ParsedFlags&) -> absl::Status {
             throw std::runtime_error("zip record too large");
           }});
  auto run = [&](std::string command) {
    std::vector<char*> argv = {const_cast<char*>("prog"), command.data()};
    ::testing::internal::CaptureStderr();
    const int rc = set.Main(static_cast<int>(argv.size()), argv.data());
    return std::make_pair(rc, ::testing::internal::GetCapturedStderr());
  };
  auto [oom_rc, oom_err] = run("oom");
  EXPECT_EQ(oom_rc, kExitFailure);
  EXPECT_THAT(oom_err, HasSubstr("prog oom: error: out of memory (std::bad_alloc)"));
  auto [boom_rc, boom_err] = run("boom");
  EXPECT_EQ(boom_rc, kExitFailure);
  EXPECT_THAT(boom_err, HasSubstr("prog boom: error: uncaught exception: zip record too large"));
}

// The terminate handler (installed by InitLogging) covers every other thread: exit 1 with the program's name.
TEST(TerminateHandlerDeathTest, AnExceptionOnAnotherThreadExitsOneWithAMessage) {
  EXPECT_EXIT(
      {
        InstallTerminateHandler("prog");
        std::thread([] { throw std::bad_alloc(); }).join();
      },
      ::testing::ExitedWithCode(1), "prog: fatal: out of memory \\(std::bad_alloc\\)");
  EXPECT_EXIT(
      {
        InstallTerminateHandler("prog");
        std::thread([] { throw std::logic_error("broken invariant"); }).join();
      },
      ::testing::ExitedWithCode(1), "prog: fatal: uncaught exception: broken invariant");
}

}  // namespace
}  // namespace fedtune::cli
