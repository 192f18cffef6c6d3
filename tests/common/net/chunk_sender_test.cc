#include "common/net/chunk_sender.h"

#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::net {
namespace {

using ::testing::HasSubstr;

std::string Payload(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + 7) % 251);
  return s;
}

// Records every chunk a sender hands over.
struct Recorder {
  std::vector<std::pair<int64_t, std::string>> chunks;
  int refuse_after = -1;  // Refuse the chunk with this index (a broken stream).
  ChunkWriter Writer() {
    return [this](int64_t offset, absl::string_view data) {
      if (static_cast<int>(chunks.size()) == refuse_after) return false;
      chunks.emplace_back(offset, std::string(data));
      return true;
    };
  }
  std::string Joined() const {
    std::string all;
    for (const auto& [offset, data] : chunks) all += data;
    return all;
  }
};

TEST(ClampChunkBytesTest, KeepsTheProtocolsBounds) {
  EXPECT_EQ(ClampChunkBytes(0), kMinChunkBytes);
  EXPECT_EQ(ClampChunkBytes(-5), kMinChunkBytes);
  EXPECT_EQ(ClampChunkBytes(5000), 5000);
  EXPECT_EQ(ClampChunkBytes(int64_t{1} << 40), kMaxChunkBytes);
}

TEST(ChunkSenderTest, SendsFromAnOffsetInChunksWithTheirOffsets) {
  testing::TempDir tmp;
  const std::string payload = Payload(5000);
  auto sender = ChunkSender::Open(tmp.WriteFile("payload", payload));
  ASSERT_TRUE(sender.ok()) << sender.status();
  EXPECT_EQ((*sender)->size(), 5000);
  Recorder recorder;
  ChunkSenderOptions options;
  options.chunk_bytes = 1;  // Clamped to 1 KiB.
  SendResult result = (*sender)->Send(1500, options, recorder.Writer());
  ASSERT_TRUE(result.status.ok()) << result.status;
  EXPECT_FALSE(result.broken);
  EXPECT_EQ(result.sent, 3500);
  ASSERT_EQ(recorder.chunks.size(), 4u);
  EXPECT_EQ(recorder.chunks[0].first, 1500);
  EXPECT_EQ(recorder.chunks[1].first, 1500 + 1024);
  EXPECT_EQ(recorder.chunks[3].second.size(), 3500u - 3 * 1024);
  EXPECT_EQ(recorder.Joined(), payload.substr(1500));
  // The whole file, and nothing at its end.
  Recorder whole;
  EXPECT_EQ((*sender)->Send(0, {}, whole.Writer()).sent, 5000);
  EXPECT_EQ(whole.Joined(), payload);
  Recorder none;
  result = (*sender)->Send(5000, {}, none.Writer());
  EXPECT_TRUE(result.status.ok());
  EXPECT_TRUE(none.chunks.empty());
}

TEST(ChunkSenderTest, StopsWhenTheStreamBreaksOrTheCallerCancels) {
  testing::TempDir tmp;
  auto sender = ChunkSender::Open(tmp.WriteFile("payload", Payload(4096)));
  ASSERT_TRUE(sender.ok());
  ChunkSenderOptions options;
  options.chunk_bytes = 1024;
  Recorder broken;
  broken.refuse_after = 2;
  SendResult result = (*sender)->Send(0, options, broken.Writer());
  EXPECT_TRUE(result.broken);
  EXPECT_TRUE(result.status.ok());
  EXPECT_EQ(result.sent, 2048);

  int asked = 0;
  options.cancelled = [&asked] { return ++asked > 1; };
  Recorder cancelled;
  result = (*sender)->Send(0, options, cancelled.Writer());
  EXPECT_EQ(result.status.code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(result.status.message(), HasSubstr("byte 1024"));
  EXPECT_EQ(result.sent, 1024);
}

TEST(ChunkSenderTest, RefusesAnOffsetOutsideTheFileAndAMissingFile) {
  testing::TempDir tmp;
  auto sender = ChunkSender::Open(tmp.WriteFile("payload", Payload(10)));
  ASSERT_TRUE(sender.ok());
  Recorder recorder;
  EXPECT_EQ((*sender)->Send(11, {}, recorder.Writer()).status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ((*sender)->Send(-1, {}, recorder.Writer()).status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(recorder.chunks.empty());
  auto missing = ChunkSender::Open(tmp.Join("missing"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("missing"));
}

}  // namespace
}  // namespace fedtune::net
