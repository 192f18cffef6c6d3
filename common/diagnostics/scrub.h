// Scrubbing of diagnostic text that leaves a site (FailureReport.message and log_lines, the heartbeat's "failed: ..."
// and "retrying: ..." states): anything that could identify a patient or reveal the site's file layout is replaced
// by a placeholder, so that an error message can be shown to the consortium without a privacy review.
//
// What Scrub replaces, in this order (docs/hospital-it-guide.md, "Failure reports"):
//   0. Invalid UTF-8 -> '?' (each byte of an invalid sequence), so that the text is a valid proto3 string. Then the
//      site's own paths (SiteIdentifiers::paths) -> "<path>", as literal text, longest first, where the match starts
//      after a character other than a letter or digit and ends before one: a path with spaces, apostrophes or
//      brackets ("/srv/PACS/Doe John Q/IM1.png: not a decodable image") goes as a whole. A site path followed by
//      '/' or '\' is a folder of the site: the rest, up to a line end, ": ", a quote ('"', '`', or an apostrophe
//      not between two letters), ']', '<', '>', ',', ';' or '|', goes with it.
//   1. Other file paths -> "<path>". A path is a run of characters without whitespace, quotes, brackets, '<', '>', ',',
//      ';', '=', '|' or ':' (an apostrophe between two letters is part of it: "O'Brien") that contains '/' or '\'
//      (absolute "/data/x.png", relative "data/x.png", "./x", "~/x",
//      Windows "C:\data\x.png" and "\\server\share\x"), except a bare fraction "N/M" of at most 4 digits each ("epoch
//      2/5"). A quoted string ('...', "..." or std::filesystem's "[...]", at most 4096 bytes, apostrophes between two
//      letters not closing it) that contains '/' or '\' and no ": " (a path with spaces) is replaced as a whole,
//      inside its quotes.
//   2. DICOM UIDs -> "<uid>": runs of digits separated by dots with at least 5 components, or at least 3 with a
//      component of more than 3 digits ("1.2.840.10008.5.1.4.1.1.2", "2.25.3298007356985866292956"); IPv4
//      addresses ("127.0.0.1") and version numbers ("1.10.2") stay.
//   3. The site's own identifiers (SiteIdentifiers, e.g. from its manifest) -> "<patient>", "<study>",
//      "<accession>": exact matches of a whole token, where a token is bounded by characters other than letters and
//      digits (so "patient00001" is found in "view1_patient00001.png" but not in "patient000012"). Identifiers
//      shorter than 3 characters are not matched (they would match ordinary words and numbers and identify nobody
//      alone); longer than 128 are ignored. Identifiers with characters other than letters, digits, '.', '_' and
//      '-' (spaces) are searched as substrings, the first 1000 of them (a warning is logged when more are given);
//      those with '/' or '\' (a manifest's "<patient>/<study>" full ids, whose parts are matched on their own) are
//      not kept. A match inside angle brackets is replaced too ("<MRN-4711>" -> "<<patient>>"), unless the bracketed
//      word is a placeholder's own word ("<path>" when a site calls a patient "path").
//   4. CheXpert-style ids even when not in the site's sets: "patient" or "study" followed by digits, not preceded
//      by a letter or digit (case-insensitive) -> "<patient>", "<study>".
//   5. Long digit runs (6 digits or more: medical record numbers, accession numbers, dates written 20240131) ->
//      "<number>", also inside words ("MRN1234567" -> "MRN<number>"), except inside a hexadecimal run of 32 or more
//      characters with a letter (a SHA-256 digest, which identifies a model, not a person).
// Text that has none of these is returned unchanged ("DATA_LOSS: cannot decode image"). The output is at most
// `max_bytes` bytes: longer output is cut at a UTF-8 character boundary and ends with kCutMarker. Input longer than
// kMaxInputBytes is first cut at its last whitespace before that bound (never inside a token, so that half an
// identifier cannot slip through as a shorter one).
//
// Thread safety: a Scrubber is immutable after construction; Scrub may be called from any number of threads.
#ifndef FEDTUNE_COMMON_DIAGNOSTICS_SCRUB_H_
#define FEDTUNE_COMMON_DIAGNOSTICS_SCRUB_H_

#include <bitset>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"

namespace fedtune::diagnostics {

// The identifiers of a site's own records, matched exactly (see the header). Duplicates are fine.
struct SiteIdentifiers {
  std::vector<std::string> patients;    // "patient00001", medical record numbers.
  std::vector<std::string> studies;     // "study1", study ids or study instance labels.
  std::vector<std::string> accessions;  // Accession numbers.
  // The site's own path strings (data_root, the manifest's folder, work_dir, the manifest's image paths): replaced
  // as literal text before anything else (see the header). Kept: those of 5 to 4096 bytes with '/', '\\' or '.',
  // the first kMaxSitePaths of them.
  std::vector<std::string> paths;
};

// Appended to cut output (counted within max_bytes).
inline constexpr absl::string_view kCutMarker = " [...cut]";
// The default bound of Scrub's output (FailureReport.message's bound).
inline constexpr size_t kDefaultMaxBytes = 2048;
// Input beyond this many bytes is not read (see the header).
inline constexpr size_t kMaxInputBytes = 64 * 1024;
// At most this many SiteIdentifiers::paths are kept (a manifest of a quarter million images).
inline constexpr size_t kMaxSitePaths = 250000;

class Scrubber {
 public:
  // Only the generic patterns (paths, UIDs, CheXpert-style ids, long digit runs).
  Scrubber() = default;
  // Also the site's own identifiers.
  explicit Scrubber(const SiteIdentifiers& ids);

  // The scrubbed text, at most max_bytes bytes (max_bytes below the marker's size gives at most max_bytes bytes of
  // the marker's start).
  std::string Scrub(absl::string_view text, size_t max_bytes = kDefaultMaxBytes) const;

  // How many identifiers are matched (after dropping those out of bounds): for logs.
  size_t identifier_count() const { return ids_.size() + unusual_ids_.size(); }
  // How many site paths are matched: for logs.
  size_t path_count() const { return paths_.size(); }

 private:
  enum class Kind { kPatient, kStudy, kAccession };
  static absl::string_view Placeholder(Kind kind);
  void Add(const std::vector<std::string>& ids, Kind kind);
  void AddPaths(const std::vector<std::string>& paths);
  std::string ReplaceSitePaths(absl::string_view text) const;
  std::string ReplaceIdentifiers(const std::string& text) const;

  absl::flat_hash_map<std::string, Kind> ids_;  // Exact, as given; letters, digits, '.', '_' and '-' only.
  size_t longest_id_ = 0;
  // Identifiers with other characters, or not starting and ending with a letter or digit (searched as substrings,
  // at most kMaxUnusualIds of them).
  std::vector<std::pair<std::string, Kind>> unusual_ids_;
  static constexpr size_t kMaxUnusualIds = 1000;
  bool unusual_ids_capped_ = false;         // More were given (logged once).
  absl::flat_hash_set<std::string> paths_;  // SiteIdentifiers::paths kept.
  std::vector<size_t> path_lengths_;        // Their distinct lengths, longest first.
  std::bitset<256> path_first_bytes_;       // Their first bytes.
};

}  // namespace fedtune::diagnostics

#endif  // FEDTUNE_COMMON_DIAGNOSTICS_SCRUB_H_
