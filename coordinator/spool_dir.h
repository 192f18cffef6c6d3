// The coordinator's spool folder, <state_dir>/spool: one file per upload, spool/<run>/r<round>-a<attempt>-<site>-
// <sha256>.upload (see round_manager.h for their life). Names, listing and removal only; what the files mean is
// RoundManager's business.
//
// Thread safety: reentrant (no state besides the folder's path); callers serialize changes to one file.
#ifndef FEDTUNE_COORDINATOR_SPOOL_DIR_H_
#define FEDTUNE_COORDINATOR_SPOOL_DIR_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace fedtune::coordinator {

class SpoolDir {
 public:
  // The folder <state_dir>/spool (not created here).
  explicit SpoolDir(const std::string& state_dir) : dir_(state_dir + "/spool") {}

  // The spool file of the upload of payload `sha256` by `site_id` for (run, round, attempt).
  std::string PathOf(const std::string& run_id, int round, int attempt, const std::string& site_id,
                     const std::string& sha256) const;
  // Creates spool/<run_id>. I/O errors naming it.
  absl::Status MakeRunDir(const std::string& run_id) const;
  // Removes the files of (run, round, attempt).
  void RemoveAttempt(const std::string& run_id, int round, int attempt) const;
  // Removes every file except those of (keep_run, keep_round, keep_attempt), and every run folder but keep_run's.
  // keep_run "": everything goes.
  void RemoveAllBut(const std::string& keep_run, int keep_round, int keep_attempt) const;
  // The files of (run, round, attempt) other than `skip` (file names), by path -> the site its name gives. Files
  // of the attempt whose names this class did not write are removed.
  std::map<std::string, std::string> ListAttempt(const std::string& run_id, int round, int attempt,
                                                 const std::set<std::string>& skip) const;

  // Size of a file, 0 when it does not exist or cannot be read (io::FileSize).
  static int64_t SizeOf(const std::string& path);
  // Removes a file (a missing one is fine).
  static void Remove(const std::string& path);

 private:
  static std::string AttemptPrefix(int round, int attempt);

  std::string dir_;
};

}  // namespace fedtune::coordinator

#endif  // FEDTUNE_COORDINATOR_SPOOL_DIR_H_
