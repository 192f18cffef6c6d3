#include "tests/testing/temp_dir.h"

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "common/logging.h"

namespace fedtune::testing {

TempDir::TempDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string tmpl = absl::StrCat(base != nullptr ? base : "/tmp", "/fedtune_test_XXXXXX");
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  CHECK(::mkdtemp(buf.data()) != nullptr) << "mkdtemp failed for " << tmpl;
  path_ = buf.data();
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string TempDir::Join(absl::string_view name) const { return absl::StrCat(path_, "/", name); }

std::string TempDir::WriteFile(absl::string_view name, absl::string_view contents) const {
  std::string path = Join(name);
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  absl::Status status = io::WriteFileAtomically(path, contents);
  CHECK(status.ok()) << status;
  return path;
}

int RunCommand(const std::string& command, std::string* output) {
  std::string full = absl::StrCat(command, " 2>&1");
  FILE* pipe = ::popen(full.c_str(), "r");
  CHECK(pipe != nullptr) << "popen failed: " << command;
  std::array<char, 4096> buf;
  std::string out;
  size_t got;
  while ((got = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), got);
  int status = ::pclose(pipe);
  if (output != nullptr) *output = std::move(out);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

std::string BinPath(absl::string_view program) {
  const char* dir = std::getenv("FEDTUNE_BIN_DIR");
  return absl::StrCat(dir != nullptr ? dir : FEDTUNE_BINARY_DIR_FALLBACK, "/", program);
}

}  // namespace fedtune::testing
