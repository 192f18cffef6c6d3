// Small formatting helpers shared by the operator commands and the consortium report: numbers that may be
// undefined, p-values, byte counts, times, HTML escaping.
//
// Thread safety: reentrant.
#ifndef FEDTUNE_COORDINATOR_CLI_REPORT_FORMAT_H_
#define FEDTUNE_COORDINATOR_CLI_REPORT_FORMAT_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace fedtune::admin {

// nullopt for NaN and infinities.
std::optional<double> Defined(double value);

// "0.781" (3 decimals) or "n/a".
std::string FormatAuc(std::optional<double> auc);
// "0.003", "< 0.001" or "n/a".
std::string FormatP(std::optional<double> p);
// "0.4123" (4 significant decimals) or "n/a".
std::string FormatLoss(std::optional<double> loss);
// "812 B", "3.4 KiB", "12.3 MiB", "1.20 GiB".
std::string FormatBytes(int64_t bytes);
// "2026-11-25 21:50:34 UTC", or "-" for 0.
std::string FormatTimeMs(int64_t unix_ms);
// "12s ago", "5m ago", "3h ago", "2d ago", "never" for 0, relative to now_ms.
std::string FormatAgo(int64_t unix_ms, int64_t now_ms);
// The first 12 hex digits of a digest, or "-" when empty.
std::string ShortDigest(absl::string_view digest);
// html::Escape (&, <, >, " and ') after replacing control characters, bidi overrides and invalid UTF-8 with visible
// escapes (EscapeControlCharacters, terminal_text.h): the page is valid UTF-8 whatever a site sent.
std::string HtmlEscape(absl::string_view text);

}  // namespace fedtune::admin

#endif  // FEDTUNE_COORDINATOR_CLI_REPORT_FORMAT_H_
