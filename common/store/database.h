// A small, strict wrapper over SQLite 3 for fedtune's state files (the site's
// training metrics, the coordinator's runs, rounds and updates): WAL
// journaling, a busy timeout, numbered schema migrations applied in
// transactions, prepared statements with typed binding, and absl::Status errors
// that name the database file.
#ifndef FEDTUNE_COMMON_STORE_DATABASE_H_
#define FEDTUNE_COMMON_STORE_DATABASE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

struct sqlite3;
struct sqlite3_stmt;

namespace fedtune::store {

// One schema step. Versions start at 1 and increase by 1; version N's SQL runs
// once, in a transaction, when the database's user_version is N - 1.
struct Migration {
  int version;
  std::string sql;
};

class Database;

// A prepared statement. Owned by the caller; must not outlive its Database. Not
// thread-safe.
class Statement {
 public:
  Statement(Statement&& other) noexcept;
  Statement& operator=(Statement&& other) noexcept;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  ~Statement();

  // Binds parameter `index` (1-based, as in SQLite). Returns *this for
  // chaining; a bind error is reported by the next Step() (InvalidArgument
  // naming the parameter).
  Statement& Bind(int index, int64_t value);
  Statement& Bind(int index, double value);
  Statement& Bind(int index, absl::string_view text);
  Statement& BindBlob(int index, absl::string_view bytes);
  Statement& BindNull(int index);

  // Advances: true when a row is available, false when done. Errors as
  // Database::Execute.
  absl::StatusOr<bool> Step();
  // Runs to completion, ignoring rows.
  absl::Status Run();
  // Resets for re-execution with new bindings (bindings are cleared).
  void Reset();

  // Column accessors for the current row (0-based).
  int64_t ColumnInt(int column) const;
  double ColumnDouble(int column) const;
  std::string ColumnText(int column) const;
  bool ColumnIsNull(int column) const;

 private:
  friend class Database;
  Statement(Database* db, sqlite3_stmt* stmt, std::string sql);
  Database* db_ = nullptr;
  sqlite3_stmt* stmt_ = nullptr;
  std::string sql_;
  absl::Status bind_status_;
};

// An open SQLite database. Thread-compatible: one thread at a time (callers
// that share one guard it with a mutex; separate Database objects on the same
// file are safe across threads and processes, SQLite locks the file).
class Database {
 public:
  // Opens (creating if needed) `path` — ":memory:" for an in-memory database —
  // enables WAL (file databases), foreign keys and a busy timeout, and applies
  // the pending migrations. Errors: Unavailable when the file is locked past
  // the timeout, DataLoss when the file is not a database or is corrupt,
  // FailedPrecondition when the file's schema is newer than `migrations` (a
  // newer fedtune wrote it), InvalidArgument for misnumbered migrations,
  // Internal for a failing migration (its version and SQL error named).
  static absl::StatusOr<std::unique_ptr<Database>> Open(const std::string& path,
                                                        absl::Span<const Migration> migrations);
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  // Executes one or more statements without results.
  absl::Status Execute(absl::string_view sql);
  absl::StatusOr<Statement> Prepare(absl::string_view sql);

  // Runs `body` inside BEGIN IMMEDIATE ... COMMIT; rolls back and returns
  // body's error when it fails. Not reentrant.
  absl::Status InTransaction(const std::function<absl::Status()>& body);

  int SchemaVersion();
  int64_t LastInsertRowId() const;
  const std::string& path() const { return path_; }

  // Maps a SQLite result code to a Status naming this database and `context`.
  absl::Status ErrorStatus(int code, absl::string_view context) const;

 private:
  Database(sqlite3* db, std::string path);
  sqlite3* db_;
  std::string path_;
};

}  // namespace fedtune::store

#endif  // FEDTUNE_COMMON_STORE_DATABASE_H_
