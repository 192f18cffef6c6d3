// Tests of common/pki/ca_index.h: the CA index round trip and what ParseCaIndex refuses (a damaged or hostile
// index.json must be DataLoss, never a crash or a counter the CA would overflow).
#include "common/pki/ca_index.h"

#include <string>

#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fedtune::pki {
namespace {

using ::testing::HasSubstr;

std::string Index(const std::string& counters, const std::string& serial = "1") {
  return absl::StrReplaceAll(
      R"({"format": "fedtune-ca-index-v1", "consortium": "C", COUNTERS, "certificates": [
          {"serial": "SERIAL", "common_name": "site-a", "role": "site", "status": "enrolled",
           "not_before": "2026-01-01T00:00:00+00:00", "not_after": "2027-01-01T00:00:00+00:00",
           "issued_at": "2026-01-01T00:00:00+00:00", "revoked_at": "", "reason": "", "fingerprint_sha256": "ab"}]})",
      {{"COUNTERS", counters}, {"SERIAL", serial}});
}

TEST(CaIndexTest, RoundTrips) {
  absl::StatusOr<CaIndex> index =
      ParseCaIndex(Index(R"("next_serial": 2, "next_crl_number": 3, "crl_days": 7)"), "index.json");
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(index->next_serial, 2);
  EXPECT_EQ(index->crl_days, 7);
  ASSERT_EQ(index->entries.size(), 1u);
  const std::string text = SerializeCaIndex(*index);
  absl::StatusOr<CaIndex> again = ParseCaIndex(text, "again");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(SerializeCaIndex(*again), text);
}

TEST(CaIndexTest, RefusesCountersAndSerialsTheCaCannotUse) {
  for (const std::string& counters :
       {R"("next_serial": 0, "next_crl_number": 1)", R"("next_serial": -5, "next_crl_number": 1)",
        R"("next_serial": 9223372036854775807, "next_crl_number": 1)",
        R"("next_serial": 1, "next_crl_number": 9223372036854775807)",
        R"("next_serial": 1, "next_crl_number": 1, "crl_days": 0)",
        R"("next_serial": 1, "next_crl_number": 1, "crl_days": 99999999999)",
        R"("next_serial": 1, "next_crl_number": 1, "crl_days": "30")", R"("next_serial": "1", "next_crl_number": 1)",
        // Floats are refused, not cast: casting 3.3e121 to int64 is undefined behaviour (found by fuzzing).
        R"("next_serial": 3.33333e121, "next_crl_number": 1)", R"("next_serial": 2.0, "next_crl_number": 1)",
        R"("next_serial": 1, "next_crl_number": 1, "crl_days": -1e300)"}) {
    absl::Status s = ParseCaIndex(Index(counters), "index.json").status();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << counters << ": " << s;
    EXPECT_THAT(s.message(), HasSubstr("index.json"));
  }
  for (const std::string& serial : {"", "01", "-1", "abc", "0x10", "1 "}) {
    absl::Status s = ParseCaIndex(Index(R"("next_serial": 2, "next_crl_number": 1)", serial), "index.json").status();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << "'" << serial << "': " << s;
  }
  const std::string good = Index(R"("next_serial": 2, "next_crl_number": 1)");
  for (const std::string& cn : {"", "\\u001b[2Jsite", "../site", "site a"}) {
    absl::Status s = ParseCaIndex(absl::StrReplaceAll(good, {{"\"site-a\"", "\"" + cn + "\""}}), "index.json").status();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << "'" << cn << "': " << s;
  }
  for (const std::string& bad : {"", "[]", "{", "null", R"({"format": 3})", R"({"format": "fedtune-ca-index-v1"})"}) {
    EXPECT_EQ(ParseCaIndex(bad, "index.json").status().code(), absl::StatusCode::kDataLoss) << bad;
  }
}

}  // namespace
}  // namespace fedtune::pki
