#include "coordinator/spool_dir.h"

#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/io/file_util.h"
#include "common/io/sha256.h"

namespace fedtune::coordinator {
namespace {

// The site of a spool file name "<prefix><site>-<sha256>.upload" (prefix "r<round>-a<attempt>-"), or "" when the
// name is not one.
std::string SpoolFileSite(absl::string_view name, absl::string_view prefix) {
  constexpr absl::string_view kSuffix = ".upload";
  constexpr size_t kSha = 64;
  if (!absl::ConsumePrefix(&name, prefix) || !absl::ConsumeSuffix(&name, kSuffix) || name.size() < kSha + 2) return "";
  const absl::string_view sha = name.substr(name.size() - kSha);
  if (!io::IsSha256Hex(std::string(sha)) || name[name.size() - kSha - 1] != '-') return "";
  return std::string(name.substr(0, name.size() - kSha - 1));
}

}  // namespace

std::string SpoolDir::AttemptPrefix(int round, int attempt) { return absl::StrCat("r", round, "-a", attempt, "-"); }

std::string SpoolDir::PathOf(const std::string& run_id, int round, int attempt, const std::string& site_id,
                             const std::string& sha256) const {
  return absl::StrCat(dir_, "/", run_id, "/", AttemptPrefix(round, attempt), site_id, "-", sha256, ".upload");
}

absl::Status SpoolDir::MakeRunDir(const std::string& run_id) const {
  return io::MakeDirectories(absl::StrCat(dir_, "/", run_id));
}

void SpoolDir::RemoveAttempt(const std::string& run_id, int round, int attempt) const {
  const std::string prefix = AttemptPrefix(round, attempt);
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(absl::StrCat(dir_, "/", run_id), ec)) {
    if (absl::StartsWith(entry.path().filename().string(), prefix)) std::filesystem::remove(entry.path(), ec);
  }
}

void SpoolDir::RemoveAllBut(const std::string& keep_run, int keep_round, int keep_attempt) const {
  // Spool files of rounds that closed, failed or were aborted just before a crash (the transaction committed, the
  // removal did not happen): nothing refers to them any more.
  const std::string keep_prefix = AttemptPrefix(keep_round, keep_attempt);
  std::error_code ec;
  for (const auto& dir : std::filesystem::directory_iterator(dir_, ec)) {
    if (!dir.is_directory()) continue;
    const std::string run = dir.path().filename().string();
    for (const auto& entry : std::filesystem::directory_iterator(dir.path(), ec)) {
      if (run == keep_run && absl::StartsWith(entry.path().filename().string(), keep_prefix)) continue;
      std::filesystem::remove(entry.path(), ec);
    }
    if (run != keep_run) std::filesystem::remove(dir.path(), ec);
  }
}

std::map<std::string, std::string> SpoolDir::ListAttempt(const std::string& run_id, int round, int attempt,
                                                         const std::set<std::string>& skip) const {
  std::map<std::string, std::string> files;
  const std::string prefix = AttemptPrefix(round, attempt);
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(absl::StrCat(dir_, "/", run_id), ec)) {
    const std::string name = entry.path().filename().string();
    if (skip.count(name) > 0) continue;
    const std::string site = SpoolFileSite(name, prefix);
    if (site.empty()) {
      std::filesystem::remove(entry.path(), ec);  // Not a name this class writes.
      continue;
    }
    files[entry.path().string()] = site;
  }
  return files;
}

int64_t SpoolDir::SizeOf(const std::string& path) { return io::FileSize(path).value_or(0); }

void SpoolDir::Remove(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove(path, ec);
}

}  // namespace fedtune::coordinator
