#include "common/diagnostics/scrub.h"

#include <algorithm>
#include <cstring>
#include <functional>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace fedtune::diagnostics {
namespace {

constexpr size_t kMinIdBytes = 3;
constexpr size_t kMaxIdBytes = 128;
constexpr size_t kMaxQuotedPathBytes = 4096;
constexpr size_t kMinDigitRun = 6;
constexpr size_t kMinDigestRun = 32;
constexpr size_t kMinSitePathBytes = 5;
constexpr size_t kMaxSitePathBytes = 4096;

bool IsAlnum(char c) { return absl::ascii_isalnum(static_cast<unsigned char>(c)); }
bool IsDigit(char c) { return absl::ascii_isdigit(static_cast<unsigned char>(c)); }
bool IsSpace(char c) { return absl::ascii_isspace(static_cast<unsigned char>(c)); }
bool IsIdChar(char c) { return IsAlnum(c) || c == '.' || c == '_' || c == '-'; }
// A letter, ASCII or not (a byte of a UTF-8 sequence: "O'Brien", "d'Été").
bool IsLetter(char c) {
  return absl::ascii_isalpha(static_cast<unsigned char>(c)) || static_cast<unsigned char>(c) >= 0x80;
}

// An apostrophe between two letters ("O'Brien", "can't") is part of a word, not a quote.
bool IsInnerApostrophe(absl::string_view text, size_t i) {
  return text[i] == '\'' && i > 0 && i + 1 < text.size() && IsLetter(text[i - 1]) && IsLetter(text[i + 1]);
}

// Each byte of an invalid UTF-8 sequence (stray continuation bytes, truncated sequences, overlong forms, surrogates,
// code points above U+10FFFF) -> '?'.
std::string ReplaceInvalidUtf8(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // The bounds of the second byte.
    if (c < 0x80) {
      len = 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;  // Overlong.
      if (c == 0xED) hi = 0x9F;  // Surrogates.
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;  // Overlong.
      if (c == 0xF4) hi = 0x8F;  // Above U+10FFFF.
    }
    bool valid = len > 0 && i + len <= n;
    for (size_t k = 1; valid && k < len; ++k) {
      const unsigned char b = static_cast<unsigned char>(text[i + k]);
      valid = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    }
    if (valid) {
      out.append(text.data() + i, len);
      i += len;
    } else {
      out.push_back('?');
      ++i;
    }
  }
  return out;
}

// Where a path of the site's folder continues, from `from` (after the folder): up to a line end, ": ", a quote
// (an apostrophe between two letters is not one), ']', '<', '>', ',', ';', '|' or the end. Spaces and parentheses are
// taken: the site's file names may have them.
size_t EndOfSitePath(absl::string_view text, size_t from) {
  size_t j = from;
  const size_t n = text.size();
  while (j < n) {
    const char c = text[j];
    if (c == '\n' || c == '\r' || c == '"' || c == '`' || c == ']' || c == '<' || c == '>' || c == ',' || c == ';' ||
        c == '|') {
      break;
    }
    if (c == '\'' && !IsInnerApostrophe(text, j)) break;
    if (c == ':' && (j + 1 == n || IsSpace(text[j + 1]))) break;
    ++j;
  }
  // Trailing spaces and a sentence's full stop are not part of it.
  while (j > from && (IsSpace(text[j - 1]) || (text[j - 1] == '.' && (j == n || IsSpace(text[j]))))) --j;
  return j;
}

// Characters that may be part of an unquoted path token (bytes >= 0x80 included: non-ASCII names).
bool IsPathChar(char c) {
  if (IsSpace(c) || c == '\0') return false;
  return std::strchr("'\"`()[]{}<>,;=|:", c) == nullptr;
}

// "N/M" with 1 to 4 digits each: a fraction or a count ("epoch 2/5"), not a path.
bool IsFraction(absl::string_view token) {
  const size_t slash = token.find('/');
  if (slash == absl::string_view::npos || slash == 0 || slash > 4) return false;
  const absl::string_view right = token.substr(slash + 1);
  if (right.empty() || right.size() > 4) return false;
  return std::all_of(token.begin(), token.begin() + slash, IsDigit) && std::all_of(right.begin(), right.end(), IsDigit);
}

bool LooksLikePath(absl::string_view token) {
  if (token.find('/') == absl::string_view::npos && token.find('\\') == absl::string_view::npos) return false;
  if (std::none_of(token.begin(), token.end(), [](char c) { return IsAlnum(c) || c == '.' || c == '~'; })) {
    return false;  // "/", "\\", "//": no name in it.
  }
  return !IsFraction(token);
}

// Pass 1: paths. Quoted paths (with spaces) as a whole, then unquoted path tokens.
std::string ReplacePaths(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const char c = text[i];
    if (c == '\'' && IsInnerApostrophe(text, i)) {
      out.push_back(c);
      ++i;
      continue;
    }
    if (c == '\'' || c == '"' || c == '[') {
      const char closing = c == '[' ? ']' : c;
      size_t close = text.find(closing, i + 1);
      while (c == '\'' && close != absl::string_view::npos && IsInnerApostrophe(text, close)) {
        close = text.find(closing, close + 1);
      }
      if (close != absl::string_view::npos && close - i - 1 <= kMaxQuotedPathBytes) {
        const absl::string_view inner = text.substr(i + 1, close - i - 1);
        if (inner.find('\n') == absl::string_view::npos && !absl::StrContains(inner, ": ") && LooksLikePath(inner)) {
          absl::StrAppend(&out, absl::string_view(&c, 1), "<path>", absl::string_view(&closing, 1));
          i = close + 1;
          continue;
        }
      }
      out.push_back(c);
      ++i;
      continue;
    }
    if (!IsPathChar(c)) {
      out.push_back(c);
      ++i;
      continue;
    }
    size_t j = i;
    while (j < n && (IsPathChar(text[j]) || IsInnerApostrophe(text, j))) ++j;
    // A Windows drive: "C:\..." or "C:/...".
    if (j == i + 1 && absl::ascii_isalpha(static_cast<unsigned char>(c)) && j + 1 < n && text[j] == ':' &&
        (text[j + 1] == '\\' || text[j + 1] == '/')) {
      j += 1;
      while (j < n && (IsPathChar(text[j]) || IsInnerApostrophe(text, j))) ++j;
    }
    absl::string_view token = text.substr(i, j - i);
    // A sentence's full stop is not part of the path ("cannot read /data/x.png.").
    size_t keep = token.size();
    if (keep >= 2 && token[keep - 1] == '.' && token[keep - 2] != '.' && token[keep - 2] != '/' &&
        token[keep - 2] != '\\') {
      --keep;
    }
    if (LooksLikePath(token.substr(0, keep))) {
      absl::StrAppend(&out, "<path>", token.substr(keep));
    } else {
      out.append(token.data(), token.size());
    }
    i = j;
  }
  return out;
}

// Pass 2: DICOM UIDs.
std::string ReplaceUids(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const bool start = IsDigit(text[i]) && (i == 0 || (!IsAlnum(text[i - 1]) && text[i - 1] != '.'));
    if (!start) {
      out.push_back(text[i++]);
      continue;
    }
    size_t j = i;
    int components = 0;
    size_t longest = 0;
    while (true) {
      const size_t from = j;
      while (j < n && IsDigit(text[j])) ++j;
      ++components;
      longest = std::max(longest, j - from);
      if (j + 1 < n && text[j] == '.' && IsDigit(text[j + 1])) {
        ++j;
        continue;
      }
      break;
    }
    const bool bounded = j == n || !IsAlnum(text[j]);
    if (bounded && (components >= 5 || (components >= 3 && longest > 3))) {
      out.append("<uid>");
    } else {
      out.append(text.data() + i, j - i);
    }
    i = j;
  }
  return out;
}

// Pass 4: "patient123", "study4" (case-insensitive), not preceded by a letter or digit.
std::string ReplaceChexpertIds(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    if (i == 0 || !IsAlnum(text[i - 1])) {
      bool replaced = false;
      for (const auto& [word, placeholder] : {std::pair<absl::string_view, absl::string_view>{"patient", "<patient>"},
                                              std::pair<absl::string_view, absl::string_view>{"study", "<study>"}}) {
        if (n - i > word.size() && absl::EqualsIgnoreCase(text.substr(i, word.size()), word) &&
            IsDigit(text[i + word.size()])) {
          size_t j = i + word.size();
          while (j < n && IsDigit(text[j])) ++j;
          out.append(placeholder.data(), placeholder.size());
          i = j;
          replaced = true;
          break;
        }
      }
      if (replaced) continue;
    }
    out.push_back(text[i++]);
  }
  return out;
}

// Pass 5: digit runs of kMinDigitRun or more, outside long hexadecimal runs with a letter (digests).
std::string ReplaceDigitRuns(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    if (absl::ascii_isxdigit(static_cast<unsigned char>(text[i]))) {
      size_t j = i;
      bool letter = false;
      while (j < n && absl::ascii_isxdigit(static_cast<unsigned char>(text[j]))) {
        letter = letter || !IsDigit(text[j]);
        ++j;
      }
      if (j - i >= kMinDigestRun && letter) {
        out.append(text.data() + i, j - i);
        i = j;
        continue;
      }
    }
    if (!IsDigit(text[i])) {
      out.push_back(text[i++]);
      continue;
    }
    size_t j = i;
    while (j < n && IsDigit(text[j])) ++j;
    if (j - i >= kMinDigitRun) {
      out.append("<number>");
    } else {
      out.append(text.data() + i, j - i);
    }
    i = j;
  }
  return out;
}

// Cuts `s` to at most `max_bytes` bytes ending with kCutMarker, at a UTF-8 character boundary.
void CutWithMarker(std::string* s, size_t max_bytes) {
  if (max_bytes < kCutMarker.size()) {
    *s = std::string(kCutMarker.substr(0, max_bytes));
    return;
  }
  size_t cut = std::min(s->size(), max_bytes - kCutMarker.size());
  while (cut > 0 && cut < s->size() && (static_cast<unsigned char>((*s)[cut]) & 0xC0) == 0x80) --cut;
  s->resize(cut);
  s->append(kCutMarker.data(), kCutMarker.size());
}

}  // namespace

Scrubber::Scrubber(const SiteIdentifiers& ids) {
  Add(ids.patients, Kind::kPatient);
  Add(ids.studies, Kind::kStudy);
  Add(ids.accessions, Kind::kAccession);
  AddPaths(ids.paths);
}

void Scrubber::AddPaths(const std::vector<std::string>& paths) {
  absl::flat_hash_set<size_t> lengths;
  for (std::string path : paths) {
    while (path.size() > 1 && (path.back() == '/' || path.back() == '\\')) path.pop_back();
    if (path.size() < kMinSitePathBytes || path.size() > kMaxSitePathBytes) continue;
    if (path.find_first_of("/\\.") == std::string::npos) continue;
    if (paths_.size() >= kMaxSitePaths) {
      LOG(WARNING) << "failure reports: more than " << kMaxSitePaths
                   << " site paths; the others are scrubbed by the generic path rules only";
      break;
    }
    lengths.insert(path.size());
    path_first_bytes_.set(static_cast<unsigned char>(path.front()));
    paths_.insert(std::move(path));
  }
  path_lengths_.assign(lengths.begin(), lengths.end());
  std::sort(path_lengths_.begin(), path_lengths_.end(), std::greater<size_t>());
}

std::string Scrubber::ReplaceSitePaths(absl::string_view text) const {
  if (paths_.empty()) return std::string(text);
  std::string out;
  out.reserve(text.size());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    if (path_first_bytes_.test(static_cast<unsigned char>(text[i])) && (i == 0 || !IsAlnum(text[i - 1]))) {
      size_t end = 0;
      for (const size_t length : path_lengths_) {
        if (length > n - i) continue;
        if (i + length < n && IsAlnum(text[i + length]) && IsAlnum(text[i + length - 1])) continue;
        if (paths_.contains(text.substr(i, length))) {
          end = i + length;
          break;
        }
      }
      if (end > 0) {
        // A folder of the site: the rest of the path goes with it.
        if (end < n && (text[end] == '/' || text[end] == '\\')) end = EndOfSitePath(text, end);
        out.append("<path>");
        i = end;
        continue;
      }
    }
    out.push_back(text[i++]);
  }
  return out;
}

void Scrubber::Add(const std::vector<std::string>& ids, Kind kind) {
  for (const std::string& id : ids) {
    if (id.size() < kMinIdBytes || id.size() > kMaxIdBytes) continue;
    const bool regular = IsAlnum(id.front()) && IsAlnum(id.back()) && std::all_of(id.begin(), id.end(), IsIdChar);
    if (regular) {
      ids_.emplace(id, kind);
      longest_id_ = std::max(longest_id_, id.size());
    } else if (id.find_first_of("/\\") != std::string::npos) {
      continue;  // A full "<patient>/<study>" id: its parts are matched (and a path is replaced as a path).
    } else if (unusual_ids_.size() < kMaxUnusualIds) {
      unusual_ids_.emplace_back(id, kind);
    } else if (!unusual_ids_capped_) {
      unusual_ids_capped_ = true;
      LOG(WARNING) << "failure reports: more than " << kMaxUnusualIds
                   << " site identifiers with spaces or other unusual characters; only the first " << kMaxUnusualIds
                   << " are scrubbed";
    }
  }
}

absl::string_view Scrubber::Placeholder(Kind kind) {
  switch (kind) {
    case Kind::kPatient:
      return "<patient>";
    case Kind::kStudy:
      return "<study>";
    case Kind::kAccession:
      return "<accession>";
  }
  return "<id>";
}

namespace {

// A placeholder ("<study>" when a site calls a patient "study"): not an identifier. Any other word in angle
// brackets ("unknown id <MRN-4711>") is.
bool InPlaceholder(absl::string_view text, size_t from, size_t to) {
  if (from == 0 || text[from - 1] != '<' || to >= text.size() || text[to] != '>') return false;
  const absl::string_view word = text.substr(from, to - from);
  for (const absl::string_view own : {"path", "uid", "patient", "study", "accession", "number", "id"}) {
    if (word == own) return true;
  }
  return false;
}

}  // namespace

// Pass 3: the site's identifiers. Candidates start where a run of letters and digits starts and end where one ends,
// spanning only identifier characters, at most longest_id_ bytes; the longest match at a start wins.
std::string Scrubber::ReplaceIdentifiers(const std::string& input) const {
  std::string text = input;
  // Unusual identifiers first, as substrings bounded by non-alphanumerics.
  for (const auto& [id, kind] : unusual_ids_) {
    std::string out;
    size_t from = 0;
    while (true) {
      const size_t at = text.find(id, from);
      if (at == std::string::npos) break;
      const size_t end = at + id.size();
      const bool bounded = (at == 0 || !IsAlnum(text[at - 1]) || !IsAlnum(id.front())) &&
                           (end == text.size() || !IsAlnum(text[end]) || !IsAlnum(id.back()));
      out.append(text, from, at - from);
      if (bounded && !InPlaceholder(text, at, end)) {
        absl::StrAppend(&out, Placeholder(kind));
      } else {
        out.append(id);
      }
      from = end;
    }
    out.append(text, from, std::string::npos);
    text = std::move(out);
  }
  if (ids_.empty()) return text;
  std::string out;
  out.reserve(text.size());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const bool start = IsAlnum(text[i]) && (i == 0 || !IsAlnum(text[i - 1]));
    if (!start) {
      out.push_back(text[i++]);
      continue;
    }
    size_t best_end = 0;
    Kind best_kind = Kind::kPatient;
    size_t j = i;
    while (j < n && j - i < longest_id_) {
      // Advance to the end of this run of letters and digits.
      while (j < n && IsAlnum(text[j])) ++j;
      if (j - i > longest_id_) break;
      if (j - i >= kMinIdBytes) {
        auto it = ids_.find(absl::string_view(text).substr(i, j - i));
        if (it != ids_.end() && !InPlaceholder(text, i, j)) {
          best_end = j;
          best_kind = it->second;
        }
      }
      // Continue over separators that identifiers may hold, to the next run.
      size_t k = j;
      while (k < n && IsIdChar(text[k]) && !IsAlnum(text[k])) ++k;
      if (k == j || k >= n || !IsAlnum(text[k])) break;
      j = k;
    }
    if (best_end > 0) {
      absl::StrAppend(&out, Placeholder(best_kind));
      i = best_end;
      continue;
    }
    // No identifier starts here: copy this run of letters and digits.
    size_t end = i;
    while (end < n && IsAlnum(text[end])) ++end;
    out.append(text, i, end - i);
    i = end;
  }
  return out;
}

std::string Scrubber::Scrub(absl::string_view text, size_t max_bytes) const {
  bool cut = false;
  if (text.size() > kMaxInputBytes) {
    size_t at = kMaxInputBytes;
    while (at > 0 && !IsSpace(text[at])) --at;
    text = text.substr(0, at);
    cut = true;
  }
  std::string out = ReplaceSitePaths(ReplaceInvalidUtf8(text));
  out = ReplacePaths(out);
  out = ReplaceUids(out);
  out = ReplaceIdentifiers(out);
  out = ReplaceChexpertIds(out);
  out = ReplaceDigitRuns(out);
  if (cut || out.size() > max_bytes) CutWithMarker(&out, max_bytes);
  return out;
}

}  // namespace fedtune::diagnostics
