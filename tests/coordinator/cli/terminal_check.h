// A check, independent of coordinator/cli/terminal_text.h, that text is safe to print on a terminal: valid UTF-8
// with no C0 control except '\n', no DEL, no C1 control (U+0080-U+009F), no bidirectional override. And hostile
// strings a site could send (heartbeat state, capabilities, label names) to exercise it.
#ifndef FEDTUNE_TESTS_COORDINATOR_CLI_TERMINAL_CHECK_H_
#define FEDTUNE_TESTS_COORDINATOR_CLI_TERMINAL_CHECK_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace fedtune::admin::testing {

// "" when `text` is terminal-safe, else a description of the first offending byte and its offset.
inline std::string TerminalUnsafety(const std::string& text) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    const std::string where = absl::StrFormat("byte 0x%02x at offset %d", c, i);
    if (c < 0x80) {
      if ((c < 0x20 && c != '\n') || c == 0x7f) return absl::StrCat("control character: ", where);
      ++i;
      continue;
    }
    int len = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (len == 0 || i + len > n) return absl::StrCat("invalid UTF-8: ", where);
    uint32_t cp = c & (0xff >> (len + 1));
    for (int k = 1; k < len; ++k) {
      if ((p[i + k] & 0xc0) != 0x80) return absl::StrCat("invalid UTF-8: ", where);
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff)) {
      return absl::StrCat("invalid UTF-8: ", where);
    }
    if (cp >= 0x80 && cp <= 0x9f) return absl::StrCat("C1 control: ", where);
    if ((cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069)) return absl::StrCat("bidi control: ", where);
    i += len;
  }
  return "";
}

// Strings a hostile or broken site could send.
inline std::vector<std::string> HostileTexts() {
  return {
      "\x1b]0;owned\x07",           // OSC: sets the terminal title.
      "\x1b[2J\x1b[Hall good",      // Clears the screen.
      "ok\rfaked",                  // Carriage return overprints the line.
      "tab\there\nnewline",         // Layout-breaking C0 characters.
      std::string("nul\0byte", 8),  // NUL.
      "del\x7f",                    // DEL.
      "\xc2\x9b"
      "31mred",  // C1 CSI, properly encoded (U+009B).
      "\x9b"
      "31mraw",                  // C1 CSI as a raw byte (invalid UTF-8).
      "\xff\xfe bad",            // Invalid UTF-8.
      "\xc0\xaf overlong",       // Overlong encoding.
      "\xed\xa0\x80 surrogate",  // Encoded surrogate.
      "\xe2\x80\xae"
      "evil",                  // U+202E right-to-left override.
      "truncated \xe2\x82",    // A cut multi-byte sequence at the end.
      std::string(5000, 'A'),  // Very long.
  };
}

}  // namespace fedtune::admin::testing

#endif  // FEDTUNE_TESTS_COORDINATOR_CLI_TERMINAL_CHECK_H_
