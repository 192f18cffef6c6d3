#include "coordinator/cli/terminal_text.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_format.h"

namespace fedtune::admin {
namespace {

// Length of the valid UTF-8 sequence at text[i] and its code point; 0 when the bytes there are not one.
size_t DecodeUtf8(absl::string_view text, size_t i, uint32_t* code_point) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char lead = byte(i);
  size_t len;
  uint32_t cp;
  if (lead < 0x80) {
    *code_point = lead;
    return 1;
  } else if (lead >= 0xc2 && lead <= 0xdf) {
    len = 2;
    cp = lead & 0x1f;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    len = 3;
    cp = lead & 0x0f;
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    len = 4;
    cp = lead & 0x07;
  } else {
    return 0;  // A continuation byte, 0xc0/0xc1 (always overlong) or 0xf5-0xff.
  }
  if (i + len > text.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((byte(i + k) & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (byte(i + k) & 0x3f);
  }
  if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff)) {
    return 0;  // Overlong, out of range, or a surrogate.
  }
  *code_point = cp;
  return len;
}

bool IsHiddenCodePoint(uint32_t cp) {
  return (cp >= 0x80 && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029 || (cp >= 0x202a && cp <= 0x202e) ||
         (cp >= 0x2066 && cp <= 0x2069);
}

// Appends the escaped form of the character at text[i] to *out and returns its length in `text` (>= 1).
size_t AppendEscaped(absl::string_view text, size_t i, std::string* out) {
  uint32_t cp = 0;
  const size_t len = DecodeUtf8(text, i, &cp);
  if (len == 0) {
    absl::StrAppendFormat(out, "\\x%02x", static_cast<unsigned char>(text[i]));
    return 1;
  }
  if (cp < 0x20 || cp == 0x7f) {
    absl::StrAppendFormat(out, "\\x%02x", cp);
  } else if (IsHiddenCodePoint(cp)) {
    absl::StrAppendFormat(out, "\\u%04x", cp);
  } else {
    out->append(text.data() + i, len);
  }
  return len;
}

}  // namespace

std::string EscapeControlCharacters(absl::string_view text) { return TerminalSafe(text, 0); }

std::string TerminalSafe(absl::string_view text, size_t max_bytes) {
  std::string out;
  out.reserve(max_bytes > 0 ? std::min(text.size(), max_bytes) : text.size());
  for (size_t i = 0; i < text.size();) {
    const size_t before = out.size();
    i += AppendEscaped(text, i, &out);
    if (max_bytes > 0 && out.size() > max_bytes) {
      out.resize(before);  // Drop the whole character or escape that crossed the bound.
      out += "...";
      break;
    }
  }
  return out;
}

}  // namespace fedtune::admin
