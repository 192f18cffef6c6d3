#include "common/io/sha256.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/io/file_util.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::io {
namespace {

// FIPS 180-2 test vectors.
constexpr char kEmpty[] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
constexpr char kAbc[] = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

TEST(Sha256Test, KnownVectors) {
  EXPECT_EQ(Sha256Hex(""), kEmpty);
  EXPECT_EQ(Sha256Hex("abc"), kAbc);
  EXPECT_EQ(Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Sha256Test, IncrementalEqualsOneShotAndResets) {
  Sha256 h;
  h.Update("a");
  h.Update("");
  h.Update("bc");
  EXPECT_EQ(h.HexDigest(), kAbc);
  EXPECT_EQ(h.HexDigest(), kEmpty);  // Reset after HexDigest.
}

TEST(Sha256Test, FileDigestMatchesBytes) {
  testing::TempDir dir;
  std::string big(3 * (1 << 20) + 17, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 131 % 251);
  ASSERT_TRUE(WriteFileAtomically(dir.path() + "/f", big).ok());
  absl::StatusOr<std::string> digest = Sha256File(dir.path() + "/f");
  ASSERT_TRUE(digest.ok()) << digest.status();
  EXPECT_EQ(*digest, Sha256Hex(big));
  absl::StatusOr<std::string> missing = Sha256File(dir.path() + "/nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("nope"), absl::string_view::npos);
}

TEST(Sha256Test, IsSha256Hex) {
  EXPECT_TRUE(IsSha256Hex(kAbc));
  EXPECT_FALSE(IsSha256Hex(std::string(kAbc).substr(1)));
  EXPECT_FALSE(IsSha256Hex(absl::StrCat(std::string(kAbc).substr(1), "A")));
  EXPECT_FALSE(IsSha256Hex(absl::StrCat(std::string(kAbc).substr(1), "g")));
  EXPECT_FALSE(IsSha256Hex(""));
}

}  // namespace
}  // namespace fedtune::io
