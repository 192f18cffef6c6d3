#include "coordinator/cli/report_format.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "common/html/html.h"
#include "coordinator/cli/terminal_text.h"

namespace fedtune::admin {

std::optional<double> Defined(double value) {
  if (!std::isfinite(value)) return std::nullopt;
  return value;
}

std::string FormatAuc(std::optional<double> auc) { return auc ? absl::StrFormat("%.3f", *auc) : "n/a"; }

std::string FormatP(std::optional<double> p) {
  if (!p) return "n/a";
  if (*p < 0.001) return "< 0.001";
  return absl::StrFormat("%.3f", *p);
}

std::string FormatLoss(std::optional<double> loss) { return loss ? absl::StrFormat("%.4f", *loss) : "n/a"; }

std::string FormatBytes(int64_t bytes) {
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  const double b = static_cast<double>(bytes);
  if (bytes < (int64_t{1} << 20)) return absl::StrFormat("%.1f KiB", b / 1024);
  if (bytes < (int64_t{1} << 30)) return absl::StrFormat("%.1f MiB", b / (1 << 20));
  return absl::StrFormat("%.2f GiB", b / (1 << 30));
}

std::string FormatTimeMs(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", absl::FromUnixMillis(unix_ms), absl::UTCTimeZone());
}

std::string FormatAgo(int64_t unix_ms, int64_t now_ms) {
  if (unix_ms <= 0) return "never";
  const int64_t s = std::max<int64_t>(0, (now_ms - unix_ms) / 1000);
  if (s < 120) return absl::StrCat(s, "s ago");
  if (s < 7200) return absl::StrCat(s / 60, "m ago");
  if (s < 172800) return absl::StrCat(s / 3600, "h ago");
  return absl::StrCat(s / 86400, "d ago");
}

std::string ShortDigest(absl::string_view digest) {
  if (digest.empty()) return "-";
  return std::string(digest.substr(0, 12));
}

std::string HtmlEscape(absl::string_view raw) { return html::Escape(EscapeControlCharacters(raw)); }

}  // namespace fedtune::admin
