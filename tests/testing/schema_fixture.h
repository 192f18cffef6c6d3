// Checked-in SQLite files written by older fedtune programs (tests/fixtures/schema/<commit>/, each with a README
// saying how it was made; docs/development.md, "Schema changes"): copies to work on and the schema version of a
// file. The checked-in files are never opened for writing.
#ifndef FEDTUNE_TESTS_TESTING_SCHEMA_FIXTURE_H_
#define FEDTUNE_TESTS_TESTING_SCHEMA_FIXTURE_H_

#include <string>

#include "tests/testing/temp_dir.h"

namespace fedtune::testing {

// Copies the fixture file `fixture` into `tmp` (same file name, owner-writable even when the checkout is not) and
// returns the copy's path. CHECK-fails when the fixture cannot be copied.
std::string CopySchemaFixture(const TempDir& tmp, const std::string& fixture);

// PRAGMA user_version of the SQLite file at `path`, read without migrating or writing anything (immutable=1: not
// even the -shm and -wal files a read-only open of a WAL database leaves); -1 when it cannot be read.
int SchemaVersionOf(const std::string& path);

}  // namespace fedtune::testing

#endif  // FEDTUNE_TESTS_TESTING_SCHEMA_FIXTURE_H_
