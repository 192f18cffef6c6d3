// Per-test temporary directories, removed when the TempDir goes out of scope.
#ifndef FEDTUNE_TESTS_TESTING_TEMP_DIR_H_
#define FEDTUNE_TESTS_TESTING_TEMP_DIR_H_

#include <string>

#include "absl/strings/string_view.h"

namespace fedtune::testing {

// A fresh directory under $TEST_TMPDIR (or /tmp). Not thread-safe; one per test.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // path()/name.
  std::string Join(absl::string_view name) const;
  // Writes a file under the directory (CHECK-fails on error) and returns its path.
  std::string WriteFile(absl::string_view name, absl::string_view contents) const;

 private:
  std::string path_;
};

// Runs a shell command, returning its exit status (0..255) and capturing stdout+stderr into *output if non-null.
int RunCommand(const std::string& command, std::string* output = nullptr);

// Path of a program built into build/bin (from the FEDTUNE_BIN_DIR environment variable set by ctest).
std::string BinPath(absl::string_view program);

}  // namespace fedtune::testing

#endif  // FEDTUNE_TESTS_TESTING_TEMP_DIR_H_
