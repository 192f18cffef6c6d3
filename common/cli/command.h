// Sub-command command lines for fedtune's programs: `fedtune stats compare --truth T.csv ...`.
// A program registers Commands (a word path, documented flags and a Run function) with a CommandSet; the set parses
// argv, prints help, runs the command and maps its absl::Status to the process exit code.
#ifndef FEDTUNE_COMMON_CLI_COMMAND_H_
#define FEDTUNE_COMMON_CLI_COMMAND_H_

#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fedtune::cli {

// Process exit codes of all fedtune programs.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;   // The work failed (I/O, internal error, peer unavailable, ...).
inline constexpr int kExitBadInput = 2;  // Bad command line or bad input data: fix the input and run again.
inline constexpr int kExitDenied = 3;    // Authentication or authorization refused.

// Maps a status to an exit code: OK -> 0; InvalidArgument, NotFound, OutOfRange, AlreadyExists,
// FailedPrecondition -> 2; Unauthenticated, PermissionDenied -> 3; everything else -> 1.
int ExitCodeFor(const absl::Status& status);

// A documented flag. Flags are written `--name value`, `--name=value`, or `--name` alone for booleans.
struct FlagSpec {
  std::string name;                  // Without the leading dashes.
  std::string help;                  // One line.
  bool is_bool = false;              // Takes no value.
  bool required = false;             // Must be given (ignored for booleans).
  std::optional<std::string> value;  // Default for value flags, shown in help; nullopt = no default.
  std::string metavar = "VALUE";
};

// The parsed flags of one invocation. Only flags declared in the command's FlagSpecs can appear here.
class ParsedFlags {
 public:
  // The value of a value flag: the given one, else its default, else nullopt.
  std::optional<std::string> Get(const std::string& name) const;
  // Like Get, for flags declared required or with a default (CHECK-fails otherwise: a bug in the command).
  std::string GetOrDie(const std::string& name) const;
  bool Has(const std::string& name) const;  // Given on the command line (value or boolean).
  bool GetBool(const std::string& name) const;
  // Parses an integer/real flag; InvalidArgument naming the flag on a malformed value. Returns `fallback` if absent.
  absl::StatusOr<int64_t> GetInt(const std::string& name, int64_t fallback) const;
  absl::StatusOr<double> GetDouble(const std::string& name, double fallback) const;

  const std::vector<std::string>& positional() const { return positional_; }

 private:
  friend absl::StatusOr<ParsedFlags> ParseFlags(const std::vector<std::string>& args,
                                                const std::vector<FlagSpec>& specs, int max_positional);
  std::map<std::string, std::string> values_;
  std::map<std::string, std::string> defaults_;
  std::set<std::string> bools_;
  std::vector<std::string> positional_;
};

// Parses args against specs. InvalidArgument (naming the flag) for an unknown flag, a missing value, a value given to
// a boolean flag, a flag given twice, a missing required flag, or more than max_positional positional arguments.
absl::StatusOr<ParsedFlags> ParseFlags(const std::vector<std::string>& args, const std::vector<FlagSpec>& specs,
                                       int max_positional = 0);

struct Command {
  std::vector<std::string> path;  // e.g. {"stats", "compare"}.
  std::string summary;            // One line for the program's command list.
  std::string usage_tail;         // Positional arguments for the usage line, e.g. "MODEL.ckpt"; empty if none.
  int max_positional = 0;
  std::vector<FlagSpec> flags;
  std::function<absl::Status(const ParsedFlags&)> run;
};

// The commands of one program. Not thread-safe; build it in main() and call Main once.
class CommandSet {
 public:
  CommandSet(std::string program, std::string description);
  void Add(Command command);
  // Dispatches argv to a command; prints help for `help`, `--help`, `-h` or an incomplete path (with the global flag
  // --log-format, which main() takes out of argv first: common/logging.h ConfigureLogFormat); prints errors to
  // stderr as "PROGRAM COMMAND: error: MESSAGE" (followed by the usage in text format; with --log-format json one
  // JSON line, PrintErrorLine). Returns the process exit code.
  int Main(int argc, char** argv) const;

 private:
  static std::string GlobalFlagsHelp();
  std::string UsageOf(const Command& command) const;
  std::string Overview() const;
  std::string program_;
  std::string description_;
  std::vector<Command> commands_;
};

}  // namespace fedtune::cli

#endif  // FEDTUNE_COMMON_CLI_COMMAND_H_
