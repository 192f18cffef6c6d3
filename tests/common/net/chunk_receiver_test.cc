#include "common/net/chunk_receiver.h"

#include <sys/stat.h>

#include <filesystem>
#include <random>
#include <string>

#include "common/io/file_util.h"
#include "common/io/sha256.h"
#include "common/net/chunk_sender.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::net {
namespace {

using ::testing::HasSubstr;

// `n` pseudo-random bytes (fixed seed).
std::string Payload(size_t n) {
  std::mt19937 rng(static_cast<uint32_t>(n));
  std::string bytes;
  while (bytes.size() < n) bytes.push_back(static_cast<char>(rng() & 0xff));
  return bytes;
}

std::string Contents(const std::string& path) { return *io::ReadFile(path); }

TEST(ChunkReceiverTest, HashesWhileReceivingAndAfterAResumeAtAnEarlierOffset) {
  testing::TempDir tmp;
  const std::string payload = Payload(3000);
  const std::string path = tmp.Join("spool");
  auto receiver = ChunkReceiver::Open(path, {});
  ASSERT_TRUE(receiver.ok()) << receiver.status();
  ASSERT_TRUE((*receiver)->ResumeAt(0).ok());
  ASSERT_TRUE((*receiver)->Append(0, payload.substr(0, 1000)).ok());
  ASSERT_TRUE((*receiver)->Append(1000, payload.substr(1000, 1000)).ok());
  ASSERT_TRUE((*receiver)->Sync().ok());
  // A resend from byte 500 replaces what follows it.
  ASSERT_TRUE((*receiver)->ResumeAt(500).ok());
  EXPECT_EQ((*receiver)->offset(), 500);
  ASSERT_TRUE((*receiver)->Append(500, payload.substr(500)).ok());
  EXPECT_EQ((*receiver)->offset(), 3000);
  EXPECT_EQ(*(*receiver)->Digest(), io::Sha256Hex(payload));
  EXPECT_EQ(Contents(path), payload);
}

TEST(ChunkReceiverTest, ANewReceiverResumesWhatAnEarlierStreamLeft) {
  testing::TempDir tmp;
  const std::string payload = Payload(4000);
  const std::string path = tmp.WriteFile("part", payload.substr(0, 2500));
  auto receiver = ChunkReceiver::Open(path, {});
  ASSERT_TRUE(receiver.ok());
  EXPECT_EQ((*receiver)->offset(), 2500);
  // Beyond what is held: the peer must ask for the offset again.
  absl::Status beyond = (*receiver)->ResumeAt(2600);
  EXPECT_EQ(beyond.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(beyond.message(), HasSubstr("2500 bytes are held"));
  ASSERT_TRUE((*receiver)->ResumeAtEnd().ok());
  ASSERT_TRUE((*receiver)->Append(2500, payload.substr(2500)).ok());
  EXPECT_EQ(*(*receiver)->Digest(), io::Sha256Hex(payload));
  // The digest is consumed; asked again, the held bytes are read.
  EXPECT_EQ(*(*receiver)->Digest(), io::Sha256Hex(payload));
}

TEST(ChunkReceiverTest, RefusesChunksThatBreakTheProtocolWithTheViolationCode) {
  testing::TempDir tmp;
  ChunkReceiverOptions options;
  options.what = "upload of site s1";
  options.max_bytes = 100;
  options.max_chunk_bytes = 60;
  options.violation_code = absl::StatusCode::kInvalidArgument;
  auto receiver = ChunkReceiver::Open(tmp.Join("spool"), options);
  ASSERT_TRUE(receiver.ok());
  absl::Status wrong_offset = (*receiver)->Append(5, "abc");
  EXPECT_EQ(wrong_offset.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong_offset.message(), HasSubstr("upload of site s1: chunk at offset 5, expected 0"));
  EXPECT_EQ((*receiver)->Append(0, std::string(61, 'x')).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE((*receiver)->Append(0, std::string(60, 'x')).ok());
  absl::Status too_much = (*receiver)->Append(60, std::string(41, 'x'));
  EXPECT_EQ(too_much.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(too_much.message(), HasSubstr("beyond the announced 100 bytes"));
  EXPECT_EQ((*receiver)->offset(), 60);  // Nothing of a refused chunk is written.
  EXPECT_EQ(std::filesystem::file_size(tmp.Join("spool")), 60u);
  ASSERT_TRUE((*receiver)->Append(60, std::string(40, 'x')).ok());
}

TEST(ChunkReceiverTest, AnnouncedTotalAndDigestMustStayTheSame) {
  testing::TempDir tmp;
  const std::string payload = Payload(2048);
  const std::string sha = io::Sha256Hex(payload);
  auto receiver = ChunkReceiver::Open(tmp.Join("part"), {});
  ASSERT_TRUE(receiver.ok());
  // A digest that is not the one asked for, not a digest, or no total.
  EXPECT_EQ((*receiver)->AppendAnnounced(0, payload.substr(0, 1024), 2048, sha, "0000").code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ((*receiver)->AppendAnnounced(0, payload.substr(0, 1024), 2048, "xyz", "").code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ((*receiver)->AppendAnnounced(0, payload.substr(0, 1024), 0, sha, "").code(), absl::StatusCode::kDataLoss);
  ASSERT_TRUE((*receiver)->AppendAnnounced(0, payload.substr(0, 1024), 2048, sha, sha.substr(0, 8)).ok());
  EXPECT_EQ((*receiver)->announced_total(), 2048);
  EXPECT_EQ((*receiver)->announced_sha256(), sha);
  // Another total in the same stream; data beyond the announced total.
  EXPECT_EQ((*receiver)->AppendAnnounced(1024, payload.substr(1024), 4096, sha, "").code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ((*receiver)->AppendAnnounced(1024, payload.substr(1024) + "x", 2048, sha, "").code(),
            absl::StatusCode::kDataLoss);
  ASSERT_TRUE((*receiver)->AppendAnnounced(1024, payload.substr(1024), 2048, sha, "").ok());
  EXPECT_EQ(*(*receiver)->Digest(), sha);
  // Begun again from 0, the payload may be another one.
  ASSERT_TRUE((*receiver)->ResumeAt(0).ok());
  (*receiver)->ClearAnnouncements();
  EXPECT_EQ((*receiver)->announced_total(), -1);
  ASSERT_TRUE((*receiver)->AppendAnnounced(0, "abc", 3, io::Sha256Hex("abc"), "").ok());
  EXPECT_EQ(*(*receiver)->Digest(), io::Sha256Hex("abc"));
}

TEST(ChunkReceiverTest, IoErrorsGoThroughTheCallersMapping) {
  testing::TempDir tmp;
  ChunkReceiverOptions options;
  options.on_io_error = [](const absl::Status& error) {
    return absl::InternalError(absl::StrCat("could not store (", absl::StatusCodeToString(error.code()), ")"));
  };
  auto receiver = ChunkReceiver::Open(tmp.Join("no/such/dir/spool"), options);
  EXPECT_EQ(receiver.status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(receiver.status().message(), "could not store (NOT_FOUND)");
}

TEST(ChunkReceiverTest, CreatesTheFileWithTheGivenMode) {
  testing::TempDir tmp;
  ChunkReceiverOptions options;
  options.file_mode = 0600;
  ASSERT_TRUE(ChunkReceiver::Open(tmp.Join("spool"), options).ok());
  struct stat st;
  ASSERT_EQ(::stat(tmp.Join("spool").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(ChunkTransferTest, SenderToReceiverAcrossABrokenStream) {
  testing::TempDir tmp;
  const std::string payload = Payload(10000);
  auto sender = ChunkSender::Open(tmp.WriteFile("payload", payload));
  ASSERT_TRUE(sender.ok());
  auto receiver = ChunkReceiver::Open(tmp.Join("received"), {});
  ASSERT_TRUE(receiver.ok());
  ChunkSenderOptions options;
  options.chunk_bytes = 1500;
  int chunks = 0;
  // The first stream breaks after three chunks; the second resumes at what the receiver holds.
  SendResult first = (*sender)->Send(0, options, [&](int64_t offset, absl::string_view data) {
    return ++chunks <= 3 && (*receiver)->Append(offset, data).ok();
  });
  EXPECT_TRUE(first.broken);
  ASSERT_TRUE((*receiver)->Sync().ok());
  ASSERT_TRUE((*receiver)->ResumeAtEnd().ok());
  EXPECT_EQ((*receiver)->offset(), 4500);
  SendResult second = (*sender)->Send((*receiver)->offset(), options, [&](int64_t offset, absl::string_view data) {
    return (*receiver)->Append(offset, data).ok();
  });
  ASSERT_TRUE(second.status.ok());
  EXPECT_FALSE(second.broken);
  EXPECT_EQ(first.sent + second.sent, 10000);
  EXPECT_EQ(*(*receiver)->Digest(), io::Sha256Hex(payload));
  EXPECT_EQ(Contents(tmp.Join("received")), payload);
}

}  // namespace
}  // namespace fedtune::net
