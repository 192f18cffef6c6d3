#include "tests/testing/schema_fixture.h"

#include <sqlite3.h>

#include <filesystem>
#include <system_error>

#include "common/logging.h"

namespace fedtune::testing {

namespace fs = std::filesystem;

std::string CopySchemaFixture(const TempDir& tmp, const std::string& fixture) {
  const std::string copy = tmp.Join(fs::path(fixture).filename().string());
  std::error_code ec;
  fs::copy_file(fixture, copy, ec);
  CHECK(!ec) << "cannot copy the schema fixture " << fixture << " to " << copy << ": " << ec.message();
  fs::permissions(copy, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::add, ec);
  CHECK(!ec) << "cannot make " << copy << " writable: " << ec.message();
  return copy;
}

int SchemaVersionOf(const std::string& path) {
  sqlite3* db = nullptr;
  int version = -1;
  const std::string uri = "file:" + path + "?mode=ro&immutable=1";
  if (sqlite3_open_v2(uri.c_str(), &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, nullptr) == SQLITE_OK) {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db, "PRAGMA user_version;", -1, &stmt, nullptr) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW) {
      version = sqlite3_column_int(stmt, 0);
    }
    sqlite3_finalize(stmt);
  }
  sqlite3_close(db);
  return version;
}

}  // namespace fedtune::testing
