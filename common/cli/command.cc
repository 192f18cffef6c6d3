#include "common/cli/command.h"

#include <cstdio>
#include <iostream>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "common/logging.h"

namespace fedtune::cli {

int ExitCodeFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return kExitOk;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kFailedPrecondition:
      return kExitBadInput;
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied:
      return kExitDenied;
    default:
      return kExitFailure;
  }
}

std::optional<std::string> ParsedFlags::Get(const std::string& name) const {
  if (auto it = values_.find(name); it != values_.end()) return it->second;
  if (auto it = defaults_.find(name); it != defaults_.end()) return it->second;
  return std::nullopt;
}

std::string ParsedFlags::GetOrDie(const std::string& name) const {
  std::optional<std::string> v = Get(name);
  CHECK(v.has_value()) << "flag --" << name << " has neither a value nor a default";
  return *v;
}

bool ParsedFlags::Has(const std::string& name) const { return values_.count(name) > 0 || bools_.count(name) > 0; }

bool ParsedFlags::GetBool(const std::string& name) const { return bools_.count(name) > 0; }

absl::StatusOr<int64_t> ParsedFlags::GetInt(const std::string& name, int64_t fallback) const {
  std::optional<std::string> v = Get(name);
  if (!v) return fallback;
  int64_t out;
  if (!absl::SimpleAtoi(*v, &out)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, ": expected an integer, got '", *v, "'"));
  }
  return out;
}

absl::StatusOr<double> ParsedFlags::GetDouble(const std::string& name, double fallback) const {
  std::optional<std::string> v = Get(name);
  if (!v) return fallback;
  double out;
  if (!absl::SimpleAtod(*v, &out) || !std::isfinite(out)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, ": expected a finite number, got '", *v, "'"));
  }
  return out;
}

absl::StatusOr<ParsedFlags> ParseFlags(const std::vector<std::string>& args, const std::vector<FlagSpec>& specs,
                                       int max_positional) {
  ParsedFlags parsed;
  std::map<std::string, const FlagSpec*> by_name;
  for (const FlagSpec& spec : specs) {
    by_name[spec.name] = &spec;
    if (spec.value) parsed.defaults_[spec.name] = *spec.value;
  }
  bool only_positional = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (only_positional || arg.size() < 3 || arg.rfind("--", 0) != 0) {
      if (arg == "--") {
        only_positional = true;
        continue;
      }
      if (!only_positional && arg.size() > 1 && arg[0] == '-') {
        return absl::InvalidArgumentError(absl::StrCat("unknown option '", arg, "' (flags are written --name)"));
      }
      parsed.positional_.push_back(arg);
      continue;
    }
    std::string body = arg.substr(2);
    std::optional<std::string> inline_value;
    if (size_t eq = body.find('='); eq != std::string::npos) {
      inline_value = body.substr(eq + 1);
      body = body.substr(0, eq);
    }
    auto it = by_name.find(body);
    if (it == by_name.end()) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", body));
    const FlagSpec& spec = *it->second;
    if (parsed.Has(spec.name)) return absl::InvalidArgumentError(absl::StrCat("flag --", body, " given twice"));
    if (spec.is_bool) {
      if (inline_value) return absl::InvalidArgumentError(absl::StrCat("flag --", body, " takes no value"));
      parsed.bools_.insert(spec.name);
      continue;
    }
    if (inline_value) {
      parsed.values_[spec.name] = *inline_value;
    } else {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat("flag --", body, " needs a value (", spec.metavar, ")"));
      }
      parsed.values_[spec.name] = args[++i];
    }
  }
  for (const FlagSpec& spec : specs) {
    if (spec.required && !spec.is_bool && !parsed.values_.count(spec.name)) {
      return absl::InvalidArgumentError(absl::StrCat("missing required flag --", spec.name));
    }
  }
  if (static_cast<int>(parsed.positional_.size()) > max_positional) {
    return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", parsed.positional_[max_positional], "'"));
  }
  return parsed;
}

CommandSet::CommandSet(std::string program, std::string description)
    : program_(std::move(program)), description_(std::move(description)) {}

void CommandSet::Add(Command command) { commands_.push_back(std::move(command)); }

std::string CommandSet::UsageOf(const Command& c) const {
  std::string out = absl::StrCat("usage: ", program_, " ", absl::StrJoin(c.path, " "));
  for (const FlagSpec& f : c.flags) {
    if (f.required) absl::StrAppend(&out, " --", f.name, " ", f.metavar);
  }
  if (!c.usage_tail.empty()) absl::StrAppend(&out, " ", c.usage_tail);
  absl::StrAppend(&out, "\n\n", c.summary, "\n\nflags:\n");
  for (const FlagSpec& f : c.flags) {
    std::string left = f.is_bool ? absl::StrCat("--", f.name) : absl::StrCat("--", f.name, " ", f.metavar);
    absl::StrAppend(&out, "  ", left, std::string(left.size() < 28 ? 28 - left.size() : 1, ' '), f.help);
    if (f.required) absl::StrAppend(&out, " (required)");
    if (f.value) absl::StrAppend(&out, " (default: ", f.value->empty() ? "\"\"" : *f.value, ")");
    absl::StrAppend(&out, "\n");
  }
  absl::StrAppend(&out, "\nglobal flags (anywhere on the command line):\n", GlobalFlagsHelp());
  return out;
}

std::string CommandSet::GlobalFlagsHelp() {
  const std::string left = "--log-format text|json";
  return absl::StrCat("  ", left, std::string(28 - left.size(), ' '), kLogFormatFlagHelp, "\n");
}

std::string CommandSet::Overview() const {
  std::string out =
      absl::StrCat(program_, ": ", description_, "\n\nusage: ", program_, " COMMAND [flags]\n\ncommands:\n");
  for (const Command& c : commands_) {
    std::string name = absl::StrJoin(c.path, " ");
    absl::StrAppend(&out, "  ", name, std::string(name.size() < 24 ? 24 - name.size() : 1, ' '), c.summary, "\n");
  }
  absl::StrAppend(&out, "\nglobal flags (anywhere on the command line):\n", GlobalFlagsHelp());
  absl::StrAppend(&out, "\nRun '", program_, " COMMAND --help' for a command's flags.\n");
  return out;
}

int CommandSet::Main(int argc, char** argv) const {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "help" || args[0] == "--help" || args[0] == "-h") {
    std::cout << Overview();
    return args.empty() ? kExitBadInput : kExitOk;
  }
  // Longest command path that prefixes args wins.
  const Command* best = nullptr;
  for (const Command& c : commands_) {
    if (c.path.size() > args.size()) continue;
    bool match = true;
    for (size_t i = 0; i < c.path.size(); ++i) match = match && c.path[i] == args[i];
    if (match && (best == nullptr || c.path.size() > best->path.size())) best = &c;
  }
  if (best == nullptr) {
    const std::string error =
        absl::StrCat(program_, ": error: unknown command '",
                     absl::StrJoin(args.begin(), args.begin() + std::min<size_t>(2, args.size()), " "), "'");
    if (CurrentLogFormat() == LogFormat::kJson) {
      PrintErrorLine(absl::StrCat(error, " (run '", program_, " --help' for the commands)"));
    } else {
      std::cerr << error << "\n\n" << Overview();
    }
    return kExitBadInput;
  }
  std::vector<std::string> rest(args.begin() + best->path.size(), args.end());
  for (const std::string& a : rest) {
    if (a == "--help" || a == "-h") {
      std::cout << UsageOf(*best);
      return kExitOk;
    }
  }
  const std::string name = absl::StrCat(program_, " ", absl::StrJoin(best->path, " "));
  absl::StatusOr<ParsedFlags> flags = ParseFlags(rest, best->flags, best->max_positional);
  if (!flags.ok()) {
    // In JSON format stderr carries JSON lines only: the error, and where to find the usage.
    if (CurrentLogFormat() == LogFormat::kJson) {
      PrintErrorLine(
          absl::StrCat(name, ": error: ", flags.status().message(), " (run '", name, " --help' for its flags)"));
    } else {
      std::cerr << name << ": error: " << flags.status().message() << "\n\n" << UsageOf(*best);
    }
    return ExitCodeFor(flags.status());
  }
  absl::Status status;
  try {
    status = best->run(*flags);
  } catch (...) {
    // A command returns its errors as a Status; this is the top-level net for what escapes (std::bad_alloc on a
    // hostile input, a library's exception): one clear line and exit 1, never an abort.
    PrintErrorLine(absl::StrCat(name, ": error: ", DescribeCurrentException()));
    return kExitFailure;
  }
  if (!status.ok()) {
    PrintErrorLine(absl::StrCat(name, ": error: ", status.message()));
    return ExitCodeFor(status);
  }
  return kExitOk;
}

}  // namespace fedtune::cli
