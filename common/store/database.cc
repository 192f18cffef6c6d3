#include "common/store/database.h"

#include <sqlite3.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace fedtune::store {
namespace {

constexpr int kBusyTimeoutMs = 10000;

}  // namespace

absl::Status Database::ErrorStatus(int code, absl::string_view context) const {
  const std::string msg = absl::StrCat("database ", path_, ": ", context, ": ",
                                       db_ != nullptr ? sqlite3_errmsg(db_) : sqlite3_errstr(code));
  switch (code & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::UnavailableError(msg);
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::DataLossError(msg);
    case SQLITE_CONSTRAINT:
      return absl::AlreadyExistsError(msg);
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_CANTOPEN:
      return absl::PermissionDeniedError(msg);
    case SQLITE_FULL:
      return absl::ResourceExhaustedError(msg);
    case SQLITE_RANGE:
    case SQLITE_MISMATCH:
      return absl::InvalidArgumentError(msg);
    default:
      return absl::InternalError(msg);
  }
}

Statement::Statement(Database* db, sqlite3_stmt* stmt, std::string sql) : db_(db), stmt_(stmt), sql_(std::move(sql)) {}

Statement::Statement(Statement&& other) noexcept
    : db_(other.db_),
      stmt_(std::exchange(other.stmt_, nullptr)),
      sql_(std::move(other.sql_)),
      bind_status_(std::move(other.bind_status_)) {}

Statement& Statement::operator=(Statement&& other) noexcept {
  if (this != &other) {
    if (stmt_ != nullptr) sqlite3_finalize(stmt_);
    db_ = other.db_;
    stmt_ = std::exchange(other.stmt_, nullptr);
    sql_ = std::move(other.sql_);
    bind_status_ = std::move(other.bind_status_);
  }
  return *this;
}

Statement::~Statement() {
  if (stmt_ != nullptr) sqlite3_finalize(stmt_);
}

#define FEDTUNE_BIND_(call, index)                                                                         \
  do {                                                                                                     \
    int rc_ = (call);                                                                                      \
    if (rc_ != SQLITE_OK && bind_status_.ok()) {                                                           \
      bind_status_ = db_->ErrorStatus(rc_, absl::StrCat("binding parameter ", index, " of '", sql_, "'")); \
    }                                                                                                      \
  } while (false)

Statement& Statement::Bind(int index, int64_t value) {
  FEDTUNE_BIND_(sqlite3_bind_int64(stmt_, index, value), index);
  return *this;
}
Statement& Statement::Bind(int index, double value) {
  FEDTUNE_BIND_(sqlite3_bind_double(stmt_, index, value), index);
  return *this;
}
Statement& Statement::Bind(int index, absl::string_view text) {
  FEDTUNE_BIND_(sqlite3_bind_text(stmt_, index, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT), index);
  return *this;
}
Statement& Statement::BindBlob(int index, absl::string_view bytes) {
  FEDTUNE_BIND_(sqlite3_bind_blob(stmt_, index, bytes.data(), static_cast<int>(bytes.size()), SQLITE_TRANSIENT), index);
  return *this;
}
Statement& Statement::BindNull(int index) {
  FEDTUNE_BIND_(sqlite3_bind_null(stmt_, index), index);
  return *this;
}
#undef FEDTUNE_BIND_

absl::StatusOr<bool> Statement::Step() {
  if (!bind_status_.ok()) return bind_status_;
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return db_->ErrorStatus(rc, absl::StrCat("executing '", sql_, "'"));
}

absl::Status Statement::Run() {
  while (true) {
    ASSIGN_OR_RETURN(bool row, Step());
    if (!row) return absl::OkStatus();
  }
}

void Statement::Reset() {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
  bind_status_ = absl::OkStatus();
}

int64_t Statement::ColumnInt(int column) const { return sqlite3_column_int64(stmt_, column); }
double Statement::ColumnDouble(int column) const { return sqlite3_column_double(stmt_, column); }
std::string Statement::ColumnText(int column) const {
  const unsigned char* text = sqlite3_column_text(stmt_, column);
  if (text == nullptr) return "";
  return std::string(reinterpret_cast<const char*>(text), static_cast<size_t>(sqlite3_column_bytes(stmt_, column)));
}
bool Statement::ColumnIsNull(int column) const { return sqlite3_column_type(stmt_, column) == SQLITE_NULL; }

Database::Database(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}

Database::~Database() { sqlite3_close_v2(db_); }

absl::StatusOr<std::unique_ptr<Database>> Database::Open(const std::string& path,
                                                         absl::Span<const Migration> migrations) {
  for (size_t i = 0; i < migrations.size(); ++i) {
    if (migrations[i].version != static_cast<int>(i) + 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("migration ", i, " has version ", migrations[i].version, "; versions must be 1, 2, 3, ..."));
    }
  }
  sqlite3* raw = nullptr;
  int rc =
      sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
  std::unique_ptr<Database> db(new Database(raw, path));
  if (rc != SQLITE_OK) return db->ErrorStatus(rc, "opening");
  sqlite3_busy_timeout(raw, kBusyTimeoutMs);
  sqlite3_extended_result_codes(raw, 1);
  if (path != ":memory:") RETURN_IF_ERROR(db->Execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"));
  RETURN_IF_ERROR(db->Execute("PRAGMA foreign_keys=ON;"));
  const int current = db->SchemaVersion();
  if (current > static_cast<int>(migrations.size())) {
    return absl::FailedPreconditionError(absl::StrCat("database ", path, " has schema version ", current,
                                                      ", newer than this program's ", migrations.size(),
                                                      ": it was written by a newer fedtune"));
  }
  for (int v = current + 1; v <= static_cast<int>(migrations.size()); ++v) {
    const Migration& m = migrations[v - 1];
    absl::Status status = db->InTransaction([&]() -> absl::Status {
      RETURN_IF_ERROR(db->Execute(m.sql));
      return db->Execute(absl::StrCat("PRAGMA user_version=", v, ";"));
    });
    if (!status.ok()) {
      return absl::Status(status.code() == absl::StatusCode::kUnavailable ? status.code() : absl::StatusCode::kInternal,
                          absl::StrCat("schema migration ", v, " failed: ", status.message()));
    }
  }
  return db;
}

absl::Status Database::Execute(absl::string_view sql) {
  char* err = nullptr;
  const std::string text(sql);
  int rc = sqlite3_exec(db_, text.c_str(), nullptr, nullptr, &err);
  if (err != nullptr) sqlite3_free(err);
  if (rc != SQLITE_OK) return ErrorStatus(rc, absl::StrCat("executing '", text.substr(0, 200), "'"));
  return absl::OkStatus();
}

absl::StatusOr<Statement> Database::Prepare(absl::string_view sql) {
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v2(db_, sql.data(), static_cast<int>(sql.size()), &stmt, nullptr);
  if (rc != SQLITE_OK) {
    if (stmt != nullptr) sqlite3_finalize(stmt);
    return ErrorStatus(rc, absl::StrCat("preparing '", sql, "'"));
  }
  return Statement(this, stmt, std::string(sql));
}

absl::Status Database::InTransaction(const std::function<absl::Status()>& body) {
  RETURN_IF_ERROR(Execute("BEGIN IMMEDIATE;"));
  absl::Status status = body();
  if (!status.ok()) {
    Execute("ROLLBACK;").IgnoreError();  // The body's error is the one that matters.
    return status;
  }
  absl::Status commit = Execute("COMMIT;");
  if (!commit.ok()) Execute("ROLLBACK;").IgnoreError();
  return commit;
}

int Database::SchemaVersion() {
  sqlite3_stmt* stmt = nullptr;
  int version = 0;
  if (sqlite3_prepare_v2(db_, "PRAGMA user_version;", -1, &stmt, nullptr) == SQLITE_OK &&
      sqlite3_step(stmt) == SQLITE_ROW) {
    version = sqlite3_column_int(stmt, 0);
  }
  sqlite3_finalize(stmt);
  return version;
}

int64_t Database::LastInsertRowId() const { return sqlite3_last_insert_rowid(db_); }

}  // namespace fedtune::store
