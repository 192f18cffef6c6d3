// Tests of coordinator/cli/terminal_text.h: every class of character a terminal would interpret becomes a visible
// escape, valid text is kept, and the bound cuts at a character boundary.
#include "coordinator/cli/terminal_text.h"

#include <string>

#include "absl/strings/escaping.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/coordinator/cli/terminal_check.h"

namespace fedtune::admin {
namespace {

TEST(EscapeControlCharactersTest, EscapesEachClassVisibly) {
  EXPECT_EQ(EscapeControlCharacters("\x1b]0;owned\x07"), "\\x1b]0;owned\\x07");
  EXPECT_EQ(EscapeControlCharacters("a\rb\nc\td"), "a\\x0db\\x0ac\\x09d");
  EXPECT_EQ(EscapeControlCharacters(std::string("nul\0!", 5)), "nul\\x00!");
  EXPECT_EQ(EscapeControlCharacters("del\x7f"), "del\\x7f");
  EXPECT_EQ(EscapeControlCharacters("\xc2\x9b"
                                    "31m"),
            "\\u009b31m");                                                   // C1 CSI, UTF-8 encoded.
  EXPECT_EQ(EscapeControlCharacters("\xc2\x80\xc2\x9f"), "\\u0080\\u009f");  // The C1 range's ends.
  EXPECT_EQ(EscapeControlCharacters("\x9b"
                                    "31m"),
            "\\x9b31m");  // A raw C1 byte is invalid UTF-8.
  EXPECT_EQ(EscapeControlCharacters("\xe2\x80\xae"
                                    "cba"),
            "\\u202ecba");  // Right-to-left override.
  EXPECT_EQ(EscapeControlCharacters("\xe2\x81\xa6x\xe2\x81\xa9"), "\\u2066x\\u2069");
  EXPECT_EQ(EscapeControlCharacters("a\xe2\x80\xa8"
                                    "b"),
            "a\\u2028b");  // Line separator.
  EXPECT_EQ(EscapeControlCharacters("\xff\xfe"), "\\xff\\xfe");
  EXPECT_EQ(EscapeControlCharacters("\xc0\xaf"), "\\xc0\\xaf");                    // Overlong '/'.
  EXPECT_EQ(EscapeControlCharacters("\xe0\x80\xaf"), "\\xe0\\x80\\xaf");           // Overlong, three bytes.
  EXPECT_EQ(EscapeControlCharacters("\xed\xa0\x80"), "\\xed\\xa0\\x80");           // Surrogate U+D800.
  EXPECT_EQ(EscapeControlCharacters("\xf4\x90\x80\x80"), "\\xf4\\x90\\x80\\x80");  // Above U+10FFFF.
  EXPECT_EQ(EscapeControlCharacters("end\xe2\x82"), "end\\xe2\\x82");              // Cut short.
  EXPECT_EQ(EscapeControlCharacters("\xe2\x82\x1b"), "\\xe2\\x82\\x1b");           // Cut by a control character.
}

TEST(EscapeControlCharactersTest, KeepsValidText) {
  for (const std::string text : {"", "site-a", "training epoch 1/2", "C:\\data\\x1b is literal text",
                                 "Troms\xc3\xb8 \xe2\x86\x92 Bergen", "\xf0\x9f\xa9\xbb x-ray", "\xc2\xa0nbsp"}) {
    EXPECT_EQ(EscapeControlCharacters(text), text) << absl::CEscape(text);
    EXPECT_EQ(TerminalSafe(text), text);
  }
}

TEST(TerminalSafeTest, OutputIsAlwaysSafeAndIdempotent) {
  for (const std::string& hostile : testing::HostileTexts()) {
    const std::string safe = TerminalSafe(hostile);
    EXPECT_EQ(testing::TerminalUnsafety(safe), "") << absl::CEscape(hostile);
    EXPECT_EQ(TerminalSafe(safe), safe) << absl::CEscape(hostile);
    EXPECT_EQ(testing::TerminalUnsafety(EscapeControlCharacters(hostile)), "");
  }
  // Every single byte value, alone and after a valid lead byte.
  for (int b = 0; b < 256; ++b) {
    for (const std::string text :
         {std::string(1, static_cast<char>(b)), "\xe2" + std::string(1, static_cast<char>(b))}) {
      EXPECT_EQ(testing::TerminalUnsafety(TerminalSafe(text)), "") << absl::CEscape(text);
    }
  }
}

TEST(TerminalSafeTest, BoundCutsAtACharacterBoundary) {
  EXPECT_EQ(TerminalSafe(std::string(300, 'a')), std::string(kMaxTerminalTextBytes, 'a') + "...");
  EXPECT_EQ(TerminalSafe("abcdef", 4), "abcd...");
  EXPECT_EQ(TerminalSafe("abcd", 4), "abcd");
  EXPECT_EQ(TerminalSafe("ab\xc3\xb8", 3), "ab...");  // The two-byte character does not fit: dropped whole.
  EXPECT_EQ(TerminalSafe("ab\x1b", 4), "ab...");      // Nor does the four-byte escape.
  EXPECT_EQ(TerminalSafe(std::string(100000, '\x1b')).size(), kMaxTerminalTextBytes / 4 * 4 + 3);
  EXPECT_EQ(TerminalSafe(std::string(1000, 'x'), 0).size(), 1000u);  // 0: no bound.
}

}  // namespace
}  // namespace fedtune::admin
