// Making peer-supplied text safe to print on an operator's terminal. Sites control some of the text the operator
// commands print (heartbeat state, capabilities, label names, messages derived from them); a terminal interprets
// control characters, so a site that sends "\x1b]0;...\x07" or "\x1b[2J" could retitle, clear or rewrite the
// operator's screen, and a carriage return or a bidirectional override could make a line say something it does not.
// Every CLI output path that prints such text passes it through TerminalSafe first.
//
// Thread safety: the functions are reentrant.
#ifndef FEDTUNE_COORDINATOR_CLI_TERMINAL_TEXT_H_
#define FEDTUNE_COORDINATOR_CLI_TERMINAL_TEXT_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace fedtune::admin {

// Default bound of TerminalSafe's output, in bytes (before the "..." marker).
inline constexpr size_t kMaxTerminalTextBytes = 256;

// `text` with every character a terminal would interpret replaced by a visible escape, so the result is valid UTF-8
// holding no control character:
//   C0 controls U+0000-U+001F (ESC, CR, LF and TAB included) and DEL  -> "\x1b", "\x0a", "\x7f", ...
//   C1 controls U+0080-U+009F (UTF-8 encoded)                          -> "\u009b", ...
//   bidirectional overrides and isolates U+202A-U+202E, U+2066-U+2069, and the line/paragraph separators
//   U+2028/U+2029                                                      -> "\u202e", ...
//   each byte that is not part of a valid UTF-8 sequence (stray continuation or lead bytes, overlong forms,
//   surrogates, code points above U+10FFFF, a sequence cut short)      -> "\xff", ...
// Everything else (printable ASCII, backslash included, and valid non-control UTF-8) is kept as is.
std::string EscapeControlCharacters(absl::string_view text);

// EscapeControlCharacters(text), cut at a character boundary so that at most `max_bytes` bytes of it remain, followed
// by "..." when it was cut (so the result has at most max_bytes + 3 bytes). max_bytes = 0 means no bound.
std::string TerminalSafe(absl::string_view text, size_t max_bytes = kMaxTerminalTextBytes);

}  // namespace fedtune::admin

#endif  // FEDTUNE_COORDINATOR_CLI_TERMINAL_TEXT_H_
