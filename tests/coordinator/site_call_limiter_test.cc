#include "coordinator/site_call_limiter.h"

#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fedtune::coordinator {
namespace {

using ::testing::HasSubstr;

TEST(SiteCallLimiterTest, RefusesTheCallOrStreamOverTheSitesLimitAndFreesItsPlaceOnRelease) {
  SiteCallLimiter limiter({/*max_calls_per_site=*/3, /*max_streams_per_site=*/2});
  std::vector<SiteCallLimiter::Slot> held;
  for (int i = 0; i < 2; ++i) {
    auto slot = limiter.Acquire("site-a", /*stream=*/true);
    ASSERT_TRUE(slot.ok()) << slot.status();
    held.push_back(*std::move(slot));
  }
  auto third_stream = limiter.Acquire("site-a", true);
  EXPECT_EQ(third_stream.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third_stream.status().message(), HasSubstr("site site-a"));
  EXPECT_THAT(third_stream.status().message(), HasSubstr("max_streams_per_site 2"));
  // A unary call still fits (3 calls), then none.
  auto unary = limiter.Acquire("site-a", false);
  ASSERT_TRUE(unary.ok());
  auto fourth = limiter.Acquire("site-a", false);
  EXPECT_EQ(fourth.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(fourth.status().message(), HasSubstr("max_calls_per_site 3"));
  EXPECT_EQ(limiter.calls("site-a"), 3);
  EXPECT_EQ(limiter.streams("site-a"), 2);
  // Other sites have limits of their own.
  EXPECT_TRUE(limiter.Acquire("site-b", true).ok());
  // Places are freed when slots go, also after a move.
  SiteCallLimiter::Slot moved = std::move(held.back());
  held.pop_back();
  EXPECT_EQ(limiter.streams("site-a"), 2);
  moved = SiteCallLimiter::Slot();
  EXPECT_EQ(limiter.streams("site-a"), 1);
  EXPECT_TRUE(limiter.Acquire("site-a", true).ok());  // Acquired and released at once.
  held.clear();
  *unary = SiteCallLimiter::Slot();
  EXPECT_EQ(limiter.calls("site-a"), 0);
  EXPECT_EQ(limiter.calls("site-b"), 0);
}

}  // namespace
}  // namespace fedtune::coordinator
